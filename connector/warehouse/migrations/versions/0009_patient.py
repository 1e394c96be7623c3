"""Patient demographics (no names, addresses or full birth dates).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from connector.warehouse.migrations.columns import resource_key_columns
from connector.warehouse.migrations.columns import timestamp as _ts

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "patient",
        *resource_key_columns(),
        sa.Column("active", sa.Boolean(), nullable=True),
        sa.Column("gender", sa.String(), nullable=True),
        sa.Column("birth_year", sa.Integer(), nullable=True),
        sa.Column("age_90_or_over", sa.Boolean(), nullable=True),
        sa.Column("deceased", sa.Boolean(), nullable=True),
        sa.Column("language", sa.String(), nullable=True),
        sa.Column("managing_organization_ref", sa.String(), nullable=True),
        sa.Column("loaded_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint", "resource_type", "resource_id", name="pk_patient"),
    )


def downgrade() -> None:
    op.drop_table("patient")
