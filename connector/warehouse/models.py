"""Typed SQLAlchemy 2 models of the warehouse.

Every resource row carries its natural key `(endpoint, resource_type, resource_id)`, the server's
`last_updated` and the `content_hash` of the resource, which is what the upsert compares to keep the newer
version (see `writer.upsert_rows`). Timestamps are stored and returned in UTC.

The schema is created by Alembic (`migrations/versions/`), never by `create_all`; a test checks that the
migrations and these models agree.
"""

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


class RawResource(Base):
    """The latest JSON of every resource fetched, so mappings can be re-run without refetching."""

    __tablename__ = "raw_resource"
    __table_args__ = (sa.Index(None, "last_updated"),)

    endpoint: Mapped[str] = mapped_column(primary_key=True)
    resource_type: Mapped[str] = mapped_column(primary_key=True)
    resource_id: Mapped[str] = mapped_column(primary_key=True)
    version_id: Mapped[str | None]
    last_updated: Mapped[datetime | None]
    #: sha256 hex of the canonical JSON (`writer.content_hash`).
    content_hash: Mapped[str]
    payload: Mapped[dict[str, Any]]
    deleted: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    fetched_at: Mapped[datetime]


class SyncState(Base):
    """The incremental watermark per endpoint and resource type."""

    __tablename__ = "sync_state"

    endpoint: Mapped[str] = mapped_column(primary_key=True)
    resource_type: Mapped[str] = mapped_column(primary_key=True)
    #: The server's lastUpdated (or transactionTime) text exactly as given, reused verbatim in searches.
    watermark: Mapped[str | None]
    #: The same instant parsed, used to compare watermarks.
    watermark_at: Mapped[datetime | None]
    #: last-updated | date-param | full | ndjson
    mode: Mapped[str | None]
    updated_at: Mapped[datetime]


class SyncRun(Base):
    """One row per run and stream."""

    __tablename__ = "sync_run"
    __table_args__ = (
        sa.Index(None, "run_id"),
        sa.Index(None, "endpoint", "resource_type", "started_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    #: A uuid shared by all streams of one run.
    run_id: Mapped[str]
    endpoint: Mapped[str]
    resource_type: Mapped[str]
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    #: running | succeeded | failed
    status: Mapped[str]
    fetched: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    loaded: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    rejected: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    error: Mapped[str | None] = mapped_column(sa.Text())


class DeadLetter(Base):
    """A resource that failed validation or mapping; the same payload seen again bumps `attempts`."""

    __tablename__ = "dead_letter"
    __table_args__ = (
        sa.UniqueConstraint("endpoint", "resource_type", "payload_hash"),
        sa.Index(None, "resolved_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    endpoint: Mapped[str]
    resource_type: Mapped[str]
    resource_id: Mapped[str | None]
    payload_hash: Mapped[str]
    error: Mapped[str] = mapped_column(sa.Text())
    payload: Mapped[dict[str, Any]]
    attempts: Mapped[int] = mapped_column(default=1, server_default=sa.text("1"))
    first_seen_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    #: Set when a replay succeeded; NULL while the dead letter is open.
    resolved_at: Mapped[datetime | None]


class Referral(Base):
    """One row per ServiceRequest: a referral to the practice."""

    __tablename__ = "referral"
    __table_args__ = (
        sa.Index(None, "authored_on"),
        sa.Index(None, "requester_ref"),
    )

    endpoint: Mapped[str] = mapped_column(primary_key=True)
    resource_type: Mapped[str] = mapped_column(primary_key=True)
    resource_id: Mapped[str] = mapped_column(primary_key=True)
    version_id: Mapped[str | None]
    last_updated: Mapped[datetime | None]
    content_hash: Mapped[str]
    status: Mapped[str | None]
    intent: Mapped[str | None]
    priority: Mapped[str | None]
    category_code: Mapped[str | None]
    authored_on: Mapped[datetime | None]
    requested_start: Mapped[datetime | None]
    patient_ref: Mapped[str | None]
    requester_ref: Mapped[str | None]
    requester_display: Mapped[str | None]
    service_system: Mapped[str | None]
    service_code: Mapped[str | None]
    service_display: Mapped[str | None]
    #: "system|code" strings of reasonCode.
    reason_codes: Mapped[list[str]]
    #: The first insurance reference; all of them are in `coverage_refs`.
    coverage_ref: Mapped[str | None]
    coverage_refs: Mapped[list[str]]
    loaded_at: Mapped[datetime]
