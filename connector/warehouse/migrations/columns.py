"""Column building blocks the migration scripts share.

Frozen on purpose: a revision must keep creating the same schema, so change these only by adding new
functions, never by editing what existing revisions use.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


def json_type() -> sa.types.TypeEngine[Any]:
    """JSON everywhere, JSONB on PostgreSQL."""
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def resource_key_columns() -> list[sa.Column[object]]:
    """The natural key and version columns every row mapped from a resource starts with."""
    return [
        sa.Column("endpoint", sa.String(), nullable=False),
        sa.Column("resource_type", sa.String(), nullable=False),
        sa.Column("resource_id", sa.String(), nullable=False),
        sa.Column("version_id", sa.String(), nullable=True),
        sa.Column("last_updated", timestamp(), nullable=True),
        sa.Column("content_hash", sa.String(), nullable=False),
    ]
