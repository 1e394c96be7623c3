"""Watermarks, the run log and the counts `connector status` shows."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.errors import WarehouseError
from connector.warehouse.engine import begin_write, db_error_message, is_transient_db_error
from connector.warehouse.models import DeadLetter, RawResource, SyncRun, SyncState
from connector.warehouse.upsert import of_resources

_STATE: sa.Table = SyncState.__table__  # type: ignore[assignment]
_RUN: sa.Table = SyncRun.__table__  # type: ignore[assignment]
_DEAD: sa.Table = DeadLetter.__table__  # type: ignore[assignment]
_RAW: sa.Table = RawResource.__table__  # type: ignore[assignment]

#: sync_run.error keeps one line of at most this many characters.
MAX_ERROR_CHARS = 500


def get_watermark(engine: Engine, endpoint: str, resource_type: str) -> tuple[str | None, datetime | None]:
    """(the server's lastUpdated text, the same instant parsed), or (None, None) before the first sync."""
    query = sa.select(_STATE.c.watermark, _STATE.c.watermark_at).where(
        _STATE.c.endpoint == endpoint, _STATE.c.resource_type == resource_type
    )
    with engine.connect() as conn:
        row = conn.execute(query).first()
    if row is None:
        return None, None
    return row.watermark, row.watermark_at


def stored_hashes(engine: Engine, endpoint: str, resource_type: str, ids: list[str]) -> dict[str, str]:
    """Resource id -> content hash of the stored (not deleted) raw rows among `ids`."""
    raw = _RAW
    query = sa.select(raw.c.resource_id, raw.c.content_hash).where(
        of_resources(engine.dialect, raw, endpoint, resource_type, ids), sa.not_(raw.c.deleted)
    )
    try:
        with engine.connect() as conn:
            return {row.resource_id: row.content_hash for row in conn.execute(query)}
    except sa.exc.SQLAlchemyError as exc:
        raise WarehouseError(
            f"reading stored {resource_type} versions failed: {db_error_message(exc)}",
            transient=is_transient_db_error(exc),
        ) from None


def reset_watermark(engine: Engine, endpoint: str, resource_type: str) -> None:
    """Forget the watermark (for --full-refresh): the next sync starts from the beginning.

    The row stays, with its mode, so `connector status` still lists the stream.
    """
    with begin_write(engine) as conn:
        conn.execute(
            sa.update(_STATE)
            .where(_STATE.c.endpoint == endpoint, _STATE.c.resource_type == resource_type)
            .values(watermark=None, watermark_at=None, updated_at=datetime.now(UTC))
        )


@contextmanager
def _run_log(what: str) -> Iterator[None]:
    """Database trouble while logging a run becomes a one-line WarehouseError (transient when it is)."""
    try:
        yield
    except sa.exc.SQLAlchemyError as exc:
        raise WarehouseError(
            f"{what} failed: {db_error_message(exc)}", transient=is_transient_db_error(exc)
        ) from None


def start_run(engine: Engine, run_id: str, endpoint: str, resource_type: str) -> int:
    """Log the start of one stream of a run; returns the sync_run id to pass to `finish_run`."""
    with _run_log("recording the start of a run"), begin_write(engine) as conn:
        result = conn.execute(
            sa.insert(_RUN)
            .values(
                run_id=run_id,
                endpoint=endpoint,
                resource_type=resource_type,
                started_at=datetime.now(UTC),
                status="running",
                fetched=0,
                loaded=0,
                rejected=0,
            )
            .returning(_RUN.c.id)
        )
        return int(result.scalar_one())


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """The first non-empty line of `text`, cut to `limit` characters."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


class RunCounts(Protocol):
    """What `finish_run` records of a stream (a `StreamResult`)."""

    status: str
    fetched: int
    loaded: int
    rejected: int
    unchanged: int
    included: int
    error: str | None


def finish_run(engine: Engine, run_pk: int, counts: RunCounts) -> None:
    """Record how a stream of a run ended; its error is stored as one line of at most 500 characters."""
    with _run_log("recording the end of a run"), begin_write(engine) as conn:
        conn.execute(
            sa.update(_RUN)
            .where(_RUN.c.id == run_pk)
            .values(
                finished_at=datetime.now(UTC),
                status=counts.status,
                fetched=counts.fetched,
                loaded=counts.loaded,
                rejected=counts.rejected,
                unchanged=counts.unchanged,
                included=counts.included,
                error=one_line(counts.error) if counts.error is not None else None,
            )
        )


def recent_runs(engine: Engine, limit: int = 20) -> list[dict[str, Any]]:
    """The latest sync_run rows, newest first."""
    query = sa.select(_RUN).order_by(_RUN.c.started_at.desc(), _RUN.c.id.desc()).limit(limit)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def replace_failed_runs(engine: Engine, run_id: str, endpoint: str, resource_type: str, note: str) -> None:
    """Mark a stream's failed rows of a run `replaced`: another way loaded the stream in the same run."""
    with _run_log("recording a replaced run"), begin_write(engine) as conn:
        conn.execute(
            sa.update(_RUN)
            .where(
                _RUN.c.run_id == run_id,
                _RUN.c.endpoint == endpoint,
                _RUN.c.resource_type == resource_type,
                _RUN.c.status == "failed",
            )
            .values(status="replaced", error=one_line(note))
        )


def runs_for(engine: Engine, run_id: str) -> list[dict[str, Any]]:
    """The sync_run rows of one run (one per stream), in the order the streams started."""
    query = sa.select(_RUN).where(_RUN.c.run_id == run_id).order_by(_RUN.c.id)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def receipts_disagreeing(engine: Engine) -> list[dict[str, Any]]:
    """Streams whose latest receipt disagrees: the source's count is not what the warehouse holds.

    One row per endpoint and stream (its newest run with a receipt): endpoint, resource_type,
    started_at, source_count, warehouse_count.
    """
    latest = (
        sa.select(sa.func.max(_RUN.c.id).label("id"))
        .where(_RUN.c.source_count.is_not(None))
        .group_by(_RUN.c.endpoint, _RUN.c.resource_type)
        .subquery()
    )
    query = (
        sa.select(
            _RUN.c.endpoint,
            _RUN.c.resource_type,
            _RUN.c.started_at,
            _RUN.c.source_count,
            _RUN.c.warehouse_count,
        )
        .join(latest, latest.c.id == _RUN.c.id)
        .where(_RUN.c.source_count != _RUN.c.warehouse_count)
        .order_by(_RUN.c.endpoint, _RUN.c.resource_type)
    )
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def watermarks(engine: Engine) -> list[dict[str, Any]]:
    """Every sync_state row: endpoint, resource_type, watermark, watermark_at, mode, updated_at."""
    query = sa.select(_STATE).order_by(_STATE.c.endpoint, _STATE.c.resource_type)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def dead_letter_counts(engine: Engine) -> list[dict[str, Any]]:
    """Per endpoint and resource type: `open` (unresolved) and `total` dead letters."""
    open_count = sa.func.sum(sa.case((_DEAD.c.resolved_at.is_(None), 1), else_=0))
    query = (
        sa.select(
            _DEAD.c.endpoint,
            _DEAD.c.resource_type,
            sa.cast(open_count, sa.Integer).label("open"),
            sa.func.count().label("total"),
        )
        .group_by(_DEAD.c.endpoint, _DEAD.c.resource_type)
        .order_by(_DEAD.c.endpoint, _DEAD.c.resource_type)
    )
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]
