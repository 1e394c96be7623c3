"""Every input of a run accounted for, and its receipt: per stream the resources skipped as unchanged,
those loaded as another type (`_include`, a line of another type in a type's NDJSON file), and what the
source says it holds against what the warehouse holds after the run.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sync_run") as batch:
        batch.add_column(sa.Column("unchanged", sa.Integer(), nullable=False, server_default=sa.text("0")))
        batch.add_column(sa.Column("included", sa.Integer(), nullable=False, server_default=sa.text("0")))
        batch.add_column(sa.Column("source_count", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("warehouse_count", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sync_run") as batch:
        for column in ("warehouse_count", "source_count", "included", "unchanged"):
            batch.drop_column(column)
