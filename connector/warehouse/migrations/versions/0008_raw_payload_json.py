"""The raw payload as `json` on PostgreSQL (see `models.base.RawJSONType`): it was `jsonb`.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite has one JSON type: nothing changes there.
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("raw_resource", "payload", type_=postgresql.JSON(), postgresql_using="payload::json")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column(
            "raw_resource", "payload", type_=postgresql.JSONB(), postgresql_using="payload::jsonb"
        )
