"""Push-based intake (`connector listen`): the durable queue of received notifications, the state of each
Subscription on the server, and how fast a notified referral was acknowledged."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from connector.warehouse.models.base import Base, JSONType

__all__ = ["IntakeLatency", "Notification", "SubscriptionState"]


class Notification(Base):
    """One request the listener received, committed before it answers; processed afterwards."""

    __tablename__ = "notification"
    __table_args__ = (sa.Index(None, "status", "endpoint"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    endpoint: Mapped[str]
    received_at: Mapped[datetime]
    #: event-notification | handshake | heartbeat | query-status | resource (criteria style, a resource) |
    #: empty (criteria style, no body) | refused
    kind: Mapped[str]
    #: The subscribed type (criteria style: from the path or the body).
    resource_type: Mapped[str | None]
    subscription_ref: Mapped[str | None]
    event_number: Mapped[int | None]
    events_since_start: Mapped[int | None]
    #: `Type/id` of the notified resources.
    focus_refs: Mapped[list[str]]
    #: The resources a full-resource notification carried, until processed (then emptied).
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    #: pending | done | failed | refused
    status: Mapped[str]
    #: Why it was refused or failed (never the content).
    error: Mapped[str | None] = mapped_column(sa.Text())
    processed_at: Mapped[datetime | None]


class SubscriptionState(Base):
    """The Subscription the connector keeps on a server for one endpoint and type."""

    __tablename__ = "subscription_state"

    endpoint: Mapped[str] = mapped_column(primary_key=True)
    resource_type: Mapped[str] = mapped_column(primary_key=True)
    server_id: Mapped[str | None]
    #: topic (R4 Subscriptions Backport) | criteria (R4)
    style: Mapped[str]
    #: The topic canonical or the criteria.
    criteria: Mapped[str]
    #: The server's status: requested | active | error | off
    status: Mapped[str | None]
    error: Mapped[str | None] = mapped_column(sa.Text())
    last_event_number: Mapped[int | None]
    #: The server's `events-since-subscription-start` at the last `$status` or notification.
    events_since_start: Mapped[int | None]
    last_notified_at: Mapped[datetime | None]
    last_heartbeat_at: Mapped[datetime | None]
    #: When the listener last caught up by an incremental search, and why.
    caught_up_at: Mapped[datetime | None]
    catch_up_reason: Mapped[str | None]
    healthy: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    updated_at: Mapped[datetime]


class IntakeLatency(Base):
    """A referral that came by notification: when it was notified and when its Task was sent."""

    __tablename__ = "intake_latency"

    endpoint: Mapped[str] = mapped_column(primary_key=True)
    referral_id: Mapped[str] = mapped_column(primary_key=True)
    notified_at: Mapped[datetime]
    task_sent_at: Mapped[datetime | None]
    seconds: Mapped[float | None] = mapped_column(sa.Float())
