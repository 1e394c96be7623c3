"""The practice metrics of one endpoint and period, read from the warehouse for the MeasureReport."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from statistics import median
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from connector.pushback.resources import MetricValue
from connector.warehouse.claim_decisions import ADJUDICATED_OUTCOMES, COUNTED_DECISIONS
from connector.warehouse.models import UTCDateTime


def period_start(moment: datetime, period: str) -> date:
    day = moment.astimezone(UTC).date()
    if period == "month":
        return day.replace(day=1)
    return day - timedelta(days=day.weekday())


def period_bounds(start: date, period: str) -> tuple[datetime, datetime]:
    """[start, end) of a week (Monday) or month, in UTC."""
    begin = datetime.combine(start, time(0), tzinfo=UTC)
    if period == "month":
        following = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
        return begin, datetime.combine(following, time(0), tzinfo=UTC)
    return begin, begin + timedelta(days=7)


def recent_periods(moment: datetime, period: str) -> list[date]:
    """The current period and the one before (re-reported so it is final once it closed)."""
    current = period_start(moment, period)
    before = period_start(datetime.combine(current, time(0), tzinfo=UTC) - timedelta(days=1), period)
    return [before, current]


def _proportion(code: str, numerator: int, denominator: int) -> MetricValue:
    score = round(100.0 * numerator / denominator, 4) if denominator else None
    return MetricValue(code, numerator=numerator, denominator=denominator, score=score)


def _median(code: str, values: Sequence[float]) -> MetricValue:
    clean = [float(v) for v in values if v is not None]
    return MetricValue(code, denominator=len(clean), score=round(median(clean), 4) if clean else None)


def _rows(conn: Connection, sql: str, params: dict[str, Any], **types: sa.types.TypeEngine[Any]) -> list[Any]:
    stmt = sa.text(sql).bindparams(
        sa.bindparam("start", type_=UTCDateTime()), sa.bindparam("end", type_=UTCDateTime())
    )
    if types:
        # Computed columns lose their type (SQLite returns text); name the timestamps explicitly.
        stmt = stmt.columns(**types)  # type: ignore[assignment]
    return list(conn.execute(stmt, params))


def compute(engine: Engine, endpoint: str, start: datetime, end: datetime) -> list[MetricValue]:
    """Every metric of `resources.METRICS` for [start, end), in that order."""
    params = {"endpoint": endpoint, "start": start, "end": end}
    with engine.connect() as conn:
        referrals = _rows(conn, _REFERRALS_SQL, params)
        first_visits = _rows(
            conn, _ELIGIBILITY_SQL, params, first_visit_at=UTCDateTime(), first_check=UTCDateTime()
        )
        denied_lines, adjudicated_lines = _rows(conn, _DENIAL_SQL, params)[0]
        turnaround = _rows(conn, _TURNAROUND_SQL, params)
        loop = [bool(r[0]) for r in _rows(conn, _LOOP_SQL, params)]
    total = len(referrals)
    # Checked "on or before the visit" compares UTC calendar days, as v_eligibility_before_first_visit does.
    checked = sum(1 for visit, check in first_visits if check is not None and check.date() <= visit.date())
    return [
        MetricValue("new-referrals", denominator=total, score=float(total)),
        _proportion("intake-complete-rate", sum(1 for r in referrals if r[1]), total),
        _median("median-hours-to-acknowledge", [r[2] for r in referrals if r[2] is not None]),
        _proportion("referral-to-evaluation", sum(1 for r in referrals if r[3]), total),
        _proportion("eligibility-before-first-visit", checked, len(first_visits)),
        _proportion("denial-rate", int(denied_lines or 0), int(adjudicated_lines or 0)),
        _median("prior-auth-median-turnaround", [float(r[0]) for r in turnaround if r[0] is not None]),
        _proportion("referrer-updated-within-7-days", sum(loop), len(loop)),
    ]


_REFERRALS_SQL = """
SELECT r.resource_id, r.intake_complete, a.response_hours,
  EXISTS (SELECT 1 FROM visit v WHERE v.endpoint = r.endpoint AND v.kind = 'evaluation'
          AND v.status IN ('booked', 'fulfilled') AND v.referral_ref = 'ServiceRequest/' || r.resource_id)
FROM referral r
LEFT JOIN acknowledgment a ON a.endpoint = r.endpoint AND a.referral_id = r.resource_id
WHERE r.endpoint = :endpoint AND r.authored_on >= :start AND r.authored_on < :end
"""

# Patients whose first visit (earliest booked or fulfilled) falls in the period, with their first
# complete or partial eligibility response.
_ELIGIBILITY_SQL = """
WITH first_visit AS (
  SELECT patient_ref, MIN(start_at) AS first_visit_at FROM visit
  WHERE endpoint = :endpoint AND status IN ('booked', 'fulfilled') AND patient_ref IS NOT NULL
    AND start_at IS NOT NULL
  GROUP BY patient_ref
)
SELECT f.first_visit_at,
  (SELECT MIN(c.verified_at) FROM eligibility_check c
   WHERE c.endpoint = :endpoint AND c.patient_ref = f.patient_ref AND c.outcome IN ('complete', 'partial')
     AND (c.status IS NULL OR c.status <> 'entered-in-error')) AS first_check
FROM first_visit f
WHERE f.first_visit_at >= :start AND f.first_visit_at < :end
"""

# Denied lines / adjudicated lines of decisions in the period, with v_denials_by_reason's rules (an EOB
# repeating a ClaimResponse we hold counts once; entered-in-error is no decision; queued is not decided).
_DENIAL_SQL = f"""
WITH {COUNTED_DECISIONS}
SELECT
  (SELECT COUNT(*) FROM denial x JOIN eff a
     ON a.endpoint = x.endpoint AND a.resource_type = x.resource_type AND a.resource_id = x.resource_id
    AND a.content_hash = x.content_hash
   WHERE x.endpoint = :endpoint AND a.outcome IN {ADJUDICATED_OUTCOMES}
     AND x.decided_at >= :start AND x.decided_at < :end),
  (SELECT SUM(a.line_count) FROM eff a
   WHERE a.endpoint = :endpoint AND a.outcome IN {ADJUDICATED_OUTCOMES}
     AND a.created >= :start AND a.created < :end)
"""

# Decisions in the period (the view links requests and responses whatever order they arrived in).
_TURNAROUND_SQL = """
SELECT turnaround_days FROM prior_authorization
WHERE endpoint = :endpoint AND decided_at >= :start AND decided_at < :end AND turnaround_days IS NOT NULL
"""

# Evaluations attended in the period, and whether the referrer heard back within 7 days (v_referral_loop).
_LOOP_SQL = """
SELECT updated_within_7_days FROM v_referral_loop
WHERE endpoint = :endpoint AND evaluation_attended_at >= :start AND evaluation_attended_at < :end
"""
