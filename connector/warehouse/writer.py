"""Batched, idempotent upserts and the one-transaction write of a page.

An incoming row replaces the stored one only when it is newer (see `upsert_rows`), so re-running a sync, an
overlapping incremental window or an out-of-order Bulk file never loses the newest version of a resource.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from connector.errors import WarehouseError
from connector.warehouse import outbox
from connector.warehouse.deadletter import record_rejects
from connector.warehouse.engine import begin_write, db_error_message, insert_for, is_transient_db_error
from connector.warehouse.models import Base
from connector.warehouse.planner_stats import analyze_grown
from connector.warehouse.upsert import JsonText, of_resources, pk_names, upsert
from mappings.canonical import content_hash

__all__ = [
    "JsonText",
    "PageWrite",
    "PageWriteResult",
    "Reject",
    "content_hash",
    "upsert_rows",
    "write_page",
]

#: The natural key every resource row carries.
RESOURCE_KEY = ("endpoint", "resource_type", "resource_id")
_resource_key = operator.itemgetter(*RESOURCE_KEY)


@dataclass
class Reject:
    """A resource that failed validation or mapping, bound for `dead_letter`."""

    endpoint: str
    resource_type: str
    resource_id: str | None
    #: One line, no resource values (it is shown to IT staff).
    error: str
    payload: dict[str, Any]


@dataclass
class PageWrite:
    """Everything one page of a stream writes, committed together or not at all."""

    endpoint: str
    resource_type: str
    #: Rows for `raw_resource`: resource_id, version_id, last_updated, payload (and optionally
    #: content_hash, computed from payload when absent; deleted, default False). endpoint and
    #: resource_type default to the page's; fetched_at is set by `write_page`.
    raw: list[dict[str, Any]] = field(default_factory=list)
    #: Table name -> rows; loaded_at is set by `write_page`.
    mapped: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    rejects: list[Reject] = field(default_factory=list)
    #: The server's lastUpdated text to resume from, or None to leave the watermark alone.
    watermark: str | None = None
    #: The same instant parsed; parsed from `watermark` when None.
    watermark_at: datetime | None = None
    mode: str | None = None
    #: Outbox items (endpoint, kind, item_key) caused by this page; existing ones are left alone.
    outbox: list[dict[str, str]] = field(default_factory=list)
    #: Resources the server deleted (or marked entered-in-error): (resource_type, resource_id, when).
    deletions: list[tuple[str, str, datetime]] = field(default_factory=list)


@dataclass(frozen=True)
class PageWriteResult:
    #: raw_resource rows inserted or updated.
    raw_loaded: int
    #: Distinct resources (endpoint, resource_type, resource_id) of the page for which the raw row or any
    #: mapped row was inserted or updated. Unchanged resources are not counted, so re-running a page gives
    #: 0; a resource whose raw row is unchanged but whose mapped row is new (a replay after a mapping fix)
    #: is counted.
    loaded: int
    #: Rejects of the page recorded as dead letters.
    rejected: int
    #: `loaded` split by resource type (a page can carry `_include`d resources of other types).
    loaded_by_type: dict[str, int] = field(default_factory=dict)


def upsert_rows(
    conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]], *, batch_size: int = 500
) -> int:
    """INSERT .. ON CONFLICT (primary key) DO UPDATE, keeping the newer version; returns rows written.

    See `upsert.upsert` for when a stored row is replaced. Re-upserting identical rows writes 0 rows and
    an older version never overwrites a newer one. Rows may omit nullable columns (they are written as
    NULL); a key that is not a column is an error.
    """
    return len(_upsert(conn, table, rows, batch_size=batch_size, returning=pk_names(table)))


#: `upsert_rows`, returning the `returning` columns of every row inserted or updated (a module-level name
#: the page write looks up, so fault-injection tests can wrap it).
_upsert = upsert


def _table(name: str) -> sa.Table:
    table = Base.metadata.tables.get(name)
    if table is None:
        raise WarehouseError(f"no warehouse table named {name!r}")
    return table


def _parse_instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise WarehouseError(f"watermark {text!r} is not an ISO 8601 instant") from None
    if value.tzinfo is None:
        raise WarehouseError(f"watermark {text!r} has no time zone offset")
    return value


def write_page(
    engine: Engine, page: PageWrite, *, batch_size: int = 500, conn: Connection | None = None
) -> PageWriteResult:
    """Write one page in ONE transaction: raw rows, mapped rows, dead letters and the watermark.

    Either everything is committed or nothing is: a failure leaves raw rows, mapped rows, dead letters and
    the watermark exactly as they were, and raises WarehouseError (one line, no resource values). The
    watermark is only moved when `page.watermark` is set and never moves backwards; use
    `state.reset_watermark` for a full refresh.

    With `conn`, the page joins the caller's open transaction (e.g. to mark a dead letter resolved in the
    same commit) inside a savepoint, so a failed page still leaves nothing behind; the caller commits.
    """
    now = datetime.now(UTC)
    raw_rows = [_raw_row(page, row, now) for row in page.raw]
    mapped: list[tuple[sa.Table, list[dict[str, Any]]]] = []
    for name, rows in page.mapped.items():
        table = _table(name)
        stamp = {"loaded_at": now} if "loaded_at" in table.c else {}
        mapped.append((table, [{**row, **stamp} for row in rows]))
    watermark_at = page.watermark_at
    if page.watermark is not None and watermark_at is None:
        watermark_at = _parse_instant(page.watermark)

    def write(tx: Connection) -> PageWriteResult:
        raw = _table("raw_resource")
        # Resources the warehouse has never seen (a first load): every row of theirs is new, in every table.
        offered_raw = _by_resource_type({_resource_key(row) for row in raw_rows})
        new = bool(raw_rows) and holds_none_of(tx, raw, offered_raw)

        def put(table: sa.Table, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
            return _upsert(tx, table, rows, batch_size=batch_size, returning=RESOURCE_KEY, new=new)

        raw_written = put(raw, raw_rows)
        written = set(raw_written)
        touched: set[tuple[Any, ...]] = set(written)
        # A resource the server deleted keeps a tombstone raw row: an older copy arriving later (a slow
        # page, an overlap, a replay) writes no rows for it.
        offered = {_resource_key(row) for _t, rows in mapped for row in rows}
        blocked = _deleted_keys(tx, offered - written)
        for table, rows in mapped:
            if blocked:
                rows = [row for row in rows if _resource_key(row) not in blocked]
            if _is_line_table(table):
                # Rows per line follow their resource's version: a newer version replaces all its lines
                # (a line it no longer has must not linger); an unchanged or older one writes none.
                # Resources with no lines stored yet (a table added after they were synced) get theirs too.
                unwritten = {_resource_key(row) for row in rows} - written
                fresh = written | (unwritten - _keys_with_lines(tx, table, unwritten))
                _delete_rows_of(tx, table, written)
                if len(fresh) < len(written) + len(unwritten):
                    rows = [row for row in rows if _resource_key(row) in fresh]
                touched.update(put(table, rows))
            elif all(name in table.c for name in RESOURCE_KEY):
                touched.update(put(table, rows))
            else:
                _upsert(tx, table, rows, batch_size=batch_size, returning=pk_names(table))
        touched.update(_apply_deletions(tx, page.endpoint, page.deletions, now))
        rejected = record_rejects(tx, page.rejects, now)
        outbox.enqueue(tx, page.outbox, now)
        if page.watermark is not None and watermark_at is not None:
            _advance_watermark(tx, page, page.watermark, watermark_at, now)
        by_type = Counter(resource_type for _endpoint, resource_type, _id in touched)
        return PageWriteResult(
            raw_loaded=len(raw_written), loaded=len(touched), rejected=rejected, loaded_by_type=dict(by_type)
        )

    try:
        if conn is not None:
            with conn.begin_nested():
                return write(conn)
        with begin_write(engine) as tx:
            result = write(tx)
    except sa.exc.SQLAlchemyError as exc:
        # `from None`: the chained DBAPI error can carry row values (PostgreSQL's DETAIL line).
        raise WarehouseError(
            f"writing a {page.resource_type} page of {page.endpoint} failed: {db_error_message(exc)}",
            transient=is_transient_db_error(exc),
        ) from None
    if raw_rows or mapped:
        analyze_grown(engine, ["raw_resource", *(table.name for table, _rows in mapped)])
    return result


def _fact_tables() -> list[sa.Table]:
    """Every table holding rows mapped from resources (keyed by the resource key), raw_resource aside."""
    return [
        t
        for name, t in Base.metadata.tables.items()
        if name != "raw_resource" and pk_names(t)[: len(RESOURCE_KEY)] == RESOURCE_KEY
    ]


def _deleted_keys(conn: Connection, keys: set[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
    raw = _table("raw_resource")
    columns = [raw.c[name] for name in RESOURCE_KEY]
    found: set[tuple[Any, ...]] = set()
    for endpoint, resource_type, ids in _by_resource_type(keys):
        where = of_resources(conn.dialect, raw, endpoint, resource_type, ids)
        found.update(tuple(row) for row in conn.execute(sa.select(*columns).where(where, raw.c.deleted)))
    return found


def holds_none_of(conn: Connection, table: sa.Table, groups: Iterable[tuple[str, str, list[str]]]) -> bool:
    """Whether `table` (keyed by resource) holds no row of the resources (endpoint, resource_type, ids).

    One indexed probe per group, on PostgreSQL only (elsewhere the answer is False: rows are upserted).
    """
    if conn.dialect.name != "postgresql":
        return False
    for endpoint, resource_type, ids in groups:
        where = of_resources(conn.dialect, table, endpoint, resource_type, ids)
        if conn.execute(sa.select(sa.literal(1)).where(where).limit(1)).first() is not None:
            return False
    return True


def _apply_deletions(
    conn: Connection, endpoint: str, deletions: Sequence[tuple[str, str, datetime]], now: datetime
) -> set[tuple[Any, ...]]:
    """Mark resources deleted and take their rows out of every mapped table (and so out of the views).

    The raw row becomes (or stays) a tombstone dated at the deletion, so a newer version re-creates the
    resource but an older copy cannot. A deletion older than the stored version is ignored.
    """
    if not deletions:
        return set()
    raw = _table("raw_resource")
    latest: dict[tuple[Any, ...], datetime] = {}
    for rtype, rid, at in deletions:
        key = (endpoint, rtype, rid)
        latest[key] = max(at, latest.get(key, at))
    rows = [
        {
            "endpoint": e,
            "resource_type": t,
            "resource_id": i,
            "last_updated": at,
            "content_hash": content_hash({"resourceType": t, "id": i, "deleted": True}),
            "payload": {"resourceType": t, "id": i},
            "deleted": True,
            "deleted_at": at,
            "fetched_at": now,
        }
        for (e, t, i), at in sorted(latest.items())
    ]
    applied: set[tuple[Any, ...]] = set()
    for part in [rows[i : i + 500] for i in range(0, len(rows), 500)]:
        insert = insert_for(conn, raw).values(part)
        excluded = insert.excluded
        stmt = insert.on_conflict_do_update(
            index_elements=list(RESOURCE_KEY),
            # The last known payload stays, for the record; only the state changes.
            set_={
                "deleted": True,
                "deleted_at": excluded.deleted_at,
                "last_updated": excluded.last_updated,
                "fetched_at": excluded.fetched_at,
            },
            where=sa.or_(raw.c.last_updated.is_(None), raw.c.last_updated <= excluded.last_updated),
        ).returning(*(raw.c[n] for n in RESOURCE_KEY))
        applied.update(tuple(r) for r in conn.execute(stmt))
    for table in _fact_tables():
        _delete_rows_of(conn, table, applied)
    return applied


def _is_line_table(table: sa.Table) -> bool:
    """A table with several rows per resource: its key is the resource key plus a line key."""
    pk = pk_names(table)
    return len(pk) > len(RESOURCE_KEY) and pk[: len(RESOURCE_KEY)] == RESOURCE_KEY


def _by_resource_type(keys: set[tuple[Any, ...]]) -> Iterable[tuple[str, str, list[str]]]:
    """Resource keys as (endpoint, resource_type, ids), ids sorted and at most 1,000 per group."""
    groups: dict[tuple[str, str], list[str]] = {}
    for endpoint, resource_type, resource_id in keys:
        groups.setdefault((endpoint, resource_type), []).append(resource_id)
    for (endpoint, resource_type), ids in sorted(groups.items()):
        ids.sort()
        for start in range(0, len(ids), 1000):
            yield endpoint, resource_type, ids[start : start + 1000]


def _keys_with_lines(conn: Connection, table: sa.Table, keys: set[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
    columns = [table.c[name] for name in RESOURCE_KEY]
    found: set[tuple[Any, ...]] = set()
    for endpoint, resource_type, ids in _by_resource_type(keys):
        stmt = (
            sa.select(*columns)
            .distinct()
            .where(of_resources(conn.dialect, table, endpoint, resource_type, ids))
        )
        found.update(tuple(row) for row in conn.execute(stmt))
    return found


def _delete_rows_of(conn: Connection, table: sa.Table, keys: set[tuple[Any, ...]]) -> None:
    for endpoint, resource_type, ids in _by_resource_type(keys):
        conn.execute(table.delete().where(of_resources(conn.dialect, table, endpoint, resource_type, ids)))


def _raw_row(page: PageWrite, row: dict[str, Any], now: datetime) -> dict[str, Any]:
    out = {
        "endpoint": page.endpoint,
        "resource_type": page.resource_type,
        "deleted": False,
        "deleted_at": None,
        **row,
    }
    if out.get("content_hash") is None and isinstance(out.get("payload"), dict):
        out["content_hash"] = content_hash(out["payload"])
    out["fetched_at"] = now
    return out


def _advance_watermark(
    conn: Connection, page: PageWrite, watermark: str, watermark_at: datetime, now: datetime
) -> None:
    table = _table("sync_state")
    stmt = insert_for(conn, table).values(
        endpoint=page.endpoint,
        resource_type=page.resource_type,
        watermark=watermark,
        watermark_at=watermark_at,
        mode=page.mode,
        updated_at=now,
    )
    excluded = stmt.excluded
    stmt = stmt.on_conflict_do_update(
        index_elements=["endpoint", "resource_type"],
        set_={
            "watermark": excluded.watermark,
            "watermark_at": excluded.watermark_at,
            # A page that does not name its mode keeps the stored one.
            "mode": sa.func.coalesce(excluded.mode, table.c.mode),
            "updated_at": excluded.updated_at,
        },
        # Never backwards: an older page (retried task, parallel window) must not rewind the cursor.
        where=sa.or_(table.c.watermark_at.is_(None), excluded.watermark_at >= table.c.watermark_at),
    )
    conn.execute(stmt)
