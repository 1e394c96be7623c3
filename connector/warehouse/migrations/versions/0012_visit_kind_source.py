"""Which rule made a visit an evaluation: the shipped code map, or the endpoint's own codes and words.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("visit") as batch:
        batch.add_column(sa.Column("kind_source", sa.String(), nullable=True))
    # Rows mapped before: a kind other than `other` came from the shipped code map.
    op.execute("UPDATE visit SET kind_source = 'code' WHERE kind <> 'other'")


def downgrade() -> None:
    with op.batch_alter_table("visit") as batch:
        batch.drop_column("kind_source")
