"""FhirClient on a respx router: paging, the next-link guard, retries and error messages."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import orjson
import pytest
import respx

from connector import __version__
from connector.config import EndpointSettings
from connector.errors import AuthError, FatalFhirError, TransientFhirError
from connector.fhir import paging
from connector.fhir.client import FhirClient
from connector.fhir.page import Entries, Page
from connector.fhir.paging import ResourceTexts, entries_of, entry_texts, read_page, split_page
from mappings.canonical import canonical_json

BASE = "https://emr.example.org/fhir/R4"
TOKEN = "static-bearer-token-do-not-leak"


class FakeSleep:
    """Records the delays the retry policy asked for, without sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def endpoint(**overrides: Any) -> EndpointSettings:
    data: dict[str, Any] = {"name": "clinic", "base_url": BASE, "page_size": 200}
    data.update(overrides)
    return EndpointSettings.model_validate(data)


def bundle(
    entries: Sequence[dict] = (), *, next_url: str | None = None, last_updated: str | None = None
) -> dict:
    body: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "entry": list(entries)}
    if last_updated:
        body["meta"] = {"lastUpdated": last_updated}
    body["link"] = [{"relation": "self", "url": f"{BASE}/ignored"}]
    if next_url:
        body["link"].append({"relation": "next", "url": next_url})
    return body


def match(resource_id: str, resource_type: str = "ServiceRequest", mode: str | None = "match") -> dict:
    entry: dict[str, Any] = {"resource": {"resourceType": resource_type, "id": resource_id}}
    if mode:
        entry["search"] = {"mode": mode}
    return entry


def collect(
    settings: EndpointSettings,
    params: Any,
    *,
    sleep: FakeSleep | None = None,
    resource_type: str = "ServiceRequest",
    pages: list[Entries] | None = None,
) -> list[Entries]:
    """Run one search to the end, each page's entries parsed; pages read before an error are kept in
    `pages`. The client leaves the entries unparsed (they are parsed where a page is mapped)."""
    out = [] if pages is None else pages

    async def run() -> list[Entries]:
        async with FhirClient(settings, sleep=sleep or FakeSleep()) as client:
            async for page in client.search(resource_type, params):
                assert isinstance(page, Page)
                parsed = entries_of(page)
                assert (parsed.number, parsed.bundle_last_updated) == (page.number, page.bundle_last_updated)
                assert (len(parsed.resources), len(parsed.included), len(parsed.outcomes)) == page.counts
                out.append(parsed)
        return out

    return asyncio.run(run())


def request(
    settings: EndpointSettings, method: str, path: str, sleep: FakeSleep, **kw: Any
) -> httpx.Response:
    async def run() -> httpx.Response:
        async with FhirClient(settings, sleep=sleep) as client:
            return await client.request(method, path, **kw)

    return asyncio.run(run())


# -- paging ----------------------------------------------------------------------------------------------


#: Both ways the client reads a page: entries parsed here, or left for a mapping worker.
def test_three_pages_follow_next_links_verbatim() -> None:
    # Servers keep cursor state in next links (HAPI _getpages, opaque tokens): we must not touch them.
    page2 = f"{BASE}?_getpages=9f3c1b2e-opaque&_getpagesoffset=200&_count=200&_bundletype=searchset"
    page3_rel = "ServiceRequest?ct=eyJvZmZzZXQiOjQwMH0%3D&_count=200"
    page3 = f"{BASE}/{page3_rel}"
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        first = router.get("/ServiceRequest", params={"_lastUpdated": "ge2026-02-28T00:00:00Z"}).respond(
            json=bundle(
                [match("a"), match("b")], next_url=page2, last_updated="2026-03-01T10:00:00.123+01:00"
            )
        )
        second = router.get(url__eq=page2).respond(json=bundle([match("c")], next_url=page3_rel))
        third = router.get(url__eq=page3).respond(json=bundle([match("d")]))
        pages = collect(endpoint(), {"_lastUpdated": "ge2026-02-28T00:00:00Z"})

    assert [p.number for p in pages] == [1, 2, 3]
    assert [[r["id"] for r in p.resources] for p in pages] == [["a", "b"], ["c"], ["d"]]
    assert pages[0].bundle_last_updated == "2026-03-01T10:00:00.123+01:00"
    assert pages[1].bundle_last_updated is None
    first_url = first.calls.last.request.url
    assert first_url.params["_lastUpdated"] == "ge2026-02-28T00:00:00Z"
    assert first_url.params["_count"] == "200"
    # Exactly the server's strings, no _count or anything else added or reordered.
    assert str(second.calls.last.request.url) == page2
    assert str(third.calls.last.request.url) == page3


def test_caller_params_as_pairs_keep_repeats_and_own_count() -> None:
    params = [
        ("_include", "ServiceRequest:requester"),
        ("_include", "ServiceRequest:subject"),
        ("_count", "50"),
    ]
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        route = router.get("/ServiceRequest").respond(json=bundle())
        pages = collect(endpoint(), params)
    url = route.calls.last.request.url
    assert url.params.get_list("_include") == ["ServiceRequest:requester", "ServiceRequest:subject"]
    assert url.params.get_list("_count") == ["50"]
    assert len(pages) == 1
    assert pages[0].resources == []


def test_match_include_and_outcome_entries_are_separated() -> None:
    warning = {
        "resource": {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "warning", "code": "processing", "diagnostics": "_sort ignored"}],
        },
        "search": {"mode": "outcome"},
    }
    entries = [
        match("sr-1"),
        match("sr-2", mode=None),  # search.mode absent counts as a match
        match("pr-1", resource_type="Practitioner", mode="include"),
        warning,
        {"fullUrl": f"{BASE}/ServiceRequest/no-resource"},
    ]
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        router.get("/ServiceRequest").respond(json=bundle(entries))
        (page,) = collect(endpoint(), {})
    assert [r["id"] for r in page.resources] == ["sr-1", "sr-2"]
    assert [r["id"] for r in page.included] == ["pr-1"]
    assert [o["resourceType"] for o in page.outcomes] == ["OperationOutcome"]
    assert page.outcomes[0]["issue"][0]["diagnostics"] == "_sort ignored"


@pytest.mark.parametrize(
    "foreign",
    [
        "https://evil.example.net/fhir/R4?_getpages=x",
        "http://emr.example.org/fhir/R4?_getpages=x",  # scheme downgrade
        "https://emr.example.org:8443/fhir/R4?_getpages=x",  # other port
    ],
)
def test_next_link_to_another_origin_is_refused(foreign: str) -> None:
    pages: list[Entries] = []
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        router.get("/ServiceRequest").respond(json=bundle([match("a")], next_url=foreign))
        with pytest.raises(FatalFhirError) as info:
            collect(endpoint(auth={"type": "bearer", "token": TOKEN}), {}, pages=pages)
        # Only the first page was requested: the foreign URL never saw our token.
        assert len(router.calls) == 1
    assert [p.number for p in pages] == [1]
    assert "_getpages" not in str(info.value)


def test_same_origin_with_explicit_default_port_is_accepted() -> None:
    nxt = "https://emr.example.org:443/fhir/R4/ServiceRequest?page=2"
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        router.get("/ServiceRequest", params={"_count": "200"}).respond(
            json=bundle([match("a")], next_url=nxt)
        )
        router.get("/ServiceRequest", params={"page": "2"}).respond(json=bundle([match("b")]))
        pages = collect(endpoint(), {})
    assert [p.number for p in pages] == [1, 2]


def test_repeated_next_link_stops_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    page2 = f"{BASE}/ServiceRequest?cursor=mrn-4711-secret-state"
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        router.get("/ServiceRequest", params={"_count": "200"}).respond(
            json=bundle([match("a")], next_url=page2)
        )
        loop = router.get(url__eq=page2).respond(json=bundle([match("b")], next_url=page2))
        with caplog.at_level(logging.WARNING, logger="connector.fhir"):
            pages = collect(endpoint(), {})
    assert [p.number for p in pages] == [1, 2]
    assert loop.call_count == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("page 2" in w for w in warnings)
    assert not any("mrn-4711" in w or "cursor" in w for w in warnings)


def test_next_link_back_to_the_first_page_stops() -> None:
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        first = router.get("/ServiceRequest").mock(
            side_effect=lambda request: httpx.Response(
                200, json=bundle([match("a")], next_url=str(request.url))
            )
        )
        pages = collect(endpoint(), {"status": "active"})
    assert len(pages) == 1
    assert first.call_count == 1


@pytest.mark.parametrize(
    "bad_body",
    [
        b'{"resourceType": "Bundle", "type": "searchset", "entry": [{"resou',  # truncated mid-transfer
        b"<html><body>Service temporarily unavailable</body></html>",  # proxy error page with 200
        b'{"resourceType": "OperationOutcome", "issue": []}',  # not a Bundle
    ],
)
def test_broken_page_body_is_refetched(bad_body: bytes) -> None:
    sleep = FakeSleep()
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        route = router.get("/ServiceRequest").mock(
            side_effect=[
                httpx.Response(200, content=bad_body),
                httpx.Response(200, json=bundle([match("a")])),
            ]
        )
        pages = collect(endpoint(), {}, sleep=sleep)
    assert route.call_count == 2
    assert len(sleep.delays) == 1
    assert [r["id"] for r in pages[0].resources] == ["a"]


def test_broken_page_body_every_time_gives_up_as_transient() -> None:
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        route = router.get("/ServiceRequest").respond(200, content=b'{"resourceType": "Bun')
        with pytest.raises(TransientFhirError) as info:
            collect(endpoint(retry={"max_attempts": 3}), {})
    assert route.call_count == 3
    assert "not valid JSON" in str(info.value.__cause__)


def test_a_page_counts_and_heads_as_its_parsed_entries() -> None:
    entries: list[Any] = [
        match("sr-1"),
        match("sr-2", mode=None),
        match("pr-1", resource_type="Practitioner", mode="include"),
        {"resource": {"resourceType": "OperationOutcome", "issue": []}, "search": {"mode": "outcome"}},
        {"fullUrl": f"{BASE}/ServiceRequest/no-resource", "search": {"mode": "match"}},
        {"resource": "not an object", "search": {"mode": "include"}},
        "not an entry",
        {"resource": {"resourceType": "ServiceRequest", "id": "sr-3"}, "search": {"mode": 7}},
    ]
    body = orjson.dumps(bundle(entries, next_url=f"{BASE}?page=2", last_updated="2026-03-01T10:00:00Z"))
    page, link = read_page(body, url=BASE, number=4)
    assert page.body == body
    assert link == f"{BASE}?page=2"
    assert page.counts == (3, 1, 1)
    assert page.bundle_last_updated == "2026-03-01T10:00:00Z"
    assert entries_of(page) == split_page(orjson.loads(body), number=4)
    parsed = entries_of(page)
    assert entries_of(parsed) is parsed


def test_a_page_simdjson_refuses_is_read_in_full() -> None:
    # Valid JSON, but an integer beyond 64 bits: simdjson refuses the document, orjson reads it.
    body = (
        b'{"resourceType": "Bundle", "total": 123456789012345678901234567890, "entry": ['
        + orjson.dumps(match("sr-1"))
        + b"]}"
    )
    page, link = read_page(body, url=BASE, number=1)
    assert page.body == body
    assert page.counts == (1, 0, 0)
    assert link is None
    assert entries_of(page) == split_page(orjson.loads(body), number=1)


def test_a_deferred_page_s_resources_read_one_by_one_equal_the_page_parsed_whole() -> None:
    # Values whose text simdjson writes anew: floats that are whole, exponents, beyond int64, escapes.
    tricky = {
        "resourceType": "ServiceRequest",
        "id": "sr-tricky",
        "quantity": [1.0, 1.5, 1e-07, 1e300, -0.0, 0.30000000000000004, 18446744073709551615, -(2**63)],
        "note": [{"text": 'line\nbreak \u2028 "quoted" back\\slash / \u00e9 \U0001f600 \u0001'}],
    }
    entries = [
        match("sr-1"),
        {"resource": tricky, "search": {"mode": "match"}},
        match("pr-1", resource_type="Practitioner", mode="include"),
        {"resource": {"resourceType": "OperationOutcome", "issue": []}, "search": {"mode": "outcome"}},
        {"fullUrl": f"{BASE}/ServiceRequest/no-resource", "search": {"mode": "match"}},
        {"resource": "not an object", "search": {"mode": "include"}},
        match("sr-3", mode=None),
    ]
    body = orjson.dumps(bundle(entries))
    whole = split_page(orjson.loads(body), number=2)
    resources, included = entry_texts(body, number=2)
    assert isinstance(resources, ResourceTexts)
    assert len(resources) == 3
    assert list(resources) == whole.resources
    assert [type(v) for v in list(resources)[1]["quantity"]] == [type(v) for v in tricky["quantity"]]
    assert [canonical_json(r) for r in resources] == [canonical_json(r) for r in whole.resources]
    assert resources[1] == whole.resources[1]
    assert resources[1:] == whole.resources[1:]
    assert included == whole.included


def test_a_page_is_read_while_an_object_of_the_thread_s_last_simdjson_document_is_alive() -> None:
    # Pages share a simdjson parser per thread, which refuses to parse while its last document is in use.
    first = orjson.dumps(bundle([match("sr-1")]))
    second = orjson.dumps(bundle([match("sr-2"), match("sr-3")]))
    held = paging._simdjson_bundle(first)
    page, _ = read_page(second, url=BASE, number=2)
    assert page.body == second
    assert page.counts == (2, 0, 0)
    resources, _ = entry_texts(second, number=2)
    assert [r["id"] for r in resources] == ["sr-2", "sr-3"]
    assert held["entry"][0]["resource"]["id"] == "sr-1"


def test_a_page_simdjson_refuses_is_split_by_parsing_it_whole() -> None:
    body = (
        b'{"resourceType": "Bundle", "total": 123456789012345678901234567890, "entry": ['
        + orjson.dumps(match("sr-1"))
        + b"]}"
    )
    resources, included = entry_texts(body, number=1)
    assert resources == split_page(orjson.loads(body), number=1).resources == [match("sr-1")["resource"]]
    assert included == []


def test_a_resource_text_orjson_refuses_fails_its_page_as_transient_when_read() -> None:
    resources = ResourceTexts([orjson.dumps(match("sr-1")["resource"]), b'{"id": "\\ud800"'], number=7)
    read = iter(resources)
    assert next(read)["id"] == "sr-1"
    with pytest.raises(TransientFhirError, match="search page 7 is not JSON orjson can read"):
        next(read)


# -- retries ---------------------------------------------------------------------------------------------


def test_429_retry_after_seconds_is_honoured() -> None:
    sleep = FakeSleep()
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        route = router.get("/ServiceRequest").mock(
            side_effect=[
                httpx.Response(429, headers={"Retry-After": "7"}),
                httpx.Response(429, headers={"Retry-After": "2"}),
                httpx.Response(200, json=bundle([match("a")])),
            ]
        )
        pages = collect(endpoint(), {}, sleep=sleep)
    assert sleep.delays == [7.0, 2.0]
    assert route.call_count == 3
    assert len(pages) == 1


def test_429_retry_after_http_date_is_honoured() -> None:
    sleep = FakeSleep()
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        router.get("/ServiceRequest").mock(
            side_effect=[
                httpx.Response(429, headers={"Retry-After": when}),
                httpx.Response(200, json=bundle()),
            ]
        )
        collect(endpoint(), {}, sleep=sleep)
    assert len(sleep.delays) == 1
    assert 27.0 <= sleep.delays[0] <= 30.0  # the header has one-second resolution


def test_retry_after_is_capped() -> None:
    sleep = FakeSleep()
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        router.get("/ServiceRequest").mock(
            side_effect=[
                httpx.Response(503, headers={"Retry-After": "86400"}),
                httpx.Response(200, json=bundle()),
            ]
        )
        collect(endpoint(retry={"retry_after_cap_seconds": 15}), {}, sleep=sleep)
    assert sleep.delays == [15.0]


def test_503_burst_then_success_uses_jittered_exponential_backoff() -> None:
    sleep = FakeSleep()
    retry = {"max_attempts": 6, "initial_backoff_seconds": 1.0, "max_backoff_seconds": 3.0}
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        route = router.get("/ServiceRequest").mock(
            side_effect=[httpx.Response(503)] * 4 + [httpx.Response(200, json=bundle([match("a")]))]
        )
        pages = collect(endpoint(retry=retry), {}, sleep=sleep)
    assert route.call_count == 5
    assert len(sleep.delays) == 4
    for attempt, delay in enumerate(sleep.delays, start=1):
        assert 0.0 <= delay <= min(3.0, 2 ** (attempt - 1))
    assert [r["id"] for r in pages[0].resources] == ["a"]


@pytest.mark.parametrize("status", [500, 502, 504, 408])
def test_other_transient_statuses_are_retried(status: int) -> None:
    sleep = FakeSleep()
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        route = router.get("/ServiceRequest").mock(
            side_effect=[httpx.Response(status), httpx.Response(200, json=bundle())]
        )
        collect(endpoint(), {}, sleep=sleep)
    assert route.call_count == 2
    assert len(sleep.delays) == 1


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("reset by peer")],
)
def test_transport_error_then_success(error: Exception) -> None:
    sleep = FakeSleep()
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        route = router.get("/ServiceRequest").mock(
            side_effect=[error, httpx.Response(200, json=bundle([match("a")]))]
        )
        pages = collect(endpoint(), {}, sleep=sleep)
    assert route.call_count == 2
    assert len(sleep.delays) == 1
    assert len(pages[0].resources) == 1


def test_exhausted_retries_raise_transient_with_last_status() -> None:
    sleep = FakeSleep()
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        route = router.get("/ServiceRequest").mock(
            side_effect=[httpx.Response(500), httpx.Response(502), httpx.Response(503)]
        )
        with pytest.raises(TransientFhirError) as info:
            collect(endpoint(retry={"max_attempts": 3}), {"identifier": "mrn-4711"}, sleep=sleep)
    assert route.call_count == 3
    assert len(sleep.delays) == 2
    assert info.value.status == 503
    message = str(info.value)
    assert "3 attempt" in message
    assert "HTTP 503" in message
    assert "mrn-4711" not in message


def test_exhausted_connect_errors_name_the_error() -> None:
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        router.get("/ServiceRequest").mock(side_effect=httpx.ConnectError("refused"))
        with pytest.raises(TransientFhirError) as info:
            collect(endpoint(retry={"max_attempts": 2}), {})
    assert info.value.status is None
    assert "ConnectError" in str(info.value)


def test_total_wait_budget_stops_before_max_attempts() -> None:
    sleep = FakeSleep()
    retry = {"max_attempts": 10, "max_total_wait_seconds": 250, "retry_after_cap_seconds": 500}
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        route = router.get("/ServiceRequest").respond(429, headers={"Retry-After": "100"})
        with pytest.raises(TransientFhirError) as info:
            collect(endpoint(retry=retry), {}, sleep=sleep)
    # 100 + 100 fits in 250; a third wait would make 300, so we stop after the third attempt.
    assert sleep.delays == [100.0, 100.0]
    assert route.call_count == 3
    assert info.value.status == 429


# -- fatal errors ----------------------------------------------------------------------------------------

OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "not-supported", "diagnostics": "Unknown parameter: foo"}],
}


@pytest.mark.parametrize("status", [400, 404, 422])
def test_client_errors_fail_at_once_with_outcome_text(status: int) -> None:
    sleep = FakeSleep()
    settings = endpoint(auth={"type": "bearer", "token": TOKEN})
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        route = router.get("/ServiceRequest").respond(status, json=OUTCOME)
        with pytest.raises(FatalFhirError) as info:
            collect(settings, {"foo": "bar", "identifier": "mrn-4711"}, sleep=sleep)
    assert route.call_count == 1
    assert sleep.delays == []
    assert not isinstance(info.value, TransientFhirError | AuthError)
    message = str(info.value)
    assert "Unknown parameter: foo" in message
    assert f"HTTP {status}" in message
    assert f"GET {BASE}/ServiceRequest" in message
    assert TOKEN not in message
    assert "Bearer" not in message
    assert "mrn-4711" not in message
    assert "?" not in message


@pytest.mark.parametrize("status", [401, 403])
def test_401_403_raise_auth_error_without_retry(status: int) -> None:
    sleep = FakeSleep()
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        route = router.get("/ServiceRequest").respond(status)
        with pytest.raises(AuthError) as info:
            collect(endpoint(auth={"type": "bearer", "token": TOKEN}), {}, sleep=sleep)
    assert route.call_count == 1
    assert sleep.delays == []
    assert TOKEN not in str(info.value)


# -- request(), headers, capabilities ---------------------------------------------------------------------


def test_default_headers_and_user_agent() -> None:
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        route = router.get("/ServiceRequest").respond(json=bundle())
        collect(endpoint(), {})
    headers = route.calls.last.request.headers
    assert headers["Accept"] == "application/fhir+json"
    assert headers["User-Agent"] == f"therapy-fhir-connector/{__version__}"
    assert "Authorization" not in headers


def test_request_posts_fhir_json_to_relative_path_with_retry() -> None:
    sleep = FakeSleep()
    task = {"resourceType": "Task", "status": "received", "intent": "order"}
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        route = router.post("/Task").mock(
            side_effect=[httpx.Response(503), httpx.Response(201, json={**task, "id": "t1"})]
        )
        response = request(
            endpoint(), "POST", "/Task", sleep, json=task, headers={"If-None-Exist": "identifier=sys|ack-1"}
        )
    assert response.status_code == 201
    assert response.json()["id"] == "t1"
    sent = route.calls.last.request
    assert sent.headers["Content-Type"] == "application/fhir+json"
    assert sent.headers["If-None-Exist"] == "identifier=sys|ack-1"
    assert orjson.loads(sent.content) == task
    assert route.call_count == 2


def test_request_with_params_and_absolute_same_origin_url() -> None:
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        route = router.put("/MeasureReport/m1", params={"_format": "json"}).respond(200, json={})
        request(
            endpoint(), "put", f"{BASE}/MeasureReport/m1", FakeSleep(), json={}, params={"_format": "json"}
        )
    assert route.calls.last.request.method == "PUT"


def test_request_refuses_another_server() -> None:
    with respx.mock(assert_all_called=False) as router, pytest.raises(FatalFhirError):
        request(endpoint(), "POST", "https://elsewhere.example.com/fhir/Task", FakeSleep(), json={})
    assert len(router.calls) == 0


def test_capabilities_returns_statement() -> None:
    cap = {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1", "rest": []}

    async def run() -> dict:
        async with FhirClient(endpoint()) as client:
            return await client.capabilities()

    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        router.get("/metadata").respond(json=cap)
        assert asyncio.run(run()) == cap


@pytest.mark.parametrize("body", [b"<html>Login</html>", b'{"resourceType": "Bundle"}'])
def test_capabilities_rejects_non_capability_statement(body: bytes) -> None:
    async def run() -> dict:
        async with FhirClient(endpoint()) as client:
            return await client.capabilities()

    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        router.get("/metadata").respond(200, content=body)
        with pytest.raises(FatalFhirError, match="CapabilityStatement"):
            asyncio.run(run())


def test_client_must_be_opened() -> None:
    client = FhirClient(endpoint())

    async def run() -> None:
        await client.request("GET", "metadata")

    with pytest.raises(RuntimeError, match="async with"):
        asyncio.run(run())


def test_ndjson_endpoint_is_not_a_server() -> None:
    with pytest.raises(Exception, match="base_url"):
        FhirClient(EndpointSettings(name="files", ndjson_dir="/tmp/exports"))


def test_httpx_loggers_are_quiet() -> None:
    # httpx logs full URLs (with identifiers in the query) at INFO.
    assert logging.getLogger("httpx").level == logging.WARNING
    assert logging.getLogger("httpcore").level == logging.WARNING
