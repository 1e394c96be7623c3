"""What the connector writes back to the EMR: the outbox of pending pushes and the acknowledgments sent."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from connector.warehouse.models.base import Base


class Outbox(Base):
    """One thing to push (a Task, a Task update, a Measure, a MeasureReport), written in the same
    transaction as the rows that caused it; delivery is at-least-once, the server effect exactly-once."""

    __tablename__ = "outbox"
    __table_args__ = (
        sa.UniqueConstraint("endpoint", "kind", "item_key"),
        sa.Index(None, "status", "endpoint"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    endpoint: Mapped[str]
    #: task-create | task-update | measure | measure-report
    kind: Mapped[str]
    #: What the item is about: 'ServiceRequest/<id>', '<ServiceRequest ref>#evaluation-scheduled',
    #: a metric code, or a period start date.
    item_key: Mapped[str]
    #: pending | sent | failed | skipped (never deliverable: an update for an unacknowledged referral)
    status: Mapped[str]
    attempts: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    last_error: Mapped[str | None] = mapped_column(sa.Text())
    #: The resource as last sent (built at push time from the warehouse).
    payload: Mapped[dict[str, Any] | None]
    server_id: Mapped[str | None]
    server_version: Mapped[str | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]


class Acknowledgment(Base):
    """The Task that acknowledged a referral on the EMR, and when."""

    __tablename__ = "acknowledgment"

    endpoint: Mapped[str] = mapped_column(primary_key=True)
    #: The ServiceRequest id (same as referral.resource_id).
    referral_id: Mapped[str] = mapped_column(primary_key=True)
    task_identifier: Mapped[str]
    task_id: Mapped[str | None]
    task_version: Mapped[str | None]
    #: received | accepted | in-progress | completed | rejected | cancelled (as last sent)
    task_status: Mapped[str]
    business_status: Mapped[str | None]
    acknowledged_at: Mapped[datetime]
    #: Hours from referral.authored_on to the acknowledgment (NULL when the referral has no date).
    response_hours: Mapped[float | None] = mapped_column(sa.Float())
    updated_at: Mapped[datetime]
