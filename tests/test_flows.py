"""Prefect flows: one failing endpoint does not stop the others; the run ends Failed with the reason."""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson
import pytest
import respx
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.warehouse import state
from connector.warehouse.engine import make_engine
from tests.flow_states import final_state


@pytest.fixture(scope="module")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def service_request(n: int) -> dict:
    return {
        "resourceType": "ServiceRequest",
        "id": f"sr{n}",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "meta": {"lastUpdated": f"2026-11-0{n}T10:00:00Z"},
    }


def test_sync_all_runs_every_endpoint_and_fails_with_the_reason(
    prefect_harness: None, tmp_path: Path, warehouse_url: str, engine: Engine
) -> None:
    from flows.sync import sync_all

    good = tmp_path / "good"
    good.mkdir()
    with gzip.open(good / "ServiceRequest.ndjson.gz", "wb") as fh:
        fh.write(b"\n".join(orjson.dumps(service_request(n)) for n in (1, 2, 3)))
    config = tmp_path / "connector.toml"
    config.write_text(
        f'[warehouse]\nurl = "{warehouse_url}"\n'
        '[[endpoints]]\nname = "broken"\nndjson_dir = "missing-folder"\nresources = ["ServiceRequest"]\n'
        '[[endpoints]]\nname = "good"\nndjson_dir = "good"\nresources = ["ServiceRequest", "Claim"]\n'
    )
    flow_state = final_state(sync_all(str(config), run_id="run-x", return_state=True))
    assert flow_state.is_failed()
    assert "broken" in (flow_state.message or "") or "broken" in str(
        flow_state.result(raise_on_failure=False)
    )
    with engine.connect() as conn:
        runs = conn.execute(
            sa.text(
                "select endpoint, resource_type, status, loaded from sync_run where run_id = 'run-x' "
                "order by endpoint, resource_type, id"
            )
        ).all()
        referrals = conn.execute(
            sa.text("select count(*) from referral where endpoint = 'good'")
        ).scalar_one()
    assert referrals == 3
    # The broken endpoint's stream is retried by Prefect only for transient errors: a missing folder is not.
    assert [tuple(r) for r in runs] == [
        ("broken", "ServiceRequest", "failed", 0),
        ("good", "Claim", "succeeded", 0),
        ("good", "ServiceRequest", "succeeded", 3),
    ]


# ---------------------------------------------------------------- a FHIR server on 127.0.0.1
# A real HTTP server rather than respx: worker processes and Dask workers cannot see respx's mocks.

BASE_DAY = datetime(2026, 10, 1, tzinfo=UTC)


def _updated(n: int) -> str:
    return (BASE_DAY + timedelta(days=n, hours=n % 7)).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def referral(n: int) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": f"sr{n}",
        "meta": {"versionId": "1", "lastUpdated": _updated(n)},
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "authoredOn": "2026-09-01",
    }


class StubFhir:
    """Searches ServiceRequest by `_lastUpdated` (ge / lt / gt), `_sort`, `_count`, `_summary=count`."""

    def __init__(self, count: int) -> None:
        self.resources = [referral(n) for n in range(count)]
        self.served: Counter[str] = Counter()
        self.searches: list[list[tuple[str, str]]] = []
        #: Searches whose `_lastUpdated=ge` bound falls in [fail_from, fail_to) answer 400.
        self.fail_from: datetime | None = None
        self.fail_to: datetime | None = None
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                status, body = stub.answer(self.path)
                data = orjson.dumps(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def answer(self, path: str) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(path)
        params = parse_qsl(parts.query, keep_blank_values=True)
        if parts.path == "/fhir/metadata":
            return 200, {
                "resourceType": "CapabilityStatement",
                "fhirVersion": "4.0.1",
                "rest": [
                    {
                        "mode": "server",
                        "resource": [{"type": "ServiceRequest", "searchParam": [{"name": "_lastUpdated"}]}],
                    }
                ],
            }
        if parts.path != "/fhir/ServiceRequest":
            return 404, {"resourceType": "OperationOutcome"}
        items = list(self.resources)
        for key, value in params:
            if key != "_lastUpdated":
                continue
            op, at = value[:2], datetime.fromisoformat(value[2:])
            if op == "ge" and self.fail_from and self.fail_from <= at < (self.fail_to or at):
                return 400, {"resourceType": "OperationOutcome", "issue": [{"diagnostics": "boom"}]}
            keep = {"ge": lambda t, a=at: t >= a, "gt": lambda t, a=at: t > a, "lt": lambda t, a=at: t < a}
            items = [r for r in items if keep[op](datetime.fromisoformat(r["meta"]["lastUpdated"]))]
        query = dict(params)
        if query.get("_summary") == "count":
            return 200, {"resourceType": "Bundle", "type": "searchset", "total": len(items)}
        items.sort(key=lambda r: r["meta"]["lastUpdated"], reverse=query.get("_sort") == "-_lastUpdated")
        offset, size = int(query.get("_offset", "0")), int(query.get("_count", "50"))
        page = items[offset : offset + size]
        with self.lock:
            if size > 1:  # not a probe for the oldest / newest resource
                self.searches.append(params)
                self.served.update(r["id"] for r in page)
        body: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in page],
            "link": [],
        }
        if offset + size < len(items):
            rest = [(k, v) for k, v in params if k != "_offset"] + [("_offset", str(offset + size))]
            body["link"].append({"relation": "next", "url": f"{self.base}/ServiceRequest?{urlencode(rest)}"})
        return 200, body

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[StubFhir]:
    server = StubFhir(40)
    try:
        yield server
    finally:
        server.close()


def server_config(tmp_path: Path, warehouse: str, base: str, runtime: str = "") -> Path:
    config = tmp_path / "connector.toml"
    config.write_text(
        f'[warehouse]\nurl = "{warehouse}"\n'
        f"[runtime]\nbackfill_windows = 4\nbackfill_min_resources = 10\n{runtime}\n"
        f'[[endpoints]]\nname = "clinic"\nbase_url = "{base}"\nresources = ["ServiceRequest"]\n'
        "page_size = 4\noverlap_seconds = 0\n"
        "[endpoints.retry]\nmax_attempts = 1\n"
    )
    return config


def warehouse_snapshot(url: str) -> tuple[list[tuple[str, str]], str | None, list[tuple[str, int]]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            referrals = [
                tuple(r)
                for r in conn.execute(
                    sa.text("select resource_id, status from referral order by resource_id")
                )
            ]
            runs = [
                tuple(r)
                for r in conn.execute(sa.text("select status, loaded from sync_run order by loaded, status"))
            ]
        watermark, _ = state.get_watermark(engine, "clinic", "ServiceRequest")
    finally:
        engine.dispose()
    return referrals, watermark, runs


def test_windowed_backfill_loads_everything_exactly_once(
    prefect_harness: None, tmp_path: Path, warehouse_url: str, engine: Engine, stub: StubFhir
) -> None:
    from flows.sync import sync_endpoint

    config = server_config(tmp_path, warehouse_url, stub.base)
    flow_state = final_state(sync_endpoint(str(config), "clinic", run_id="backfill", return_state=True))
    assert flow_state.is_completed(), flow_state.message
    referrals, watermark, runs = warehouse_snapshot(warehouse_url)
    assert len(referrals) == 40
    # Four windows, every resource fetched by exactly one of them.
    assert len(runs) == 4
    assert all(status == "succeeded" for status, _ in runs)
    assert sum(loaded for _, loaded in runs) == 40
    assert set(stub.served.values()) == {1}
    assert len(stub.served) == 40
    assert watermark == _updated(39)
    bounds = [[v for k, v in s if k == "_lastUpdated"] for s in stub.searches if ("_offset" not in dict(s))]
    assert sorted(map(len, bounds)) == [1, 1, 2, 2]  # open first and last window, bounded middle ones

    # The next run is incremental: one task from the watermark, nothing new to load.
    stub.searches.clear()
    flow_state = final_state(sync_endpoint(str(config), "clinic", run_id="next", return_state=True))
    assert flow_state.is_completed(), flow_state.message
    assert [dict(s).get("_lastUpdated") for s in stub.searches] == [f"gt{_updated(39)}"]


def test_threads_runner_runs_the_window_tasks_on_the_flow_loop_two_at_a_time(
    prefect_harness: None,
    tmp_path: Path,
    sqlite_url: str,
    stub: StubFhir,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No thread, loop or Prefect client per task: the flow's own loop, `max_parallel_streams` at once."""
    import flows.sync
    from flows.sync import sync_endpoint

    loops: list[asyncio.AbstractEventLoop] = []
    running = [0, 0]  # now, most at once
    real_run_stream = flows.sync.run_stream

    async def watched(**kwargs: Any) -> Any:
        loops.append(asyncio.get_running_loop())
        running[0] += 1
        running[1] = max(running)
        try:
            return await real_run_stream(**kwargs)
        finally:
            running[0] -= 1

    config = server_config(tmp_path, sqlite_url, stub.base, "max_parallel_streams = 2")

    async def flow_and_its_loop() -> tuple[Any, asyncio.AbstractEventLoop]:
        state = await sync_endpoint(str(config), "clinic", run_id="one-loop", return_state=True)
        return state, asyncio.get_running_loop()

    monkeypatch.setattr(flows.sync, "run_stream", watched)
    flow_state, flow_loop = asyncio.run(flow_and_its_loop())
    assert flow_state.is_completed(), flow_state.message
    assert len(loops) == 4
    assert set(loops) == {flow_loop}
    assert running[1] == 2
    assert len(warehouse_snapshot(sqlite_url)[0]) == 40


def test_failed_window_holds_the_watermark_before_it(
    prefect_harness: None, tmp_path: Path, sqlite_url: str, stub: StubFhir
) -> None:
    from flows.sync import sync_endpoint

    config = server_config(tmp_path, sqlite_url, stub.base)
    # The third window of four (starting ~day 20) fails; the fourth, newer one succeeds.
    stub.fail_from, stub.fail_to = BASE_DAY + timedelta(days=15), BASE_DAY + timedelta(days=25)
    flow_state = final_state(sync_endpoint(str(config), "clinic", run_id="partial", return_state=True))
    assert flow_state.is_failed()
    assert "window 3/4" in str(flow_state.result(raise_on_failure=False))
    referrals, watermark, runs = warehouse_snapshot(sqlite_url)
    assert [status for status, _ in runs].count("failed") == 1
    assert watermark is not None
    # Not the fourth window's newest: everything before the watermark is loaded, nothing after is assumed.
    assert watermark < _updated(21)
    loaded_ids = {r[0] for r in referrals}
    assert all(r["id"] in loaded_ids for r in stub.resources if r["meta"]["lastUpdated"] <= watermark)

    # Once the server is fixed, the next (incremental) run reads from there and catches up.
    stub.fail_from = stub.fail_to = None
    flow_state = final_state(sync_endpoint(str(config), "clinic", run_id="catch-up", return_state=True))
    assert flow_state.is_completed(), flow_state.message
    referrals, watermark, _ = warehouse_snapshot(sqlite_url)
    assert len(referrals) == 40
    assert watermark == _updated(39)


@pytest.mark.parametrize("runner", ["threads", "processes", "dask"])
def test_task_runners_give_equal_results(
    prefect_harness: None, tmp_path: Path, sqlite_url: str, stub: StubFhir, runner: str
) -> None:
    """The same flow code on threads, worker processes and a local Dask cluster: the same warehouse."""
    from flows.sync import sync_endpoint

    config = server_config(
        tmp_path, sqlite_url, stub.base, f'task_runner = "{runner}"\nmax_parallel_streams = 2'
    )
    flow_state = final_state(sync_endpoint(str(config), "clinic", run_id=runner, return_state=True))
    assert flow_state.is_completed(), flow_state.message
    referrals, watermark, runs = warehouse_snapshot(sqlite_url)
    assert referrals == [(f"sr{n}", "active") for n in sorted(range(40), key=lambda n: f"sr{n}")]
    assert watermark == _updated(39)
    assert [status for status, _ in runs] == ["succeeded"] * 4
    assert sum(loaded for _, loaded in runs) == 40
    assert set(stub.served.values()) == {1}


def cannot_count(mock: respx.MockRouter) -> None:
    """The servers answer the run's receipt (`_summary=count`) with 400: `_summary` is optional."""
    mock.get(params={"_summary": "count"}).respond(400)


def capability_statement() -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "fhirVersion": "4.0.1",
        "rest": [
            {
                "mode": "server",
                "resource": [{"type": "ServiceRequest", "searchParam": [{"name": "_lastUpdated"}]}],
            }
        ],
    }


def test_sync_all_over_two_servers_one_failing_publishes_counts(
    prefect_harness: None, tmp_path: Path, sqlite_url: str
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.sync import sync_all

    config = tmp_path / "connector.toml"
    servers = "".join(
        f'[[endpoints]]\nname = "{name}"\nbase_url = "https://{name}.test/fhir"\n'
        'resources = ["ServiceRequest"]\n'
        "[endpoints.retry]\nmax_attempts = 1\n"
        for name in ("north", "south")
    )
    config.write_text(f'[warehouse]\nurl = "{sqlite_url}"\n[runtime]\nbackfill_windows = 1\n{servers}')
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": referral(n), "search": {"mode": "match"}} for n in (1, 2)],
    }
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "forbidden"}]}
    with respx.mock(assert_all_called=True) as mock:
        # Prefect's own client talks to the test server on 127.0.0.1: let it through.
        mock.route(host="127.0.0.1").pass_through()
        cannot_count(mock)
        cannot_count(mock)
        mock.get("https://north.test/fhir/metadata").respond(json=capability_statement())
        mock.get("https://north.test/fhir/ServiceRequest").respond(json=bundle)
        mock.get("https://south.test/fhir/metadata").respond(json=capability_statement())
        south = mock.get("https://south.test/fhir/ServiceRequest").respond(403, json=outcome)
        flow_state = final_state(sync_all(str(config), run_id="two", return_state=True))
    assert flow_state.is_failed()
    reason = str(flow_state.result(raise_on_failure=False))
    assert "south failed" in reason
    assert "north" not in reason
    assert south.call_count == 1  # a 403 is fatal: no HTTP retry, no task retry
    referrals, _, _ = warehouse_snapshot(sqlite_url)
    assert [r[0] for r in referrals] == ["sr1", "sr2"]

    async def artifacts() -> dict[str, str]:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["sync-north", "sync-south"]))
            )
        return {a.key or "": str(a.data) for a in found}

    published = asyncio.run(artifacts())
    assert "| ServiceRequest | last-updated | succeeded | 1 | 2 | 2 | 0 |" in published["sync-north"]
    assert "| ServiceRequest | last-updated | failed | 1 | 0 | 0 | 0 |" in published["sync-south"]
    assert "## Failures" in published["sync-south"]
    # Counts and names only: no resource ids, no server addresses.
    assert not any(("sr1" in text or ".test" in text) for text in published.values())


def test_first_sync_of_a_bulk_server_uses_export_then_searches_incrementally(
    prefect_harness: None, tmp_path: Path, sqlite_url: str
) -> None:
    from flows.sync import sync_all

    base = "https://bulk.test/fhir"
    config = tmp_path / "connector.toml"
    config.write_text(
        f'[warehouse]\nurl = "{sqlite_url}"\n[[endpoints]]\nname = "vendor"\nbase_url = "{base}"\n'
        'resources = ["ServiceRequest"]\n'
    )
    capability = capability_statement()
    capability["rest"][0]["operation"] = [
        {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"}
    ]
    # The kick-off asks only for types the CapabilityStatement lists.
    capability["rest"][0]["resource"] += [
        {"type": t} for t in ("Practitioner", "PractitionerRole", "Organization")
    ]
    manifest = {
        "transactionTime": "2026-11-20T10:00:00.000Z",
        "request": f"{base}/$export",
        "requiresAccessToken": True,
        "output": [{"type": "ServiceRequest", "url": f"{base}/files/sr.ndjson"}],
        "error": [],
    }
    lines = b"".join(orjson.dumps(referral(n)) + b"\n" for n in (1, 2, 3))
    with respx.mock(assert_all_called=True) as mock:
        mock.route(host="127.0.0.1").pass_through()
        cannot_count(mock)
        mock.get(f"{base}/metadata").respond(json=capability)
        kickoff = mock.get(f"{base}/$export").respond(202, headers={"Content-Location": f"{base}/jobs/1"})
        mock.get(f"{base}/jobs/1").respond(200, json=manifest)
        mock.get(f"{base}/files/sr.ndjson").respond(200, content=lines)
        deleted = mock.delete(f"{base}/jobs/1").respond(202)
        first = final_state(sync_all(str(config), run_id="bulk-1", return_state=True))
        # The second run continues after the manifest's transactionTime with an ordinary search.
        search = mock.get(f"{base}/ServiceRequest").respond(
            json={"resourceType": "Bundle", "type": "searchset", "entry": []}
        )
        second = final_state(sync_all(str(config), run_id="bulk-2", return_state=True))
    assert first.is_completed()
    assert second.is_completed()
    assert kickoff.call_count == 1
    # $export has no _include: the referral sources are exported with the referrals.
    exported = kickoff.calls.last.request.url.params["_type"].split(",")
    assert exported == ["ServiceRequest", "Practitioner", "PractitionerRole", "Organization"]
    assert deleted.call_count == 1
    referrals, _, _ = warehouse_snapshot(sqlite_url)
    assert [r[0] for r in referrals] == ["sr1", "sr2", "sr3"]
    engine = make_engine(sqlite_url)
    try:
        assert state.get_watermark(engine, "vendor", "ServiceRequest")[0] == "2026-11-20T10:00:00.000Z"
    finally:
        engine.dispose()
    assert search.calls.last.request.url.params["_lastUpdated"].startswith("gt2026-11-20T09:59:00")


def _bulk_capability(*types: str) -> dict[str, Any]:
    capability = capability_statement()
    capability["rest"][0]["operation"] = [
        {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"}
    ]
    capability["rest"][0]["resource"] += [{"type": t} for t in types]
    return capability


def test_an_export_that_reports_a_failed_type_fails_the_run_naming_it_and_the_next_run_loads_it(
    prefect_harness: None, tmp_path: Path, sqlite_url: str
) -> None:
    from flows.sync import sync_all

    base = "https://bulk.test/fhir"
    config = tmp_path / "connector.toml"
    config.write_text(
        f'[warehouse]\nurl = "{sqlite_url}"\n[[endpoints]]\nname = "vendor"\nbase_url = "{base}"\n'
        'resources = ["ServiceRequest", "Coverage"]\n'
    )
    capability = _bulk_capability("Coverage")
    failure = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": "processing", "diagnostics": "Failed to export 2.Coverage.ndjson"}
        ],
    }
    coverage = {
        "resourceType": "Coverage",
        "id": "cov1",
        "meta": {"lastUpdated": "2026-11-19T10:00:00Z"},
        "status": "active",
        "beneficiary": {"reference": "Patient/p1"},
        "payor": [{"reference": "Organization/payer"}],
    }
    lines = b"".join(orjson.dumps(referral(n)) + b"\n" for n in (1, 2))

    def manifest(tx: str, output: list[tuple[str, str]], error: list[str]) -> dict[str, Any]:
        return {
            "transactionTime": tx,
            "request": f"{base}/$export",
            "requiresAccessToken": True,
            "output": [{"type": t, "url": f"{base}/files/{name}"} for t, name in output],
            "error": [{"type": "OperationOutcome", "url": f"{base}/files/{name}"} for name in error],
        }

    with respx.mock(assert_all_called=True) as mock:
        mock.route(host="127.0.0.1").pass_through()
        cannot_count(mock)
        mock.get(f"{base}/metadata").respond(json=capability)
        mock.get(f"{base}/$export").respond(202, headers={"Content-Location": f"{base}/jobs/1"})
        mock.get(f"{base}/jobs/1").respond(
            200,
            json=manifest(
                "2026-11-20T10:00:00.000Z", [("ServiceRequest", "sr.ndjson")], ["2.Coverage.ndjson"]
            ),
        )
        mock.get(f"{base}/files/sr.ndjson").respond(200, content=lines)
        mock.get(f"{base}/files/2.Coverage.ndjson").respond(200, content=orjson.dumps(failure))
        mock.delete(f"{base}/jobs/1").respond(202)
        first = final_state(sync_all(str(config), run_id="bulk-1", return_state=True))
    assert first.is_failed()
    reason = str(first.result(raise_on_failure=False))
    assert "Coverage (bulk)" in reason
    assert "Failed to export 2.Coverage.ndjson" in reason
    assert "ServiceRequest (bulk)" not in reason

    with respx.mock(assert_all_called=True) as mock:
        mock.route(host="127.0.0.1").pass_through()
        cannot_count(mock)
        mock.get(f"{base}/metadata").respond(json=capability)
        search = mock.get(f"{base}/ServiceRequest").respond(
            json={"resourceType": "Bundle", "type": "searchset", "entry": []}
        )
        kickoff = mock.get(f"{base}/$export").respond(202, headers={"Content-Location": f"{base}/jobs/2"})
        mock.get(f"{base}/jobs/2").respond(
            200, json=manifest("2026-11-21T10:00:00.000Z", [("Coverage", "cov.ndjson")], [])
        )
        mock.get(f"{base}/files/cov.ndjson").respond(200, content=orjson.dumps(coverage))
        mock.delete(f"{base}/jobs/2").respond(202)
        second = final_state(sync_all(str(config), run_id="bulk-2", return_state=True))
    assert second.is_completed()
    # Only the failed type is exported again; the healthy one searches on from its watermark.
    assert kickoff.calls.last.request.url.params["_type"] == "Coverage"
    assert search.calls.last.request.url.params["_lastUpdated"].startswith("gt2026-11-20T09:59:00")
    engine = make_engine(sqlite_url)
    try:
        assert state.get_watermark(engine, "vendor", "Coverage")[0] == "2026-11-21T10:00:00.000Z"
        with engine.connect() as conn:
            assert conn.execute(sa.text("select count(*) from eligibility")).scalar_one() == 1
    finally:
        engine.dispose()


def test_a_bulk_server_that_answers_404_to_searches_is_synced_by_export(
    prefect_harness: None, tmp_path: Path, sqlite_url: str
) -> None:
    from flows.sync import sync_all

    base = "https://bulkonly.test/fhir"
    config = tmp_path / "connector.toml"
    config.write_text(
        f'[warehouse]\nurl = "{sqlite_url}"\n[[endpoints]]\nname = "bulkonly"\nbase_url = "{base}"\n'
        'resources = ["ServiceRequest"]\n[endpoints.retry]\nmax_attempts = 1\n'
    )
    engine = make_engine(sqlite_url)
    try:
        from connector.warehouse.engine import ensure_schema
        from connector.warehouse.writer import PageWrite, write_page

        ensure_schema(engine)
        # An earlier export left a watermark: this run is incremental, by search, which the server lacks.
        for rt in ("ServiceRequest", "Practitioner", "PractitionerRole", "Organization"):
            write_page(engine, PageWrite("bulkonly", rt, watermark="2026-11-20T10:00:00.000Z", mode="bulk"))
    finally:
        engine.dispose()
    manifest = {
        "transactionTime": "2026-11-22T10:00:00.000Z",
        "request": f"{base}/$export",
        "requiresAccessToken": True,
        "output": [{"type": "ServiceRequest", "url": f"{base}/files/sr.ndjson"}],
        "error": [],
    }
    with respx.mock(assert_all_called=True) as mock:
        mock.route(host="127.0.0.1").pass_through()
        cannot_count(mock)
        mock.get(f"{base}/metadata").respond(
            json=_bulk_capability("Practitioner", "PractitionerRole", "Organization")
        )
        search = mock.get(f"{base}/ServiceRequest").respond(404)
        kickoff = mock.get(f"{base}/$export").respond(202, headers={"Content-Location": f"{base}/jobs/9"})
        mock.get(f"{base}/jobs/9").respond(200, json=manifest)
        mock.get(f"{base}/files/sr.ndjson").respond(200, content=orjson.dumps(referral(4)))
        mock.delete(f"{base}/jobs/9").respond(202)
        outcome = final_state(sync_all(str(config), run_id="fallback-1", return_state=True))
    assert outcome.is_completed(), outcome.result(raise_on_failure=False)
    assert search.call_count == 1
    assert kickoff.calls.last.request.url.params["_since"] == "2026-11-20T09:59:00.000Z"
    referrals, _, _ = warehouse_snapshot(sqlite_url)
    assert [r[0] for r in referrals] == ["sr4"]
    engine = make_engine(sqlite_url)
    try:
        assert state.get_watermark(engine, "bulkonly", "ServiceRequest")[0] == "2026-11-22T10:00:00.000Z"
        runs = {(r["resource_type"], r["status"]) for r in state.runs_for(engine, "fallback-1")}
    finally:
        engine.dispose()
    # The failed search is recorded as replaced, not failed: the stream was loaded.
    assert ("ServiceRequest", "replaced") in runs
    assert ("ServiceRequest", "succeeded") in runs
    assert not any(status == "failed" for _, status in runs)


def test_stream_tasks_carry_the_endpoint_tag_only_when_a_limit_on_it_exists(prefect_harness: None) -> None:
    """Without a limit the tag only made every stream task ask the server for a slot as it started."""
    from prefect.client.orchestration import get_client

    from flows.sync import endpoint_tags

    async def tags_before_and_after_a_limit() -> tuple[list[str], list[str]]:
        before = await endpoint_tags("tagged-emr")
        async with get_client() as client:
            await client.create_concurrency_limit(tag="endpoint:tagged-emr", concurrency_limit=2)
        try:
            return before, await endpoint_tags("tagged-emr")
        finally:
            async with get_client() as client:
                await client.delete_concurrency_limit_by_tag("endpoint:tagged-emr")

    before, after = asyncio.run(tags_before_and_after_a_limit())
    assert before == []
    assert after == ["endpoint:tagged-emr"]


def test_a_failed_limit_lookup_keeps_the_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.sync

    class Unreachable:
        async def __aenter__(self) -> Unreachable:
            raise OSError("connection refused")

        async def __aexit__(self, *_exc: object) -> None:
            return None

    monkeypatch.setattr(flows.sync, "get_client", Unreachable)
    monkeypatch.setattr(flows.sync, "get_run_logger", lambda: __import__("logging").getLogger("test"))
    assert asyncio.run(flows.sync.endpoint_tags("north")) == ["endpoint:north"]
