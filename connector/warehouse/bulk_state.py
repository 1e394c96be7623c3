"""What the warehouse remembers about a Bulk $export, so a crashed or stopped run resumes it.

The status URL is stored in `sync_state` (on the row of every stream the export covers) the moment the
kick-off answers; each file is marked done once its rows are committed; a stream's bulk columns are cleared
in the transaction that sets its watermark to the manifest's transactionTime.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from connector.warehouse.engine import begin_write, insert_for
from connector.warehouse.models import RawResource, SyncState
from connector.warehouse.writer import PageWrite, write_page

_STATE: sa.Table = SyncState.__table__  # type: ignore[assignment]
_RAW: sa.Table = RawResource.__table__  # type: ignore[assignment]

#: Keys per UPDATE of `mark_deleted` (stays under every driver's bound-parameter limit).
_CHUNK = 300

_CLEARED = {
    "bulk_status_url": None,
    "bulk_started_at": None,
    "bulk_files_done": None,
    "bulk_transaction_time": None,
}


@dataclass(frozen=True, slots=True)
class PendingExport:
    """An export kicked off by an earlier run and not yet fully loaded."""

    status_url: str
    started_at: datetime
    #: The streams still waiting for it.
    resource_types: tuple[str, ...]
    transaction_time: str | None
    #: Per stream: file URLs already loaded.
    files_done: dict[str, frozenset[str]] = field(default_factory=dict)


def pending_export(engine: Engine, endpoint: str) -> PendingExport | None:
    """The endpoint's pending export, or None. With several (not written by this code), the oldest."""
    query = (
        sa.select(_STATE)
        .where(_STATE.c.endpoint == endpoint, _STATE.c.bulk_status_url.is_not(None))
        .order_by(_STATE.c.bulk_started_at, _STATE.c.resource_type)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    if not rows:
        return None
    url = rows[0].bulk_status_url
    mine = [row for row in rows if row.bulk_status_url == url]
    return PendingExport(
        status_url=url,
        started_at=rows[0].bulk_started_at or datetime.now(UTC),
        resource_types=tuple(row.resource_type for row in mine),
        transaction_time=next((r.bulk_transaction_time for r in mine if r.bulk_transaction_time), None),
        files_done={row.resource_type: frozenset(row.bulk_files_done or ()) for row in mine},
    )


def pending_exports(engine: Engine) -> dict[str, PendingExport]:
    """Per endpoint with one, its pending export (what `connector status` shows)."""
    query = sa.select(_STATE.c.endpoint).where(_STATE.c.bulk_status_url.is_not(None)).distinct()
    with engine.connect() as conn:
        names = sorted(conn.execute(query).scalars())
    found = {name: pending_export(engine, name) for name in names}
    return {name: export for name, export in found.items() if export is not None}


def save_kickoff(
    engine: Engine,
    endpoint: str,
    resource_types: Sequence[str],
    status_url: str,
    started_at: datetime,
) -> None:
    """Remember a just-accepted export on the row of every stream it covers (rows are created if new)."""
    now = datetime.now(UTC)
    with begin_write(engine) as conn:
        for resource_type in resource_types:
            stmt = insert_for(conn, _STATE).values(
                endpoint=endpoint,
                resource_type=resource_type,
                watermark=None,
                watermark_at=None,
                mode="bulk",
                updated_at=now,
                bulk_status_url=status_url,
                bulk_started_at=started_at,
                bulk_files_done=[],
                bulk_transaction_time=None,
            )
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["endpoint", "resource_type"],
                    set_={
                        "bulk_status_url": stmt.excluded.bulk_status_url,
                        "bulk_started_at": stmt.excluded.bulk_started_at,
                        "bulk_files_done": stmt.excluded.bulk_files_done,
                        "bulk_transaction_time": None,
                    },
                )
            )


def _export_rows(
    conn: Connection, endpoint: str, status_url: str, *, lock: bool = False
) -> list[sa.Row[Any]]:
    query = sa.select(_STATE).where(_STATE.c.endpoint == endpoint, _STATE.c.bulk_status_url == status_url)
    if lock:
        # Parallel file tasks update the same row: PostgreSQL must not lose one of two appends.
        query = query.with_for_update()
    return list(conn.execute(query.order_by(_STATE.c.resource_type)))


def save_transaction_time(engine: Engine, endpoint: str, status_url: str, transaction_time: str) -> bool:
    """Record the manifest's transactionTime; returns True when it differs from the one stored before.

    A different transactionTime means the server rebuilt the export: its files are new files, so the list
    of files done is emptied (re-loading is harmless, skipping would lose data).
    """
    with begin_write(engine) as conn:
        rows = _export_rows(conn, endpoint, status_url, lock=True)
        changed = any(
            row.bulk_transaction_time is not None and row.bulk_transaction_time != transaction_time
            for row in rows
        )
        values: dict[str, object] = {"bulk_transaction_time": transaction_time}
        if changed:
            values["bulk_files_done"] = []
        conn.execute(
            sa.update(_STATE)
            .where(_STATE.c.endpoint == endpoint, _STATE.c.bulk_status_url == status_url)
            .values(**values)
        )
    return changed


def mark_files_done(
    engine: Engine, endpoint: str, status_url: str, resource_types: Iterable[str], urls: Iterable[str]
) -> None:
    """Add `urls` to the files done of the export's rows for `resource_types` (after their rows committed)."""
    wanted = set(resource_types)
    new = list(urls)
    with begin_write(engine) as conn:
        for row in _export_rows(conn, endpoint, status_url, lock=True):
            if row.resource_type not in wanted:
                continue
            done = list(row.bulk_files_done or [])
            done.extend(url for url in new if url not in done)
            conn.execute(
                sa.update(_STATE)
                .where(_STATE.c.endpoint == endpoint, _STATE.c.resource_type == row.resource_type)
                .values(bulk_files_done=done)
            )


def finish_stream(
    engine: Engine,
    endpoint: str,
    resource_type: str,
    status_url: str,
    transaction_time: str,
    transaction_at: datetime,
) -> None:
    """In one transaction: the watermark becomes the transactionTime, and the stream's export is forgotten."""
    with begin_write(engine) as conn:
        write_page(
            engine,
            PageWrite(
                endpoint=endpoint,
                resource_type=resource_type,
                watermark=transaction_time,
                watermark_at=transaction_at,
                mode="bulk",
            ),
            conn=conn,
        )
        conn.execute(
            sa.update(_STATE)
            .where(
                _STATE.c.endpoint == endpoint,
                _STATE.c.resource_type == resource_type,
                _STATE.c.bulk_status_url == status_url,
            )
            .values(**_CLEARED)
        )


def forget_streams(engine: Engine, endpoint: str, status_url: str, resource_types: Sequence[str]) -> None:
    """Forget the export for these streams only (it cannot complete them); their watermarks stay, so the
    next run exports them again, while the other streams of the export go on."""
    with begin_write(engine) as conn:
        conn.execute(
            sa.update(_STATE)
            .where(
                _STATE.c.endpoint == endpoint,
                _STATE.c.bulk_status_url == status_url,
                _STATE.c.resource_type.in_(list(resource_types)),
            )
            .values(**_CLEARED)
        )


def clear_export(engine: Engine, endpoint: str, status_url: str) -> None:
    """Forget an export on every row (it failed, expired or was cancelled); watermarks are left alone."""
    with begin_write(engine) as conn:
        conn.execute(
            sa.update(_STATE)
            .where(_STATE.c.endpoint == endpoint, _STATE.c.bulk_status_url == status_url)
            .values(**_CLEARED)
        )


def remaining_streams(engine: Engine, endpoint: str, status_url: str) -> list[str]:
    """Streams still waiting for the export (an export is deleted on the server once none is)."""
    with engine.connect() as conn:
        return [row.resource_type for row in _export_rows(conn, endpoint, status_url)]


def mark_deleted(engine: Engine, endpoint: str, keys: Iterable[tuple[str, str]], at: datetime) -> int:
    """Mark (resource_type, resource_id) keys deleted at `at`: tombstone raw rows, mapped rows removed.

    A row whose version is newer than `at` is left alone (the resource was created again after the
    deletion). Returns how many resources were marked.
    """
    by_type: dict[str, list[tuple[str, str, datetime]]] = {}
    for rtype, rid in sorted(set(keys)):
        by_type.setdefault(rtype, []).append((rtype, rid, at))
    marked = 0
    for rtype, deletions in by_type.items():
        marked += write_page(engine, PageWrite(endpoint, rtype, deletions=deletions)).loaded
    return marked
