"""The payer views on SQLite and PostgreSQL, with hand-computed numbers."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.test_payer_builders import (
    ENDPOINT,
    coverage,
    eligibility_response,
    instant,
    load,
    preauth_claim,
    preauth_response,
)


def query(engine: Engine, sql: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(sa.text(sql))]


def as_date(value: object) -> date:
    """A view date or timestamp: date / timestamptz on PostgreSQL, text on SQLite."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).date()
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def test_authorization_turnaround_per_payer_and_month(engine: Engine) -> None:
    soon = (datetime.now(UTC) + timedelta(days=5)).date().isoformat()
    later = (datetime.now(UTC) + timedelta(days=30)).date().isoformat()
    load(
        engine,
        coverage("cov-b", "Organization/pB"),
        # Payer A, September: 2, 4 and 10 days; one without answer, one pended; one expires soon.
        preauth_claim("c1", "2026-09-01T00:00:00Z"),
        preauth_response(
            "r1", "2026-09-03T00:00:00Z", request="Claim/c1", actions={1: "A1", 2: "A1"}, end=soon
        ),
        preauth_claim("c2", "2026-09-10T00:00:00Z"),
        preauth_response("r2", "2026-09-14T00:00:00Z", request="Claim/c2", actions={1: "A3", 2: "A3"}),
        preauth_claim("c3", "2026-09-20T00:00:00Z"),
        preauth_response(
            "r3", "2026-09-30T00:00:00Z", request="Claim/c3", actions={1: "A1", 2: "A1"}, end=later
        ),
        preauth_claim("c4", "2026-09-25T00:00:00Z"),
        preauth_claim("c5", "2026-09-26T00:00:00Z"),
        preauth_response("r5", "2026-09-27T00:00:00Z", request="Claim/c5", outcome="queued"),
        # No insurer on the claim: the payer comes from its coverage. 1.5 days.
        preauth_claim("c6", "2026-10-05T00:00:00Z", insurer=None, coverage_ref="Coverage/cov-b"),
        preauth_response("r6", "2026-10-06T12:00:00Z", request="Claim/c6", actions={1: "A1", 2: "A1"}),
        # A response without its request is no turnaround.
        preauth_response("r9", "2026-09-15T00:00:00Z", request="Claim/elsewhere", end=soon),
    )
    got = query(engine, "SELECT * FROM v_authorization_turnaround ORDER BY payer_key, month")
    assert len(got) == 2
    a, b = got
    assert (a["endpoint"], a["payer_key"], as_date(a["month"])) == (
        ENDPOINT,
        "Organization/pA",
        date(2026, 9, 1),
    )
    assert (a["requested"], a["decided"], a["approved"], a["denied"]) == (5, 3, 2, 1)
    assert a["median_turnaround_days"] == pytest.approx(4.0)
    assert a["p90_turnaround_days"] == pytest.approx(10.0)  # nearest rank: ceil(0.9 * 3) = 3rd of 2, 4, 10
    assert (a["pending_now"], a["expiring_next_14_days"]) == (2, 1)
    assert (b["payer_key"], as_date(b["month"]), b["requested"], b["decided"]) == (
        "Organization/pB",
        date(2026, 10, 1),
        1,
        1,
    )
    assert b["median_turnaround_days"] == pytest.approx(1.5)
    assert b["p90_turnaround_days"] == pytest.approx(1.5)
    # The orphan is still listed in prior_authorization, with its authorization period.
    orphan = query(engine, "SELECT * FROM prior_authorization WHERE claim_id IS NULL")
    assert [(r["response_id"], r["decision"]) for r in orphan] == [("r9", "approved")]


def test_payer_mix_counts_active_coverages(engine: Engine) -> None:
    next_week = (datetime.now(UTC) + timedelta(days=7)).date().isoformat()
    load(
        engine,
        coverage("a1", "Organization/pA", patient="Patient/1", plan="P1"),
        coverage("a2", "Organization/pA", patient="Patient/2", plan="P1", end=next_week),
        coverage("a3", "Organization/pA", patient="Patient/1", plan="P2"),
        coverage("old", "Organization/pA", patient="Patient/4", plan="P1", end="2020-01-01"),
        coverage("gone", "Organization/pA", patient="Patient/5", plan="P1", status="cancelled"),
        coverage("self", "Patient/3", patient="Patient/3"),
    )
    got = query(engine, "SELECT * FROM v_payer_mix ORDER BY payer_key, plan_value")
    assert [(r["payer_key"], r["plan_value"], r["active_coverages"], r["patients"]) for r in got] == [
        ("Organization/pA", "P1", 2, 2),
        ("Organization/pA", "P2", 1, 1),
        ("self-pay", None, 1, 1),
    ]


def test_eligibility_shows_the_latest_check_whatever_the_arrival_order(engine: Engine) -> None:
    load(
        engine,
        eligibility_response("chk-new", "2026-09-01", coverage_ref="Coverage/a1", outcome="complete"),
        coverage("a1", "Organization/pA", plan="P1"),
        eligibility_response("chk-old", "2026-08-01", coverage_ref="Coverage/a1", outcome="error"),
        coverage("a2", "Organization/pA", plan="P1"),
    )
    got = {r["resource_id"]: r for r in query(engine, "SELECT * FROM v_eligibility")}
    assert (got["a1"]["last_check_id"], got["a1"]["last_check_outcome"]) == ("chk-new", "complete")
    assert as_date(got["a1"]["last_verified_at"]) == date(2026, 9, 1)
    assert bool(got["a1"]["last_inforce"]) is True
    assert got["a2"]["last_check_id"] is None


def test_eligibility_before_first_visit(engine: Engine) -> None:
    visit = sa.Table("visit", sa.MetaData(), autoload_with=engine)

    def row(rid: str, patient: str, start: datetime, status: str) -> dict[str, Any]:
        values = {
            "endpoint": ENDPOINT,
            "resource_type": "Appointment",
            "resource_id": rid,
            "content_hash": rid,
            "patient_ref": patient,
            "kind": "evaluation",
            "status": status,
            "fhir_status": status,
            "start_at": start,
            "loaded_at": datetime.now(UTC),
        }
        # Columns of the visit table this view does not read (owned by the referrals issue) get filler.
        for column in visit.columns:
            if column.name not in values and not column.nullable:
                values[column.name] = [] if isinstance(column.type, sa.JSON) else "other"
        return values

    def at(day: str, hour: int = 9) -> datetime:
        return datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)

    with engine.begin() as conn:
        conn.execute(
            visit.insert(),
            [
                row("v1", "Patient/1", at("2026-09-10"), "fulfilled"),
                row("v1x", "Patient/1", at("2026-09-05"), "cancelled"),  # not a visit
                row("v2", "Patient/2", at("2026-09-20"), "booked"),
                row("v3", "Patient/3", at("2026-10-02"), "fulfilled"),
                row("v3b", "Patient/3", at("2026-10-20"), "fulfilled"),
                row("v4", "Patient/4", at("2026-10-03"), "noshow"),
            ],
        )
    load(
        engine,
        # Same day, later hour: dated on the visit's day, so it counts.
        eligibility_response("e1", instant(at("2026-09-10", 15)), patient="Patient/1"),
        eligibility_response("e2", "2026-09-25", patient="Patient/2"),  # after the visit
        eligibility_response("e3a", "2026-09-01", patient="Patient/3", outcome="error"),  # no verification
        eligibility_response("e3b", "2026-09-30", patient="Patient/3"),
    )
    got = query(engine, "SELECT * FROM v_eligibility_before_first_visit ORDER BY month")
    assert [
        (as_date(r["month"]), r["patients_with_first_visit"], r["verified_before_visit"], r["rate"])
        for r in got
    ] == [(date(2026, 9, 1), 2, 1, pytest.approx(0.5)), (date(2026, 10, 1), 1, 1, pytest.approx(1.0))]
