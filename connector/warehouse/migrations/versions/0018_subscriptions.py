"""Push-based intake: `notification` (the listener's durable queue), `subscription_state`, `intake_latency`.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from connector.warehouse.migrations.columns import json_type
from connector.warehouse.migrations.columns import timestamp as _ts

revision: str = "0018"
down_revision: str | Sequence[str] | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "notification",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("endpoint", sa.String(), nullable=False),
        sa.Column("received_at", _ts(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("resource_type", sa.String(), nullable=True),
        sa.Column("subscription_ref", sa.String(), nullable=True),
        sa.Column("event_number", sa.Integer(), nullable=True),
        sa.Column("events_since_start", sa.Integer(), nullable=True),
        sa.Column("focus_refs", json_type(), nullable=False),
        sa.Column("payload", json_type(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("processed_at", _ts(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_notification"),
    )
    op.create_index("ix_notification_status_endpoint", "notification", ["status", "endpoint"])
    op.create_table(
        "subscription_state",
        sa.Column("endpoint", sa.String(), nullable=False),
        sa.Column("resource_type", sa.String(), nullable=False),
        sa.Column("server_id", sa.String(), nullable=True),
        sa.Column("style", sa.String(), nullable=False),
        sa.Column("criteria", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("last_event_number", sa.Integer(), nullable=True),
        sa.Column("events_since_start", sa.Integer(), nullable=True),
        sa.Column("last_notified_at", _ts(), nullable=True),
        sa.Column("last_heartbeat_at", _ts(), nullable=True),
        sa.Column("caught_up_at", _ts(), nullable=True),
        sa.Column("catch_up_reason", sa.String(), nullable=True),
        sa.Column("healthy", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint", "resource_type", name="pk_subscription_state"),
    )
    op.create_table(
        "intake_latency",
        sa.Column("endpoint", sa.String(), nullable=False),
        sa.Column("referral_id", sa.String(), nullable=False),
        sa.Column("notified_at", _ts(), nullable=False),
        sa.Column("task_sent_at", _ts(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("endpoint", "referral_id", name="pk_intake_latency"),
    )


def downgrade() -> None:
    op.drop_table("intake_latency")
    op.drop_table("subscription_state")
    op.drop_index("ix_notification_status_endpoint", table_name="notification")
    op.drop_table("notification")
