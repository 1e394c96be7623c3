"""BulkExport on a respx router: kick-off, polling (Retry-After capped, X-Progress, errors, deadline),
manifest checks (SSRF guard), downloads (auth only where it belongs, gzip, redirects) and capability."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import respx

from connector import progress
from connector.config import EndpointSettings, RetrySettings
from connector.errors import ConfigError, TransientFhirError
from connector.fhir.bulk import (
    BulkDeadlineExceeded,
    BulkExport,
    BulkExportError,
    BulkExportGone,
    BulkStatus,
    BulkUrlRefused,
    ExportFile,
    bulk_pages,
    parse_manifest,
)
from connector.fhir.capabilities import supports_bulk_export
from connector.fhir.client import FhirClient
from connector.sync.bulk import should_use_bulk

BASE = "https://emr.test/fhir"
STATUS = f"{BASE}/bulkstatus/job-1"
TOKEN = "bulk-test-token"
T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)


class FakeTime:
    """A clock that only moves when the code under test waits; records every wait (`sleeps`)."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    async def wait(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += timedelta(seconds=seconds)

    def clock(self) -> datetime:
        return self.now


def endpoint(**kw: Any) -> EndpointSettings:
    data: dict[str, Any] = {
        "name": "clinic",
        "base_url": BASE,
        "page_size": 2,
        "retry": RetrySettings(max_attempts=3, initial_backoff_seconds=0, max_backoff_seconds=0),
        "auth": {"type": "bearer", "token": TOKEN},
    }
    data.update(kw)
    return EndpointSettings.model_validate(data)


def run_export(
    ep: EndpointSettings,
    action: Callable[[BulkExport], Awaitable[Any]],
    fake: FakeTime | None = None,
    statuses: list[BulkStatus] | None = None,
) -> Any:
    fake = fake or FakeTime()

    async def go() -> Any:
        async with FhirClient(ep, sleep=fake.wait) as fhir:
            report = statuses.append if statuses is not None else None
            export = BulkExport(fhir, sleep=fake.wait, now=fake.clock, on_status=report)
            return await action(export)

    return asyncio.run(go())


def manifest(output: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "transactionTime": "2026-11-24T07:59:00.000Z",
        "request": f"{BASE}/$export",
        "requiresAccessToken": True,
        "output": output,
        "error": [],
    }
    body.update(kw)
    return body


def outcome(code: str, text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }


# -- kick-off ----------------------------------------------------------------------------------------------


def test_kickoff_asks_for_an_async_export_of_the_configured_types_since_the_watermark() -> None:
    ep = endpoint(bulk_level="group", bulk_group_id="practice-7")
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        route = mock.get("/Group/practice-7/$export").respond(
            202, headers={"Content-Location": "bulkstatus/job-1"}
        )
        since = datetime(2026, 11, 1, 10, 0, 0, 123456, tzinfo=UTC)
        url = run_export(ep, lambda ex: ex.kick_off(["ServiceRequest", "Coverage"], since))
    assert url == STATUS  # relative Content-Location resolved against base_url
    request = route.calls.last.request
    assert request.headers["Prefer"] == "respond-async"
    assert request.headers["Accept"] == "application/fhir+json"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.url.params["_type"] == "ServiceRequest,Coverage"
    assert request.url.params["_since"] == "2026-11-01T10:00:00.123Z"


def test_kickoff_that_does_not_start_an_async_export_is_a_clear_error() -> None:
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/$export").respond(200, json={"resourceType": "Bundle"})
        with pytest.raises(BulkExportError, match="not 202 Accepted"):
            run_export(endpoint(), lambda ex: ex.kick_off(["Coverage"]))


def test_group_level_without_a_group_id_is_a_config_error() -> None:
    with respx.mock(base_url=BASE), pytest.raises(ConfigError, match="bulk_group_id"):
        run_export(endpoint(bulk_level="group"), lambda ex: ex.kick_off(["Coverage"]))


def test_status_url_on_another_host_is_refused_at_kickoff() -> None:
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/$export").respond(202, headers={"Content-Location": "https://evil.test/status/1"})
        with pytest.raises(BulkUrlRefused, match=r"evil\.test"):
            run_export(endpoint(), lambda ex: ex.kick_off(["Coverage"]))


# -- polling -----------------------------------------------------------------------------------------------


def test_polls_honour_retry_after_capped_and_surface_x_progress() -> None:
    fake = FakeTime()
    statuses: list[BulkStatus] = []
    shown: list[tuple[str, str | None, float]] = []

    class Sink:
        def stream_started(self, *a: Any) -> None: ...
        def stream_total(self, *a: Any) -> None: ...
        def patients_done(self, *a: Any) -> None: ...
        def page_done(self, *a: Any, **k: Any) -> None: ...
        def stream_finished(self, *a: Any, **k: Any) -> None: ...
        def bulk_progress(self, endpoint: str, text: str | None, wait: float) -> None:
            shown.append((endpoint, text, wait))

    ep = endpoint(bulk_poll_cap_seconds=300)
    with respx.mock(assert_all_called=True) as mock:
        mock.get(STATUS).mock(
            side_effect=[
                httpx.Response(202, headers={"Retry-After": "20", "X-Progress": "Exporting: 10%"}),
                httpx.Response(202, headers={"Retry-After": "7200", "X-Progress": "Exporting: 60%"}),
                httpx.Response(202),  # no Retry-After: the default interval
                httpx.Response(200, json=manifest([])),
            ]
        )
        progress.set_sink(Sink())
        try:
            result = run_export(
                ep, lambda ex: ex.wait_for_manifest(STATUS, started_at=T0), fake=fake, statuses=statuses
            )
        finally:
            progress.set_sink(None)
    assert fake.sleeps == [20, 300, 30]
    assert [s.progress for s in statuses] == ["Exporting: 10%", "Exporting: 60%", None]
    assert [s.polls for s in statuses] == [1, 2, 3]
    assert shown[1] == ("clinic", "Exporting: 60%", 300)
    assert result.transaction_time == "2026-11-24T07:59:00.000Z"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, outcome("processing", "Export job 17 failed: disk quota exceeded")),
        (400, outcome("invalid", "Export job 17 failed: unknown _type Foo")),
    ],
)
def test_failed_status_raises_with_the_operation_outcome_without_polling_again(
    status: int, body: dict[str, Any]
) -> None:
    fake = FakeTime()
    with respx.mock(assert_all_called=True) as mock:
        route = mock.get(STATUS).respond(status, json=body)
        with pytest.raises(BulkExportError) as info:
            run_export(endpoint(), lambda ex: ex.wait_for_manifest(STATUS, started_at=T0), fake=fake)
    assert "Export job 17 failed" in str(info.value)
    assert info.value.status == status
    assert route.call_count == 1
    assert fake.sleeps == []


def test_transient_status_error_is_polled_again() -> None:
    fake = FakeTime()
    with respx.mock(assert_all_called=True) as mock:
        route = mock.get(STATUS).mock(
            side_effect=[
                httpx.Response(500, json=outcome("transient", "database failover")),
                httpx.Response(429, headers={"Retry-After": "15"}),
                httpx.Response(200, json=manifest([])),
            ]
        )
        run_export(endpoint(), lambda ex: ex.wait_for_manifest(STATUS, started_at=T0), fake=fake)
    assert route.call_count == 3
    assert fake.sleeps[1] == 15


def test_a_failing_status_poll_waits_by_the_shared_retry_policy() -> None:
    # One retry layer: a 429's Retry-After is capped by [retry] retry_after_cap_seconds (120 by default),
    # as for every other request, and a 503 without one backs off by [retry]; a 202 then waits by its own
    # Retry-After.
    fake = FakeTime()
    with respx.mock(assert_all_called=True) as mock:
        route = mock.get(STATUS).mock(
            side_effect=[
                httpx.Response(429, headers={"Retry-After": "86400"}),
                httpx.Response(503),
                httpx.Response(202, headers={"Retry-After": "7"}),
                httpx.Response(200, json=manifest([])),
            ]
        )
        run_export(endpoint(), lambda ex: ex.wait_for_manifest(STATUS, started_at=T0), fake=fake)
    assert route.call_count == 4
    assert fake.sleeps[0] == 120
    assert fake.sleeps[1] == 0  # the backoff of this endpoint's [retry] (0 s in these tests)
    assert fake.sleeps[2] == 7


def test_status_that_keeps_failing_gives_up_as_transient() -> None:
    with respx.mock(assert_all_called=True) as mock:
        route = mock.get(STATUS).respond(503)
        with pytest.raises(TransientFhirError, match="still failing after 3"):
            run_export(endpoint(), lambda ex: ex.wait_for_manifest(STATUS, started_at=T0))
    assert route.call_count == 3


def test_expired_export_is_reported_as_gone() -> None:
    with respx.mock(assert_all_called=True) as mock:
        mock.get(STATUS).respond(404, json=outcome("not-found", "no such job"))
        with pytest.raises(BulkExportGone):
            run_export(endpoint(), lambda ex: ex.wait_for_manifest(STATUS, started_at=T0))


def test_deadline_counts_from_the_kickoff_and_caps_the_last_wait() -> None:
    fake = FakeTime()
    ep = endpoint(bulk_deadline_hours=1, bulk_poll_cap_seconds=1500)
    with respx.mock(assert_all_called=True) as mock:
        route = mock.get(STATUS).respond(202, headers={"Retry-After": "86400"})
        with pytest.raises(BulkDeadlineExceeded, match="bulk_deadline_hours"):
            # Kicked off 30 minutes before this run started polling (a resumed run).
            run_export(
                ep,
                lambda ex: ex.wait_for_manifest(STATUS, started_at=T0 - timedelta(minutes=30)),
                fake=fake,
            )
    assert fake.sleeps == [1500, 300]  # capped, then only up to the deadline
    assert route.call_count == 2


# -- manifest and downloads --------------------------------------------------------------------------------


def test_manifest_parsing_resolves_urls_and_keeps_deleted_and_error_lists() -> None:
    body = manifest(
        [{"type": "Coverage", "url": "files/1.ndjson", "count": 4}],
        deleted=[{"type": "Bundle", "url": f"{BASE}/files/del.ndjson"}],
        error=[{"type": "OperationOutcome", "url": f"{BASE}/files/err.ndjson"}],
        requiresAccessToken=False,
    )
    parsed = parse_manifest(orjson.dumps(body), base_url=BASE)
    assert parsed.output == (ExportFile("Coverage", f"{BASE}/files/1.ndjson", 4),)
    assert parsed.deleted[0].type == "Bundle"
    assert parsed.error[0].type == "OperationOutcome"
    assert parsed.requires_access_token is False
    assert parsed.transaction_at == datetime(2026, 11, 24, 7, 59, tzinfo=UTC)
    with pytest.raises(BulkExportError, match="transactionTime"):
        parse_manifest(orjson.dumps({"output": []}), base_url=BASE)


def test_file_key_never_stores_a_signed_query_string() -> None:
    signed = ExportFile("Coverage", "https://store.test/b/1.ndjson?X-Amz-Signature=secret")
    assert "secret" not in signed.key
    assert signed.key.startswith("https://store.test/b/1.ndjson#")
    assert ExportFile("Coverage", f"{BASE}/f/1.ndjson").key == f"{BASE}/f/1.ndjson"


def vetting_url(url: str) -> Callable[[BulkExport], Awaitable[bool]]:
    async def vet(ex: BulkExport) -> bool:
        return ex.vet_url(url, what="f")

    return vet


def test_output_url_on_another_host_is_refused_unless_allowed() -> None:
    parsed = parse_manifest(
        orjson.dumps(manifest([{"type": "Coverage", "url": "https://storage.test/x/1.ndjson"}])),
        base_url=BASE,
    )

    async def vet(ex: BulkExport) -> None:
        ex.vet_manifest(parsed)

    with respx.mock(), pytest.raises(BulkUrlRefused, match=r"storage\.test.*bulk_allowed_hosts"):
        run_export(endpoint(), vet)
    # Listed: accepted, and marked as a host that gets no credentials.
    assert (
        run_export(
            endpoint(bulk_allowed_hosts=["storage.test"]),
            vetting_url("https://storage.test/x/1.ndjson"),
        )
        is False
    )
    # An allowed host over plain http is still refused when the endpoint itself uses https.
    with respx.mock(), pytest.raises(BulkUrlRefused):
        run_export(
            endpoint(bulk_allowed_hosts=["storage.test"]),
            vetting_url("http://storage.test/x/1.ndjson"),
        )


def lines(*resources: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in resources)


def coverage(n: int) -> dict[str, Any]:
    return {"resourceType": "Coverage", "id": f"cov{n}", "status": "active"}


def read_pages(ep: EndpointSettings, files: list[ExportFile], requires_token: bool) -> list[Any]:
    async def collect(ex: BulkExport) -> list[Any]:
        return [
            p async for p in bulk_pages(ex, files, "Coverage", page_size=2, requires_token=requires_token)
        ]

    return run_export(ep, collect)


@pytest.mark.parametrize("requires_token", [True, False])
def test_authorization_is_sent_only_when_the_manifest_requires_it(requires_token: bool) -> None:
    with respx.mock(assert_all_called=True) as mock:
        route = mock.get(f"{BASE}/files/1.ndjson").respond(200, content=lines(coverage(1)))
        pages = read_pages(endpoint(), [ExportFile("Coverage", f"{BASE}/files/1.ndjson")], requires_token)
    assert ("Authorization" in route.calls.last.request.headers) is requires_token
    assert [r["id"] for p in pages for r in p.resources] == ["cov1"]


def test_allowed_storage_host_never_gets_the_token_even_when_required() -> None:
    url = "https://storage.test/b/1.ndjson.gz?sig=abc"
    with respx.mock(assert_all_called=True) as mock:
        route = mock.get(url).respond(
            200, content=gzip.compress(lines(coverage(1), coverage(2), coverage(3)))
        )
        pages = read_pages(
            endpoint(bulk_allowed_hosts=["storage.test"]), [ExportFile("Coverage", url)], requires_token=True
        )
    assert "Authorization" not in route.calls.last.request.headers
    # A gzip body without Content-Encoding is recognised and read, page_size lines per page.
    assert [[r["id"] for r in p.resources] for p in pages] == [["cov1", "cov2"], ["cov3"]]
    assert [p.number for p in pages] == [1, 2]


def test_redirect_to_a_foreign_host_is_refused() -> None:
    with respx.mock(assert_all_called=True) as mock:
        mock.get(f"{BASE}/files/1.ndjson").respond(302, headers={"Location": "http://169.254.169.254/latest"})
        with pytest.raises(BulkUrlRefused, match=r"169\.254\.169\.254"):
            read_pages(endpoint(), [ExportFile("Coverage", f"{BASE}/files/1.ndjson")], True)


def test_redirect_to_an_allowed_host_is_followed_without_credentials(tmp_path: Path) -> None:
    with respx.mock(assert_all_called=True) as mock:
        mock.get(f"{BASE}/files/1.ndjson").respond(307, headers={"Location": "https://storage.test/1"})
        storage = mock.get("https://storage.test/1").respond(200, content=lines(coverage(1)))
        pages = read_pages(
            endpoint(bulk_allowed_hosts=["storage.test"]),
            [ExportFile("Coverage", f"{BASE}/files/1.ndjson")],
            True,
        )
    assert "Authorization" not in storage.calls.last.request.headers
    assert [r["id"] for p in pages for r in p.resources] == ["cov1"]


# -- capability and the auto decision ----------------------------------------------------------------------


def capability(**rest: Any) -> dict[str, Any]:
    return {"resourceType": "CapabilityStatement", "rest": [{"mode": "server", **rest}]}


def test_supports_bulk_export_per_level() -> None:
    system = capability(
        operation=[
            {
                "name": "export",
                "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export|2.0.0",
            }
        ]
    )
    group = capability(
        resource=[
            {
                "type": "Group",
                "operation": [
                    {
                        "name": "export",
                        "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
                    }
                ],
            }
        ]
    )
    assert supports_bulk_export(system, "system")
    assert not supports_bulk_export(system, "group")
    assert supports_bulk_export(group, "group")
    assert not supports_bulk_export(group, "system")
    assert not supports_bulk_export(capability(), "system")
    declared = {"instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"]}
    assert supports_bulk_export(declared, "patient")


def test_should_use_bulk() -> None:
    cap = capability(operation=[{"name": "export"}])
    auto = endpoint()
    assert should_use_bulk(auto, cap, has_watermark=False)
    assert not should_use_bulk(auto, cap, has_watermark=True)
    assert not should_use_bulk(auto, capability(), has_watermark=False)
    assert not should_use_bulk(auto, None, has_watermark=False)
    assert should_use_bulk(auto, cap, has_watermark=True, pending=True)
    assert should_use_bulk(endpoint(bulk="always"), None, has_watermark=True)
    assert not should_use_bulk(endpoint(bulk="never"), cap, has_watermark=False, pending=True)
    folder = EndpointSettings(name="f", ndjson_dir=Path("/tmp/x"), bulk="always")
    assert not should_use_bulk(folder, cap, has_watermark=False)
