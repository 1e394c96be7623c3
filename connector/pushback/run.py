"""One push-back round for an endpoint: queue this period's metrics, then deliver the outbox."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.config import EndpointSettings, Settings
from connector.pushback.deliver import PushSummary, push_endpoint
from connector.pushback.intents import intents
from connector.pushback.metrics import recent_periods
from connector.pushback.resources import COMPOSITE, METRICS
from connector.warehouse import outbox
from connector.warehouse.engine import begin_write
from connector.warehouse.models.referrals import Referral, Visit


def _rows(conn: sa.Connection, table: Any, columns: list[str], endpoint: str) -> list[dict[str, Any]]:
    query = sa.select(*(table.c[c] for c in columns)).where(table.c.endpoint == endpoint)
    return [dict(r) for r in conn.execute(query).mappings()]


def queue_acknowledgments(engine: Engine, endpoint: EndpointSettings, now: datetime | None = None) -> int:
    """Queue the acknowledgments the warehouse's referrals and visits call for but the outbox lacks;
    returns how many were queued.

    Pages queue them as they are written, but only for what changed: with `push_acknowledgments` turned
    on for an endpoint synced before, the referrals already stored would never be acknowledged. The
    same rules apply (`pushback.intents`: active referrals authored on or after `acknowledge_since`).
    """
    if not endpoint.push_acknowledgments:
        return 0
    referral: Any = Referral.__table__
    visit: Any = Visit.__table__
    with begin_write(engine) as conn:
        mapped = {
            "referral": _rows(conn, referral, ["resource_id", "status", "authored_on"], endpoint.name),
            "visit": _rows(conn, visit, ["referral_ref", "kind", "status"], endpoint.name),
        }
        wanted = intents(endpoint, mapped)
        if not wanted:
            return 0
        have = outbox.keys(conn, endpoint.name)
        missing = [row for row in wanted if (row["kind"], row["item_key"]) not in have]
        outbox.enqueue(conn, missing, now or datetime.now(UTC))
    return len({(row["kind"], row["item_key"]) for row in missing})


def queue_metrics(engine: Engine, endpoint: EndpointSettings, now: datetime | None = None) -> None:
    if not endpoint.push_metrics:
        return
    moment = now or datetime.now(UTC)
    codes = [COMPOSITE, *(m.code for m in METRICS)]
    outbox.enqueue_metrics(engine, endpoint.name, recent_periods(moment, endpoint.metrics_period), codes)


def queue_round(engine: Engine, endpoint: EndpointSettings, now: datetime | None = None) -> int:
    """What a push round queues before delivering: missing acknowledgments, this period's metrics."""
    queued = queue_acknowledgments(engine, endpoint, now)
    queue_metrics(engine, endpoint, now)
    return queued


async def push_round(
    settings: Settings,
    endpoint: EndpointSettings,
    engine: Engine,
    *,
    dry_run: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
    now: datetime | None = None,
) -> PushSummary:
    queue_round(engine, endpoint, now)
    return await push_endpoint(settings, endpoint, engine, dry_run=dry_run, transport=transport, now=now)
