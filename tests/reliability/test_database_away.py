"""The warehouse goes away mid-run: the run fails cleanly with a one-line reason; the next run completes."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connector.errors import WarehouseError
from connector.warehouse import engine as engine_module
from connector.warehouse import writer
from connector.warehouse.engine import make_engine, migrate
from tests.reliability.conftest import TOTAL, FaultServer, expected_ids, snapshot, updated, write_config
from tests.reliability.sync_runner import sync_once


@pytest.mark.reliability
def test_sqlite_locked_by_another_writer_fails_cleanly_then_completes(
    tmp_path: Path, sqlite_url: str, fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "SQLITE_BUSY_TIMEOUT_MS", 200)
    config = write_config(tmp_path / "c.toml", sqlite_url, fault_server.base)
    holder = sqlite3.connect(
        sqlite_url.removeprefix("sqlite:///"), check_same_thread=False, isolation_level=None
    )

    # Another process takes an exclusive lock while page 2 is on its way.
    def take_the_lock() -> None:
        holder.execute("BEGIN EXCLUSIVE")

    fault_server.before_page[2] = take_the_lock
    try:
        outcome: Any
        try:
            outcome = asyncio.run(sync_once(str(config)))
        except WarehouseError as exc:
            outcome = exc
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    reason = outcome.error if not isinstance(outcome, WarehouseError) else str(outcome)
    if not isinstance(outcome, WarehouseError):
        assert outcome.status == "failed"
        assert outcome.transient
    assert reason is not None
    assert "locked" in reason
    assert "\n" not in reason
    snap = snapshot(sqlite_url)
    assert snap["watermark"] is None
    assert len(snap["raw"]) < TOTAL
    assert asyncio.run(sync_once(str(config))).status == "succeeded"
    snap = snapshot(sqlite_url)
    assert [r[0] for r in snap["referral"]] == expected_ids()
    assert snap["watermark"] == updated(TOTAL - 1)


@pytest.mark.reliability
@pytest.mark.postgres
def test_postgres_backend_terminated_mid_transaction_fails_cleanly_then_completes(
    tmp_path: Path, pg_url: str, fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import _reset_pg

    _reset_pg(pg_url)
    migrated = make_engine(pg_url)
    migrate(migrated)
    migrated.dispose()
    config = write_config(tmp_path / "c.toml", pg_url, fault_server.base)
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    original = writer._upsert
    calls = {"n": 0}

    def terminate_then_upsert(conn: sa.Connection, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 5:  # page 3's raw rows, inside its open transaction
            pid = conn.exec_driver_sql("select pg_backend_pid()").scalar_one()
            with admin.connect() as other:
                other.exec_driver_sql(f"select pg_terminate_backend({int(pid)})")
        return original(conn, *args, **kwargs)

    monkeypatch.setattr(writer, "_upsert", terminate_then_upsert)
    try:
        result = asyncio.run(sync_once(str(config)))
    finally:
        admin.dispose()
    assert result.status == "failed"
    assert result.transient
    assert result.error is not None
    assert "\n" not in result.error
    assert "writing a ServiceRequest page of clinic failed" in result.error
    snap = snapshot(pg_url)
    assert snap["watermark"] is None
    assert len(snap["raw"]) + len(snap["dead_letter"]) == 100  # pages 1 and 2 committed, page 3 not
    monkeypatch.undo()
    assert asyncio.run(sync_once(str(config))).status == "succeeded"
    snap = snapshot(pg_url)
    assert [r[0] for r in snap["referral"]] == expected_ids()
    assert snap["watermark"] == updated(TOTAL - 1)
