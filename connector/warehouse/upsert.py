"""Batched "insert, or replace when newer" of many rows, the fastest way each database allows.

PostgreSQL: the rows are `COPY`-ed into a session-local staging table, then moved with one
`INSERT .. SELECT .. ON CONFLICT DO UPDATE .. RETURNING`; rows of resources the table does not hold yet (a
first load) are `COPY`-ed straight into it instead, which costs the database much less. SQLite: one
executemany of the same upsert (SQLAlchemy batches it into multi-row VALUES with a cached compiled
statement). Both go around the ORM and the per-row type machinery: JSON arrives as text already
(`JsonText`) or is serialized once here.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from typing import Any, cast

import orjson
import psycopg
import sqlalchemy as sa
from psycopg.abc import Buffer
from psycopg.adapt import Dumper, PyFormat
from psycopg.pq import Format
from psycopg.types.numeric import NumericBinaryDumper
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from connector.warehouse.engine import insert_for
from connector.warehouse.models.base import UTCDateTime

#: For compiling PostgreSQL type names and quoting identifiers without a connection (its stub is untyped).
_POSTGRESQL: sa.Dialect = postgresql.dialect()  # type: ignore[no-untyped-call]


class JsonText(str):
    """JSON already serialized (by a mapping worker): stored as is, not serialized again."""

    __slots__ = ()


def pk_names(table: sa.Table) -> tuple[str, ...]:
    return tuple(column.name for column in table.primary_key.columns)


def upsert(
    conn: Connection,
    table: sa.Table,
    rows: Sequence[dict[str, Any]],
    *,
    batch_size: int,
    returning: Sequence[str],
    new: bool = False,
) -> list[tuple[Any, ...]]:
    """Insert `rows`, replacing stored ones only when newer; returns `returning` of each row written.

    `new` says the table is believed to hold none of the rows' keys (the writer probes for that): on
    PostgreSQL they are then `COPY`-ed straight in, and should one be there after all, the upsert runs
    instead.

    A stored row is replaced when the incoming one is newer: its `last_updated` is later, or it has one
    and the stored row has none, or both are equal (or both NULL) and its `content_hash` differs. Tables
    without these columns: `content_hash` alone decides, and without it every conflict updates. Rows
    with the same primary key are reduced to the newest first (PostgreSQL refuses to update one row twice
    in one statement).
    """
    if not rows:
        return []
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    pk = pk_names(table)
    names = tuple(column_names(table, rows))
    unique = newest_per_key(rows, pk, has_last_updated="last_updated" in table.c)
    if conn.dialect.name == "postgresql":
        values = _bind_values(conn, table, names, unique, times=True)
        if new:
            inserted = _copy_new(conn, table, names, values, tuple(returning))
            if inserted is not None:
                return inserted
        return _copy_upsert(conn, table, names, values, tuple(returning))
    values = _bind_values(conn, table, names, unique, times=False)
    return _executemany_upsert(conn, table, names, values, tuple(returning), batch_size)


def column_names(table: sa.Table, rows: Sequence[dict[str, Any]]) -> list[str]:
    first = rows[0].keys()
    seen: dict[str, None] = dict.fromkeys(first)
    for row in rows:
        # Rows of one mapper have the same keys: the common case costs one C-level comparison.
        if row.keys() != first:
            for key in row:
                seen.setdefault(key, None)
    unknown = [key for key in seen if key not in table.c]
    if unknown:
        raise ValueError(f"{table.name} has no column {', '.join(sorted(unknown))}")
    missing_pk = [name for name in pk_names(table) if name not in seen]
    if missing_pk:
        raise ValueError(f"rows for {table.name} lack the key column {', '.join(missing_pk)}")
    return list(seen)


def newest_per_key(
    rows: Iterable[dict[str, Any]], pk: Sequence[str], *, has_last_updated: bool
) -> list[dict[str, Any]]:
    """One row per key, in key order: the one with the latest last_updated; on a tie, the last given.

    Key order makes concurrent writers lock rows in the same order (no deadlocks on PostgreSQL).
    """
    key_of = operator.itemgetter(*pk)
    best: dict[Any, dict[str, Any]] = {}
    for row in rows:
        key = key_of(row)
        current = best.get(key)
        if (
            current is None
            or not has_last_updated
            or not _older(row.get("last_updated"), current.get("last_updated"))
        ):
            best[key] = row
    return [best[key] for key in sorted(best)]


def _older(candidate: datetime | None, current: datetime | None) -> bool:
    if candidate is None:
        return current is not None
    return current is not None and candidate < current


def incoming_is_newer(table: sa.Table, excluded: Any) -> sa.ColumnElement[bool] | None:
    has_hash = "content_hash" in table.c
    changed = excluded.content_hash != table.c.content_hash if has_hash else None
    if "last_updated" not in table.c:
        return changed
    incoming, stored = excluded.last_updated, table.c.last_updated
    later = sa.or_(sa.and_(stored.is_(None), incoming.is_not(None)), incoming > stored)
    if changed is None:
        return later
    same_time = sa.or_(incoming == stored, sa.and_(incoming.is_(None), stored.is_(None)))
    return sa.or_(later, sa.and_(same_time, changed))


def of_resources(
    dialect: sa.Dialect, table: sa.Table, endpoint: str, resource_type: str, ids: list[str]
) -> sa.ColumnElement[bool]:
    """WHERE the row belongs to one of `ids` (one array parameter on PostgreSQL: a page's worth of ids
    as an IN list is slow to send and to plan)."""
    if dialect.name == "postgresql":
        matches = table.c.resource_id == sa.any_(sa.literal(ids, sa.dialects.postgresql.ARRAY(sa.String)))
    else:
        matches = table.c.resource_id.in_(ids)
    return sa.and_(table.c.endpoint == endpoint, table.c.resource_type == resource_type, matches)


def _newer_wins(stmt: Any, table: sa.Table, names: Sequence[str]) -> Any:
    """ON CONFLICT (primary key): update the given columns when the incoming row is newer."""
    pk = pk_names(table)
    update_cols = {n: stmt.excluded[n] for n in names if n not in pk}
    if not update_cols:
        return stmt.on_conflict_do_nothing(index_elements=list(pk))
    return stmt.on_conflict_do_update(
        index_elements=list(pk), set_=update_cols, where=incoming_is_newer(table, stmt.excluded)
    )


def _json_text(value: Any) -> str:
    if isinstance(value, JsonText):
        return value
    # As SQLAlchemy's JSON type does: None is the JSON null.
    return JsonText(orjson.dumps(value).decode())


def _bind_values(
    conn: Connection, table: sa.Table, names: tuple[str, ...], rows: Sequence[dict[str, Any]], *, times: bool
) -> list[tuple[Any, ...]]:
    """Row tuples in `names` order, JSON as text and (with `times`, for COPY, which bypasses the column
    types) timestamps refused unless time-zone aware, as `UTCDateTime` does."""
    width = len(names)  # the union of the rows' keys: a row with as many has every one
    if width > 1 and all(len(row) == width for row in rows):
        values: list[Any] = list(map(operator.itemgetter(*names), rows))  # in C
    else:
        values = [tuple(row.get(name) for name in names) for row in rows]
    json_at, times_at = _typed_positions(table, names)
    if json_at:
        serialized = [
            i for i in json_at if any(type(v) is not JsonText for v in map(operator.itemgetter(i), values))
        ]
        if serialized:
            # Every JSON value of a row in one pass: a tuple rebuilt per column cost more than the JSON.
            values = [_with_json_text(v, serialized) for v in values]
    if times:
        for i in times_at:
            column_type = table.c[names[i]].type
            for value in map(operator.itemgetter(i), values):
                if value is not None and (type(value) is not datetime or value.utcoffset() is None):
                    _refuse(cast(UTCDateTime, column_type), value, conn.dialect)
    elif times_at and conn.dialect.name == "sqlite":
        texts: dict[datetime, str] = {}  # rows share their instants (lastUpdated, the load's time)
        values = [_with_sqlite_times(table, names, row, times_at, conn.dialect, texts) for row in values]
    return values


def _with_sqlite_times(
    table: sa.Table,
    names: tuple[str, ...],
    row: tuple[Any, ...],
    positions: Sequence[int],
    dialect: sa.Dialect,
    texts: dict[datetime, str],
) -> tuple[Any, ...]:
    """The row with its timestamps as the text `UTCDateTime` stores on SQLite (naive UTC, microseconds).

    SQLAlchemy's bind processors formatted every value of every row (`UTCDateTime`, then SQLite's DATETIME
    format), though a table's rows share most of their instants (their resource's lastUpdated, the load's
    time). `texts` keeps each distinct instant's text for the call: a worker's SQLite page write went
    from 80 to 65 to 70 µs a resource. `_bind_table` declares these columns as text.
    """
    out = list(row)
    for i in positions:
        value = out[i]
        if value is None:
            continue
        text = texts.get(value) if isinstance(value, datetime) else None
        if text is None:
            if not isinstance(value, datetime) or value.utcoffset() is None:
                _refuse(cast(UTCDateTime, table.c[names[i]].type), value, dialect)
            text = texts[value] = value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
        out[i] = text
    return tuple(out)


@cache
def _typed_positions(table: sa.Table, names: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Where in `names` the JSON columns are, and the `UTCDateTime` ones."""
    json_at = tuple(i for i, name in enumerate(names) if isinstance(table.c[name].type, sa.JSON))
    times_at = tuple(i for i, name in enumerate(names) if isinstance(table.c[name].type, UTCDateTime))
    return json_at, times_at


def _with_json_text(row: tuple[Any, ...], positions: Sequence[int]) -> tuple[Any, ...]:
    out = list(row)
    for i in positions:
        out[i] = _json_text(out[i])
    return tuple(out)


def _refuse(column_type: UTCDateTime, value: Any, dialect: sa.Dialect) -> None:
    """Raise as SQLAlchemy does for a value the column type refuses (the message has no value)."""
    try:
        column_type.process_bind_param(value, dialect)
    except (TypeError, ValueError) as exc:
        raise sa.exc.StatementError(str(exc), "COPY", None, exc) from None


# --- PostgreSQL: COPY into a staging table, then one INSERT .. SELECT .. ON CONFLICT ---------------------


@cache
def _stage_table(table: sa.Table) -> sa.Table:
    """The session-local (TEMP) twin of `table`; JSON columns are text there, cast on the way out."""
    columns = [sa.Column(c.name, sa.Text if isinstance(c.type, sa.JSON) else c.type) for c in table.columns]
    return sa.Table(f"_stage_{table.name}", sa.MetaData(), *columns)


@cache
def _copy_statements(
    table: sa.Table, names: tuple[str, ...], returning: tuple[str, ...]
) -> tuple[str, str, sa.Insert]:
    stage = _stage_table(table)
    quote = _POSTGRESQL.identifier_preparer.quote
    columns = ", ".join(f"{quote(c.name)} {_pg_type(table, c.name)}" for c in stage.columns)
    # Both in one round trip (no parameters): the staging table lives as long as the session, and is
    # emptied for each use.
    prepare = f"CREATE TEMP TABLE IF NOT EXISTS {quote(stage.name)} ({columns}); TRUNCATE {quote(stage.name)}"
    copy = _copy_into(stage.name, names)
    selected = [
        sa.cast(stage.c[n], table.c[n].type) if isinstance(table.c[n].type, sa.JSON) else stage.c[n]
        for n in names
    ]
    pk = pk_names(table)
    stmt = sa.dialects.postgresql.insert(table).from_select(
        list(names), sa.select(*selected).order_by(*(stage.c[n] for n in pk))
    )
    return prepare, copy, _newer_wins(stmt, table, names).returning(*(table.c[n] for n in returning))


def _pg_type(table: sa.Table, name: str, *, staged: bool = True) -> str:
    """The column's PostgreSQL type; in the staging table (`staged`) JSON columns are text."""
    column_type = table.c[name].type
    if staged and isinstance(column_type, sa.JSON):
        return "text"
    return column_type.compile(dialect=_POSTGRESQL)


@cache
def _copy_into(table_name: str, names: tuple[str, ...]) -> str:
    quote = _POSTGRESQL.identifier_preparer.quote
    return f"COPY {quote(table_name)} ({', '.join(quote(n) for n in names)}) FROM STDIN"


def _copy_upsert(
    conn: Connection,
    table: sa.Table,
    names: tuple[str, ...],
    values: list[tuple[Any, ...]],
    returning: tuple[str, ...],
) -> list[tuple[Any, ...]]:
    prepare, copy_sql, stmt = _copy_statements(table, names, returning)
    # Inside the caller's transaction: a failed page leaves nothing, the staging table included.
    conn.exec_driver_sql(prepare)
    _copy(conn, copy_sql, values, _binary_types(table, names, values, staged=True))
    return [tuple(row) for row in conn.execute(stmt)]


def _copy(
    conn: Connection, copy_sql: str, values: list[tuple[Any, ...]], binary_types: list[str] | None
) -> None:
    """COPY `values` in; in PostgreSQL's binary format when `binary_types` names the columns' types."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    if binary_types is not None:
        copy_sql += " (FORMAT BINARY)"
        # By oid: `set_types` names the columns' types, and the dumpers are looked up by them.
        cursor.adapters.register_dumper(None, _JsonbBinaryText)
        cursor.adapters.register_dumper(None, _JsonBinaryText)
        cursor.adapters.register_dumper(None, _NumericFromFloat)
    try:
        with cursor.copy(copy_sql) as copy:
            if binary_types is not None:
                copy.set_types(binary_types)
            for row in values:
                copy.write_row(row)
    except psycopg.Error as exc:
        # As SQLAlchemy wraps what it executes, so callers see one kind of database error (and its
        # message, whose CONTEXT line quotes the row, is cut to the first line by `db_error_message`).
        raise sa.exc.DBAPIError.instance(copy_sql, None, exc, psycopg.Error, hide_parameters=True) from None
    finally:
        cursor.close()


# --- COPY's binary format: about four times less work per row than text (no escaping, no date text) -------


class _JsonBinaryText(Dumper):
    """JSON text (`JsonText`) in json's binary format, which is the text as it is."""

    format = Format.BINARY
    oid = psycopg.adapters.types["json"].oid
    prefix = b""

    def dump(self, obj: Any) -> bytes:
        text: str = obj
        return self.prefix + text.encode()


class _JsonbBinaryText(_JsonBinaryText):
    """JSON text (`JsonText`) in jsonb's binary format: a version byte, then the text as it is."""

    oid = psycopg.adapters.types["jsonb"].oid
    prefix = b"\x01"


class _NumericFromFloat(NumericBinaryDumper):
    """numeric's binary format from a float too, as its text (`repr`): what text format sends."""

    def dump(self, obj: Any) -> Buffer | None:
        if type(obj) is float:
            obj = Decimal(repr(obj))
        if type(obj) is Decimal:
            return _DECIMAL_BINARY.dump(obj)
        return super().dump(obj)


#: psycopg's own binary dumper of Decimal (in C with psycopg[binary]): half the time of the Python one.
_DECIMAL_BINARY = psycopg.adapters.get_dumper(Decimal, PyFormat.BINARY)(Decimal)


#: By the PostgreSQL type a column compiles to: its name for COPY's binary format, and the Python types its
#: values must have to be written so (a page with any other goes in text format, as before).
_BINARY: dict[str, tuple[str, frozenset[type]]] = {
    "VARCHAR": ("varchar", frozenset({str})),
    "TEXT": ("text", frozenset({str, JsonText})),  # JsonText: a JSON column in the staging table
    "TIMESTAMP WITH TIME ZONE": ("timestamptz", frozenset({datetime})),
    "BOOLEAN": ("bool", frozenset({bool})),
    "INTEGER": ("int4", frozenset({int})),
    "FLOAT": ("float8", frozenset({float})),
    "NUMERIC": ("numeric", frozenset({Decimal, int, float})),
    "JSONB": ("jsonb", frozenset({JsonText})),
    "JSON": ("json", frozenset({JsonText})),
}


@cache
def _binary_spec(
    table: sa.Table, names: tuple[str, ...], staged: bool
) -> tuple[tuple[str, frozenset[type]], ...] | None:
    """Per column of `names` (in `table`, or its staging twin): its binary type name and the Python types
    its values may have; None when a column type is not in `_BINARY`."""
    spec = []
    for name in names:
        known = _BINARY.get(_pg_type(table, name, staged=staged).split("(")[0].upper())
        if known is None:
            return None
        spec.append(known)
    return tuple(spec)


def _binary_types(
    table: sa.Table, names: tuple[str, ...], values: list[tuple[Any, ...]], *, staged: bool
) -> list[str] | None:
    """The columns' binary type names when every value has its column's Python type (or is None)."""
    spec = _binary_spec(table, names, staged)
    if spec is None:
        return None
    for i, (_name, python_types) in enumerate(spec):
        found = set(map(type, map(operator.itemgetter(i), values)))
        found.discard(type(None))
        if not found <= python_types:
            return None
    return [name for name, _python_types in spec]


def _copy_new(
    conn: Connection,
    table: sa.Table,
    names: tuple[str, ...],
    values: list[tuple[Any, ...]],
    returning: tuple[str, ...],
) -> list[tuple[Any, ...]] | None:
    """COPY rows straight into `table` (every one is new there); None if another writer got in first.

    A concurrent writer may add one of the rows after the probe: the unique key then refuses the COPY,
    the savepoint undoes it, and the caller takes the upsert path.
    """
    copy_sql = _copy_into(table.name, names)
    savepoint = conn.begin_nested()
    try:
        _copy(conn, copy_sql, values, _binary_types(table, names, values, staged=False))
    except sa.exc.DBAPIError as exc:
        savepoint.rollback()
        if isinstance(exc.orig, psycopg.errors.UniqueViolation):
            return None
        raise
    savepoint.commit()
    picks = operator.itemgetter(*(names.index(name) for name in returning))
    if len(returning) == 1:
        return [(picks(row),) for row in values]
    return [picks(row) for row in values]


# --- SQLite (and the rest): one executemany ----------------------------------------------------------------


@cache
def _bind_table(table: sa.Table) -> sa.Table:
    """`table` with JSON and `UTCDateTime` columns as plain text, so the values `_bind_values` serialized
    (JSON text, SQLite's timestamp text) pass unchanged."""
    columns = [
        sa.Column(
            c.name,
            sa.Text if isinstance(c.type, sa.JSON | UTCDateTime) else c.type,
            primary_key=c.primary_key,
        )
        for c in table.columns
    ]
    return sa.Table(table.name, sa.MetaData(), *columns)


def _executemany_upsert(
    conn: Connection,
    table: sa.Table,
    names: tuple[str, ...],
    values: list[tuple[Any, ...]],
    returning: tuple[str, ...],
    batch_size: int,
) -> list[tuple[Any, ...]]:
    target = _bind_table(table)
    stmt = _newer_wins(insert_for(conn, target), target, names).returning(*(target.c[n] for n in returning))
    written: list[tuple[Any, ...]] = []
    start = 0
    for size in batch_sizes(len(values), batch_size):
        params = [dict(zip(names, row, strict=True)) for row in values[start : start + size]]
        written.extend(tuple(row) for row in conn.execute(stmt, params))
        start += size
    return written


def batch_sizes(total: int, batch_size: int) -> list[int]:
    """Rows per statement: full batches, then the rest in powers of two (at most one of each).

    Each row count is its own multi-row statement, and sqlite3 keeps the last 128 prepared per connection
    (large ones: every row's placeholders). With any remainder its own size, that cache filled up with
    one-off statements and memory grew with the data; now a table has at most a dozen statements.
    """
    sizes = [batch_size] * (total // batch_size)
    rest = total % batch_size
    while rest:
        chunk = 1 << (rest.bit_length() - 1)
        sizes.append(chunk)
        rest -= chunk
    return sizes
