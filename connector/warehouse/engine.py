"""Engines, transactions and schema migrations of the warehouse.

SQLite is set up for several writers (WAL, a busy timeout, write transactions that take the lock up front);
PostgreSQL goes through psycopg 3. Errors that reach the user name the URL with its password masked and never
the SQL parameters (they hold resource content).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from connector.errors import WarehouseError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

#: Milliseconds a SQLite writer waits for another writer's lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Seconds to wait for a PostgreSQL connection unless the URL says otherwise.
PG_CONNECT_TIMEOUT_S = 10

# Execution option that makes a SQLite transaction start with BEGIN IMMEDIATE (see `begin_write`).
_SQLITE_IMMEDIATE = "connector_sqlite_immediate"


def insert_for(conn: Connection, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    """The dialect's INSERT construct, the one that knows ON CONFLICT (PostgreSQL and SQLite alike)."""
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise WarehouseError(f"upserts are not implemented for {name}")


def _json_serializer(value: Any) -> str:
    return orjson.dumps(value).decode()


def is_transient_db_error(exc: BaseException) -> bool:
    """Connection trouble and lock timeouts pass; a missing table or a broken constraint does not."""
    if not isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        return False
    text = str(getattr(exc, "orig", exc)).lower()
    return not any(marker in text for marker in ("no such table", "no such column", "has no column"))


def db_error_message(exc: BaseException) -> str:
    """One line describing a database error, without SQL parameters or PostgreSQL's row DETAIL."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(orig).__name__}: {first}" if first else type(orig).__name__


def masked_url(url: str | sa.URL) -> str:
    """The URL as it may be shown to a person: the password replaced by ***."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        return "<unparseable warehouse URL>"


def _normalize_url(url: str) -> sa.URL:
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        # The exception text repeats the URL, password included: say it without it.
        raise WarehouseError("the warehouse URL is not a valid SQLAlchemy URL") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(url: str) -> Engine:
    """An Engine for the warehouse at `url`, checked by connecting once.

    Raises WarehouseError (URL shown with its password masked) when the database cannot be reached.
    """
    parsed = _normalize_url(url)
    shown = parsed.render_as_string(hide_password=True)
    kwargs: dict[str, Any] = {
        # Parameters are resource values (PHI); keep them out of exception messages and logs.
        "hide_parameters": True,
        "json_serializer": _json_serializer,
        "pool_pre_ping": True,
    }
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            try:
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise WarehouseError(f"cannot create the folder of {shown}: {exc.strerror}") from None
        kwargs["pool_pre_ping"] = False  # a local file cannot drop the connection
    elif backend == "postgresql":
        connect_args: dict[str, Any] = {}
        if "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
        if "options" not in parsed.query:
            # Sessions in UTC, so SQL-side casts and date_trunc agree with the UTC values we return.
            connect_args["options"] = "-c timezone=UTC"
        kwargs["connect_args"] = connect_args
    else:
        raise WarehouseError(f"unsupported warehouse {shown}: use sqlite:// or postgresql://")

    try:
        engine = sa.create_engine(parsed, **kwargs)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise WarehouseError(f"cannot use warehouse {shown}: {type(exc).__name__}") from None
    if backend == "sqlite":
        _configure_sqlite(engine)
    try:
        with engine.connect():
            pass
    except sa.exc.DBAPIError as exc:
        engine.dispose()
        message = db_error_message(exc)
        if parsed.password:
            message = message.replace(str(parsed.password), "***")
        raise WarehouseError(f"cannot connect to warehouse {shown}: {message}", transient=True) from None
    return engine


def open_existing(url: str) -> Engine | None:
    """An engine for a warehouse that exists already, for commands that only read it (`check`).

    None for a SQLite file that is not there (it is not created) or a database never migrated.
    """
    parsed = _normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if not database or database == ":memory:" or database.startswith("file:"):
            return None
        if not Path(database).expanduser().is_file():
            return None
    engine = make_engine(url)
    if schema_revision(engine) is None:
        engine.dispose()
        return None
    return engine


def open_read_only(url: str) -> Engine:
    """An engine that only reads the warehouse, for `status`, `report` and `deadletters list`.

    Refuses (WarehouseError) a SQLite file that is not there, rather than creating an empty one, and a
    schema that is not current (those commands never migrate). Every session is read-only: SQLite's
    `query_only`, PostgreSQL's read-only transactions.
    """
    parsed = _normalize_url(url)
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        in_file = database and database != ":memory:" and not database.startswith("file:")
        if in_file and not Path(database).expanduser().is_file():
            raise WarehouseError(
                f"warehouse {shown} does not exist: check [warehouse] url, or run `connector sync` first"
            )
    engine = make_engine(url)
    statement = (
        "PRAGMA query_only = ON"
        if engine.dialect.name == "sqlite"
        else "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"
    )

    @sa.event.listens_for(engine, "connect")
    def _read_only(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(statement)
        finally:
            cursor.close()
        if engine.dialect.name == "postgresql":
            dbapi_connection.commit()  # psycopg opened a transaction for the SET

    engine.dispose()  # the connection make_engine checked with predates the listener
    current = schema_revision(engine)
    expected = script_head()
    if current != expected:
        engine.dispose()
        if current is None:
            raise WarehouseError(f"warehouse {shown} holds no connector schema: run `connector sync` first")
        raise WarehouseError(
            f"warehouse schema is at {current}, expected {expected}: run `connector migrate` first"
        )
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (below): the sqlite3 module's own transaction handling skips it
        # for DDL and SAVEPOINT, which would make migrations and nested transactions non-atomic.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # WAL lets readers (BI tools, `connector status`) work while a sync writes.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A write transaction takes the write lock up front, so the busy timeout applies; upgrading a
        # read lock later can fail immediately with "database is locked".
        immediate = conn.get_execution_options().get(_SQLITE_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@contextmanager
def begin_write(engine: Engine) -> Iterator[Connection]:
    """A transaction meant to write: committed on success, rolled back on any exception.

    On SQLite it starts with BEGIN IMMEDIATE so concurrent writers queue on the busy timeout.
    """
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn = conn.execution_options(**{_SQLITE_IMMEDIATE: True})
        with conn.begin():
            yield conn


def _alembic_config(connection: Connection) -> Config:
    from alembic.config import Config  # alembic is loaded only when a schema is migrated

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


_REVISION_LINE = re.compile(r'^(revision|down_revision)\b[^=]*=\s*(?:"([^"]*)"|None)', re.MULTILINE)


@functools.cache
def script_head() -> str:
    """The head revision of the migration scripts shipped with the package.

    Read from the scripts' `revision` / `down_revision` lines rather than through alembic, which takes a
    tenth of a second to load: every sync checks the schema before it starts.
    """
    revisions: dict[str, str | None] = {}
    for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        found = dict((name, value or None) for name, value in _REVISION_LINE.findall(path.read_text()))
        if found.get("revision"):
            revisions[str(found["revision"])] = found.get("down_revision")
    parents = {parent for parent in revisions.values() if parent}
    heads = sorted(set(revisions) - parents)
    if len(heads) != 1:
        raise WarehouseError(f"the migration scripts in {MIGRATIONS_DIR} have {len(heads)} heads: {heads}")
    return heads[0]


def migrate(engine: Engine) -> str:
    """Bring the warehouse schema to the head revision (idempotent); returns that revision."""
    from alembic import command

    try:
        with begin_write(engine) as conn:
            command.upgrade(_alembic_config(conn), "head")
    except sa.exc.DBAPIError as exc:
        raise WarehouseError(
            f"migrating warehouse {engine.url.render_as_string(hide_password=True)} failed: "
            f"{db_error_message(exc)}"
        ) from None
    return script_head()


def schema_revision(engine: Engine) -> str | None:
    """The revision the warehouse schema is at, or None when it was never migrated."""
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            value = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
            return str(value) if value is not None else None
    except sa.exc.DBAPIError as exc:
        raise WarehouseError(
            f"cannot read the schema revision of {engine.url.render_as_string(hide_password=True)}: "
            f"{db_error_message(exc)}"
        ) from None


def ensure_schema(engine: Engine) -> None:
    """Make sure the schema is current before a sync.

    SQLite (one machine, one file) is migrated on the spot. PostgreSQL is shared by many workers and may be
    owned by a DBA, so it is only checked: migrating it is an explicit `connector migrate`.
    """
    current = schema_revision(engine)
    expected = script_head()
    if engine.dialect.name == "sqlite":
        if current != expected:
            migrate(engine)
        return
    if current != expected:
        at = current if current is not None else "none (empty database)"
        raise WarehouseError(f"warehouse schema is at {at}, expected {expected}: run `connector migrate`")
