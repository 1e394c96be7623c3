"""A practice written the way other EMRs write it (issue 25 §4), synced from an NDJSON folder, on SQLite and
PostgreSQL; `tests/integration/test_sekmet_others.py` runs the same assertions on the same files served by
sekmet-fhir.

`tests/data/practice-others/` (September 2019, endpoint-independent ids `oth-*`):

| referral | patient | disc. | requester | visits (style) |
| sr1 | A | PT | PractitionerRole r1 (Quill @ o1) | Encounter CPT 97161 basedOn, finished (Epic) |
| sr2 | B | PT | r1 | Appointment serviceType CPT 97162, booked, no basedOn |
| sr3 | C | OT | r2 (Vale @ o2) | v2-0276 ROUTINE fulfilled, FOLLOWUP fulfilled |
| sr4 | D | OT | r2 | v2-0276 WALKIN no-show, basedOn |
| sr5 | E | ST | r2 | text "SLP Initial Eval" fulfilled, "Re-eval" booked |
| sr6 | F | PT | r3 (Practitioner not synced) | no codes: cancelled, then booked |
| sr7 | G | PT | r1 | none |
| sr8 | H | OT | r3 | no codes, booked 124 days later (outside window) |
| sr9 | A | ST | r2 | none (A's PT treatment Encounter is not ST) |
| sr10 | I | PT | display "Dr. Pat Display" only | Encounter CPT 97161, no basedOn |

The endpoint says `evaluation_text = ["initial eval"]`. Worked out by hand:
- scheduled: sr1 (coded), sr2 (coded, linked by patient + PT), sr3 (inferred: first attended), sr4 (inferred:
  no attended or booked visit, so the no-show was the evaluation), sr5 (config: the text), sr6 (inferred: the
  cancelled visit before is not an evaluation, the booked one is), sr10 (coded, linked) -> 7 of 10;
- attended: sr1, sr3, sr5, sr10 -> 4;
- sources: "Dr. Juniper Quill (Quillfield Orthopedics)" sr1 sr2 sr7 -> 3; "Dr. Sampson Vale (Valewood
  Pediatrics)" sr3 sr4 sr5 sr9 -> 4; "unknown (PractitionerRole/…)" sr6 sr8 -> 2; "Dr. Pat Display" -> 1.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.flow_states import final_state
from tests.test_flows import prefect_harness  # noqa: F401 (the fixture)

DATA = Path(__file__).parent / "data" / "practice-others"
RESOURCES = (
    "ServiceRequest", "Appointment", "Encounter", "Practitioner", "PractitionerRole", "Organization",
)  # fmt: skip
#: (received, evaluation scheduled, evaluation attended) of September 2019.
FUNNEL = (10, 7, 4)
SOURCES = {
    "Dr. Juniper Quill (Quillfield Orthopedics)": 3,
    "Dr. Sampson Vale (Valewood Pediatrics)": 4,
    "unknown (PractitionerRole/…)": 2,
    "Dr. Pat Display": 1,
}
#: How the rule that decided each visit's kind and link is recorded.
KINDS = {
    "oth-e1": ("evaluation", "code", "basedOn"),
    "oth-e1b": ("treatment", "code", "inferred"),
    "oth-e10": ("evaluation", "code", "inferred"),
    "oth-a2": ("evaluation", "code", "inferred"),
    "oth-a3": ("evaluation", "inferred", "inferred"),
    "oth-a3b": ("treatment", "inferred", "inferred"),
    "oth-a4": ("evaluation", "inferred", "basedOn"),
    "oth-a5": ("evaluation", "config", "basedOn"),
    "oth-a5b": ("treatment", "inferred", "basedOn"),
    "oth-a6": ("other", None, "inferred"),
    "oth-a6b": ("evaluation", "inferred", "inferred"),
    "oth-a8": ("other", None, None),
}
VISITS_TOML = '[endpoints.visits]\nevaluation_text = ["initial eval"]\n'


def check_others_practice(engine: Engine, endpoint: str) -> None:
    """The hand-worked numbers above, read from the views (the September 2019 rows are this practice's)."""
    with engine.connect() as conn:
        funnel = conn.execute(
            sa.text(
                "SELECT received, evaluation_scheduled, evaluation_attended FROM v_referral_funnel "
                "WHERE endpoint = :e AND month = :m"
            ),
            {"e": endpoint, "m": "2019-09-01" if engine.dialect.name == "sqlite" else "2019-09-01T00:00:00Z"},
        ).one()
        sources = conn.execute(
            sa.text(
                "SELECT source, source_ref, COUNT(*) FROM v_referral_facts WHERE endpoint = :e "
                "AND received_at >= :start AND received_at < :end GROUP BY source, source_ref"
            ),
            {"e": endpoint, "start": "2019-09-01", "end": "2019-10-01"},
        ).all()
        visits = conn.execute(
            sa.text(
                "SELECT resource_id, kind, kind_source, referral_link FROM visit "
                "WHERE endpoint = :e AND resource_id LIKE 'oth-%'"
            ),
            {"e": endpoint},
        ).all()
    assert tuple(int(v) for v in funnel) == FUNNEL
    assert {name: int(n) for name, _, n in sources} == SOURCES
    assert all(ref is None for name, ref, _ in sources if name.startswith("unknown")), sources
    assert {rid: (kind, source, link) for rid, kind, source, link in visits} == KINDS


def test_a_practice_written_in_others_styles(
    prefect_harness: None,  # noqa: F811 (the imported fixture)
    tmp_path: Path,
    warehouse_url: str,
    engine: Engine,
) -> None:
    from flows.sync import sync_all

    shutil.copytree(DATA, tmp_path / "export")
    config = tmp_path / "connector.toml"
    listed = ", ".join(f'"{r}"' for r in RESOURCES)
    config.write_text(
        f'[warehouse]\nurl = "{warehouse_url}"\n'
        f'[[endpoints]]\nname = "others"\nndjson_dir = "export"\nresources = [{listed}]\n{VISITS_TOML}'
    )
    assert final_state(sync_all(str(config), run_id="others", return_state=True)).is_completed()
    check_others_practice(engine, "others")
