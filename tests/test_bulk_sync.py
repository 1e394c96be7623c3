"""run_bulk_backfill end to end on a respx router and a real warehouse (SQLite and PostgreSQL):
kick-off → polls → manifest → downloads → load → watermark = transactionTime → DELETE, and what happens
when the export fails, runs out of time, breaks mid-file, is resumed, or points at another host."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import respx
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.config import EndpointSettings, RetrySettings, Settings
from connector.fhir.bulk import ExportFile
from connector.sync.bulk import run_bulk_backfill
from connector.sync.pipeline import StreamResult
from connector.warehouse import bulk_state, state
from connector.warehouse.models import Base
from connector.warehouse.writer import PageWrite, write_page
from tests.test_bulk import FakeTime as BulkFakeTime

BASE = "https://emr.test/fhir"
STATUS = f"{BASE}/bulkstatus/job-1"
FILES = f"{BASE}/bulkfiles"
TOKEN = "bulk-test-token"
T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
SYNCED_AT = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
TX_TIME = "2026-11-24T07:59:30.250Z"
DATA = Path(__file__).parent / "data" / "fhir"


class FakeTime(BulkFakeTime):
    """test_bulk's sleep-recording clock, starting at this module's T0."""

    def __init__(self) -> None:
        super().__init__(T0)


def endpoint(**kw: Any) -> EndpointSettings:
    data: dict[str, Any] = {
        "name": "clinic",
        "base_url": BASE,
        "page_size": 2,
        "resources": ["ServiceRequest", "Coverage"],
        "retry": RetrySettings(max_attempts=3, initial_backoff_seconds=0, max_backoff_seconds=0),
        "auth": {"type": "bearer", "token": TOKEN},
    }
    data.update(kw)
    return EndpointSettings.model_validate(data)


def settings_for(ep: EndpointSettings) -> Settings:
    return Settings.model_validate({"endpoints": [ep.model_dump()], "warehouse": {"batch_size": 50}})


def run(
    engine: Engine, ep: EndpointSettings, fake: FakeTime | None = None, types: tuple[str, ...] = ()
) -> list[StreamResult]:
    fake = fake or FakeTime()
    return asyncio.run(
        run_bulk_backfill(
            settings_for(ep),
            ep,
            engine,
            resource_types=list(types or ep.resources),
            run_id="run-1",
            synced_at=SYNCED_AT,
            sleep=fake.wait,
            now=fake.clock,
        )
    )


def sample(resource_type: str, count: int) -> list[dict[str, Any]]:
    rows = [orjson.loads(line) for line in (DATA / f"{resource_type}.ndjson").read_bytes().splitlines()]
    return rows[:count]


def ndjson(resources: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in resources)


def manifest(output: list[tuple[str, str]], **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "transactionTime": TX_TIME,
        "request": f"{BASE}/$export",
        "requiresAccessToken": True,
        "output": [{"type": t, "url": u} for t, u in output],
        "error": [],
    }
    body.update(kw)
    return body


def count(engine: Engine, table: str, **where: Any) -> int:
    t = Base.metadata.tables[table]
    query = sa.select(sa.func.count()).select_from(t)
    for column, value in where.items():
        query = query.where(t.c[column] == value)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def state_row(engine: Engine, resource_type: str) -> dict[str, Any]:
    return next(r for r in state.watermarks(engine) if r["resource_type"] == resource_type)


class BrokenStream(httpx.AsyncByteStream):
    """A body that stops half-way with the error a dropped connection gives."""

    def __init__(self, first: bytes) -> None:
        self.first = first

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.first
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


# -- the full cycle ----------------------------------------------------------------------------------------


def test_full_cycle_loads_every_file_records_errors_sets_the_watermark_and_deletes_the_job(
    engine: Engine,
) -> None:
    srs = sample("ServiceRequest", 5)
    coverages = sample("Coverage", 3)
    error = {
        "resourceType": "OperationOutcome",
        "id": "err-1",
        "issue": [
            {"severity": "error", "code": "processing", "diagnostics": "Claim/77 could not be exported"}
        ],
    }
    fake = FakeTime()
    with respx.mock(assert_all_called=True) as mock:
        kickoff = mock.get(f"{BASE}/$export").respond(202, headers={"Content-Location": STATUS})
        polls = mock.get(STATUS).mock(
            side_effect=[
                httpx.Response(202, headers={"Retry-After": "5", "X-Progress": "in progress 30%"}),
                httpx.Response(202, headers={"Retry-After": "999999"}),
                httpx.Response(
                    200,
                    json=manifest(
                        [
                            ("ServiceRequest", f"{FILES}/sr-1.ndjson"),
                            ("ServiceRequest", f"{FILES}/sr-2.ndjson"),
                            ("Coverage", f"{FILES}/cov-1.ndjson"),
                        ],
                        error=[{"type": "OperationOutcome", "url": f"{FILES}/err-1.ndjson"}],
                    ),
                ),
            ]
        )
        mock.get(f"{FILES}/sr-1.ndjson").respond(200, content=ndjson(srs[:3]))
        # The second file comes gzip-encoded on the wire.
        mock.get(f"{FILES}/sr-2.ndjson").respond(
            200, content=gzip.compress(ndjson(srs[3:])), headers={"Content-Encoding": "gzip"}
        )
        # The Coverage file is a .gz body without Content-Encoding.
        mock.get(f"{FILES}/cov-1.ndjson").respond(
            200, content=gzip.compress(ndjson(coverages)), headers={"Content-Type": "application/gzip"}
        )
        mock.get(f"{FILES}/err-1.ndjson").respond(200, content=ndjson([error]))
        delete = mock.delete(STATUS).respond(202)
        results = run(engine, endpoint(), fake)

    by_type = {r.resource_type: r for r in results}
    assert {t: (r.status, r.fetched, r.loaded) for t, r in by_type.items()} == {
        "ServiceRequest": ("succeeded", 5, 5),
        "Coverage": ("succeeded", 3, 3),
    }
    assert all(r.mode == "bulk" and r.watermark == TX_TIME for r in results)
    # Kick-off asked for exactly the configured types, a full export (no watermark yet), asynchronously.
    request = kickoff.calls.last.request
    assert request.url.params["_type"] == "ServiceRequest,Coverage"
    assert "_since" not in request.url.params
    assert request.headers["Prefer"] == "respond-async"
    assert polls.call_count == 3
    assert fake.sleeps == [5, 300]  # Retry-After honoured, and capped at bulk_poll_cap_seconds
    assert delete.call_count == 1
    # Loaded through the normal path: raw rows and mapped rows.
    assert count(engine, "raw_resource", resource_type="ServiceRequest") == 5
    assert count(engine, "raw_resource", resource_type="Coverage") == 3
    assert count(engine, "referral") == 5
    # The error file's outcome is a dead letter.
    assert count(engine, "dead_letter", resource_type="OperationOutcome") == 1
    with engine.connect() as conn:
        dead = Base.metadata.tables["dead_letter"]
        assert "Claim/77 could not be exported" in conn.execute(sa.select(dead.c.error)).scalar_one()
    # The watermark is the server's transactionTime; the export is forgotten.
    for rt in ("ServiceRequest", "Coverage"):
        row = state_row(engine, rt)
        assert row["watermark"] == TX_TIME
        assert row["watermark_at"] == datetime(2026, 11, 24, 7, 59, 30, 250000, tzinfo=UTC)
        assert row["mode"] == "bulk"
        assert row["bulk_status_url"] is None
        assert row["bulk_files_done"] is None
    assert bulk_state.pending_export(engine, "clinic") is None
    # One sync_run row per file, all succeeded.
    runs = state.runs_for(engine, "run-1")
    assert sorted((r["resource_type"], r["fetched"]) for r in runs) == [
        ("Coverage", 3),
        ("ServiceRequest", 2),
        ("ServiceRequest", 3),
    ]
    assert {r["status"] for r in runs} == {"succeeded"}


def test_incremental_export_asks_since_the_watermark_and_marks_deleted_resources(engine: Engine) -> None:
    def sr(rid: str, updated: str) -> dict[str, Any]:
        return {
            "resourceType": "ServiceRequest",
            "id": rid,
            "meta": {"lastUpdated": updated},
            "status": "active",
            "intent": "order",
            "subject": {"reference": "Patient/p1"},
        }

    raw = [
        {
            "resource_id": rid,
            "version_id": None,
            "last_updated": datetime.fromisoformat(at),
            "payload": sr(rid, at),
        }
        for rid, at in [
            ("gone", "2026-10-01T00:00:00Z"),
            ("recreated", "2026-11-24T07:00:00Z"),
            ("kept", "2026-10-01T00:00:00Z"),
        ]
    ]
    write_page(
        engine,
        PageWrite(
            endpoint="clinic",
            resource_type="ServiceRequest",
            raw=raw,
            watermark="2026-11-20T10:00:00Z",
            mode="last-updated",
        ),
    )
    deleted = {
        "resourceType": "Bundle",
        "type": "transaction",
        "meta": {"lastUpdated": "2026-11-23T00:00:00Z"},
        "entry": [
            {"request": {"method": "DELETE", "url": "ServiceRequest/gone"}},
            {"request": {"method": "DELETE", "url": f"{BASE}/ServiceRequest/recreated/_history/3"}},
            {"request": {"method": "DELETE", "url": "Patient/p1"}},  # not an exported type: ignored
        ],
    }
    ep = endpoint(bulk="always", overlap_seconds=60)
    with respx.mock(assert_all_called=True) as mock:
        kickoff = mock.get(f"{BASE}/$export").respond(202, headers={"Content-Location": STATUS})
        mock.get(STATUS).respond(
            200,
            json=manifest(
                [("ServiceRequest", f"{FILES}/sr.ndjson")],
                deleted=[{"type": "Bundle", "url": f"{FILES}/del.ndjson"}],
            ),
        )
        mock.get(f"{FILES}/sr.ndjson").respond(200, content=ndjson([sr("new", "2026-11-24T06:00:00Z")]))
        mock.get(f"{FILES}/del.ndjson").respond(200, content=ndjson([deleted]))
        mock.delete(STATUS).respond(202)
        [result] = run(engine, ep, types=("ServiceRequest",))

    assert result.status == "succeeded"
    assert kickoff.calls.last.request.url.params["_since"] == "2026-11-20T09:59:00.000Z"
    table = Base.metadata.tables["raw_resource"]
    with engine.connect() as conn:
        flags = dict(conn.execute(sa.select(table.c.resource_id, table.c.deleted)).all())
    # "recreated" is newer than the deletion: a later version, not resurrected by an older delete.
    assert flags == {"gone": True, "recreated": False, "kept": False, "new": False}
    assert state_row(engine, "ServiceRequest")["watermark"] == TX_TIME


# -- failures ----------------------------------------------------------------------------------------------


def test_failed_export_is_a_clear_error_the_job_is_deleted_and_forgotten(engine: Engine) -> None:
    failure = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "fatal", "code": "processing", "diagnostics": "export job aborted: out of disk"}
        ],
    }
    with respx.mock(assert_all_called=True) as mock:
        mock.get(f"{BASE}/$export").respond(202, headers={"Content-Location": STATUS})
        mock.get(STATUS).mock(side_effect=[httpx.Response(202), httpx.Response(500, json=failure)])
        delete = mock.delete(STATUS).respond(202)
        results = run(engine, endpoint())
    assert [r.status for r in results] == ["failed", "failed"]
    assert all("out of disk" in (r.error or "") and "HTTP 500" in (r.error or "") for r in results)
    assert not any(r.transient for r in results)
    assert delete.call_count == 1
    assert bulk_state.pending_export(engine, "clinic") is None
    assert state.get_watermark(engine, "clinic", "ServiceRequest") == (None, None)
    runs = state.runs_for(engine, "run-1")
    assert {(r["resource_type"], r["status"]) for r in runs} == {
        ("ServiceRequest", "failed"),
        ("Coverage", "failed"),
    }


def test_deadline_exceeded_cancels_the_job_with_delete(engine: Engine) -> None:
    fake = FakeTime()
    ep = endpoint(bulk_deadline_hours=0.5, bulk_poll_cap_seconds=600)
    with respx.mock(assert_all_called=True) as mock:
        mock.get(f"{BASE}/$export").respond(202, headers={"Content-Location": STATUS})
        polls = mock.get(STATUS).respond(202, headers={"Retry-After": "3600"})
        delete = mock.delete(STATUS).respond(202)
        results = run(engine, ep, fake)
    assert fake.sleeps == [600, 600, 600]
    assert polls.call_count == 3
    assert delete.call_count == 1
    assert all(r.status == "failed" and "bulk_deadline_hours" in (r.error or "") for r in results)
    assert bulk_state.pending_export(engine, "clinic") is None


def test_download_broken_mid_file_is_retried_and_nothing_is_loaded_twice(engine: Engine) -> None:
    srs = sample("ServiceRequest", 3)
    body = ndjson(srs)
    with respx.mock(assert_all_called=True) as mock:
        mock.get(f"{BASE}/$export").respond(202, headers={"Content-Location": STATUS})
        mock.get(STATUS).respond(200, json=manifest([("ServiceRequest", f"{FILES}/sr.ndjson")]))
        download = mock.get(f"{FILES}/sr.ndjson").mock(
            side_effect=[
                # Two whole lines and half of the third, then the connection drops.
                httpx.Response(
                    200, stream=BrokenStream(body[: body.index(b"\n", body.index(b"\n") + 1) + 20])
                ),
                httpx.Response(200, content=body),
            ]
        )
        mock.delete(STATUS).respond(202)
        [result] = run(engine, endpoint(), types=("ServiceRequest",))
    assert download.call_count == 2
    assert (result.status, result.fetched, result.loaded, result.rejected) == ("succeeded", 3, 3, 0)
    assert count(engine, "raw_resource") == 3
    assert count(engine, "dead_letter") == 0  # the half line never reached the reader
    [file_run] = state.runs_for(engine, "run-1")
    assert (file_run["fetched"], file_run["loaded"]) == (3, 3)


# -- resumability ------------------------------------------------------------------------------------------


def test_stopped_run_is_resumed_the_same_export_is_polled_and_done_files_are_skipped(engine: Engine) -> None:
    srs = sample("ServiceRequest", 4)
    done_manifest = manifest(
        [("ServiceRequest", f"{FILES}/sr-1.ndjson"), ("ServiceRequest", f"{FILES}/sr-2.ndjson")]
    )
    fake = FakeTime()
    # Run 1: the second file keeps failing; the first is loaded and remembered; the job is kept.
    with respx.mock(assert_all_called=True) as mock:
        mock.get(f"{BASE}/$export").respond(202, headers={"Content-Location": STATUS})
        mock.get(STATUS).respond(200, json=done_manifest)
        mock.get(f"{FILES}/sr-1.ndjson").respond(200, content=ndjson(srs[:2]))
        mock.get(f"{FILES}/sr-2.ndjson").respond(503)
        [first] = run(engine, endpoint(), fake, types=("ServiceRequest",))
    assert (first.status, first.fetched, first.transient) == ("failed", 2, True)
    pending = bulk_state.pending_export(engine, "clinic")
    assert pending is not None
    assert pending.status_url == STATUS
    assert pending.started_at == T0
    assert pending.files_done == {"ServiceRequest": frozenset({f"{FILES}/sr-1.ndjson"})}
    assert state.get_watermark(engine, "clinic", "ServiceRequest") == (None, None)

    # Run 2: no kick-off (an unexpected request would fail the router), sr-1 not fetched again.
    with respx.mock(assert_all_called=True) as mock:
        poll = mock.get(STATUS).respond(200, json=done_manifest)
        mock.get(f"{FILES}/sr-2.ndjson").respond(200, content=ndjson(srs[2:]))
        delete = mock.delete(STATUS).respond(202)
        [second] = run(engine, endpoint(), fake, types=("ServiceRequest",))
    assert poll.call_count == 1
    assert (second.status, second.fetched, second.loaded) == ("succeeded", 2, 2)
    assert delete.call_count == 1
    assert count(engine, "raw_resource") == 4
    assert state.get_watermark(engine, "clinic", "ServiceRequest")[0] == TX_TIME
    assert bulk_state.pending_export(engine, "clinic") is None


def test_a_rebuilt_export_loads_its_files_again(engine: Engine) -> None:
    bulk_state.save_kickoff(engine, "clinic", ["Coverage"], STATUS, T0)
    bulk_state.save_transaction_time(engine, "clinic", STATUS, "2026-11-24T06:00:00Z")
    bulk_state.mark_files_done(engine, "clinic", STATUS, ["Coverage"], [f"{FILES}/cov.ndjson"])
    with respx.mock(assert_all_called=True) as mock:
        mock.get(STATUS).respond(200, json=manifest([("Coverage", f"{FILES}/cov.ndjson")]))
        cov = mock.get(f"{FILES}/cov.ndjson").respond(200, content=ndjson(sample("Coverage", 2)))
        mock.delete(STATUS).respond(202)
        [result] = run(engine, endpoint(), types=("Coverage",))
    assert cov.call_count == 1  # another transactionTime: the "done" list no longer applies
    assert (result.status, result.loaded) == ("succeeded", 2)


def test_an_expired_export_is_forgotten_so_the_next_run_starts_a_new_one(engine: Engine) -> None:
    bulk_state.save_kickoff(engine, "clinic", ["Coverage"], STATUS, T0)
    with respx.mock(assert_all_called=True) as mock:
        mock.get(STATUS).respond(404)
        [result] = run(engine, endpoint(), types=("Coverage",))
    assert result.status == "failed"
    assert result.transient
    assert bulk_state.pending_export(engine, "clinic") is None


# -- SSRF --------------------------------------------------------------------------------------------------


def test_output_on_another_host_is_refused_nothing_is_downloaded_and_the_export_is_deleted(
    engine: Engine,
) -> None:
    with respx.mock(assert_all_called=True) as mock:
        mock.get(f"{BASE}/$export").respond(202, headers={"Content-Location": STATUS})
        mock.get(STATUS).respond(
            200,
            json=manifest(
                [("Coverage", f"{FILES}/cov.ndjson"), ("Coverage", "https://attacker.test/steal.ndjson")]
            ),
        )
        delete = mock.delete(STATUS).respond(202)
        [result] = run(engine, endpoint(), types=("Coverage",))
    # Neither file was requested (the router has no route for them).
    assert result.status == "failed"
    assert "attacker.test" in (result.error or "")
    assert "bulk_allowed_hosts" in (result.error or "")
    assert count(engine, "raw_resource") == 0
    # Not left running on the server: deleted once, and forgotten (the next run kicks off a new export).
    assert delete.call_count == 1
    assert bulk_state.pending_export(engine, "clinic") is None
    assert state_row(engine, "Coverage")["watermark"] is None


def test_allowed_storage_host_is_downloaded_without_credentials(engine: Engine) -> None:
    url = "https://storage.test/exports/cov.ndjson?sig=s3cret"
    with respx.mock(assert_all_called=True) as mock:
        mock.get(f"{BASE}/$export").respond(202, headers={"Content-Location": STATUS})
        poll = mock.get(STATUS).respond(200, json=manifest([("Coverage", url)], requiresAccessToken=False))
        storage = mock.get(url).respond(200, content=ndjson(sample("Coverage", 2)))
        delete = mock.delete(STATUS).respond(202)
        [result] = run(engine, endpoint(bulk_allowed_hosts=["storage.test"]), types=("Coverage",))
    assert result.status == "succeeded"
    assert result.loaded == 2
    assert "Authorization" not in storage.calls.last.request.headers
    # The endpoint's own server still gets the token.
    assert poll.calls.last.request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert delete.calls.last.request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert ExportFile("Coverage", url).key.startswith("https://storage.test/exports/cov.ndjson#")
