"""Push-back: the outbox and the acknowledgments sent to the EMR.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType

import sqlalchemy as sa
from alembic import op

from connector.warehouse.migrations.columns import json_type as _json
from connector.warehouse.migrations.columns import timestamp as _ts
from connector.warehouse.sqlviews import create_view

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _referral_views() -> ModuleType:
    # The referral views are defined once, in 0002; here they are redefined to count acknowledgments.
    return importlib.import_module("connector.warehouse.migrations.versions.0002_referral_facts")


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("endpoint", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("item_key", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("payload", _json(), nullable=True),
        sa.Column("server_id", sa.String(), nullable=True),
        sa.Column("server_version", sa.String(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.Column("sent_at", _ts(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.UniqueConstraint("endpoint", "kind", "item_key", name="uq_outbox_endpoint_kind_item_key"),
    )
    op.create_index("ix_outbox_status_endpoint", "outbox", ["status", "endpoint"])
    op.create_table(
        "acknowledgment",
        sa.Column("endpoint", sa.String(), nullable=False),
        sa.Column("referral_id", sa.String(), nullable=False),
        sa.Column("task_identifier", sa.String(), nullable=False),
        sa.Column("task_id", sa.String(), nullable=True),
        sa.Column("task_version", sa.String(), nullable=True),
        sa.Column("task_status", sa.String(), nullable=False),
        sa.Column("business_status", sa.String(), nullable=True),
        sa.Column("acknowledged_at", _ts(), nullable=False),
        sa.Column("response_hours", sa.Float(), nullable=True),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint", "referral_id", name="pk_acknowledgment"),
    )
    for name, sql in _referral_views().view_sql(acknowledgments=True).items():
        create_view(name, sql)


def downgrade() -> None:
    for name, sql in _referral_views().view_sql(acknowledgments=False).items():
        create_view(name, sql)
    op.drop_table("acknowledgment")
    op.drop_index("ix_outbox_status_endpoint", table_name="outbox")
    op.drop_table("outbox")
