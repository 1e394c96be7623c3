"""What `connector check` and `connector status` say about Bulk $export: the levels a server declares, the
configured mode, the types an export would skip, and an export an earlier run left in progress."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import respx
from typer.testing import CliRunner

from connector.cli import app
from connector.config import load_settings
from connector.fhir.capabilities import bulk_export_levels
from connector.warehouse import bulk_state
from connector.warehouse.engine import make_engine, migrate
from connector.warehouse.writer import PageWrite, write_page

runner = CliRunner()
BASE = "https://emr.test/fhir"
STATUS_URL = "https://emr.test/fhir/bulkstatus/job-7?token=not-shown"


def capability(types: list[str], *, system: bool = False, group: bool = False) -> dict[str, Any]:
    resources: list[dict[str, Any]] = [{"type": t} for t in types]
    if group:
        resources.append(
            {
                "type": "Group",
                "operation": [
                    {
                        "name": "export",
                        "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
                    }
                ],
            }
        )
    rest: dict[str, Any] = {
        "mode": "server",
        "searchParam": [{"name": "_lastUpdated", "type": "date"}],
        "resource": resources,
    }
    if system:
        rest["operation"] = [
            {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"}
        ]
    return {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1", "rest": [rest]}


def write_config(tmp_path: Path, *, bulk: str = "auto", level: str = "system") -> Path:
    config = tmp_path / "connector.toml"
    config.write_text(
        f'[warehouse]\nurl = "sqlite:///{tmp_path}/wh.db"\n'
        f'[[endpoints]]\nname = "emr"\nbase_url = "{BASE}"\nresources = ["ServiceRequest", "Coverage"]\n'
        f'bulk = "{bulk}"\nbulk_level = "{level}"\nbulk_group_id = "g1"\n'
    )
    return config


def run_check(config: Path, cap: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
    # Only the offered streams are probed: a route of a type the server lacks goes uncalled.
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/metadata").respond(json=cap)
        for rtype in ("ServiceRequest", "Coverage"):  # check probes a search of each stream
            mock.get(f"/{rtype}").respond(json={"resourceType": "Bundle", "type": "searchset"})
        as_json = runner.invoke(app, ["check", "--config", str(config), "--json"])
        as_text = runner.invoke(app, ["check", "--config", str(config)])
    (report,) = orjson.loads(as_json.stdout)
    return as_json.exit_code, report, as_text.output


def test_bulk_export_levels_in_order() -> None:
    assert bulk_export_levels(capability([])) == []
    assert bulk_export_levels(capability([], group=True)) == ["group"]
    assert bulk_export_levels(capability([], system=True, group=True)) == ["system", "group"]
    instantiates = {"instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data|2.0.0"]}
    assert bulk_export_levels(capability([]) | instantiates) == ["system", "group", "patient"]


def test_check_prints_declared_levels_and_the_types_an_export_would_skip(tmp_path: Path) -> None:
    # The server lists ServiceRequest and Coverage but none of the directory types an export of referrals
    # also asks for: those are what $export would skip.
    code, report, text = run_check(
        write_config(tmp_path), capability(["ServiceRequest", "Coverage"], system=True, group=True)
    )
    assert code == 0
    assert report["bulk_levels"] == ["system", "group"]
    assert report["bulk"] == "auto at system level"
    skip = next(n for n in report["notes"] if "would skip" in n)
    assert "Practitioner, PractitionerRole, Organization" in skip
    assert "Coverage" not in skip
    assert "server declares system, group; configured auto at system level" in text
    # check never creates the warehouse it only reads.
    assert not (tmp_path / "wh.db").exists()
    assert report["export_in_progress"] is None


def test_bulk_always_at_a_level_the_server_lacks_is_a_problem(tmp_path: Path) -> None:
    cap = capability(["ServiceRequest", "Coverage"], group=True)
    code, report, text = run_check(write_config(tmp_path, bulk="always", level="system"), cap)
    assert code == 1
    assert any("needs $export at system level" in p for p in report["problems"])
    assert "error: emr: bulk = 'always' needs $export at system level" in text


def test_bulk_auto_at_a_missing_level_is_a_note_not_a_problem(tmp_path: Path) -> None:
    cap = capability(["ServiceRequest", "Coverage"], group=True)
    code, report, _ = run_check(write_config(tmp_path, bulk="auto", level="patient"), cap)
    assert code == 0
    assert report["problems"] == []
    assert any("backfills search instead" in n for n in report["notes"])


@pytest.fixture
def pending_warehouse(tmp_path: Path) -> Path:
    """A migrated warehouse in which an earlier run kicked off an export for two streams."""
    config = write_config(tmp_path)
    engine = make_engine(load_settings(config).warehouse.url)
    try:
        migrate(engine)
        started = datetime(2026, 12, 6, 22, 15, tzinfo=UTC)
        bulk_state.save_kickoff(engine, "emr", ["ServiceRequest", "Coverage"], STATUS_URL, started)
    finally:
        engine.dispose()
    return config


def test_check_says_an_export_is_in_progress(pending_warehouse: Path) -> None:
    cap = capability(["ServiceRequest", "Coverage"], system=True)
    code, report, text = run_check(pending_warehouse, cap)
    assert code == 0
    export = report["export_in_progress"]
    assert export["resource_types"] == ["Coverage", "ServiceRequest"]
    assert export["status_url"] == "https://emr.test/fhir/bulkstatus/job-7"  # no query: it may hold a token
    assert "export in progress since 2026-12-06 22:15 UTC (running on the server" in text
    assert "not-shown" not in text


def test_status_lists_exports_in_progress(pending_warehouse: Path) -> None:
    as_json = runner.invoke(app, ["status", "--config", str(pending_warehouse), "--json"])
    assert as_json.exit_code == 0, as_json.output
    (export,) = orjson.loads(as_json.stdout)["bulk_exports"]
    assert export["endpoint"] == "emr"
    assert export["files_done"] == 0
    assert export["transaction_time"] is None
    as_text = runner.invoke(app, ["status", "--config", str(pending_warehouse)])
    assert as_text.exit_code == 0
    assert "Bulk exports in progress" in as_text.output
    assert "for Coverage, ServiceRequest" in as_text.output
    assert "not-shown" not in as_text.output


def test_status_without_exports_lists_none(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    engine = make_engine(load_settings(config).warehouse.url)
    migrate(engine)
    engine.dispose()
    result = runner.invoke(app, ["status", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout)["bulk_exports"] == []


def test_check_shows_the_mode_the_next_sync_uses(tmp_path: Path) -> None:
    # A first sync of a server that offers $export goes by Bulk export (bulk = "auto"): check used to
    # say "last-updated" for it. Once a stream has a watermark, its next sync searches.
    config = write_config(tmp_path)
    cap = capability(["ServiceRequest", "Coverage"], system=True)
    _, report, text = run_check(config, cap)
    modes = {s["resource_type"]: (s["mode"], s["reason"]) for s in report["streams"]}
    assert modes["ServiceRequest"] == (
        "bulk",
        "first load: the server offers $export at system level (bulk = auto)",
    )
    assert modes["Coverage"][0] == "bulk"
    assert "first load" in text

    engine = make_engine(load_settings(config).warehouse.url)
    try:
        migrate(engine)
        write_page(
            engine, PageWrite("emr", "ServiceRequest", watermark="2026-12-01T00:00:00Z", mode="last-updated")
        )
    finally:
        engine.dispose()
    _, report, _ = run_check(config, cap)
    after = {s["resource_type"]: s["mode"] for s in report["streams"]}
    assert after == {"ServiceRequest": "last-updated", "Coverage": "bulk"}


def test_check_says_a_pending_export_is_resumed(pending_warehouse: Path) -> None:
    _, report, _ = run_check(pending_warehouse, capability(["ServiceRequest", "Coverage"], system=True))
    reasons = {s["resource_type"]: (s["mode"], s["reason"]) for s in report["streams"]}
    assert reasons["Coverage"] == ("bulk", "an export an earlier run kicked off is resumed")


def test_check_with_bulk_never_shows_the_search_mode(tmp_path: Path) -> None:
    _, report, _ = run_check(
        write_config(tmp_path, bulk="never"), capability(["ServiceRequest"], system=True)
    )
    assert report["streams"][0]["mode"] == "last-updated"
