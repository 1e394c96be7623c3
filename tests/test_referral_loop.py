"""Loop-closure metrics (issue 26): `v_referral_loop` per referral and `v_referral_loop_by_source`, on
hand-made data with the numbers worked out here, on SQLite and PostgreSQL.

November 2026, every referral received on day 0 (r3 on day 1), updates are outbox items sent:

| referral | source | evaluation attended | sent (days) | first update | within 7 days of the evaluation |
| r1 | Dr. Ada | day 2 | task-update day 1, summary day 5 | 1.0 | yes (day 5 <= 9) |
| r2 | Dr. Ada | day 3 | summary day 12 | 12.0 | no (day 12 > 10) |
| r3 | Dr. Ben | none | task-update day 2 | 1.0 (from day 1) | (no evaluation) |
| r4 | Dr. Ada | day 4 | nothing | none | no |

By source: Dr. Ada 3 referrals, 3 evaluated, 1 updated in time -> 0.3333, median days to first update of
(1.0, 12.0) = 6.5; Dr. Ben 1 referral, none evaluated -> no share, median 1.0.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.warehouse.models import Base
from connector.warehouse.writer import upsert_rows
from tests.test_pushback import referral_row
from tests.test_task_lifecycle import evaluation, write

DAY0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def _at(days: float) -> datetime:
    return DAY0 + timedelta(days=days)


def _practitioner(pid: str, family: str) -> dict[str, Any]:
    return {
        "resourceType": "Practitioner",
        "id": pid,
        "meta": {"versionId": "1", "lastUpdated": "2026-11-01T00:00:00Z"},
        "name": [{"family": family, "given": ["Dr."]}],
    }


def _visit(rid: str, referral: str, day: float) -> dict[str, Any]:
    visit = evaluation(rid, referral, "fulfilled")
    visit["start"] = _at(day).isoformat()
    return visit


def _sent(rowid: int, kind: str, key: str, day: float) -> dict[str, Any]:
    return {
        "id": rowid,
        "endpoint": "emr",
        "kind": kind,
        "item_key": key,
        "status": "sent",
        "attempts": 1,
        "created_at": _at(day),
        "updated_at": _at(day),
        "sent_at": _at(day),
    }


@pytest.fixture
def loop(engine: Engine) -> Engine:
    tables = Base.metadata.tables
    write(engine, _practitioner("ada", "Ada"), _practitioner("ben", "Ben"))
    rows = [
        referral_row(
            rid, authored_on=_at(day), requester_ref=f"Practitioner/{dr}", source_ref=f"Practitioner/{dr}"
        )
        for rid, dr, day in (("r1", "ada", 0), ("r2", "ada", 0), ("r3", "ben", 1), ("r4", "ada", 0))
    ]
    with engine.begin() as conn:
        upsert_rows(conn, tables["referral"], rows)
    write(engine, _visit("a1", "r1", 2), _visit("a2", "r2", 3), _visit("a4", "r4", 4))
    with engine.begin() as conn:
        conn.execute(
            tables["outbox"].insert(),
            [
                _sent(1, "task-update", "ServiceRequest/r1#evaluation-scheduled", 1),
                _sent(2, "case-summary", "ServiceRequest/r1#summary:evaluation", 5),
                _sent(3, "case-summary", "ServiceRequest/r2#summary:evaluation", 12),
                _sent(4, "task-update", "ServiceRequest/r3#cancelled", 2),
                # Not updates: the first acknowledgment, and an item that was never delivered.
                _sent(5, "task-create", "ServiceRequest/r4", 0.5),
                {**_sent(6, "case-summary", "ServiceRequest/r4#summary:evaluation", 5), "status": "failed"},
                # Queued, not sent yet: waiting, not an update.
                {
                    **_sent(7, "task-update", "ServiceRequest/r4#in-progress", 5),
                    "status": "pending",
                    "sent_at": None,
                },
            ],
        )
    return engine


def _num(value: Any) -> float | None:
    return None if value is None else round(float(value), 4)


def test_per_referral(loop: Engine) -> None:
    with loop.connect() as conn:
        rows = {
            r.referral_id: (
                _num(r.days_to_first_update),
                r.task_updates_sent,
                r.summaries_sent,
                r.updated_within_7_days,
                r.updates_waiting,
            )
            for r in conn.execute(sa.text("SELECT * FROM v_referral_loop"))
        }
    assert rows == {
        "r1": (1.0, 1, 1, 1, 0),
        "r2": (12.0, 0, 1, 0, 0),
        "r3": (1.0, 1, 0, None, 0),
        "r4": (None, 0, 0, 0, 1),
    }


def test_by_source_and_month(loop: Engine) -> None:
    with loop.connect() as conn:
        rows = {
            r.source: (
                r.referrals,
                r.evaluations_attended,
                r.updated_within_7_days,
                _num(r.share_updated_within_7_days),
                _num(r.median_days_to_first_update),
                str(r.month)[:10],
            )
            for r in conn.execute(sa.text("SELECT * FROM v_referral_loop_by_source"))
        }
    assert rows == {
        "Dr. Ada": (3, 3, 1, 0.3333, 6.5, "2026-11-01"),
        "Dr. Ben": (1, 0, 0, None, 1.0, "2026-11-01"),
    }


def test_the_measure_report_group(loop: Engine) -> None:
    from connector.pushback.metrics import compute

    values = {
        v.code: v
        for v in compute(loop, "emr", datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
    }
    updated = values["referrer-updated-within-7-days"]
    # Evaluations attended in November: r1, r2, r4; only r1's referrer heard back within 7 days.
    assert (updated.numerator, updated.denominator, updated.score) == (1, 3, 33.3333)
    # A week with no evaluation has nothing to measure.
    empty = {v.code: v for v in compute(loop, "emr", _at(20), _at(27))}["referrer-updated-within-7-days"]
    assert (empty.denominator, empty.score) == (0, None)


def test_the_report_shows_the_loop(loop: Engine) -> None:
    from connector.report import collect, parse_period
    from connector.report.render import render_html

    data = collect(loop, parse_period("30d", datetime(2026, 11, 30, tzinfo=UTC).date()))
    shown = data["loop"]
    assert {k: shown[k] for k in ("referrals", "evaluated", "updated_within_7_days", "summaries_sent")} == {
        "referrals": 4,
        "evaluated": 3,
        "updated_within_7_days": 1,
        "summaries_sent": 2,
    }
    assert round(shown["share_updated_within_7_days"], 4) == 0.3333
    # Days to the first update: r1 1.0, r2 12.0, r3 1.0 -> 1.0 for the period; Dr. Ada's (1.0, 12.0) -> 6.5.
    assert shown["median_days_to_first_update"] == 1.0
    assert [
        (s["source"], s["evaluated"], s["updated_within_7_days"], s["median_days_to_first_update"])
        for s in shown["sources"]
    ] == [("Dr. Ada", 3, 1, 6.5), ("Dr. Ben", 0, 0, 1.0)]
    html = render_html(data)
    assert 'id="table-loop"' in html
    assert "Closing the loop with referrers" in html


def test_the_report_shows_notified_referrals_beside_the_response_time(loop: Engine) -> None:
    from connector.report import collect, parse_period
    from connector.report.render import render_html

    latency = Base.metadata.tables["intake_latency"]
    with loop.begin() as conn:
        conn.execute(
            latency.insert(),
            [
                {
                    "endpoint": "emr",
                    "referral_id": "r1",
                    "notified_at": _at(0),
                    "task_sent_at": _at(0),
                    "seconds": 2.0,
                },
                {
                    "endpoint": "emr",
                    "referral_id": "r2",
                    "notified_at": _at(0),
                    "task_sent_at": _at(0),
                    "seconds": 4.0,
                },
                # Notified, its Task not sent yet: not a latency.
                {
                    "endpoint": "emr",
                    "referral_id": "r3",
                    "notified_at": _at(1),
                    "task_sent_at": None,
                    "seconds": None,
                },
            ],
        )
    data = collect(loop, parse_period("30d", datetime(2026, 11, 30, tzinfo=UTC).date()))
    assert data["loop"]["notified"] == {"referrals": 2, "median_seconds": 3.0, "p95_seconds": 4.0}
    html = render_html(data)
    assert "2 referrals came by a\n    Subscription notification and were acknowledged a median 3.0 s" in html
