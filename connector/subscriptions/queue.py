"""The listener's durable queue (`notification`) and the subscriptions' state (`subscription_state`).

A notification is committed before the listener answers 200, so a crash after the answer loses nothing: the
next `listen` (or its worker) processes what is still pending.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.subscriptions.notifications import Parsed
from connector.warehouse.engine import begin_write, insert_for
from connector.warehouse.models import Outbox
from connector.warehouse.models.subscriptions import IntakeLatency, Notification, SubscriptionState
from connector.warehouse.state import one_line

_N: sa.Table = Notification.__table__  # type: ignore[assignment]
_S: sa.Table = SubscriptionState.__table__  # type: ignore[assignment]
_L: sa.Table = IntakeLatency.__table__  # type: ignore[assignment]


def enqueue(engine: Engine, endpoint: str, parsed: Parsed, now: datetime | None = None) -> int:
    """Commit a received notification; its id."""
    row = {
        "endpoint": endpoint,
        "received_at": now or datetime.now(UTC),
        "kind": parsed.kind,
        "resource_type": parsed.resource_type,
        "subscription_ref": parsed.subscription_ref,
        "event_number": max(parsed.event_numbers) if parsed.event_numbers else None,
        "events_since_start": parsed.events_since_start,
        "focus_refs": list(parsed.focus_refs),
        "payload": {"resources": list(parsed.resources), "event_numbers": list(parsed.event_numbers)}
        if parsed.resources or len(parsed.event_numbers) > 1
        else None,
        "status": "pending",
    }
    with begin_write(engine) as conn:
        return int(conn.execute(_N.insert().values(row).returning(_N.c.id)).scalar_one())


def refuse(engine: Engine, endpoint: str, reason: str, now: datetime | None = None) -> None:
    """Count a refused request (a wrong secret, a body not taken): its reason, never its content."""
    row = {
        "endpoint": endpoint[:63],
        "received_at": now or datetime.now(UTC),
        "kind": "refused",
        "focus_refs": [],
        "status": "refused",
        "error": one_line(reason),
    }
    with begin_write(engine) as conn:
        conn.execute(_N.insert().values(row))


def pending(engine: Engine, limit: int = 100) -> list[dict[str, Any]]:
    query = sa.select(_N).where(_N.c.status == "pending").order_by(_N.c.id).limit(limit)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def finish(engine: Engine, notification_id: int, error: str | None = None) -> None:
    """Done (its resources written; the carried payload is emptied) or failed with the reason."""
    values: dict[str, Any] = {"processed_at": datetime.now(UTC), "payload": None}
    values["status"] = "failed" if error else "done"
    values["error"] = one_line(error) if error else None
    with begin_write(engine) as conn:
        conn.execute(_N.update().where(_N.c.id == notification_id).values(values))


def counts(engine: Engine) -> list[dict[str, Any]]:
    """Notifications per endpoint and status (for `connector status`)."""
    query = (
        sa.select(_N.c.endpoint, _N.c.status, sa.func.count().label("n"))
        .group_by(_N.c.endpoint, _N.c.status)
        .order_by(_N.c.endpoint, _N.c.status)
    )
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


# -- subscription state ------------------------------------------------------------------------------------


def state(engine: Engine, endpoint: str, resource_type: str) -> dict[str, Any] | None:
    query = sa.select(_S).where(_S.c.endpoint == endpoint, _S.c.resource_type == resource_type)
    with engine.connect() as conn:
        row = conn.execute(query).mappings().first()
    return dict(row) if row else None


def states(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(sa.select(_S).order_by(_S.c.endpoint, _S.c.resource_type)).mappings()
        ]


def save_state(engine: Engine, endpoint: str, resource_type: str, values: Mapping[str, Any]) -> None:
    """Update the state of one subscription (only the columns in `values`); a new one is inserted when
    `values` says its style and criteria."""
    row = {**values, "updated_at": datetime.now(UTC)}
    key = (_S.c.endpoint == endpoint) & (_S.c.resource_type == resource_type)
    with begin_write(engine) as conn:
        if conn.execute(_S.update().where(key).values(row)).rowcount:
            return
        if "style" in values and "criteria" in values:
            conn.execute(_S.insert().values({"endpoint": endpoint, "resource_type": resource_type, **row}))


def state_by_server_id(engine: Engine, endpoint: str, server_id: str) -> dict[str, Any] | None:
    query = sa.select(_S).where(_S.c.endpoint == endpoint, _S.c.server_id == server_id)
    with engine.connect() as conn:
        row = conn.execute(query).mappings().first()
    return dict(row) if row else None


# -- notified referrals --------------------------------------------------------------------------------------


def notified(engine: Engine, endpoint: str, referral_ids: list[str], at: datetime) -> None:
    """Remember when referrals were first notified (a later notification of one keeps the first time)."""
    if not referral_ids:
        return
    rows = [
        {"endpoint": endpoint, "referral_id": rid, "notified_at": at} for rid in sorted(set(referral_ids))
    ]
    with begin_write(engine) as conn:
        conn.execute(
            insert_for(conn, _L).on_conflict_do_nothing(index_elements=["endpoint", "referral_id"]), rows
        )


def record_acknowledged(engine: Engine, endpoint: str) -> None:
    """Fill the Task's send time (and the seconds since notified) of notified referrals acknowledged since."""
    outbox: sa.Table = Outbox.__table__  # type: ignore[assignment]
    sent = sa.select(_L.c.referral_id, _L.c.notified_at, outbox.c.sent_at).join(
        outbox,
        sa.and_(
            outbox.c.endpoint == _L.c.endpoint,
            outbox.c.kind == "task-create",
            outbox.c.status == "sent",
            outbox.c.item_key == sa.literal("ServiceRequest/") + _L.c.referral_id,
        ),
    )
    with begin_write(engine) as conn:
        # One query for every waiting referral whose Task went out, then their rows.
        found = conn.execute(sent.where(_L.c.endpoint == endpoint, _L.c.task_sent_at.is_(None))).all()
        for referral_id, notified_at, sent_at in found:
            conn.execute(
                _L.update()
                .where(_L.c.endpoint == endpoint, _L.c.referral_id == referral_id)
                .values(task_sent_at=sent_at, seconds=max(0.0, (sent_at - notified_at).total_seconds()))
            )


def latency_figures(seconds: list[float]) -> tuple[float | None, float | None]:
    """(median, nearest-rank p95) of notified referrals' seconds to their Task; (None, None) without any."""
    if not seconds:
        return None, None
    ordered = sorted(seconds)
    return statistics.median(ordered), ordered[-(-95 * len(ordered) // 100) - 1]


def latencies(engine: Engine, endpoint: str | None = None) -> list[float]:
    query = sa.select(_L.c.seconds).where(_L.c.seconds.is_not(None))
    if endpoint is not None:
        query = query.where(_L.c.endpoint == endpoint)
    with engine.connect() as conn:
        return [float(v) for v in conn.scalars(query)]
