"""Engine set-up, migrations and the UTC timestamp type, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine

from connector.errors import WarehouseError
from connector.warehouse.engine import (
    ensure_schema,
    make_engine,
    migrate,
    schema_revision,
    script_head,
)
from connector.warehouse.models import Base
from connector.warehouse.writer import upsert_rows

EXPECTED_TABLES = {"raw_resource", "sync_state", "sync_run", "dead_letter", "referral"}
PLUS_02 = timezone(timedelta(hours=2))


#: The migrations form one line numbered 0001, 0002, ...: the head is the highest-numbered revision file.
VERSIONS = Path(__file__).parents[1] / "connector" / "warehouse" / "migrations" / "versions"
HEAD_REVISION = max(p.name[:4] for p in VERSIONS.glob("[0-9][0-9][0-9][0-9]_*.py"))


def test_the_head_revision_is_the_highest_numbered_file() -> None:
    # A second head (two revisions on one parent) would make script_head fail or differ.
    assert script_head() == HEAD_REVISION


def test_the_head_read_from_the_scripts_is_alembics() -> None:
    from alembic.script import ScriptDirectory

    assert script_head() == ScriptDirectory(str(VERSIONS.parent)).get_current_head()


def test_models_define_the_contract_tables() -> None:
    assert set(Base.metadata.tables) >= EXPECTED_TABLES


def test_migrate_creates_every_model_table_and_column(warehouse_url: str) -> None:
    engine = make_engine(warehouse_url)
    try:
        assert schema_revision(engine) is None
        assert migrate(engine) == HEAD_REVISION
        assert schema_revision(engine) == HEAD_REVISION

        inspector = sa.inspect(engine)
        assert set(Base.metadata.tables) | {"alembic_version"} == set(inspector.get_table_names())
        for table in Base.metadata.sorted_tables:
            columns = {c["name"]: c for c in inspector.get_columns(table.name)}
            assert set(columns) == {c.name for c in table.columns}, table.name
            for column in table.columns:
                assert columns[column.name]["nullable"] == column.nullable, f"{table.name}.{column.name}"
            pk = inspector.get_pk_constraint(table.name)["constrained_columns"]
            assert pk == [c.name for c in table.primary_key.columns], table.name
            indexes = {i["name"] for i in inspector.get_indexes(table.name)}
            assert {i.name for i in table.indexes} <= indexes, table.name
        uniques = inspector.get_unique_constraints("dead_letter")
        assert [u["column_names"] for u in uniques] == [["endpoint", "resource_type", "payload_hash"]]

        # What `alembic check` does: autogenerate finds nothing left to migrate.
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_migrate_is_idempotent(engine: Engine) -> None:
    upsert_rows_count = _insert_one_state(engine)
    assert upsert_rows_count == 1
    assert migrate(engine) == HEAD_REVISION
    assert migrate(engine) == HEAD_REVISION
    # Re-migrating must not drop or recreate tables: the data is still there.
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM sync_state")).scalar_one() == 1


def _insert_one_state(engine: Engine) -> int:
    with engine.begin() as conn:
        return upsert_rows(
            conn,
            Base.metadata.tables["sync_state"],
            [{"endpoint": "e", "resource_type": "Claim", "updated_at": datetime.now(UTC)}],
        )


def test_ensure_schema(warehouse_url: str) -> None:
    engine = make_engine(warehouse_url)
    try:
        if engine.dialect.name == "sqlite":
            # One machine, one file: migrated on the spot.
            ensure_schema(engine)
            assert schema_revision(engine) == HEAD_REVISION
        else:
            # Shared server: only checked; migrating is an explicit command.
            with pytest.raises(
                WarehouseError, match=rf"schema is at none.*expected {HEAD_REVISION}: run `connector migrate`"
            ):
                ensure_schema(engine)
            assert schema_revision(engine) is None
            migrate(engine)
            ensure_schema(engine)
    finally:
        engine.dispose()


def test_make_engine_hides_the_password_when_the_server_is_unreachable() -> None:
    # Port 1 refuses connections at once.
    with pytest.raises(WarehouseError) as info:
        make_engine("postgresql://connector:sup3r-s3cret@127.0.0.1:1/warehouse")
    message = str(info.value)
    assert "sup3r-s3cret" not in message
    assert "***" in message
    assert message.startswith("cannot connect to warehouse postgresql+psycopg://connector:***@127.0.0.1:1/")


def test_make_engine_rejects_an_unparseable_url_without_echoing_it() -> None:
    with pytest.raises(WarehouseError, match="not a valid SQLAlchemy URL") as info:
        make_engine("postgresql://u:topsecret@host:notaport/db")
    assert "topsecret" not in str(info.value)


@pytest.mark.postgres
def test_make_engine_maps_plain_postgresql_to_psycopg(pg_url: str) -> None:
    plain = sa.make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    engine = make_engine(plain)
    try:
        assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()


def test_make_engine_sqlite_creates_the_folder_and_sets_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "wh.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        assert path.parent.is_dir()
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 30_000
    finally:
        engine.dispose()


def test_sqlite_transactions_roll_back_ddl(sqlite_url: str) -> None:
    # The sqlite3 module alone would autocommit DDL; migrations rely on it rolling back.
    engine = make_engine(sqlite_url)
    try:
        conn = engine.connect()
        transaction = conn.begin()
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        transaction.rollback()
        conn.close()
        assert "t" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_utc_datetime_round_trips_an_offset_input_as_aware_utc(engine: Engine) -> None:
    table = Base.metadata.tables["sync_state"]
    local = datetime(2024, 3, 5, 14, 30, 15, 123456, tzinfo=PLUS_02)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(table).values(endpoint="e", resource_type="Claim", watermark_at=local, updated_at=local)
        )
    with engine.connect() as conn:
        stored = conn.execute(sa.select(table.c.watermark_at)).scalar_one()
        # What a BI tool reading the column directly sees: 12:30 UTC, not 14:30.
        text = conn.execute(sa.select(sa.cast(table.c.watermark_at, sa.String))).scalar_one()
    assert stored == local
    assert stored.tzinfo is UTC
    assert stored.hour == 12
    assert "12:30:15" in text


def test_utc_datetime_refuses_naive_datetimes(engine: Engine) -> None:
    table = Base.metadata.tables["sync_state"]
    with pytest.raises(sa.exc.StatementError, match="naive datetime"), engine.begin() as conn:
        conn.execute(
            sa.insert(table).values(endpoint="e", resource_type="Claim", updated_at=datetime(2024, 1, 1))
        )


@pytest.mark.parametrize(
    "warehouse_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_raw_payloads_stored_as_jsonb_become_json_and_back(warehouse_url: str) -> None:
    from alembic import command

    from connector.warehouse.engine import _alembic_config

    engine = make_engine(warehouse_url)
    payload = {"resourceType": "ServiceRequest", "id": "sr-1", "note": [{"text": "über"}]}

    def payload_type() -> str:
        with engine.connect() as conn:
            return conn.exec_driver_sql(
                "SELECT data_type FROM information_schema.columns "
                "WHERE table_name = 'raw_resource' AND column_name = 'payload'"
            ).scalar_one()

    def stored() -> dict:
        with engine.connect() as conn:
            return conn.exec_driver_sql("SELECT payload FROM raw_resource").scalar_one()

    try:
        with engine.begin() as conn:
            command.upgrade(_alembic_config(conn), "0007")
        assert payload_type() == "jsonb"
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO raw_resource (endpoint, resource_type, resource_id, content_hash, payload, "
                    "fetched_at) VALUES ('emr', 'ServiceRequest', 'sr-1', 'h', CAST(:p AS jsonb), now())"
                ),
                {"p": json.dumps(payload)},
            )
        assert migrate(engine) == HEAD_REVISION
        assert (payload_type(), stored()) == ("json", payload)
        with engine.begin() as conn:
            command.downgrade(_alembic_config(conn), "0007")
        assert (payload_type(), stored()) == ("jsonb", payload)
    finally:
        engine.dispose()
