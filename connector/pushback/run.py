"""One push-back round for an endpoint: queue this period's metrics, then deliver the outbox."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.config import EndpointSettings, Settings
from connector.pushback import lifecycle
from connector.pushback.deliver import PushSummary, push_endpoint
from connector.pushback.intents import intents
from connector.pushback.metrics import recent_periods
from connector.pushback.resources import COMPOSITE, METRICS
from connector.warehouse import outbox
from connector.warehouse.engine import begin_write
from connector.warehouse.models import Base


def _rows(conn: sa.Connection, table: Any, columns: list[str], endpoint: str) -> list[dict[str, Any]]:
    query = sa.select(*(table.c[c] for c in columns)).where(table.c.endpoint == endpoint)
    return [dict(r) for r in conn.execute(query).mappings()]


#: What the referral's life (`pushback.lifecycle`) reads of each table.
_LIFE_COLUMNS = {
    "referral": ["resource_id", "status", "authored_on", "discipline", "intake_complete"],
    "visit": ["referral_ref", "kind", "status"],
    "episode": ["referral_ref", "status"],
    "care_plan": ["referral_ref", "status"],
    "clinical_note": ["referral_ref", "status", "note_kind", "resource_id"],
}


def queue_acknowledgments(engine: Engine, endpoint: EndpointSettings, now: datetime | None = None) -> int:
    """Queue the acknowledgments the warehouse's referrals and visits call for but the outbox lacks;
    returns how many were queued.

    Pages queue them as they are written, but only for what changed: with `push_acknowledgments` turned
    on for an endpoint synced before, the referrals already stored would never be acknowledged. The
    same rules apply (`pushback.intents`: active referrals authored on or after `acknowledge_since`), and
    here, with the whole warehouse at hand, every milestone of a referral's life beyond its Task's state.
    """
    if not endpoint.push_acknowledgments:
        return 0
    tables = Base.metadata.tables
    with begin_write(engine) as conn:
        mapped = {
            table: _rows(conn, tables[table], columns, endpoint.name)
            for table, columns in _LIFE_COLUMNS.items()
        }
        acks = _rows(
            conn, tables["acknowledgment"], ["referral_id", "task_status", "business_status"], endpoint.name
        )
        ranks = {
            f"ServiceRequest/{a['referral_id']}": lifecycle.task_rank(a["task_status"], a["business_status"])
            for a in acks
        }
        wanted = intents(endpoint, mapped, ranks)
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
    show_phi: bool = False,
) -> PushSummary:
    queue_round(engine, endpoint, now)
    return await push_endpoint(
        settings, endpoint, engine, dry_run=dry_run, transport=transport, now=now, show_phi=show_phi
    )
