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
from connector.report import activity_weeks, collect, parse_period

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
    assert "Closing the loop with referrers" in first.stdout
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
        # The demo's episodes: every attended evaluation has its plan, goals and notes, linked to its
        # referral; their milestones and summaries wait in the outbox (a folder has no EMR to send them to).
        loop = conn.execute(
            sa.text(
                "select count(*), sum(updates_waiting), sum(summaries_sent) from v_referral_loop "
                "where evaluation_attended_at is not null"
            )
        ).one()
        unlinked = conn.execute(
            sa.text(
                "select (select count(*) from episode where referral_ref is null) + "
                "(select count(*) from care_plan where referral_ref is null) + "
                "(select count(*) from goal where referral_ref is null) + "
                "(select count(*) from clinical_note where referral_ref is null)"
            )
        ).scalar_one()
        # The demo's report covers the data's weeks, so it counts every referral of the demo.
        as_of, period = activity_weeks(engine) or (None, "")
    assert period == "17w"  # July 12 - November 1 2026: the Sunday before 16 whole weeks
    assert as_of is not None
    shown = collect(engine, parse_period(period, as_of))
    assert shown["funnel"]["totals"]["received"] == referrals
    assert loop[0] > 50
    assert loop[1] > loop[0]  # an evaluated referral has at least a Task milestone and a summary waiting
    assert loop[2] == 0
    assert unlinked == 0
    assert shown["loop"]["evaluated"] == loop[0]
    assert sum(week["referrals"] for week in shown["referrals_weekly"]["totals"]) == referrals
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


def test_every_line_of_an_ndjson_file_is_accounted_for_in_the_summary_and_dead_letters(
    tmp_path: Path,
) -> None:
    # Reported: 8 lines gave "fetched 6, loaded 3, rejected 3"; `{"hello":"world"}` and a Coverage vanished.
    def sr(n: int) -> bytes:
        return orjson.dumps(
            {
                "resourceType": "ServiceRequest",
                "id": f"sr{n}",
                "status": "active",
                "intent": "order",
                "subject": {"reference": "Patient/p1"},
                "meta": {"lastUpdated": "2026-11-02T10:00:00Z"},
            }
        )

    coverage = {
        "resourceType": "Coverage",
        "id": "cov1",
        "status": "active",
        "beneficiary": {"reference": "Patient/p1"},
        "payor": [{"reference": "Organization/o1"}],
    }
    folder = tmp_path / "export"
    folder.mkdir()
    lines = [
        sr(1),
        b'{"resourceType": "ServiceRequest",',
        sr(2),
        b"[1]",
        b"7",
        b'{"hello":"world"}',
        orjson.dumps(coverage),
        sr(3),
    ]
    (folder / "ServiceRequest.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    config = tmp_path / "connector.toml"
    config.write_text(
        f'[warehouse]\nurl = "sqlite:///{tmp_path}/wh.db"\n'
        f'[[endpoints]]\nname = "folder"\nndjson_dir = "{folder}"\n'
        'resources = ["ServiceRequest", "Coverage"]\n'
    )
    result = runner.invoke(app, ["sync", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["resource_type"]: r for r in orjson.loads(result.stdout)["streams"]}
    sr_row = rows["ServiceRequest"]
    assert (sr_row["fetched"], sr_row["loaded"], sr_row["rejected"], sr_row["included"]) == (7, 3, 4, 1)
    assert sr_row["fetched"] == sr_row["loaded"] + sr_row["rejected"] + sr_row["unchanged"]
    engine = sa.create_engine(f"sqlite:///{tmp_path}/wh.db")
    with engine.connect() as conn:
        lines_of = conn.execute(sa.text("SELECT error FROM dead_letter ORDER BY error")).scalars().all()
        coverages = conn.execute(
            sa.text("SELECT count(*) FROM raw_resource WHERE resource_type = 'Coverage'")
        ).scalar_one()
    engine.dispose()
    assert coverages == 1  # the Coverage line was loaded as a Coverage
    assert [line.split(": ")[0] for line in lines_of] == [f"ServiceRequest.ndjson:{n}" for n in (2, 4, 5, 6)]
    assert lines_of[-1].endswith("no resourceType")


def test_push_turned_on_later_queues_the_referrals_already_synced_and_says_so(tmp_path: Path) -> None:
    # Reported: after push_acknowledgments = true no Task was queued for referrals already in the
    # warehouse, and a full refresh then sent 101 Tasks without a word in its output.
    def referral(n: int, status: str, authored: str) -> dict[str, Any]:
        return {
            "resourceType": "ServiceRequest",
            "id": f"sr{n}",
            "status": status,
            "intent": "order",
            "authoredOn": authored,
            "subject": {"reference": "Patient/p1"},
            "meta": {"lastUpdated": "2026-11-02T10:00:00Z"},
        }

    folder = tmp_path / "export"
    folder.mkdir()
    referrals = [
        referral(1, "active", "2026-11-01"),
        referral(2, "active", "2026-11-20"),
        referral(3, "completed", "2026-11-21"),  # not active: never acknowledged
        referral(4, "active", "2026-10-01"),  # before acknowledge_since
    ]
    (folder / "ServiceRequest.ndjson").write_bytes(b"\n".join(orjson.dumps(r) for r in referrals))
    config = tmp_path / "connector.toml"
    base = (
        f'[warehouse]\nurl = "sqlite:///{tmp_path}/wh.db"\n'
        f'[[endpoints]]\nname = "folder"\nndjson_dir = "{folder}"\nresources = ["ServiceRequest"]\n'
    )
    config.write_text(base)
    first = runner.invoke(app, ["sync", "--config", str(config), "--json"])
    assert first.exit_code == 0, first.output
    assert orjson.loads(first.stdout)["push"] == []

    config.write_text(
        base
        + 'push_acknowledgments = true\nowner = "Organization/practice"\nacknowledge_since = "2026-10-15"\n'
    )
    second = runner.invoke(app, ["sync", "--config", str(config)])
    assert second.exit_code == 0, second.output
    # Nothing changed in the files (every resource unchanged), yet sr1 and sr2 are queued now.
    assert "Push-back to folder: 2 queued, 0 sent, 0 failed" in second.stdout
    engine = sa.create_engine(f"sqlite:///{tmp_path}/wh.db")
    with engine.connect() as conn:
        items = conn.execute(sa.text("SELECT item_key, status FROM outbox ORDER BY item_key")).all()
    engine.dispose()
    assert [tuple(i) for i in items] == [("ServiceRequest/sr1", "pending"), ("ServiceRequest/sr2", "pending")]

    third = runner.invoke(app, ["sync", "--config", str(config), "--json"])
    assert orjson.loads(third.stdout)["push"] == []  # queued once


def test_a_run_receipt_compares_the_servers_count_with_the_warehouse_and_status_lists_differences(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLI_TEST_TOKEN", "t")
    server_total = {"n": 3}  # the server says it holds 3; its searches return 2 (one is hidden from us)

    def sr(n: int) -> dict[str, Any]:
        return {
            "fullUrl": f"{BASE}/ServiceRequest/sr{n}",
            "resource": {
                "resourceType": "ServiceRequest",
                "id": f"sr{n}",
                "status": "active",
                "intent": "order",
                "subject": {"reference": "Patient/p1"},
                "meta": {"lastUpdated": f"2026-11-0{n}T10:00:00Z"},
            },
        }

    def answer(request: Any) -> Any:
        import httpx

        path, params = request.url.path, dict(request.url.params)
        if path.endswith("/metadata"):
            return httpx.Response(200, json=capability(["ServiceRequest"]))
        if params.get("_summary") == "count":
            return httpx.Response(
                200, json={"resourceType": "Bundle", "type": "searchset", "total": server_total["n"]}
            )
        entries = [sr(1), sr(2)] if path.endswith("/ServiceRequest") else []
        bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}
        return httpx.Response(200, json=bundle)

    config = tmp_path / "connector.toml"
    config.write_text(
        f'[warehouse]\nurl = "sqlite:///{tmp_path}/wh.db"\n'
        f'[[endpoints]]\nname = "emr"\nbase_url = "{BASE}"\nresources = ["ServiceRequest"]\n'
        '[endpoints.auth]\ntype = "bearer"\ntoken = "env:CLI_TEST_TOKEN"\n'
    )
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host="127.0.0.1").pass_through()  # the local Prefect API
        mock.route(host="emr.test").mock(side_effect=answer)
        result = runner.invoke(app, ["sync", "--config", str(config), "--json"])
        assert result.exit_code == 0, result.output
        (row,) = orjson.loads(result.stdout)["streams"]
        assert (row["loaded"], row["source_count"], row["warehouse_count"]) == (2, 3, 2)
        text = runner.invoke(app, ["sync", "--config", str(config)])
        assert "3 / 2  differs" in text.stdout
        # Progress: first what it connects to (hosts, no secret), then the server's count of the search.
        assert f"Syncing emr (emr.test) into sqlite:///{tmp_path}/wh.db ...\n" in text.stderr
        assert "emr ServiceRequest: the server counts 2 to fetch" in text.stderr

        status = runner.invoke(app, ["status", "--config", str(config), "--json"])
        (listed,) = orjson.loads(status.stdout)["receipts_disagreeing"]
        assert (listed["resource_type"], listed["source_count"], listed["warehouse_count"]) == (
            "ServiceRequest",
            3,
            2,
        )
        # Once they agree again, status lists nothing.
        server_total["n"] = 2
        assert runner.invoke(app, ["sync", "--config", str(config)]).exit_code == 0
        status = runner.invoke(app, ["status", "--config", str(config), "--json"])
        assert orjson.loads(status.stdout)["receipts_disagreeing"] == []


def test_check_reads_every_ndjson_file_to_its_end_and_names_a_truncated_one(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    line = orjson.dumps({"resourceType": "ServiceRequest", "id": "sr1", "status": "active"}) + b"\n"
    body = gzip.compress(line * 3000)
    (folder / "ServiceRequest.ndjson.gz").write_bytes(body[: len(body) // 2])  # cut short in transfer
    (folder / "Coverage.ndjson").write_bytes(line.replace(b"ServiceRequest", b"Coverage") * 2)
    config = tmp_path / "connector.toml"
    config.write_text(
        f'[warehouse]\nurl = "sqlite:///{tmp_path}/wh.db"\n'
        f'[[endpoints]]\nname = "folder"\nndjson_dir = "{folder}"\n'
        'resources = ["ServiceRequest", "Coverage"]\n'
    )
    result = runner.invoke(app, ["check", "--config", str(config), "--json"])
    assert result.exit_code == 1
    assert "ServiceRequest.ndjson.gz cannot be read past line" in result.output
    (report,) = orjson.loads(result.stdout)
    reasons = {s["resource_type"]: s["reason"] for s in report["streams"]}
    assert reasons["Coverage"] == "1 file(s), 2 line(s)"


def test_every_option_of_every_command_has_help_text() -> None:
    import typer.main

    missing: list[str] = []
    seen: list[str] = []

    def walk(command: Any, path: list[str]) -> None:
        # Typer builds its commands on a click of its own: look at them by what they have.
        if getattr(command, "commands", None):
            for name, sub in command.commands.items():
                walk(sub, [*path, name])
            return
        assert command.help, f"`connector {' '.join(path)}` has no help"
        for param in command.params:
            if param.param_type_name == "option":
                seen.append(f"{' '.join(path)} {param.opts[0]}")
                if not param.help:
                    missing.append(seen[-1])

    walk(typer.main.get_command(app), [])
    assert "sync --resource" in seen
    assert "deadletters list --endpoint" in seen
    assert missing == []
