"""Per-patient crawls (EMRs that search a type only with `patient`): the patients each stream has searched.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from connector.warehouse.migrations.columns import timestamp as _ts

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "patient_crawl",
        sa.Column("endpoint", sa.String(), nullable=False),
        sa.Column("resource_type", sa.String(), nullable=False),
        sa.Column("patient_id", sa.String(), nullable=False),
        sa.Column("crawled_at", _ts(), nullable=False),
        sa.Column("pending_run", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("endpoint", "resource_type", "patient_id", name="pk_patient_crawl"),
    )


def downgrade() -> None:
    op.drop_table("patient_crawl")
