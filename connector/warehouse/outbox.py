"""The outbox table: what to push, recorded in the same transaction as the rows that caused it.

Delivery is at-least-once (a crash between the server's answer and `mark_sent` sends again); the
server-side effect is exactly-once because every send is conditional on a stable identifier.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from connector.warehouse.engine import begin_write, insert_for
from connector.warehouse.models import Acknowledgment, Outbox
from connector.warehouse.state import one_line

_OUTBOX: sa.Table = Outbox.__table__  # type: ignore[assignment]
_ACK: sa.Table = Acknowledgment.__table__  # type: ignore[assignment]

TASK_CREATE = "task-create"
TASK_UPDATE = "task-update"
CASE_SUMMARY = "case-summary"
MEASURE = "measure"
MEASURE_REPORT = "measure-report"
#: Delivery order: Measures before the reports that point to them, a Task before its update and before
#: the case summaries that are `about` it.
KIND_ORDER = (MEASURE, TASK_CREATE, TASK_UPDATE, CASE_SUMMARY, MEASURE_REPORT)
EVALUATION_SCHEDULED = "#evaluation-scheduled"


@dataclass(frozen=True, slots=True)
class Item:
    id: int
    endpoint: str
    kind: str
    item_key: str
    attempts: int
    server_id: str | None


def enqueue(
    conn: Connection, rows: Iterable[Mapping[str, str]], now: datetime, *, reopen: bool = False
) -> None:
    """Add outbox items; an item already there is left alone (or set pending again with `reopen`)."""
    # In key order, as every row a page writes: concurrent writers then lock rows in the same order.
    unique = {(r["endpoint"], r["kind"], r["item_key"]): r for r in rows}
    values = [
        {**unique[key], "status": "pending", "attempts": 0, "created_at": now, "updated_at": now}
        for key in sorted(unique)
    ]
    if not values:
        return
    stmt = insert_for(conn, _OUTBOX)
    keys = ["endpoint", "kind", "item_key"]
    if reopen:
        stmt = stmt.on_conflict_do_update(
            index_elements=keys,
            set_={"status": "pending", "attempts": 0, "updated_at": now, "last_error": None},
        )
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=keys)
    # Rows as parameters (executemany), so the statement is compiled once, not as a multi-row VALUES
    # for each page's number of rows.
    conn.execute(stmt, values)


def keys(conn: Connection, endpoint: str) -> set[tuple[str, str]]:
    """(kind, item_key) of every outbox item of `endpoint`, whatever its status."""
    query = sa.select(_OUTBOX.c.kind, _OUTBOX.c.item_key).where(_OUTBOX.c.endpoint == endpoint)
    return {(kind, key) for kind, key in conn.execute(query)}


def activity_since(engine: Engine, since: datetime) -> list[dict[str, Any]]:
    """Per endpoint, the items queued, sent and failed since `since` (what a sync's summary reports)."""
    columns = {
        "queued": _OUTBOX.c.created_at >= since,
        "sent": _OUTBOX.c.sent_at >= since,
        "failed": sa.and_(_OUTBOX.c.status == "failed", _OUTBOX.c.updated_at >= since),
    }
    query = (
        sa.select(
            _OUTBOX.c.endpoint,
            *(sa.func.sum(sa.case((cond, 1), else_=0)).label(name) for name, cond in columns.items()),
        )
        .where(sa.or_(*columns.values()))
        .group_by(_OUTBOX.c.endpoint)
        .order_by(_OUTBOX.c.endpoint)
    )
    with engine.connect() as conn:
        return [
            {"endpoint": r["endpoint"], **{name: int(r[name] or 0) for name in columns}}
            for r in conn.execute(query).mappings()
        ]


def enqueue_metrics(
    engine: Engine, endpoint: str, period_starts: Sequence[date], measure_codes: Sequence[str]
) -> None:
    """Ask for the Measures (once ever) and for the period's MeasureReport (again after every sync)."""
    now = datetime.now(UTC)
    with begin_write(engine) as conn:
        enqueue(conn, [{"endpoint": endpoint, "kind": MEASURE, "item_key": c} for c in measure_codes], now)
        enqueue(
            conn,
            [
                {"endpoint": endpoint, "kind": MEASURE_REPORT, "item_key": p.isoformat()}
                for p in period_starts
            ],
            now,
            reopen=True,
        )


def pending(engine: Engine, endpoint: str) -> list[Item]:
    """Pending items of an endpoint in delivery order."""
    order = sa.case({k: i for i, k in enumerate(KIND_ORDER)}, value=_OUTBOX.c.kind, else_=len(KIND_ORDER))
    query = (
        sa.select(
            _OUTBOX.c.id,
            _OUTBOX.c.endpoint,
            _OUTBOX.c.kind,
            _OUTBOX.c.item_key,
            _OUTBOX.c.attempts,
            _OUTBOX.c.server_id,
        )
        .where(_OUTBOX.c.endpoint == endpoint, _OUTBOX.c.status == "pending")
        .order_by(order, _OUTBOX.c.id)
    )
    with engine.connect() as conn:
        return [Item(*row) for row in conn.execute(query)]


def mark_sent(
    engine: Engine,
    item: Item,
    *,
    payload: dict[str, Any],
    server_id: str | None,
    server_version: str | None,
    acknowledgment: Mapping[str, Any] | None = None,
) -> None:
    """Record a delivery, and for a Task its acknowledgment row, in one transaction."""
    now = datetime.now(UTC)
    with begin_write(engine) as conn:
        conn.execute(
            sa.update(_OUTBOX)
            .where(_OUTBOX.c.id == item.id)
            .values(
                status="sent",
                attempts=item.attempts + 1,
                payload=payload,
                server_id=server_id,
                server_version=server_version,
                sent_at=now,
                updated_at=now,
                last_error=None,
            )
        )
        if acknowledgment is not None:
            row = {**acknowledgment, "updated_at": now}
            stmt = insert_for(conn, _ACK).values(row)
            # A later status change keeps the first acknowledgment time: that is when the referrer heard back.
            update = {
                k: stmt.excluded[k]
                for k in row
                if k not in ("endpoint", "referral_id", "acknowledged_at", "response_hours")
            }
            conn.execute(stmt.on_conflict_do_update(index_elements=["endpoint", "referral_id"], set_=update))


def mark_attempt(engine: Engine, item: Item, error: str, *, max_attempts: int, fatal: bool) -> str:
    """Count a failed attempt; the item fails for good on a fatal error or after `max_attempts`."""
    attempts = item.attempts + 1
    status = "failed" if fatal or attempts >= max_attempts else "pending"
    with begin_write(engine) as conn:
        conn.execute(
            sa.update(_OUTBOX)
            .where(_OUTBOX.c.id == item.id)
            .values(
                status=status, attempts=attempts, last_error=one_line(error), updated_at=datetime.now(UTC)
            )
        )
    return status


def acknowledgment(engine: Engine, endpoint: str, referral_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = (
            conn.execute(
                sa.select(_ACK).where(_ACK.c.endpoint == endpoint, _ACK.c.referral_id == referral_id)
            )
            .mappings()
            .first()
        )
    return dict(row) if row else None


def counts(engine: Engine, endpoint: str | None = None) -> list[dict[str, Any]]:
    """Outbox items per endpoint, kind and status (for `connector status` and the demo)."""
    query = sa.select(_OUTBOX.c.endpoint, _OUTBOX.c.kind, _OUTBOX.c.status, sa.func.count().label("items"))
    if endpoint is not None:
        query = query.where(_OUTBOX.c.endpoint == endpoint)
    query = query.group_by(_OUTBOX.c.endpoint, _OUTBOX.c.kind, _OUTBOX.c.status).order_by(
        _OUTBOX.c.endpoint, _OUTBOX.c.kind, _OUTBOX.c.status
    )
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def item_status(engine: Engine, endpoint: str, kind: str, item_key: str) -> str | None:
    query = sa.select(_OUTBOX.c.status).where(
        _OUTBOX.c.endpoint == endpoint, _OUTBOX.c.kind == kind, _OUTBOX.c.item_key == item_key
    )
    with engine.connect() as conn:
        return conn.execute(query).scalar_one_or_none()


def mark_skipped(engine: Engine, item: Item, reason: str) -> None:
    """Close an item that can never be delivered (not an error of the server or the connector)."""
    with begin_write(engine) as conn:
        conn.execute(
            sa.update(_OUTBOX)
            .where(_OUTBOX.c.id == item.id)
            .values(status="skipped", last_error=reason, updated_at=datetime.now(UTC))
        )
