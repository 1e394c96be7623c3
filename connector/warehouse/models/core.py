"""Bookkeeping and raw storage: raw resources, watermarks, run log, dead letters."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from connector.warehouse.models.base import Base, RawJSONType


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
    payload: Mapped[dict[str, Any]] = mapped_column(RawJSONType)
    deleted: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    #: When the server deleted the resource (or marked it entered-in-error); NULL while it exists.
    deleted_at: Mapped[datetime | None]
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
    #: last-updated | date-param | full | ndjson | bulk
    mode: Mapped[str | None]
    updated_at: Mapped[datetime]
    #: The status URL of a Bulk $export this stream waits for; set at kick-off, cleared once loaded.
    bulk_status_url: Mapped[str | None]
    #: When that export was kicked off (its deadline counts from here).
    bulk_started_at: Mapped[datetime | None]
    #: URLs of the export's files already loaded (skipped when a run resumes).
    bulk_files_done: Mapped[list[str] | None]
    #: The export manifest's transactionTime, as the server wrote it.
    bulk_transaction_time: Mapped[str | None]


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
    #: Fetched but stored exactly so already (incremental runs): fetched = loaded + rejected + unchanged.
    unchanged: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    #: Resources of other types that came with the stream (`_include`, a line of another synced type in
    #: the type's NDJSON file), loaded as their own type; not in `fetched`.
    included: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    #: The receipt: what the source says it holds of the type (`_summary=count`, the NDJSON files' lines),
    #: and the warehouse's resources of it after the run (with its open dead letters). NULL: not counted.
    source_count: Mapped[int | None]
    warehouse_count: Mapped[int | None]


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
