"""Bulk $export: a pending export's status URL and progress, per stream in sync_state.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from connector.warehouse.migrations.columns import json_type as _json

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch_alter_table: SQLite cannot drop columns in place (downgrade), and adds them the same way.
    with op.batch_alter_table("sync_state") as batch:
        batch.add_column(sa.Column("bulk_status_url", sa.String(), nullable=True))
        batch.add_column(sa.Column("bulk_started_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("bulk_files_done", _json(), nullable=True))
        batch.add_column(sa.Column("bulk_transaction_time", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sync_state") as batch:
        batch.drop_column("bulk_transaction_time")
        batch.drop_column("bulk_files_done")
        batch.drop_column("bulk_started_at")
        batch.drop_column("bulk_status_url")
