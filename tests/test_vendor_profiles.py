"""Vendor profiles (mappings/vendors.py): `check` names the profile that fits a server and the streams a
sync would fail on; searches follow the profile's rules. The simulators below enforce each vendor's
published rules with a 400 OperationOutcome, as the servers do."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import respx
from typer.testing import CliRunner

from connector.cli import app
from connector.config import parse_settings
from connector.streams import plan_stream, stream_for
from connector.sync.pipeline import search_params
from connector.sync.windows import Window, window_params
from mappings.vendors import ATHENA, EPIC, GENERIC, ORACLE, PROFILES, recognise

runner = CliRunner()
BASE = "https://emr.test/fhir"


def capability(software: str | None, *, last_updated: bool = True) -> dict[str, Any]:
    cap: dict[str, Any] = {
        "resourceType": "CapabilityStatement",
        "fhirVersion": "4.0.1",
        "rest": [
            {
                "mode": "server",
                "searchParam": [{"name": "_lastUpdated", "type": "date"}] if last_updated else [],
                "resource": [
                    {"type": "ServiceRequest", "searchParam": [{"name": "authored", "type": "date"}]},
                    {"type": "Coverage"},
                ],
            }
        ],
    }
    if software:
        cap["software"] = {"name": software}
    return cap


def outcome(text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "required", "diagnostics": text}],
    }


class Simulator:
    """A FHIR server that refuses what its vendor refuses; `requests` keeps what it was asked."""

    def __init__(self, cap: dict[str, Any], needs_patient: tuple[str, ...] = (), practice: str | None = None):
        self.cap, self.needs_patient, self.practice = cap, needs_patient, practice
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        params = request.url.params
        if self.practice is not None and params.get("ah-practice") != self.practice:
            return httpx.Response(400, json=outcome("ah-practice is required"))
        if request.url.path.endswith("/metadata"):
            return httpx.Response(200, json=self.cap)
        rtype = request.url.path.rsplit("/", 1)[-1]
        if rtype in self.needs_patient and "patient" not in params and "_id" not in params:
            return httpx.Response(400, json=outcome(f"A {rtype} search requires the patient parameter"))
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "entry": []})


def config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "connector.toml"
    path.write_text(
        f'[warehouse]\nurl = "sqlite:///{tmp_path}/wh.db"\n'
        f'[[endpoints]]\nname = "emr"\nbase_url = "{BASE}"\nresources = ["ServiceRequest", "Coverage"]\n'
        f'bulk = "never"\n{extra}'
    )
    return path


def check(path: Path, server: Simulator) -> tuple[int, dict[str, Any]]:
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host="emr.test").mock(side_effect=server)
        result = runner.invoke(app, ["check", "--config", str(path), "--json"])
    (report,) = orjson.loads(result.stdout)
    return result.exit_code, report


def test_profiles_are_data_with_one_entry_per_vendor() -> None:
    assert list(PROFILES) == ["generic", "epic", "oracle", "athena"]
    assert EPIC.incremental_prefix() is None  # Epic has no _lastUpdated
    assert ORACLE.incremental_prefix() == "ge"
    assert ATHENA.incremental_prefix() == "gt"
    assert GENERIC.needs("ServiceRequest") == ()
    assert ORACLE.needs("ServiceRequest") == ("patient", "_id")
    assert EPIC.bulk_levels == ("group",)


@pytest.mark.parametrize(
    ("software", "expected"),
    [("Epic", "epic"), ("Cerner Millennium", "oracle"), ("athenaNet", "athena"), ("HAPI FHIR Server", None)],
)
def test_a_capability_statement_names_its_vendor(software: str, expected: str | None) -> None:
    found = recognise(capability(software))
    assert (found[0].name if found else None) == expected


def test_check_on_an_epic_server_configured_generic_names_the_profile_and_the_failing_streams(
    tmp_path: Path,
) -> None:
    server = Simulator(capability("Epic", last_updated=False), needs_patient=("ServiceRequest", "Coverage"))
    code, report = check(config(tmp_path), server)
    assert code == 1
    assert report["profile"] == "generic"
    assert report["profile_fit"] == "epic"
    assert "profile: the CapabilityStatement's software.name is 'Epic': set profile = \"epic\"" in " ".join(
        report["problems"]
    )
    searches = {s["resource_type"]: s["search"] for s in report["streams"]}
    assert searches["ServiceRequest"] == (
        "refused (HTTP 400): A ServiceRequest search requires the patient parameter"
    )
    # One probe per stream, a type-level search of one resource, after /metadata.
    probes = [r for r in server.requests if not r.url.path.endswith("/metadata")]
    assert [r.url.path.rsplit("/", 1)[-1] for r in probes] == ["ServiceRequest", "Coverage"]
    assert all(r.url.params["_count"] == "1" for r in probes)


def test_check_says_epic_exports_only_by_group(tmp_path: Path) -> None:
    server = Simulator(capability("Epic", last_updated=False), needs_patient=("ServiceRequest", "Coverage"))
    # Left unset, bulk_level is "group" for Epic; set to system, check says why it cannot be.
    assert _endpoint("epic").bulk_level == "group"
    path = config(tmp_path, 'profile = "epic"\nbulk_level = "system"\n').read_text()
    path = path.replace('bulk = "never"', 'bulk = "auto"')
    (tmp_path / "connector.toml").write_text(path)
    _, report = check(tmp_path / "connector.toml", server)
    assert (
        'Epic allows $export at group level only, not system: set bulk_level = "group" and bulk_group_id'
        in report["problems"]
    )
    assert report["profile_fit"] == "epic"


def test_check_on_an_unnamed_server_that_wants_patient_says_to_set_a_profile(tmp_path: Path) -> None:
    server = Simulator(capability(None), needs_patient=("ServiceRequest",))
    code, report = check(config(tmp_path), server)
    assert code == 1
    assert report["profile_fit"] is None
    assert any(
        p.startswith("profile: ServiceRequest: searched only per patient, like epic, oracle and athena")
        for p in report["problems"]
    )


def test_check_on_a_generic_server_says_generic_fits(tmp_path: Path) -> None:
    code, report = check(config(tmp_path), Simulator(capability("HAPI FHIR Server")))
    assert code == 0, report["problems"]
    assert report["profile_fit"] == "generic"
    assert "profile generic: every offered stream answered a type-level search" in report["notes"]


def test_athena_requests_carry_the_practice_and_count_at_most_100(tmp_path: Path) -> None:
    practice = "Organization/a-1.Practice-195900"
    server = Simulator(capability("athenaNet"), needs_patient=("ServiceRequest",), practice=practice)
    path = config(tmp_path, 'profile = "athena"\npractice_id = "195900"\npage_size = 500\n')
    code, report = check(path, server)
    assert all(r.url.params["ah-practice"] == practice for r in server.requests)  # /metadata too
    assert report["profile_fit"] == "athena"
    assert code == 1  # ServiceRequest needs a per-patient crawl
    assert (
        "ServiceRequest: athenahealth searches them only per patient: set `patient_group_id` (or "
        "`bulk_group_id`), `patient_search` or `patient_list_file`" in report["problems"]
    )
    searches = {s["resource_type"]: s["search"] for s in report["streams"]}
    assert searches == {"ServiceRequest": "per patient", "Coverage": "ok"}
    endpoint = parse_settings(
        {
            "endpoints": [
                {"name": "a", "base_url": BASE, "profile": "athena", "practice_id": "1", "page_size": 500}
            ]
        }
    ).endpoints[0]
    plan = plan_stream(endpoint, stream_for("Coverage"), capability("athenaNet"))
    params = dict(search_params(plan, endpoint, datetime(2026, 11, 1, tzinfo=UTC)))
    assert params["_count"] == "100"
    assert params["_lastUpdated"] == "gt2026-10-31T23:59:00.000Z"


def _endpoint(profile: str) -> Any:
    return parse_settings({"endpoints": [{"name": "a", "base_url": BASE, "profile": profile}]}).endpoints[0]


def test_oracle_incremental_searches_use_ge_and_windows_le() -> None:
    endpoint = _endpoint("oracle")
    plan = plan_stream(endpoint, stream_for("Coverage"), capability("Cerner"))
    since = dict(search_params(plan, endpoint, datetime(2026, 11, 1, tzinfo=UTC)))
    assert since["_lastUpdated"] == "ge2026-10-31T23:59:00.000Z"  # the overlap makes ge safe
    window = Window(0, 2, "2026-01-01T00:00:00Z", "2026-06-01T00:00:00Z")
    bounds = [v for k, v in window_params(plan, endpoint, window, None) if k == "_lastUpdated"]
    assert bounds == ["ge2026-01-01T00:00:00Z", "le2026-06-01T00:00:00Z"]
    generic = _endpoint("generic")
    bounds = [v for k, v in window_params(plan, generic, window, None) if k == "_lastUpdated"]
    assert bounds == ["ge2026-01-01T00:00:00Z", "lt2026-06-01T00:00:00Z"]
