"""The poll as the safety net of push-based intake: a scheduled sync polls a subscribed stream at most every
`healthy_poll_minutes` while its subscription is healthy, and on every scheduled run when it is not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.config import EndpointSettings, ListenSettings
from connector.subscriptions import manage, queue
from connector.warehouse.models.core import SyncRun


def _last_poll(engine: Engine, endpoint: str, resource_type: str) -> datetime | None:
    runs: sa.Table = SyncRun.__table__  # type: ignore[assignment]
    query = sa.select(sa.func.max(runs.c.started_at)).where(
        runs.c.endpoint == endpoint, runs.c.resource_type == resource_type, runs.c.status == "succeeded"
    )
    with engine.connect() as conn:
        value = conn.execute(query).scalar_one_or_none()
    return value if isinstance(value, datetime) else None


def resting_streams(
    engine: Engine, endpoint: EndpointSettings, listen: ListenSettings, now: datetime | None = None
) -> dict[str, str]:
    """Subscribed streams a scheduled run leaves to the listener this time, with why."""
    if not endpoint.subscriptions or not sa.inspect(engine).has_table("subscription_state"):
        return {}
    moment = now or datetime.now(UTC)
    every = timedelta(minutes=listen.healthy_poll_minutes)
    out: dict[str, str] = {}
    for rtype in endpoint.subscription_resources:
        row = queue.state(engine, endpoint.name, rtype)
        if row is None or manage.unhealthy_reason(row, endpoint.heartbeat_seconds, moment) is not None:
            continue  # not subscribed yet, or unhealthy: poll as scheduled
        last = _last_poll(engine, endpoint.name, rtype)
        if last is not None and moment - last < every:
            out[rtype] = f"the subscription is healthy; polled every {listen.healthy_poll_minutes} min"
    return out
