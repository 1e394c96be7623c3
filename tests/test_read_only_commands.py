"""`status`, `report` and `deadletters list` only read the warehouse: no endpoint secret needed, nothing
created where the warehouse should be, nothing written to it."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from connector.cli import app
from connector.errors import WarehouseError
from connector.warehouse.engine import make_engine, migrate, open_read_only

runner = CliRunner()

READ_ONLY = [["status"], ["report", "--out", "r.html"], ["deadletters", "list"]]


def _config(tmp_path: Path, warehouse: Path) -> Path:
    config = tmp_path / "connector.toml"
    config.write_text(
        f'[warehouse]\nurl = "sqlite:///{warehouse}"\n'
        '[[endpoints]]\nname = "emr"\nbase_url = "https://emr.example.org/fhir"\n'
        '[endpoints.auth]\ntype = "basic"\nusername = "connector"\n'
        'password = "env:EMR_PASSWORD_NOT_SET_HERE"\n'
    )
    config.chmod(0o600)
    return config


@pytest.mark.parametrize("command", READ_ONLY, ids=lambda c: c[0])
def test_a_warehouse_that_does_not_exist_is_refused_not_created(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    warehouse = tmp_path / "typo" / "warehous.db"
    result = runner.invoke(app, [*command, "--config", str(_config(tmp_path, warehouse))])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: warehouse sqlite:///{warehouse} does not exist: check [warehouse] url, or run "
        "`connector sync` first"
    ]
    assert not warehouse.exists()
    assert not warehouse.parent.exists()


@pytest.mark.parametrize("command", READ_ONLY, ids=lambda c: c[0])
def test_read_only_commands_need_no_endpoint_secret(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EMR_PASSWORD_NOT_SET_HERE", raising=False)
    database = tmp_path / "wh.db"
    created = make_engine(f"sqlite:///{database}")
    migrate(created)
    created.dispose()
    result = runner.invoke(app, [*command, "--config", str(_config(tmp_path, database))])
    assert result.exit_code == 0, result.output
    assert "EMR_PASSWORD_NOT_SET_HERE" not in result.output
    # `sync` still needs it, and says so.
    synced = runner.invoke(app, ["sync", "--config", str(_config(tmp_path, database))])
    assert synced.exit_code == 1
    assert "environment variable EMR_PASSWORD_NOT_SET_HERE is not set" in synced.output


def test_the_read_only_engine_refuses_writes(engine: Engine) -> None:
    reader = open_read_only(engine.url.render_as_string(hide_password=False))
    try:
        with reader.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM sync_run")).scalar_one() == 0
        with pytest.raises(sa.exc.DBAPIError), reader.begin() as conn:
            conn.execute(sa.text("DELETE FROM sync_run"))
    finally:
        reader.dispose()


def test_a_database_without_the_schema_is_refused(warehouse_url: str) -> None:
    make_engine(warehouse_url).dispose()  # exists, never migrated
    with pytest.raises(WarehouseError, match=r"holds no connector schema: run `connector sync` first"):
        open_read_only(warehouse_url)
