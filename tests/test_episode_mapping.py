"""The therapy episode (issue 26): EpisodeOfCare, CarePlan, Goal and DocumentReference mapped to codes, dates,
statuses and references, and linked to their referrals."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.warehouse.episode_links import derive_episode_links
from connector.warehouse.visit_links import derive_visit_links
from mappings.episode import GOAL_TEXT_MAX, note_kind
from mappings.episode_links import CareFacts, link_care
from mappings.registry import map_resource
from mappings.types import MapContext
from mappings.visit_links import ReferralFacts
from tests.test_payer_builders import ENDPOINT, load

DATA = Path(__file__).parent / "data" / "fhir"
CTX = MapContext(endpoint="e", synced_at=datetime(2026, 11, 1, tzinfo=UTC))
PT_CODE = {"coding": [{"system": "http://snomed.info/sct", "code": "91251008"}]}  # PT procedure
LOINC = "http://loinc.org"


def _official(rtype: str) -> dict[str, dict[str, Any]]:
    lines = (DATA / f"{rtype}.ndjson").read_text().splitlines()
    return {r["id"]: r for r in (json.loads(line) for line in lines if line.strip())}


def _row(resource: dict[str, Any], table: str) -> dict[str, Any]:
    (row,) = map_resource(resource, CTX)[table]
    return row


def test_the_official_examples_map_to_codes_dates_and_references() -> None:
    episode = _row(_official("EpisodeOfCare")["example"], "episode")
    assert (episode["status"], episode["care_manager_ref"], episode["period_start"].date()) == (
        "active",
        "Practitioner/14",
        date(2014, 9, 1),
    )
    # Its referralRequest is a display only: no referral named.
    assert (episode["referral_ref"], episode["referral_link"]) == (None, None)
    plan = _row(_official("CarePlan")["example"], "care_plan")
    # scheduledTiming 1 a day -> 7 visits a week; the plan's goal listed.
    assert (plan["visits_per_week"], plan["goal_refs"], plan["encounter_ref"]) == (
        7.0,
        ["Goal/example"],
        "Encounter/home",
    )
    goal = _row(_official("Goal")["stop-smoking"], "goal")
    assert (goal["lifecycle_status"], goal["achievement_status"], goal["description"]) == (
        "completed",
        "achieved",
        "Stop smoking",
    )
    note = _row(_official("DocumentReference")["example"], "clinical_note")
    # A contained author (#a2) is not kept; the note's description and attachment are not stored.
    assert (note["author_ref"], note["type_code"], note["note_kind"]) == (
        "Practitioner/xcda1",
        "34108-1",
        "other",
    )
    stored = json.dumps([episode, plan, goal, note], default=str)
    for text in ("Physical", "Smitty", "Manage obesity", "honeymoon", "Amanda Assigned", "Binary/"):
        assert text not in stored, text


def test_every_official_example_maps() -> None:
    tables = {
        "EpisodeOfCare": "episode",
        "CarePlan": "care_plan",
        "Goal": "goal",
        "DocumentReference": "clinical_note",
    }
    counts = {
        rtype: sum(len(map_resource(r, CTX)[t]) for r in _official(rtype).values())
        for rtype, t in tables.items()
    }
    assert counts == {"EpisodeOfCare": 1, "CarePlan": 11, "Goal": 2, "DocumentReference": 1}


def _plan(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "CarePlan",
        "id": "cp1",
        "status": "active",
        "intent": "plan",
        "subject": {"reference": "Patient/p1"},
        "category": [PT_CODE],
        "activity": [
            {
                "reference": {"reference": "ServiceRequest/sr1"},
                "detail": {
                    "status": "in-progress",
                    "scheduledTiming": {
                        "repeat": {
                            "frequency": 3,
                            "period": 2,
                            "periodUnit": "wk",
                            "boundsDuration": {"value": 2, "unit": "mo", "code": "mo"},
                        }
                    },
                },
            }
        ],
        **extra,
    }


def test_a_plan_of_care_gives_its_frequency_discipline_and_referral() -> None:
    row = _row(_plan(description="Pt lives alone, wife died"), "care_plan")
    # 3 visits every 2 weeks = 1.5 a week, for 2 months = 60.875 days = 8.7 weeks.
    assert (row["visits_per_week"], row["plan_weeks"], row["discipline"]) == (1.5, 8.7, "PT")
    assert (row["referral_ref"], row["referral_link"]) == ("ServiceRequest/sr1", "reference")
    assert "wife" not in json.dumps(row, default=str)


@pytest.mark.parametrize(
    ("concept", "kind"),
    [
        ({"coding": [{"system": LOINC, "code": "11506-3"}]}, "progress"),
        ({"coding": [{"system": LOINC, "code": "18842-5"}], "text": "evaluation"}, "discharge"),  # code wins
        ({"coding": [{"system": LOINC, "code": "18776-5"}]}, "plan-of-care"),
        ({"text": "PT Initial Eval"}, "evaluation"),
        ({"text": "OT Re-evaluation"}, "progress"),
        (
            {"coding": [{"system": "urn:local", "code": "x", "display": "Discharge Summary - PT"}]},
            "discharge",
        ),
        ({"coding": [{"system": "urn:local", "code": "11506-3"}]}, "other"),  # the code of another system
        (None, "other"),
    ],
)
def test_note_kinds_from_codes_then_words(concept: dict[str, Any] | None, kind: str) -> None:
    assert note_kind(concept) == kind


def test_a_long_goal_is_kept_in_a_line() -> None:
    words = "Patient will ambulate 500 ft on level surfaces without an assistive device and " * 5
    goal = {
        "resourceType": "Goal",
        "id": "g1",
        "lifecycleStatus": "active",
        "description": {"text": words},
        "subject": {"reference": "Patient/p1"},
        "addresses": [{"reference": "ServiceRequest/sr1"}],
    }
    row = _row(goal, "goal")
    assert len(row["description"]) == GOAL_TEXT_MAX
    assert row["description"].startswith("Patient will ambulate 500 ft")
    assert (row["referral_ref"], row["referral_link"]) == ("ServiceRequest/sr1", "reference")


# -- linking -----------------------------------------------------------------------------------------------


def _facts(table: str, rid: str, on: date | None, **extra: Any) -> CareFacts:
    values: dict[str, Any] = {
        "table": table,
        "resource_type": "X",
        "resource_id": rid,
        "patient_ref": "Patient/p1",
        "discipline": "PT",
        "on": on,
        "referral_ref": None,
        "referral_link": None,
    }
    values.update(extra)
    return CareFacts(**values)


REFERRALS = [
    ReferralFacts("ServiceRequest/old", "Patient/p1", "PT", date(2025, 1, 10)),
    ReferralFacts("ServiceRequest/pt", "Patient/p1", "PT", date(2026, 3, 1)),
    ReferralFacts("ServiceRequest/slp", "Patient/p1", "SLP", date(2026, 3, 5)),
]


def test_each_rule_links_in_its_order() -> None:
    rows = [
        _facts("episode", "ep", date(2026, 3, 10), until=date(2026, 6, 30)),
        _facts("care_plan", "cp", date(2026, 3, 12), goal_refs=("Goal/g1",)),
        _facts("goal", "g1", date(2026, 3, 12)),
        _facts("goal", "g2", date(2026, 4, 1)),
        _facts("clinical_note", "n-visit", date(2026, 9, 1), encounter_ref="Encounter/e9"),
        _facts("clinical_note", "n-after", date(2026, 8, 1)),
        _facts("clinical_note", "n-slp", date(2026, 3, 20), discipline="SLP"),
        _facts(
            "clinical_note",
            "n-named",
            date(2026, 3, 20),
            referral_ref="ServiceRequest/x",
            referral_link="reference",
        ),
        _facts("clinical_note", "n-before", date(2024, 12, 1)),
        _facts("goal", "g-other", date(2026, 3, 6), patient_ref="Patient/p2"),
    ]
    decided = link_care(REFERRALS, rows, {"Encounter/e9": "ServiceRequest/old"})
    assert {rid: decided[(t, rid)] for t, rid in decided} == {
        "ep": ("ServiceRequest/pt", "inferred"),  # the latest PT referral before it
        "cp": ("ServiceRequest/pt", "episode"),  # within the linked episode
        "g1": ("ServiceRequest/pt", "care_plan"),  # listed by the plan
        "g2": ("ServiceRequest/pt", "episode"),
        "n-visit": ("ServiceRequest/old", "encounter"),  # its visit's referral, even after the episode
        "n-after": ("ServiceRequest/pt", "inferred"),  # after the episode ended: the latest PT referral
        "n-slp": ("ServiceRequest/slp", "inferred"),  # SLP: not the PT episode
        "n-named": ("ServiceRequest/x", "reference"),
        "n-before": (None, None),  # before every referral
        "g-other": (None, None),  # another patient's
    }


def test_the_horizon_is_a_year() -> None:
    late = _facts("clinical_note", "n", date(2027, 3, 2))  # 366 days after the PT referral
    on_time = _facts("clinical_note", "m", date(2027, 3, 1))
    decided = link_care(REFERRALS, [late, on_time], {})
    assert decided[late.key] == (None, None)
    assert decided[on_time.key] == ("ServiceRequest/pt", "inferred")


def _resource(rtype: str, rid: str, **fields: Any) -> dict[str, Any]:
    return {"resourceType": rtype, "id": rid, "meta": {"lastUpdated": "2026-10-01T00:00:00Z"}, **fields}


def test_links_in_the_warehouse_follow_visits_and_are_recomputed(engine: Engine) -> None:
    patient = {"reference": "Patient/p1"}
    referral = _resource(
        "ServiceRequest", "sr1", status="active", intent="order", subject=patient,
        authoredOn="2026-09-01", code=PT_CODE,
    )  # fmt: skip
    encounter = _resource(
        "Encounter", "e1", status="finished", subject=patient, period={"start": "2026-09-05T10:00:00Z"},
        basedOn=[{"reference": "ServiceRequest/sr1"}], type=[PT_CODE],
        **{"class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}},
    )  # fmt: skip
    note = _resource(
        "DocumentReference", "n1", status="current", subject=patient, date="2026-09-05T11:00:00Z",
        type={"coding": [{"system": LOINC, "code": "11506-3"}]},
        context={"encounter": [{"reference": "Encounter/e1"}]},
        content=[{"attachment": {"contentType": "text/plain", "data": "UGF0aWVudCBKb2U="}}],
    )  # fmt: skip
    goal = _resource(
        "Goal", "g1", lifecycleStatus="active", subject=patient, startDate="2026-09-06",
        description={"text": "Climb stairs"},
    )  # fmt: skip
    load(engine, referral, encounter, note, goal)
    derive_visit_links(engine, ENDPOINT)
    assert derive_episode_links(engine, ENDPOINT) == 2
    with engine.connect() as conn:
        links: dict[str, str] = dict(
            conn.execute(
                sa.text(
                    "SELECT resource_id, referral_ref || ' ' || referral_link FROM clinical_note "
                    "UNION ALL SELECT resource_id, referral_ref || ' ' || referral_link FROM goal"
                )
            ).all()
        )
        stored = conn.execute(sa.text("SELECT * FROM clinical_note")).one()._asdict()
    assert links == {"n1": "ServiceRequest/sr1 encounter", "g1": "ServiceRequest/sr1 inferred"}
    assert "UGF0aWVudCBKb2U=" not in json.dumps(stored, default=str)
    # Nothing changed: nothing is written again.
    assert derive_episode_links(engine, ENDPOINT) == 0
