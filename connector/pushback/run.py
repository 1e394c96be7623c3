"""One push-back round for an endpoint: queue this period's metrics, then deliver the outbox."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
from sqlalchemy.engine import Engine

from connector.config import EndpointSettings, Settings
from connector.pushback.deliver import PushSummary, push_endpoint
from connector.pushback.metrics import recent_periods
from connector.pushback.resources import COMPOSITE, METRICS
from connector.warehouse import outbox


def queue_metrics(engine: Engine, endpoint: EndpointSettings, now: datetime | None = None) -> None:
    if not endpoint.push_metrics:
        return
    moment = now or datetime.now(UTC)
    codes = [COMPOSITE, *(m.code for m in METRICS)]
    outbox.enqueue_metrics(engine, endpoint.name, recent_periods(moment, endpoint.metrics_period), codes)


async def push_round(
    settings: Settings,
    endpoint: EndpointSettings,
    engine: Engine,
    *,
    dry_run: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
    now: datetime | None = None,
) -> PushSummary:
    queue_metrics(engine, endpoint, now)
    return await push_endpoint(settings, endpoint, engine, dry_run=dry_run, transport=transport, now=now)
