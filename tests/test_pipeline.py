"""One stream end to end (fetch → map → load) against a respx FHIR server, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.config import EndpointSettings, RetrySettings
from connector.fhir.client import FhirClient
from connector.streams import Plan, plan_stream, stream_for
from connector.sync.pipeline import StreamResult, run_stream, search_params
from connector.warehouse import state
from connector.warehouse.models import Base

BASE = "https://emr.test/fhir"
SYNCED_AT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
LAST_UPDATED = Plan("ServiceRequest", "last-updated", None, "test")


def endpoint(**kw: Any) -> EndpointSettings:
    retry = RetrySettings(max_attempts=2, initial_backoff_seconds=0, max_backoff_seconds=0)
    return EndpointSettings(name="clinic", base_url=BASE, page_size=2, retry=retry, **kw)


def sr(n: int, updated: str, *, status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": f"sr{n}",
        "meta": {"versionId": "1", "lastUpdated": updated},
        "status": status,
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "requester": {"reference": "Practitioner/dr1", "display": "Dr. Ref"},
        "authoredOn": "2026-10-01",
    }


def bundle(
    resources: list[dict[str, Any]],
    next_url: str | None = None,
    *,
    included: list[dict[str, Any]] | None = None,
    last_updated: str | None = None,
) -> dict[str, Any]:
    entries = [{"resource": r, "search": {"mode": "match"}} for r in resources]
    entries += [{"resource": r, "search": {"mode": "include"}} for r in included or []]
    body: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "entry": entries, "link": []}
    if next_url:
        body["link"].append({"relation": "next", "url": next_url})
    if last_updated:
        body["meta"] = {"lastUpdated": last_updated}
    return body


async def _no_wait(_: float) -> None:
    return None


def run(engine: Engine, ep: EndpointSettings, plan: Plan, params: list[tuple[str, str]]) -> StreamResult:
    async def go() -> StreamResult:
        async with FhirClient(ep, sleep=_no_wait) as client:
            return await run_stream(
                engine=engine,
                endpoint=ep,
                plan=plan,
                pages=client.search(plan.resource_type, params),
                run_id="run-1",
                synced_at=SYNCED_AT,
                batch_size=100,
            )

    return asyncio.run(go())


def referral_ids(engine: Engine) -> list[str]:
    table = Base.metadata.tables["referral"]
    with engine.connect() as conn:
        return sorted(conn.execute(sa.select(table.c.resource_id)).scalars())


def three_pages(mock: respx.MockRouter) -> None:
    mock.get("/ServiceRequest").respond(
        json=bundle([sr(1, "2026-11-01T10:00:00Z"), sr(2, "2026-11-01T11:00:00Z")], f"{BASE}/page?token=b")
    )
    mock.get("/page", params={"token": "b"}).respond(
        json=bundle(
            [sr(3, "2026-11-02T09:00:00+01:00"), sr(4, "2026-11-01T12:00:00Z", status="bogus")],
            f"{BASE}/page?token=c",
        )
    )
    mock.get("/page", params={"token": "c"}).respond(json=bundle([sr(5, "2026-11-03T00:00:00.123Z")]))


def test_stream_loads_pages_rejects_bad_ones_and_sets_the_server_watermark(engine: Engine) -> None:
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        three_pages(mock)
        result = run(engine, endpoint(), LAST_UPDATED, [("_count", "2")])
    assert (result.status, result.fetched, result.loaded, result.rejected, result.pages) == (
        "succeeded",
        5,
        4,
        1,
        3,
    )
    assert referral_ids(engine) == ["sr1", "sr2", "sr3", "sr5"]
    text, at = state.get_watermark(engine, "clinic", "ServiceRequest")
    assert text == "2026-11-03T00:00:00.123Z"  # the server's text, not our clock
    assert at == datetime(2026, 11, 3, 0, 0, 0, 123000, tzinfo=UTC)
    runs = state.recent_runs(engine)
    assert (runs[0]["status"], runs[0]["fetched"], runs[0]["loaded"], runs[0]["rejected"]) == (
        "succeeded",
        5,
        4,
        1,
    )
    letters = state.dead_letter_counts(engine)
    assert [(d["resource_type"], d["open"]) for d in letters] == [("ServiceRequest", 1)]


def test_rerun_loads_nothing_twice(engine: Engine) -> None:
    for expected_loaded in (4, 0):
        with respx.mock(base_url=BASE, assert_all_called=True) as mock:
            three_pages(mock)
            result = run(engine, endpoint(), LAST_UPDATED, [("_count", "2")])
        assert result.loaded == expected_loaded
    with engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from raw_resource")).scalar_one() == 4
        assert conn.execute(sa.text("select attempts from dead_letter")).scalar_one() == 2


def test_failure_mid_stream_keeps_committed_pages_but_not_the_watermark(engine: Engine) -> None:
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/ServiceRequest").respond(
            json=bundle(
                [sr(1, "2026-11-01T10:00:00Z"), sr(2, "2026-11-01T09:00:00Z")], f"{BASE}/page?token=b"
            )
        )
        mock.get("/page").respond(503)
        result = run(engine, endpoint(), LAST_UPDATED, [("_count", "2")])
    assert result.status == "failed"
    assert result.transient is True
    assert "503" in (result.error or "")
    # Page 1 is out of _lastUpdated order, so nothing may be checkpointed before the stream completes.
    assert state.get_watermark(engine, "clinic", "ServiceRequest") == (None, None)
    assert referral_ids(engine) == ["sr1", "sr2"]
    run_row = state.recent_runs(engine)[0]
    assert run_row["status"] == "failed"
    assert "503" in run_row["error"]


def test_failure_on_a_later_page_keeps_the_watermark_and_the_loaded_rows(engine: Engine) -> None:
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/ServiceRequest").respond(
            json=bundle(
                [sr(1, "2026-11-01T09:00:00Z"), sr(2, "2026-11-01T10:00:00Z")], f"{BASE}/page?token=b"
            )
        )
        mock.get("/page", params={"token": "b"}).respond(
            json=bundle([sr(3, "2026-11-01T11:00:00Z")], f"{BASE}/page?token=c")
        )
        mock.get("/page", params={"token": "c"}).respond(
            404,
            json={
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "not-found", "diagnostics": "paging state expired"}],
            },
        )
        result = run(engine, endpoint(), LAST_UPDATED, [("_count", "2")])
    assert result.status == "failed"
    assert result.transient is False
    assert "paging state expired" in (result.error or "")
    assert referral_ids(engine) == ["sr1", "sr2", "sr3"]
    assert state.get_watermark(engine, "clinic", "ServiceRequest") == (None, None)


def test_update_during_an_offset_walk_holds_the_watermark_before_it(engine: Engine) -> None:
    # The search began at 10:00 (page 1's Bundle time). sr6 was updated at 10:00:30, after page 1 was
    # served: an offset-paging server then shifted page 2 by one, so the watermark may not pass page 1.
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/ServiceRequest").respond(
            json=bundle(
                [sr(1, "2026-11-05T09:00:00Z"), sr(2, "2026-11-05T09:10:00Z")],
                f"{BASE}/page?token=b",
                last_updated="2026-11-05T10:00:00Z",
            )
        )
        mock.get("/page", params={"token": "b"}).respond(
            json=bundle(
                [sr(3, "2026-11-05T09:20:00Z"), sr(4, "2026-11-05T09:30:00Z")],
                f"{BASE}/page?token=c",
                last_updated="2026-11-05T10:01:00Z",
            )
        )
        mock.get("/page", params={"token": "c"}).respond(
            json=bundle(
                [sr(5, "2026-11-05T09:40:00Z"), sr(6, "2026-11-05T10:00:30Z")],
                last_updated="2026-11-05T10:02:00Z",
            )
        )
        result = run(engine, endpoint(), LAST_UPDATED, [("_count", "2")])
    assert (result.status, result.loaded) == ("succeeded", 6)
    assert state.get_watermark(engine, "clinic", "ServiceRequest")[0] == "2026-11-05T09:10:00Z"


def test_quiet_walk_sets_the_watermark_to_the_newest_resource(engine: Engine) -> None:
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/ServiceRequest").respond(
            json=bundle(
                [sr(1, "2026-11-05T09:00:00Z")], f"{BASE}/page?token=b", last_updated="2026-11-05T10:00:00Z"
            )
        )
        mock.get("/page", params={"token": "b"}).respond(
            json=bundle([sr(2, "2026-11-05T09:50:00Z")], last_updated="2026-11-05T10:01:00Z")
        )
        run(engine, endpoint(), LAST_UPDATED, [("_count", "1")])
    assert state.get_watermark(engine, "clinic", "ServiceRequest")[0] == "2026-11-05T09:50:00Z"


def test_includes_are_stored_but_not_counted_as_stream_resources(engine: Engine) -> None:
    practitioner = {
        "resourceType": "Practitioner",
        "id": "dr1",
        "meta": {"lastUpdated": "2026-01-01T00:00:00Z"},
    }
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/ServiceRequest").respond(
            json=bundle([sr(1, "2026-11-01T10:00:00Z")], included=[practitioner])
        )
        result = run(engine, endpoint(), LAST_UPDATED, [("_include", "ServiceRequest:requester")])
    assert (result.fetched, result.loaded, result.included) == (1, 1, 1)
    with engine.connect() as conn:
        types = conn.execute(sa.text("select resource_type from raw_resource order by 1")).scalars().all()
    assert types == ["Practitioner", "ServiceRequest"]
    # The include's older lastUpdated must not pull the stream's watermark back.
    assert state.get_watermark(engine, "clinic", "ServiceRequest")[0] == "2026-11-01T10:00:00Z"


def test_bundle_time_is_the_watermark_when_resources_have_no_meta(engine: Engine) -> None:
    bare = sr(1, "x")
    del bare["meta"]
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/ServiceRequest").respond(json=bundle([bare], last_updated="2026-11-05T08:00:00Z"))
        result = run(engine, endpoint(), LAST_UPDATED, [])
    assert result.status == "succeeded"
    assert state.get_watermark(engine, "clinic", "ServiceRequest")[0] == "2026-11-05T08:00:00Z"


def test_search_params_per_mode() -> None:
    ep = endpoint(overlap_seconds=30)
    mark = datetime(2026, 11, 1, 10, 0, 0, 250000, tzinfo=UTC)
    assert search_params(LAST_UPDATED, ep, None) == [("_count", "2"), ("_sort", "_lastUpdated")]
    assert search_params(LAST_UPDATED, ep, mark)[-1] == ("_lastUpdated", "gt2026-11-01T09:59:30.250Z")
    dated = Plan("ServiceRequest", "date-param", "authored", "test")
    assert search_params(dated, ep, mark) == [("_count", "2"), ("authored", "gt2026-11-01T09:59:30.250Z")]
    full = Plan("ServiceRequest", "full", None, "test")
    assert search_params(full, ep, mark) == [("_count", "2")]


def capability(params_by_type: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "fhirVersion": "4.0.1",
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {"type": t, "searchParam": [{"name": p, "type": "date"} for p in ps]}
                    for t, ps in params_by_type.items()
                ],
            }
        ],
    }


def test_plan_falls_back_from_last_updated_to_date_param_to_full() -> None:
    ep = endpoint()
    cap = capability({"ServiceRequest": ["authored"], "Claim": [], "Coverage": ["_lastUpdated"]})
    assert plan_stream(ep, stream_for("Coverage"), cap).mode == "last-updated"
    dated = plan_stream(ep, stream_for("ServiceRequest"), cap)
    assert (dated.mode, dated.date_param, dated.date_element) == ("date-param", "authored", "authoredOn")
    assert plan_stream(ep, stream_for("Claim"), cap).mode == "full"
    forced = endpoint(incremental="full")
    assert plan_stream(forced, stream_for("Coverage"), cap).mode == "full"


def test_date_param_mode_tracks_the_date_element(engine: Engine) -> None:
    plan = Plan("ServiceRequest", "date-param", "authored", "test")
    a, b = sr(1, "2026-11-09T00:00:00Z"), sr(2, "2026-11-01T00:00:00Z")
    a["authoredOn"], b["authoredOn"] = "2026-10-02", "2026-10-05T14:00:00-05:00"
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/ServiceRequest").respond(json=bundle([a, b]))
        run(engine, endpoint(), plan, [])
    text, at = state.get_watermark(engine, "clinic", "ServiceRequest")
    assert text == "2026-10-05T14:00:00-05:00"
    assert at == datetime(2026, 10, 5, 19, 0, tzinfo=UTC)


@pytest.mark.parametrize("body", [b'{"resourceType": "Bundle", "entry": [', b"<html>Gateway error</html>"])
def test_malformed_page_is_retried_then_loaded(engine: Engine, body: bytes) -> None:
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/ServiceRequest").mock(
            side_effect=[
                httpx.Response(200, content=body, headers={"content-type": "application/fhir+json"}),
                httpx.Response(200, json=bundle([sr(1, "2026-11-01T10:00:00Z")])),
            ]
        )
        result = run(engine, endpoint(), LAST_UPDATED, [])
    assert (result.status, result.loaded) == ("succeeded", 1)


def test_a_missing_table_is_not_worth_retrying(engine: Engine) -> None:
    from connector.errors import WarehouseError
    from connector.warehouse.writer import PageWrite, Reject, write_page

    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE dead_letter"))
    page = PageWrite(
        endpoint="clinic",
        resource_type="ServiceRequest",
        rejects=[Reject("clinic", "ServiceRequest", "x", "bad", {"id": "x"})],
    )
    with pytest.raises(WarehouseError) as info:
        write_page(engine, page)
    assert info.value.transient is False


def test_rows_carry_the_content_hash_of_the_stored_payload_taken_once() -> None:
    import mappings.canonical
    from connector.sync.pipeline import map_resources
    from mappings.canonical import content_hash

    resources = [sr(n, f"2026-11-0{n}T10:00:00Z") for n in range(1, 4)]
    hashed: list[bytes] = []
    real = mappings.canonical.digest

    def counting(canonical: bytes) -> str:
        hashed.append(canonical)
        return real(canonical)

    with pytest.MonkeyPatch.context() as patch:
        for module in ("mappings.canonical", "mappings.referral", "connector.sync.pipeline"):
            patch.setattr(f"{module}.digest", counting)
        mapped = map_resources("clinic", "ServiceRequest", resources, SYNCED_AT)
    assert len(hashed) == len(resources)  # once each: the mappers reuse the pipeline's hash
    expected = [content_hash(r) for r in resources]
    assert [row["content_hash"] for row in mapped.raw] == expected
    assert [row["content_hash"] for row in mapped.mapped["referral"]] == expected
