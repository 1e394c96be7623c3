"""The declarative base every warehouse model shares, and its column types."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint and index names, so migrations can refer to them on every dialect.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: JSON everywhere, JSONB on PostgreSQL so BI tools can index and query into it.
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

#: The raw payload of every resource (`raw_resource.payload`): `json` on PostgreSQL, the text as written.
#: It is an archive that mappings are re-run from, not something views query; building jsonb cost about
#: twice the CPU of checking the text (15 µs more per resource of a first load) and a third more space.
#: `payload::jsonb` queries into it where needed.
RawJSONType = sa.JSON().with_variant(postgresql.JSON(), "postgresql")


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned as an aware UTC datetime.

    Naive datetimes are refused: a timestamp without an offset is ambiguous and would silently shift.
    SQLite has no time zone type, so the value is stored there as naive UTC text and marked UTC on the way
    out; PostgreSQL uses `timestamptz` and the value is converted back to UTC whatever the session zone.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"UTCDateTime expects a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("UTCDateTime refuses a naive datetime; pass an aware one (e.g. tzinfo=UTC)")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            # One fixed text format (no offset) keeps SQLite's string comparison chronological.
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UTCDateTime(),
        str: sa.String(),
        dict[str, Any]: JSONType,
        list[str]: JSONType,
    }


class ResourceRow:
    """The columns of every row mapped from a resource: its natural key, the version it came from and
    when the connector wrote it. `sort_order` keeps the key first and `loaded_at` last in each table."""

    endpoint: Mapped[str] = mapped_column(primary_key=True, sort_order=-10)
    resource_type: Mapped[str] = mapped_column(primary_key=True, sort_order=-10)
    resource_id: Mapped[str] = mapped_column(primary_key=True, sort_order=-10)
    version_id: Mapped[str | None] = mapped_column(sort_order=-10)
    last_updated: Mapped[datetime | None] = mapped_column(sort_order=-10)
    #: sha256 of the resource the row came from (the upsert's tie-breaker).
    content_hash: Mapped[str] = mapped_column(sort_order=-10)
    loaded_at: Mapped[datetime] = mapped_column(sort_order=10)
