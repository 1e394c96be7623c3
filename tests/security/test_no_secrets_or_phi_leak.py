"""A full sync with auth leaks no secret and no patient detail into logs, artifacts, errors or CLI output.

The flow runs in-process (Prefect test harness, respx for the FHIR servers) over three endpoints: bearer,
basic (one stream failing, so errors are produced) and SMART backend. The patient's name, birth date and
address ride in a `contained` Patient, in an `_include`d Patient and in an invalid resource (a dead
letter). Everything a person or a log shipper could see is captured and searched.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from typer.testing import CliRunner

from tests.flow_states import final_state

BEARER = "bearer-TOKEN-9f8e7d6c5b4a"
PASSWORD = "basic-PASSWORD-1a2b3c4d"
ACCESS_TOKEN = "smart-ACCESS-TOKEN-0z9y8x"
PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "name": [{"family": "Zyxwvutson", "given": ["Quenby"]}],
    "birthDate": "1937-04-19",
    "address": [{"line": ["4711 Marigoldia Lane"], "city": "Quillbridge", "postalCode": "98765"}],
}
PHI = ("Zyxwvutson", "Quenby", "1937-04-19", "Marigoldia", "Quillbridge", "98765")


@pytest.fixture(scope="module")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _referral(rid: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": rid,
        "meta": {"versionId": "1", "lastUpdated": "2026-11-01T10:00:00Z"},
        "contained": [{**PATIENT, "id": "pat"}],
        "status": "active",
        "intent": "order",
        "subject": {"reference": "#pat"},
        "authoredOn": "2026-10-01",
        **extra,
    }


def _bundle() -> dict[str, Any]:
    entries = [
        {"resource": _referral("sr1"), "search": {"mode": "match"}},
        # Invalid (status not in the value set): a dead letter whose payload holds the patient.
        {"resource": _referral("sr2", status="bogus"), "search": {"mode": "match"}},
        {"resource": PATIENT, "search": {"mode": "include"}},
    ]
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries}


def _capabilities() -> dict[str, Any]:
    search = [{"name": "_lastUpdated"}]
    return {
        "resourceType": "CapabilityStatement",
        "fhirVersion": "4.0.1",
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {"type": "ServiceRequest", "searchParam": search},
                    {"type": "Coverage", "searchParam": search},
                ],
            }
        ],
    }


def _private_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _config(tmp_path: Path, sqlite_url: str, key_file: Path) -> Path:
    common = 'resources = ["ServiceRequest", "Coverage"]\n[endpoints.retry]\nmax_attempts = 1\n'
    text = (
        f'[warehouse]\nurl = "{sqlite_url}"\n[runtime]\nbackfill_windows = 1\n'
        '[[endpoints]]\nname = "north"\nbase_url = "https://north.test/fhir"\n'
        f"{common}"
        f'[endpoints.auth]\ntype = "bearer"\ntoken = "{BEARER}"\n'
        '[[endpoints]]\nname = "south"\nbase_url = "https://south.test/fhir"\n'
        f"{common}"
        f'[endpoints.auth]\ntype = "basic"\nusername = "connector"\npassword = "env:SOUTH_PW"\n'
        '[[endpoints]]\nname = "east"\nbase_url = "https://east.test/fhir"\n'
        f"{common}"
        '[endpoints.auth]\ntype = "smart-backend"\nclient_id = "connector"\n'
        f'token_url = "https://east.test/token"\nprivate_key_file = "{key_file}"\n'
    )
    path = tmp_path / "connector.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def _mock_servers(mock: respx.MockRouter) -> None:
    mock.route(host="127.0.0.1").pass_through()  # Prefect's own API
    empty = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    for host in ("north", "south", "east"):
        mock.get(f"https://{host}.test/fhir/metadata").respond(json=_capabilities())
        mock.get(f"https://{host}.test/fhir/ServiceRequest").respond(json=_bundle())
    mock.get("https://north.test/fhir/Coverage").respond(json=empty)
    mock.get("https://east.test/fhir/Coverage").respond(json=empty)
    # A failing stream whose OperationOutcome is echoed in the error (the reason is allowed through).
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "forbidden"}]}
    mock.get("https://south.test/fhir/Coverage").respond(403, json=outcome)
    mock.post("https://east.test/token").respond(
        json={"access_token": ACCESS_TOKEN, "token_type": "bearer", "expires_in": 300}
    )


def test_full_sync_and_cli_output_hold_no_secret_and_no_phi(
    prefect_harness: None,
    tmp_path: Path,
    sqlite_url: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from connector.cli import app
    from flows.sync import sync_all

    monkeypatch.setenv("SOUTH_PW", PASSWORD)
    pem = _private_key()
    key_file = tmp_path / "connector.pem"
    key_file.write_text(pem)
    key_file.chmod(0o600)
    config = _config(tmp_path, sqlite_url, key_file)
    caplog.set_level(logging.DEBUG)
    # Prefect's logging setup replaces the root handlers (caplog's too) when a flow starts: record every
    # record of every logger at every level where it is made, whatever handlers and levels are set.
    records: list[logging.LogRecord] = []
    original_handle = logging.Logger.handle

    def handle(self: logging.Logger, record: logging.LogRecord) -> None:
        records.append(record)
        original_handle(self, record)

    monkeypatch.setattr(logging.Logger, "handle", handle)
    monkeypatch.setattr(logging.Logger, "isEnabledFor", lambda self, level: True)

    with respx.mock(assert_all_called=True) as mock:
        _mock_servers(mock)
        flow_state = final_state(sync_all(str(config), run_id="leak", return_state=True))
        sent_auth = {
            str(call.request.headers.get("Authorization"))
            for route in mock.routes
            for call in route.calls
            if call.request.headers.get("Authorization")
        }
        runner = CliRunner()
        cli_output = []
        for args in (
            ["check", "--config", str(config)],
            ["status", "--config", str(config)],
            ["deadletters", "list", "--config", str(config)],
            ["deadletters", "list", "--config", str(config), "--json"],
            ["push", "--config", str(config), "--dry-run", "--endpoint", "north"],
        ):
            result = runner.invoke(app, args)
            cli_output.append(f"$ {' '.join(args)}\n{result.output}")
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                cli_output.append(repr(result.exception))

    # The sync really ran: it loaded, dead-lettered, authenticated and failed one stream.
    assert flow_state.is_failed()
    failure = str(flow_state.result(raise_on_failure=False))
    assert "south" in failure
    basic = "Basic " + base64.b64encode(f"connector:{PASSWORD}".encode()).decode()
    assert {f"Bearer {BEARER}", basic, f"Bearer {ACCESS_TOKEN}"} <= sent_auth
    dead_letters = cli_output[3]
    assert "sr2" in dead_letters  # listed by id and reason, not by content
    log_text = "\n".join(f"{r.name} {r.getMessage()}" for r in records)
    assert "north/ServiceRequest" in log_text  # the logs were captured

    async def artifacts() -> list[str]:
        keys = ["sync-north", "sync-south", "sync-east"]
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys))
            )
        return [str(a.data) for a in found]

    published = asyncio.run(artifacts())
    assert len(published) >= 3

    captured = capsys.readouterr()
    exceptions = [failure, repr(flow_state.result(raise_on_failure=False))]
    everything = "\n".join(
        [
            caplog.text,
            log_text,
            *(repr(r.args) for r in records),
            *(str(r.exc_info[1]) for r in records if r.exc_info and r.exc_info[1]),
            captured.out,
            captured.err,
            *published,
            *cli_output,
            *exceptions,
        ]
    )
    secrets = [
        BEARER,
        PASSWORD,
        ACCESS_TOKEN,
        basic,
        basic.split()[1],
        "BEGIN PRIVATE KEY",
        *pem.splitlines()[1:3],
    ]
    leaked = [s for s in secrets if s in everything]
    assert leaked == [], "secrets leaked"
    assert "Authorization" not in everything
    phi = [p for p in PHI if p in everything]
    assert phi == [], "patient details leaked"
