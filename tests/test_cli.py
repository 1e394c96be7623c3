"""The `connector` command as IT staff and the demo use it."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import respx
import sqlalchemy as sa
from typer.testing import CliRunner

from connector.cli import app, demo_config_path

runner = CliRunner()
BASE = "https://emr.test/fhir"


def connector(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "connector", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def demo_service_requests() -> int:
    path = demo_config_path().parent / "data" / "ServiceRequest.ndjson.gz"
    with gzip.open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def test_demo_end_to_end_twice(tmp_path: Path) -> None:
    first = connector("demo", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "Sync summary" in first.stdout
    assert "New referrals per week" in first.stdout
    db = tmp_path / "demo-warehouse.db"
    assert db.exists()
    # The .db file alone is the warehouse: its write-ahead log was folded into it.
    assert (
        not (tmp_path / "demo-warehouse.db-wal").exists()
        or (tmp_path / "demo-warehouse.db-wal").stat().st_size == 0
    )
    copy = tmp_path / "copy.db"
    copy.write_bytes(db.read_bytes())
    copied = sa.create_engine(f"sqlite:///{copy}")
    with copied.connect() as conn:
        assert conn.execute(sa.text("select count(*) from referral")).scalar_one() > 100
    copied.dispose()
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        referrals = conn.execute(sa.text("select count(*) from referral")).scalar_one()
        rejected = conn.execute(
            sa.text("select count(*) from dead_letter where resource_type = 'ServiceRequest'")
        ).scalar_one()
        unnamed = conn.execute(
            sa.text("select count(*) from referral where patient_ref not like 'Patient/%'")
        )
        unnamed_count = unnamed.scalar_one()
    engine.dispose()
    # Nothing is lost: every ServiceRequest in the sample data is a referral or a dead letter.
    assert referrals + rejected == demo_service_requests()
    assert referrals > 100
    assert rejected >= 1
    assert unnamed_count == 0  # only references to patients, never names

    second = connector("demo", "--json", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    report = orjson.loads(second.stdout)
    assert report["status"] == "succeeded"
    assert report["streams"], "the JSON summary lists the streams"
    assert sum(s["loaded"] for s in report["streams"]) == 0  # re-running loads nothing twice
    assert sum(s["fetched"] for s in report["streams"]) > 0

    status = connector("status", "--config", str(demo_config_path()), "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    data = orjson.loads(status.stdout)
    assert {w["resource_type"] for w in data["watermarks"]} >= {"ServiceRequest"}
    assert any(d["resource_type"] == "ServiceRequest" and d["open"] == rejected for d in data["dead_letters"])

    # The demo's folder has no server: acknowledgments and metrics wait in the outbox, shown dry.
    pushed = connector("push", "--config", str(demo_config_path()), "--dry-run", "--json", cwd=tmp_path)
    assert pushed.returncode == 0, pushed.stderr
    (summary,) = orjson.loads(pushed.stdout)
    assert summary["sent"] == {}
    assert (
        summary["waiting"]["task-create"]
        == len([w for w in summary["would_send"] if w["kind"] == "task-create"])
        > 0
    )
    assert {w["resource"]["resourceType"] for w in summary["would_send"]} == {
        "Task",
        "Measure",
        "MeasureReport",
    }

    listed = connector("deadletters", "list", "--config", str(demo_config_path()), "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    letters = orjson.loads(listed.stdout)
    assert all("payload" not in letter for letter in letters)
    assert all(letter["error"] for letter in letters)


def test_init_writes_a_valid_example_and_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "connector.toml"
    result = runner.invoke(app, ["init", str(target)])
    assert result.exit_code == 0
    assert "[[endpoints]]" in target.read_text()
    assert target.stat().st_mode & 0o777 == 0o600  # credentials go in it: only its owner may read it
    again = runner.invoke(app, ["init", str(target)])
    assert again.exit_code == 1
    assert "exists" in again.output


def test_version() -> None:
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"connector {version('therapy-fhir-connector')}"


def test_config_error_is_one_clear_line_and_exit_1(tmp_path: Path) -> None:
    config = tmp_path / "connector.toml"
    config.write_text(
        '[[endpoints]]\nname = "emr"\nbase_url = "https://emr.test/fhir"\nshedule = "* * * * *"\n'
    )
    result = runner.invoke(app, ["sync", "--config", str(config)])
    assert result.exit_code == 1
    assert f"error: {config.resolve()}: endpoints['emr'].shedule: unknown key" in result.output


def capability(types: list[str]) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "fhirVersion": "4.0.1",
        "rest": [
            {
                "mode": "server",
                "searchParam": [{"name": "_lastUpdated", "type": "date"}],
                "resource": [{"type": t} for t in types],
            }
        ],
    }


def bearer_config(tmp_path: Path) -> Path:
    config = tmp_path / "connector.toml"
    config.write_text(
        f'[warehouse]\nurl = "sqlite:///{tmp_path}/wh.db"\n'
        f'[[endpoints]]\nname = "emr"\nbase_url = "{BASE}"\nresources = ["ServiceRequest", "Claim"]\n'
        '[endpoints.auth]\ntype = "bearer"\ntoken = "env:CLI_TEST_TOKEN"\n'
    )
    return config


def test_check_reports_modes_problems_and_never_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLI_TEST_TOKEN", "very-secret-token")
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/metadata").respond(json=capability(["ServiceRequest"]))
        search = mock.get("/ServiceRequest", params={"_count": "1"}).respond(
            json={"resourceType": "Bundle", "type": "searchset"}
        )
        result = runner.invoke(app, ["check", "--config", str(bearer_config(tmp_path)), "--json"])
    assert search.calls.last.request.headers["Authorization"] == "Bearer very-secret-token"
    assert result.exit_code == 1
    assert "very-secret-token" not in result.output
    assert "error: emr: the server does not offer Claim" in result.output
    report = orjson.loads(result.stdout)
    streams = {s["resource_type"]: s for s in report[0]["streams"]}
    assert streams["ServiceRequest"]["mode"] == "last-updated"
    assert streams["Claim"]["supported"] is False
    assert report[0]["auth"] == "ok"
    assert report[0]["fhir_version"] == "4.0.1"


def test_check_says_when_auth_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLI_TEST_TOKEN", "expired-token")
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/metadata").respond(json=capability(["ServiceRequest", "Claim"]))
        mock.get("/ServiceRequest").respond(
            401,
            json={
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "login", "diagnostics": "token expired"}],
            },
        )
        result = runner.invoke(app, ["check", "--config", str(bearer_config(tmp_path))])
    assert result.exit_code == 1
    assert "auth failed" in result.output
    assert "expired-token" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["-r", "Servicerequest"],
            "error: unknown resource type 'Servicerequest'; did you mean ServiceRequest?",
        ),
        (
            ["-r", "Patient"],
            "error: Patient is not in the resources of folder: add it to `resources` to sync it",
        ),
        (["-e", "foldr"], "error: no endpoint named 'foldr'; did you mean folder? (configured: folder)"),
        (["-r", "Bogus"], "error: unknown resource type 'Bogus'"),
    ],
)
def test_a_selection_that_selects_nothing_is_an_error_not_an_empty_run(
    args: list[str], message: str, tmp_path: Path
) -> None:
    # A typo'd --resource used to print an empty summary and exit 0.
    folder = tmp_path / "export"
    folder.mkdir()
    config = tmp_path / "connector.toml"
    config.write_text(
        f'[warehouse]\nurl = "sqlite:///{tmp_path}/wh.db"\n'
        f'[[endpoints]]\nname = "folder"\nndjson_dir = "{folder}"\nresources = ["ServiceRequest"]\n'
    )
    result = runner.invoke(app, ["sync", "--config", str(config), *args])
    assert result.exit_code == 2
    assert result.output.strip() == message
    assert not (tmp_path / "wh.db").exists()  # nothing ran
