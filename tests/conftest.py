"""Shared fixtures: a SQLite file per test and a real PostgreSQL database per test session.

PostgreSQL comes from CONNECTOR_TEST_PG_URL (default: the CI server on 127.0.0.1:5432). Tests that need it
are skipped when it cannot be reached, except on CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.warehouse.engine import make_engine, migrate

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

# Set before Prefect is imported: the suite's flow runs (and the local Prefect server the CLI starts for
# them) use a Prefect home of their own, not the user's ~/.prefect; the server is stopped at the end.
_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="connector-tests-prefect-"))
os.environ["PREFECT_HOME"] = str(_PREFECT_HOME)
os.environ.pop("PREFECT_API_URL", None)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from connector.prefect_api import stop_shared_server

    stop_shared_server(_PREFECT_HOME)
    shutil.rmtree(_PREFECT_HOME, ignore_errors=True)


#: Slow groups, marked by where they live: `make test-fast` deselects them, `make test` and CI run them.
_SLOW_GROUPS = {
    "integration": ("tests", "integration"),
    "crash": ("tests", "reliability", "test_crash_safety.py"),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(str(config.rootpath))
    for item in items:
        parts = Path(str(item.path)).relative_to(root).parts
        for marker, prefix in _SLOW_GROUPS.items():
            if parts[: len(prefix)] == prefix:
                item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'wh.db'}"


def _admin_engine(url: sa.URL) -> Engine:
    # CREATE/DROP DATABASE cannot run inside a transaction.
    return sa.create_engine(
        url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 5}
    )


def _pg_admin_url() -> sa.URL:
    admin_url = sa.make_url(os.environ.get("CONNECTOR_TEST_PG_URL") or DEFAULT_PG_URL)
    if admin_url.drivername == "postgresql":
        admin_url = admin_url.set(drivername="postgresql+psycopg")
    return admin_url


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh, empty database for this test session, dropped at the end."""
    admin_url = _pg_admin_url()
    shown = admin_url.render_as_string(hide_password=True)
    admin = _admin_engine(admin_url)
    name = f"connector_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        admin.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL unreachable at {shown} and CI=true: {reason}")
        pytest.skip(f"PostgreSQL unreachable at {shown} (set CONNECTOR_TEST_PG_URL): {reason}")
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _reset_pg(url: str) -> None:
    """Empty the session database: dropping the schema removes every table, index and alembic_version."""
    engine = _admin_engine(sa.make_url(url))
    try:
        with engine.connect() as conn:
            # A connection a previous test left inside a transaction would block the DROP: fail instead.
            conn.exec_driver_sql("SET lock_timeout = '10s'")
            conn.exec_driver_sql("DROP SCHEMA IF EXISTS public CASCADE")
            conn.exec_driver_sql("CREATE SCHEMA public")
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def warehouse_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty warehouse (nothing migrated yet) on each dialect."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'wh.db'}"
    url: str = request.getfixturevalue("pg_url")
    _reset_pg(url)
    return url


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite warehouse migrated once per session; each `engine` test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "wh.db"
    eng = make_engine(f"sqlite:///{path}")
    try:
        migrate(eng)
    finally:
        eng.dispose()
    return path


@pytest.fixture(scope="session")
def _pg_template(pg_url: str) -> Iterator[str]:
    """The name of a PostgreSQL database migrated once per session; `engine` tests start from a copy."""
    name = f"{sa.make_url(pg_url).database}_template"
    admin = _admin_engine(_pg_admin_url())
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        eng = make_engine(sa.make_url(pg_url).set(database=name).render_as_string(hide_password=False))
        try:
            migrate(eng)
        finally:
            eng.dispose()
        yield name
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def engine(warehouse_url: str, request: pytest.FixtureRequest) -> Iterator[Engine]:
    """A migrated warehouse engine, disposed after the test.

    The schema is migrated once per session and copied for each test (a file copy on SQLite, CREATE
    DATABASE ... TEMPLATE on PostgreSQL): running every migration per test took most of the suite's time.
    """
    url = sa.make_url(warehouse_url)
    if url.get_backend_name() == "sqlite":
        assert url.database is not None
        shutil.copyfile(request.getfixturevalue("_sqlite_template"), url.database)
    else:
        template = request.getfixturevalue("_pg_template")
        admin = _admin_engine(_pg_admin_url())
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
                conn.exec_driver_sql(f'CREATE DATABASE "{url.database}" TEMPLATE "{template}"')
        finally:
            admin.dispose()
    eng = make_engine(warehouse_url)
    migrate(eng)  # at the head already: only checks the revision
    try:
        yield eng
    finally:
        eng.dispose()
