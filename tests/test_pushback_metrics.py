"""The MeasureReport's numbers, computed from a small warehouse with hand-counted answers (both databases)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.pushback.metrics import compute, period_bounds, period_start, recent_periods
from connector.warehouse.models import Base, UTCDateTime

WEEK = date(2026, 11, 16)  # a Monday
START, END = period_bounds(WEEK, "week")
T = START + timedelta(days=1)  # Tuesday of that week


def insert(engine: Engine, table_name: str, **values: Any) -> None:
    """Insert one row, filling the NOT NULL columns a test does not care about."""
    table = Base.metadata.tables[table_name]
    row: dict[str, Any] = {"endpoint": "emr"}
    if "content_hash" in table.c:
        row["content_hash"] = "h"
    for column in table.columns:
        if column.nullable or column.server_default is not None or column.name in row:
            continue
        if isinstance(column.type, UTCDateTime):
            row[column.name] = T
        elif column.type.python_type in (list, dict, object):  # JSON columns
            row[column.name] = []
        else:
            row[column.name] = column.type.python_type()
    row |= values
    with engine.begin() as conn:
        conn.execute(table.insert().values(**row))


def test_period_helpers() -> None:
    assert period_start(datetime(2026, 11, 22, 23, 0, tzinfo=UTC), "week") == WEEK
    assert period_start(datetime(2026, 11, 22, tzinfo=UTC), "month") == date(2026, 11, 1)
    assert period_bounds(date(2026, 12, 1), "month") == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert recent_periods(datetime(2026, 11, 20, tzinfo=UTC), "week") == [date(2026, 11, 9), WEEK]


def test_metrics_for_a_week(engine: Engine) -> None:
    # Referrals: r1, r2, r3 in the week (r1 complete); r4 the week before.
    for rid, day, complete in (
        ("r1", T, True),
        ("r2", T, False),
        ("r3", T + timedelta(days=2), False),
        ("r4", START - timedelta(days=1), True),
    ):
        insert(
            engine,
            "referral",
            resource_type="ServiceRequest",
            resource_id=rid,
            authored_on=day,
            intake_complete=complete,
            patient_ref=f"Patient/{rid}",
        )
    # Acknowledged after 10 h and 20 h (median 15); r3 not yet.
    for rid, hours in (("r1", 10.0), ("r2", 20.0), ("r4", 99.0)):
        insert(
            engine,
            "acknowledgment",
            referral_id=rid,
            task_identifier=rid,
            task_status="received",
            acknowledged_at=T,
            response_hours=hours,
        )
    # Evaluations: r1 booked (converts), r2 only a treatment, r3 a cancelled evaluation.
    insert(
        engine,
        "visit",
        resource_type="Appointment",
        resource_id="a1",
        referral_ref="ServiceRequest/r1",
        patient_ref="Patient/r1",
        kind="evaluation",
        status="booked",
        start_at=T + timedelta(days=3),
    )
    insert(
        engine,
        "visit",
        resource_type="Appointment",
        resource_id="a2",
        referral_ref="ServiceRequest/r2",
        patient_ref="Patient/r2",
        kind="treatment",
        status="fulfilled",
        start_at=T + timedelta(days=1),
    )
    insert(
        engine,
        "visit",
        resource_type="Appointment",
        resource_id="a3",
        referral_ref="ServiceRequest/r3",
        patient_ref="Patient/r3",
        kind="evaluation",
        status="cancelled",
        start_at=T,
    )
    # First visits in the week: r1 (checked the day before) and r2 (checked after the visit): 1 of 2.
    insert(
        engine,
        "eligibility_check",
        resource_type="CoverageEligibilityResponse",
        resource_id="e1",
        patient_ref="Patient/r1",
        outcome="complete",
        verified_at=T,
    )
    insert(
        engine,
        "eligibility_check",
        resource_type="CoverageEligibilityResponse",
        resource_id="e2",
        patient_ref="Patient/r2",
        outcome="complete",
        verified_at=T + timedelta(days=5),
    )
    # Adjudications decided in the week: 4 lines, 1 denied. Not counted: one the week before, an EOB
    # repeating cr1, a queued response.
    for rid, rtype, created, lines, denied, outcome, points_to in (
        ("cr1", "ClaimResponse", T, 3, 1, "complete", None),
        ("cr2", "ClaimResponse", T, 1, 0, "complete", None),
        ("cr0", "ClaimResponse", START - timedelta(days=2), 5, 5, "complete", None),
        ("eob1", "ExplanationOfBenefit", T, 3, 1, "complete", "ClaimResponse/cr1"),
        ("cr3", "ClaimResponse", T, 2, 1, "queued", None),
    ):
        insert(
            engine,
            "claim_adjudication",
            resource_type=rtype,
            resource_id=rid,
            claim_key=f"k-{rid}",
            created=created,
            line_count=lines,
            denied_line_count=denied,
            outcome=outcome,
            claim_response_ref=points_to,
        )
        for n in range(denied):
            insert(
                engine,
                "denial",
                resource_type=rtype,
                resource_id=rid,
                line_key=f"item-{n}",
                decided_at=created,
            )
    # Prior auths decided in the week after 2 and 4 days (median 3).
    for n, days in ((1, 2), (2, 4)):
        insert(
            engine,
            "prior_auth_request",
            resource_type="Claim",
            resource_id=f"pa{n}",
            requested_at=T - timedelta(days=days),
        )
        insert(
            engine,
            "prior_auth_response",
            resource_type="ClaimResponse",
            resource_id=f"par{n}",
            request_ref=f"Claim/pa{n}",
            decision="approved",
            responded_at=T,
        )

    got = {m.code: m for m in compute(engine, "emr", START, END)}
    assert (got["new-referrals"].denominator, got["new-referrals"].score) == (3, 3.0)
    assert (got["intake-complete-rate"].numerator, got["intake-complete-rate"].denominator) == (1, 3)
    assert got["intake-complete-rate"].score == pytest.approx(33.3333, abs=1e-3)
    assert got["median-hours-to-acknowledge"].score == pytest.approx(15.0)
    assert (got["referral-to-evaluation"].numerator, got["referral-to-evaluation"].denominator) == (1, 3)
    elig = got["eligibility-before-first-visit"]
    assert (elig.numerator, elig.denominator, elig.score) == (1, 2, 50.0)
    assert (got["denial-rate"].numerator, got["denial-rate"].denominator, got["denial-rate"].score) == (
        1,
        4,
        25.0,
    )
    assert got["prior-auth-median-turnaround"].score == pytest.approx(3.0)


def test_empty_period_has_counts_but_no_scores(engine: Engine) -> None:
    got = {m.code: m for m in compute(engine, "emr", START, END)}
    assert got["new-referrals"].score == 0.0
    assert got["intake-complete-rate"].score is None
    assert got["denial-rate"].denominator == 0
    assert got["prior-auth-median-turnaround"].score is None
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM outbox")).scalar_one() == 0
