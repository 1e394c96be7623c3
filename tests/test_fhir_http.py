"""The error classifier and retry helpers of connector.fhir.http, on hand-made responses."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import httpx
import orjson
import pytest

from connector.config import RetrySettings
from connector.errors import AuthError, FatalFhirError, TransientFhirError
from connector.fhir.http import (
    backoff_seconds,
    outcome_text,
    parse_retry_after,
    raise_for_response,
    transport_error,
    url_path,
)

URL = "https://emr.example.org/fhir/R4/Coverage?beneficiary=Patient/mrn-4711&_count=200"

OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [
        {"severity": "error", "code": "invalid", "diagnostics": "Unknown search parameter 'foo'"},
        {"severity": "error", "code": "invalid", "details": {"text": "Use one of: beneficiary, payor"}},
        {"severity": "error", "code": "processing", "details": {"coding": [{"display": "Coded detail"}]}},
    ],
}


def response(status: int, body: object = None, headers: dict[str, str] | None = None) -> httpx.Response:
    content = b"" if body is None else orjson.dumps(body)
    return httpx.Response(status, content=content, headers=headers, request=httpx.Request("GET", URL))


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_statuses_raise_transient(status: int) -> None:
    with pytest.raises(TransientFhirError) as info:
        raise_for_response(response(status, headers={"Retry-After": "12"}))
    assert info.value.status == status
    assert info.value.retry_after == 12.0


@pytest.mark.parametrize("status", [400, 404, 405, 409, 410, 412, 422])
def test_other_client_errors_are_fatal_not_transient(status: int) -> None:
    with pytest.raises(FatalFhirError) as info:
        raise_for_response(response(status, OUTCOME))
    assert not isinstance(info.value, AuthError)
    message = str(info.value)
    assert f"HTTP {status}" in message
    assert "GET https://emr.example.org/fhir/R4/Coverage" in message
    assert "Unknown search parameter 'foo'" in message
    assert "Use one of: beneficiary, payor" in message
    # The query string may identify a patient: it must not reach logs or sync_run.error.
    assert "mrn-4711" not in message
    assert "_count" not in message


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_are_auth_errors(status: int) -> None:
    with pytest.raises(AuthError) as info:
        raise_for_response(response(status))
    assert info.value.status == status


@pytest.mark.parametrize("status", [200, 201, 204, 304])
def test_success_does_not_raise(status: int) -> None:
    raise_for_response(response(status))


def test_outcome_text_reads_diagnostics_details_and_codings() -> None:
    text = outcome_text(orjson.dumps(OUTCOME))
    assert text == "Unknown search parameter 'foo'; Use one of: beneficiary, payor; Coded detail"


@pytest.mark.parametrize(
    "body",
    [
        b"<html>Bad Gateway</html>",
        b'{"resourceType": "Bundle"}',
        b"[]",
        b'{"resourceType":"OperationOutcome"}',
    ],
)
def test_outcome_text_is_none_for_anything_else(body: bytes) -> None:
    assert outcome_text(body) is None


def test_outcome_text_is_bounded() -> None:
    huge = {"resourceType": "OperationOutcome", "issue": [{"diagnostics": "x" * 5000}]}
    text = outcome_text(orjson.dumps(huge))
    assert text is not None
    assert len(text) <= 500


def test_retry_after_delta_seconds_and_http_date() -> None:
    now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120", now=now) == 120.0
    assert parse_retry_after(" 3 ", now=now) == 3.0
    assert parse_retry_after("Sun, 01 Mar 2026 12:00:45 GMT", now=now) == 45.0
    # A date in the past or a negative delay means "now", not a negative sleep.
    assert parse_retry_after("Sun, 01 Mar 2026 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("-5", now=now) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "Thu, 99 Foo 2026"])
def test_retry_after_garbage_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value) is None


def test_backoff_is_full_jitter_under_a_growing_capped_ceiling() -> None:
    settings = RetrySettings(initial_backoff_seconds=2.0, max_backoff_seconds=10.0)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (9, 10.0)]:
        delays = [backoff_seconds(settings, attempt, rng=rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        # Full jitter spreads over the whole range rather than sitting at the ceiling.
        assert min(delays) < ceiling * 0.2
        assert max(delays) > ceiling * 0.8


def test_transport_errors_mapped() -> None:
    assert isinstance(transport_error(httpx.ConnectError("refused"), "GET /x"), TransientFhirError)
    assert isinstance(transport_error(httpx.ReadTimeout("slow"), "GET /x"), TransientFhirError)
    assert isinstance(transport_error(httpx.RemoteProtocolError("reset"), "GET /x"), TransientFhirError)
    fatal = transport_error(httpx.UnsupportedProtocol("ftp"), "GET /x")
    assert isinstance(fatal, FatalFhirError)
    assert not isinstance(fatal, TransientFhirError)


def test_url_path_drops_query_and_fragment() -> None:
    assert url_path(URL + "#frag") == "https://emr.example.org/fhir/R4/Coverage"
