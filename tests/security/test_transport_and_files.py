"""TLS verification, SSRF guards on redirects, and warnings about secret files others can read."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from pathlib import Path

import httpx
import pytest
import respx

from connector.config import AuthSettings, EndpointSettings, RetrySettings, load_settings, resolve_secret
from connector.errors import FatalFhirError
from connector.fhir.client import FhirClient

BASE = "https://emr.test/fhir"
TOKEN = "s3cr3t-bearer-token-value"
posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")


def _endpoint(**kw: object) -> EndpointSettings:
    retry = RetrySettings(max_attempts=1, initial_backoff_seconds=0, max_backoff_seconds=0)
    return EndpointSettings(
        name="clinic-emr",
        base_url=BASE,
        retry=retry,
        auth=AuthSettings(type="bearer", token=TOKEN),
        **kw,
    )


def _capabilities(endpoint: EndpointSettings) -> None:
    async def go() -> None:
        async with FhirClient(endpoint) as fhir:
            await fhir.capabilities()

    asyncio.run(go())


CAPS = {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"}


# ------------------------------------------------------------------------------------------ TLS


def test_tls_is_verified_by_default() -> None:
    assert EndpointSettings(name="x", base_url=BASE).verify_tls is True


@pytest.mark.parametrize("verify_tls", [True, False])
def test_clients_verify_certificates_and_host_names_unless_turned_off(
    verify_tls: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verifying TLS context is built once per process (loading the CA bundle is slow) and shared."""
    seen: list[object] = []
    real = httpx.AsyncClient

    def capture(**kwargs: object) -> httpx.AsyncClient:
        seen.append(kwargs["verify"])
        return real(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx, "AsyncClient", capture)

    async def open_twice() -> None:
        for _ in range(2):
            async with FhirClient(_endpoint(verify_tls=verify_tls)):
                pass

    asyncio.run(open_twice())
    if not verify_tls:
        assert seen == [False, False]
        return
    first, second = seen
    assert first is second
    assert isinstance(first, ssl.SSLContext)
    assert first.verify_mode == ssl.CERT_REQUIRED
    assert first.check_hostname is True


def test_turning_tls_off_warns_on_every_run_naming_the_endpoint(caplog: pytest.LogCaptureFixture) -> None:
    endpoint = _endpoint(verify_tls=False)
    caplog.set_level(logging.WARNING)
    with respx.mock(assert_all_called=True) as mock:
        mock.get(f"{BASE}/metadata").respond(json=CAPS)
        _capabilities(endpoint)
        _capabilities(endpoint)
    warnings = [r for r in caplog.records if "TLS certificate verification is OFF" in r.getMessage()]
    assert len(warnings) == 2
    assert all(r.levelno == logging.WARNING and "clinic-emr" in r.getMessage() for r in warnings)
    assert all("emr.test" not in r.getMessage() for r in warnings)


def test_no_tls_warning_when_verification_is_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with respx.mock(assert_all_called=True) as mock:
        mock.get(f"{BASE}/metadata").respond(json=CAPS)
        _capabilities(_endpoint())
    assert not [r for r in caplog.records if "TLS" in r.getMessage()]


# ----------------------------------------------------------------------------------------- SSRF


def test_redirect_to_another_host_is_followed_without_the_authorization_header() -> None:
    with respx.mock(assert_all_called=True) as mock:
        first = mock.get(f"{BASE}/metadata").respond(
            302, headers={"Location": "https://attacker.test/collect"}
        )
        foreign = mock.get("https://attacker.test/collect").respond(json=CAPS)
        _capabilities(_endpoint())
    assert first.calls.last.request.headers["Authorization"] == f"Bearer {TOKEN}"
    sent = foreign.calls.last.request
    assert "Authorization" not in sent.headers
    assert TOKEN not in str(sent.url)
    assert TOKEN.encode() not in sent.content


def test_redirect_to_the_same_host_keeps_credentials() -> None:
    with respx.mock(assert_all_called=True) as mock:
        mock.get(f"{BASE}/metadata").respond(301, headers={"Location": f"{BASE}/r4/metadata"})
        moved = mock.get(f"{BASE}/r4/metadata").respond(json=CAPS)
        _capabilities(_endpoint())
    assert moved.calls.last.request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_writes_do_not_follow_redirects_at_all() -> None:
    async def go() -> httpx.Response:
        async with FhirClient(_endpoint()) as fhir:
            return await fhir.request("POST", "Task", json={"resourceType": "Task"})

    with respx.mock(assert_all_called=False) as mock:
        mock.post(f"{BASE}/Task").respond(307, headers={"Location": "https://attacker.test/Task"})
        foreign = mock.post("https://attacker.test/Task").respond(201)
        response = asyncio.run(go())
    assert response.status_code == 307
    assert foreign.call_count == 0


def test_absolute_request_urls_on_another_host_are_refused_before_sending() -> None:
    async def go() -> None:
        async with FhirClient(_endpoint()) as fhir:
            await fhir.request("GET", "https://attacker.test/fhir/Patient")

    with respx.mock(assert_all_called=False) as mock:
        foreign = mock.get("https://attacker.test/fhir/Patient").respond(200)
        with pytest.raises(FatalFhirError, match=r"refusing a request to https://attacker\.test"):
            asyncio.run(go())
    assert foreign.call_count == 0


# ----------------------------------------------------------------------------- file permissions


def _warnings(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and needle in r.getMessage()
    ]


@posix_only
@pytest.mark.parametrize(("mode", "warned"), [(0o600, False), (0o640, True), (0o604, True), (0o400, False)])
def test_config_file_readable_by_others_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int, warned: bool
) -> None:
    config = tmp_path / "connector.toml"
    config.write_text(
        '[[endpoints]]\nname = "x"\nbase_url = "https://emr.test/fhir"\n'
        '[endpoints.auth]\ntype = "bearer"\ntoken = "env:HOME"\n'
    )
    config.chmod(mode)
    caplog.set_level(logging.WARNING)
    load_settings(config)
    found = _warnings(caplog, "configuration file")
    assert bool(found) is warned
    if warned:
        assert str(config) in found[0]
        assert "chmod 600" in found[0]


@posix_only
def test_config_without_credentials_does_not_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "connector.toml"
    config.write_text('[[endpoints]]\nname = "x"\nbase_url = "https://emr.test/fhir"\n')
    config.chmod(0o644)
    caplog.set_level(logging.WARNING)
    load_settings(config)
    assert _warnings(caplog, "configuration file") == []


@posix_only
def test_private_key_file_readable_by_others_warns_without_showing_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = tmp_path / "connector.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\nSECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n")
    settings = AuthSettings(
        type="smart-backend", client_id="c", token_url="https://emr.test/token", private_key_file=key
    )
    caplog.set_level(logging.WARNING)
    key.chmod(0o600)
    settings.load_private_key()
    assert _warnings(caplog, "private key file") == []
    key.chmod(0o644)
    assert "SECRETKEYMATERIAL" in settings.load_private_key()
    found = _warnings(caplog, "private key file")
    assert len(found) == 1
    assert str(key) in found[0]
    assert "SECRETKEYMATERIAL" not in caplog.text


@posix_only
def test_secret_file_readable_by_others_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = tmp_path / "token"
    secret.write_text(TOKEN)
    secret.chmod(0o666)
    caplog.set_level(logging.WARNING)
    assert resolve_secret(f"file:{secret}") == TOKEN
    assert len(_warnings(caplog, "secret file")) == 1
    assert TOKEN not in caplog.text
