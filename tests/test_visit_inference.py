"""Evaluations and referral links inferred where visits carry no codes (issue 25, rule 3), on SQLite and
PostgreSQL: FHIR resources -> map -> write -> `derive_visit_links` -> `v_referral_funnel`."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.warehouse.visit_links import derive_visit_links
from connector.warehouse.writer import PageWrite, write_page
from mappings.registry import map_resource
from mappings.types import MapContext
from mappings.visit_links import ReferralFacts, VisitFacts, link_visits

CPT = "http://www.ama-assn.org/go/cpt"
EP = "clinic"


def referral(rid: str, patient: str, authored: str) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": rid,
        "status": "active",
        "intent": "order",
        "code": {"coding": [{"system": CPT, "code": "97161"}]},  # PT
        "subject": {"reference": f"Patient/{patient}"},
        "authoredOn": authored,
    }


def appointment(
    aid: str, patient: str, status: str, start: str, *, based_on: str | None = None, code: str | None = None
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Appointment",
        "id": aid,
        "status": status,
        "start": start,
        "participant": [{"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"}],
    }
    if based_on:
        resource["basedOn"] = [{"reference": f"ServiceRequest/{based_on}"}]
    if code:
        resource["serviceType"] = [{"coding": [{"system": CPT, "code": code}]}]
    return resource


def load(engine: Engine, resources: list[dict[str, Any]]) -> None:
    ctx = MapContext(endpoint=EP, synced_at=datetime(2026, 4, 1, tzinfo=UTC))
    mapped: dict[str, list[dict[str, Any]]] = {}
    for resource in resources:
        for table, rows in map_resource(resource, ctx).items():
            mapped.setdefault(table, []).extend(rows)
    write_page(engine, PageWrite(endpoint=EP, resource_type="ServiceRequest", mapped=mapped))


def visits(engine: Engine) -> dict[str, tuple[Any, ...]]:
    with engine.connect() as conn:
        result = conn.execute(
            sa.text("SELECT resource_id, referral_ref, referral_link, kind, kind_source FROM visit")
        )
        return {r[0]: tuple(r[1:]) for r in result}


# Six March referrals; no visit has a code except a9. Worked out by the rule:
# | referral | patient | received | visits                                   | evaluation            |
# | r1       | p1      | 03-02    | a1 fulfilled 03-05, a2 fulfilled 03-12   | a1 (inferred link)    |
# | r2       | p2      | 03-03    | a3 noshow 03-06 basedOn, a4 fulfilled 03-10 | a4 (a3 stays other)|
# | r3       | p3      | 03-04    | a5 fulfilled 07-01 (118 days: outside)   | none, a5 not linked   |
# | r4       | p4      | 03-05    | a6 cancelled 03-08                       | none (cancelled)      |
# | r5       | p5      | 03-06    | a7 booked 03-20                          | a7, scheduled only    |
# | r6       | p6      | 03-07    | a8 fulfilled 03-09, a9 CPT 97161 03-16   | a9 by code; a8 other  |
# Funnel for March: received 6, evaluation scheduled r1 r2 r5 r6 = 4, attended r1 r2 r6 = 3.
PRACTICE = [
    referral("r1", "p1", "2026-03-02T09:00:00Z"),
    referral("r2", "p2", "2026-03-03T09:00:00Z"),
    referral("r3", "p3", "2026-03-04T09:00:00Z"),
    referral("r4", "p4", "2026-03-05T09:00:00Z"),
    referral("r5", "p5", "2026-03-06T09:00:00Z"),
    referral("r6", "p6", "2026-03-07T09:00:00Z"),
    appointment("a1", "p1", "fulfilled", "2026-03-05T15:00:00Z"),
    appointment("a2", "p1", "fulfilled", "2026-03-12T15:00:00Z"),
    appointment("a3", "p2", "noshow", "2026-03-06T15:00:00Z", based_on="r2"),
    appointment("a4", "p2", "fulfilled", "2026-03-10T15:00:00Z"),
    appointment("a5", "p3", "fulfilled", "2026-07-01T15:00:00Z"),
    appointment("a6", "p4", "cancelled", "2026-03-08T15:00:00Z"),
    appointment("a7", "p5", "booked", "2026-03-20T15:00:00Z"),
    appointment("a8", "p6", "fulfilled", "2026-03-09T15:00:00Z", based_on="r6"),
    appointment("a9", "p6", "fulfilled", "2026-03-16T15:00:00Z", based_on="r6", code="97161"),
]


def test_inference_links_and_classifies_visits_without_codes(engine: Engine) -> None:
    load(engine, PRACTICE)
    assert visits(engine)["a1"] == (None, None, "other", None)  # as mapped: nothing says
    assert derive_visit_links(engine, EP) == 5  # a1 a2 a4 a6 a7; the others stay as mapped
    got = visits(engine)
    assert got["a1"] == ("ServiceRequest/r1", "inferred", "evaluation", "inferred")
    assert got["a2"] == ("ServiceRequest/r1", "inferred", "treatment", "inferred")
    assert got["a3"] == ("ServiceRequest/r2", "basedOn", "other", None)
    assert got["a4"] == ("ServiceRequest/r2", "inferred", "evaluation", "inferred")
    assert got["a5"] == (None, None, "other", None)
    assert got["a6"] == ("ServiceRequest/r4", "inferred", "other", None)
    assert got["a7"] == ("ServiceRequest/r5", "inferred", "evaluation", "inferred")
    # The code wins: a9 is r6's evaluation; a8, before it, is not made one.
    assert got["a8"] == ("ServiceRequest/r6", "basedOn", "other", None)
    assert got["a9"] == ("ServiceRequest/r6", "basedOn", "evaluation", "code")
    assert derive_visit_links(engine, EP) == 0  # a second pass changes nothing

    with engine.connect() as conn:
        funnel = conn.execute(
            sa.text(
                "SELECT received, evaluation_scheduled, evaluation_attended FROM v_referral_funnel "
                "WHERE endpoint = :e"
            ),
            {"e": EP},
        ).all()
    assert [tuple(int(x) for x in row) for row in funnel] == [(6, 4, 3)]


def test_a_later_referral_takes_the_visits_after_it(engine: Engine) -> None:
    load(engine, PRACTICE)
    derive_visit_links(engine, EP)
    since = datetime.now(UTC)
    # A second referral of p1, received 03-04: a1 (03-05) and a2 now follow it, not r1.
    load(engine, [referral("r7", "p1", "2026-03-04T09:00:00Z")])
    assert derive_visit_links(engine, EP, since=since) == 2
    got = visits(engine)
    assert got["a1"] == ("ServiceRequest/r7", "inferred", "evaluation", "inferred")
    assert got["a2"] == ("ServiceRequest/r7", "inferred", "treatment", "inferred")
    assert got["a4"][0] == "ServiceRequest/r2"  # other patients are not touched


def test_the_window_bounds_the_link(engine: Engine) -> None:
    load(engine, [referral("r1", "p1", "2026-03-02T09:00:00Z"), *PRACTICE[6:8]])
    derive_visit_links(engine, EP, window_days=2)
    got = visits(engine)
    assert got["a1"][:2] == (None, None)  # 03-05 is 3 days after 03-02
    assert got["a2"][:2] == (None, None)


def _visit(key: str, patient: str, start: str, **kw: Any) -> VisitFacts:
    values: dict[str, Any] = {
        "referral_ref": None,
        "referral_link": None,
        "kind": "other",
        "kind_source": None,
        "discipline": "other",
        "status": "fulfilled",
        "appointment_ref": None,
    }
    values.update(kw)
    rtype, rid = key.split("/")
    return VisitFacts(rtype, rid, patient, start_at=datetime.fromisoformat(start), **values)


def test_disciplines_must_match_and_encounters_follow_their_appointment() -> None:
    referrals = [
        ReferralFacts("ServiceRequest/pt", "Patient/1", "PT", date(2026, 3, 1)),
        ReferralFacts("ServiceRequest/slp", "Patient/1", "SLP", date(2026, 3, 2)),
    ]
    decided = link_visits(
        referrals,
        [
            _visit("Appointment/a", "Patient/1", "2026-03-03T10:00:00+00:00", discipline="PT"),
            _visit("Encounter/e", "Patient/1", "2026-03-03T10:00:00+00:00", appointment_ref="Appointment/a"),
            _visit("Appointment/b", "Patient/1", "2026-03-04T10:00:00+00:00", discipline="SLP"),
            # Unknown discipline: the latest referral before it, of any discipline.
            _visit("Appointment/c", "Patient/1", "2026-03-05T10:00:00+00:00"),
        ],
    )
    assert decided["Appointment/a"].referral_ref == "ServiceRequest/pt"
    assert decided["Appointment/a"].kind == "evaluation"
    assert decided["Encounter/e"].referral_ref is None
    assert decided["Encounter/e"].kind == "other"
    assert (decided["Appointment/b"].referral_ref, decided["Appointment/b"].kind) == (
        "ServiceRequest/slp",
        "evaluation",
    )
    assert (decided["Appointment/c"].referral_ref, decided["Appointment/c"].kind) == (
        "ServiceRequest/slp",
        "treatment",
    )


def test_inferred_values_are_undone_before_they_are_decided_again() -> None:
    # Stored as inferred from a referral that is gone: the visit goes back to unlinked and `other`.
    stale = _visit(
        "Appointment/a",
        "Patient/1",
        "2026-03-03T10:00:00+00:00",
        referral_ref="ServiceRequest/gone",
        referral_link="inferred",
        kind="evaluation",
        kind_source="inferred",
    )
    decided = link_visits([], [stale])
    assert decided["Appointment/a"] == type(decided["Appointment/a"])(None, None, "other", None)
