"""Pages mapped in worker processes: the same rows as mapping in-process, and the same load."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import gzip
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from importlib import resources as package_files
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from connector import mapping_pool
from connector.config import EndpointSettings
from connector.fhir.page import Entries
from connector.fhir.paging import read_page
from connector.streams import Plan
from connector.sync.pipeline import MapJob, MappedPage, StreamResult, map_page, run_stream
from connector.warehouse import state
from mappings.types import MappingOptions
from tests.pages import pages_of

SYNCED_AT = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
PLAN = Plan("ServiceRequest", "last-updated", None, "test")


def demo(resource_type: str) -> list[dict[str, Any]]:
    data = package_files.files("connector") / "demo" / "data" / f"{resource_type}.ndjson.gz"
    return [orjson.loads(line) for line in gzip.decompress(data.read_bytes()).splitlines()]


def service_requests(count: int) -> list[dict[str, Any]]:
    """`count` demo referrals (the invalid ones included) under distinct ids."""
    base = demo("ServiceRequest")
    out = []
    for n in range(count):
        resource = copy.deepcopy(base[n % len(base)])
        resource["id"] = f"pool-{n}"
        out.append(resource)
    return out


@pytest.fixture(scope="module", autouse=True)
def _stop_workers() -> Iterator[None]:
    yield
    mapping_pool.shutdown()


def comparable(page: MappedPage) -> dict[str, Any]:
    included = page.included or MappedPage()
    return {
        "raw": page.raw,
        "mapped": page.mapped,
        "rejects": [(r.resource_id, r.error, r.payload) for r in page.rejects],
        "newest": page.newest,
        "values": page.values,
        "deletions": page.deletions,
        "fetched": page.fetched,
        "included": (included.raw, included.mapped),
    }


def test_a_page_mapped_by_a_worker_equals_one_mapped_here() -> None:
    resources = service_requests(230)
    included = demo("Practitioner")[:5]
    page = Entries(resources, included, number=1)
    job = MapJob("clinic", "ServiceRequest", page, SYNCED_AT, None, MappingOptions(validation="strict"))
    pooled = asyncio.run(mapping_pool.PoolMapper(2)(job))
    here = map_page(job)
    assert comparable(pooled) == comparable(here)
    assert pooled.rejects  # the demo's invalid referrals are among them
    assert len(pooled.raw) + len(pooled.rejects) == 230


def bundle_body(resources: list[dict[str, Any]], included: list[dict[str, Any]]) -> bytes:
    entries = [{"resource": r, "search": {"mode": "match"}} for r in resources]
    entries += [{"resource": r, "search": {"mode": "include"}} for r in included]
    return orjson.dumps({"resourceType": "Bundle", "type": "searchset", "entry": entries})


def test_a_page_left_unparsed_is_parsed_and_mapped_by_the_worker_as_here() -> None:
    resources, included = service_requests(150), demo("Practitioner")[:3]
    page, _ = read_page(bundle_body(resources, included), url="https://emr.test", number=1)
    assert page.counts == (150, 3, 0)
    job = MapJob("clinic", "ServiceRequest", page, SYNCED_AT, None, MappingOptions())
    pooled = asyncio.run(mapping_pool.PoolMapper(2)(job))
    parsed = Entries(resources, included, number=1)
    assert comparable(pooled) == comparable(map_page(dataclasses.replace(job, page=parsed)))
    assert comparable(map_page(job)) == comparable(pooled)  # mapped here, the page is parsed first
    assert len(pooled.raw) + len(pooled.rejects) == 150


def test_a_worker_writes_the_page_itself_and_sends_back_no_rows(engine: Engine) -> None:
    from connector.sync.pipeline import PageSink

    endpoint = EndpointSettings(name="clinic", base_url="https://emr.test/fhir")
    url = engine.url.render_as_string(hide_password=False)
    sink = PageSink(SecretStr(url), endpoint, "last-updated", 100)
    assert url not in repr(sink)  # the URL may hold the password
    page = Entries(service_requests(230), [], number=1)
    job = MapJob("clinic", "ServiceRequest", page, SYNCED_AT, None, MappingOptions(), sink)
    here = map_page(job)
    pooled = asyncio.run(mapping_pool.PoolMapper(2)(job))
    assert (pooled.raw, pooled.mapped, pooled.rejects, pooled.included) == ([], {}, [], None)
    assert pooled.written is not None
    assert pooled.written.loaded_by_type == {"ServiceRequest": len(here.raw)}
    assert pooled.rejected_written == len(here.rejects) > 0
    assert (pooled.newest, pooled.fetched) == (here.newest, here.fetched)
    with engine.connect() as conn:
        stored = conn.execute(sa.text("select count(*) from raw_resource")).scalar_one()
        letters = conn.execute(sa.text("select count(*) from dead_letter")).scalar_one()
        referrals = conn.execute(sa.text("select count(*) from referral")).scalar_one()
    assert (stored, letters, referrals) == (len(here.raw), len(here.rejects), len(here.mapped["referral"]))
    assert state.get_watermark(engine, "clinic", "ServiceRequest") == (None, None)  # never the watermark


class OneAtATime:
    """A lock that records whether it was held."""

    def __init__(self) -> None:
        self.held = False
        self.uses = 0

    def __enter__(self) -> None:
        assert not self.held
        self.held, self.uses = True, self.uses + 1

    def __exit__(self, *exc: object) -> None:
        self.held = False


def test_workers_write_to_sqlite_one_at_a_time_through_a_lock_of_their_own(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connector.sync.pipeline import PageSink

    lock = OneAtATime()
    held_while_writing: list[bool] = []
    real = mapping_pool.write_mapped

    def spy(*args: Any) -> MappedPage:
        held_while_writing.append(lock.held)
        return real(*args)

    monkeypatch.setattr(mapping_pool, "_sqlite_writes", lock)
    monkeypatch.setattr(mapping_pool, "write_mapped", spy)
    monkeypatch.setattr(mapping_pool, "_engines", {})  # this process plays the worker
    endpoint = EndpointSettings(name="clinic", base_url="https://emr.test/fhir")
    sink = PageSink(
        SecretStr(engine.url.render_as_string(hide_password=False)), endpoint, "last-updated", 100
    )
    document = orjson.dumps([service_requests(70), []])
    try:
        mapped = mapping_pool._map_in_worker(
            "clinic", "ServiceRequest", document, False, SYNCED_AT, None, MappingOptions(), sink
        )
    finally:
        for worker_engine in mapping_pool._engines.values():
            worker_engine.dispose()
    assert mapped.written is not None
    on_sqlite = engine.dialect.name == "sqlite"
    assert held_while_writing == [on_sqlite]  # PostgreSQL takes concurrent writers as they come
    assert lock.uses == int(on_sqlite)


def test_only_a_database_other_processes_reach_is_written_by_workers(tmp_path: Any) -> None:
    from connector.sync.pipeline import shared_by_processes

    assert shared_by_processes(sa.create_engine(f"sqlite:///{tmp_path / 'wh.db'}"))
    assert shared_by_processes(sa.create_engine("postgresql+psycopg://u:p@127.0.0.1/db"))
    assert not shared_by_processes(sa.create_engine("sqlite://"))
    assert not shared_by_processes(sa.create_engine("sqlite:///:memory:"))
    in_memory_file = "sqlite:///file:wh?mode=memory&uri=true"
    assert not shared_by_processes(sa.create_engine(in_memory_file, poolclass=sa.pool.StaticPool))


def test_small_pages_stay_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pool(workers: int) -> None:
        raise AssertionError("a small page went to the pool")

    monkeypatch.setattr(mapping_pool, "_pool", no_pool)
    page = Entries(service_requests(mapping_pool.MIN_POOL_PAGE - 1), number=1)
    job = MapJob("clinic", "ServiceRequest", page, SYNCED_AT, None, MappingOptions())
    assert len(asyncio.run(mapping_pool.PoolMapper(2)(job)).raw) > 0


def test_page_mapper_zero_workers_maps_inline() -> None:
    from connector.sync.pipeline import map_inline

    assert mapping_pool.page_mapper(0) is map_inline
    assert isinstance(mapping_pool.page_mapper(None), mapping_pool.PoolMapper)
    assert mapping_pool.pages_ahead(3) == 4


def timed_referrals(count: int) -> list[dict[str, Any]]:
    """`service_requests(count)`, updated one second apart."""
    resources = service_requests(count)
    for n, resource in enumerate(resources):
        resource["meta"] = {"versionId": "1", "lastUpdated": f"2026-11-01T10:{n // 60:02d}:{n % 60:02d}Z"}
    return resources


def stream(engine: Engine, pages: AsyncIterator[Entries], workers: int) -> StreamResult:
    """One ServiceRequest stream of `pages` into `engine`, with `workers` mapping workers."""
    return asyncio.run(
        run_stream(
            engine=engine,
            endpoint=EndpointSettings(name="clinic", base_url="https://emr.test/fhir"),
            plan=PLAN,
            pages=pages,
            run_id="r",
            synced_at=SYNCED_AT,
            batch_size=100,
            mapper=mapping_pool.page_mapper(workers),
            pages_ahead=mapping_pool.pages_ahead(workers),
        )
    )


def _load(engine: Engine, workers: int) -> tuple[int, str | None, list[tuple[str, str]]]:
    result = stream(engine, pages_of(timed_referrals(400), 100), workers)
    assert result.status == "succeeded", result.error
    with engine.connect() as conn:
        referrals = sorted(conn.execute(sa.text("select resource_id, status from referral")).all())
    watermark, _ = state.get_watermark(engine, "clinic", "ServiceRequest")
    return result.loaded, watermark, [tuple(r) for r in referrals]


def test_a_stream_loads_the_same_with_workers_as_without(engine: Engine, tmp_path: Any) -> None:
    from connector.warehouse.engine import make_engine, migrate

    pooled = _load(engine, 2)
    other = make_engine(f"sqlite:///{tmp_path / 'inline.db'}")
    try:
        migrate(other)
        inline = _load(other, 0)
    finally:
        other.dispose()
    assert pooled == inline
    assert pooled[0] > 300
    assert pooled[1] == "2026-11-01T10:06:39Z"


def test_pages_workers_wrote_before_a_failed_fetch_stay_and_the_watermark_does_not_move(
    engine: Engine,
) -> None:
    from connector.errors import TransientFhirError

    async def pages() -> AsyncIterator[Entries]:
        async for page in pages_of(timed_referrals(300), 100):
            yield page
        raise TransientFhirError("GET /ServiceRequest failed: 503")

    result = stream(engine, pages(), 2)
    assert (result.status, result.transient, result.pages, result.fetched) == ("failed", True, 3, 300)
    with engine.connect() as conn:
        stored = conn.execute(sa.text("select count(*) from raw_resource")).scalar_one()
        letters = conn.execute(sa.text("select count(*) from dead_letter")).scalar_one()
    assert stored == result.loaded > 200
    assert letters == result.rejected == 300 - stored
    assert state.get_watermark(engine, "clinic", "ServiceRequest") == (None, None)


def test_a_dead_worker_fails_the_page_clearly_and_the_next_page_gets_a_new_pool() -> None:
    import os
    import signal

    page = Entries(service_requests(100), [], number=1)
    job = MapJob("clinic", "ServiceRequest", page, SYNCED_AT, None, MappingOptions())
    mapper = mapping_pool.PoolMapper(1)
    assert asyncio.run(mapper(job)).raw  # the pool is up
    pool = mapping_pool._pool(1)
    for process in list(pool._processes.values()):  # as the OOM killer would
        assert process.pid is not None
        os.kill(process.pid, signal.SIGKILL)
        process.join()
    with pytest.raises(mapping_pool.MappingWorkerError, match="mapping worker process died"):
        asyncio.run(mapper(job))
    assert mapping_pool._pool(1) is not pool
    assert len(asyncio.run(mapper(job)).raw) > 0


def test_the_warehouse_password_crosses_to_workers_as_a_secret() -> None:
    from connector.sync.pipeline import PageSink

    endpoint = EndpointSettings(name="clinic", base_url="https://emr.test/fhir")
    sink = PageSink(SecretStr("postgresql+psycopg://etl:s3cret-pw@db/wh"), endpoint, "last-updated", 100)
    assert "s3cret-pw" not in repr(sink)
    assert "s3cret-pw" not in str(sink)
    assert sink.url.get_secret_value().endswith("@db/wh")


def test_workers_get_an_absolute_sqlite_path(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # A pooled worker keeps the working directory of the run that started it: `connector demo` run later
    # in another folder wrote to a warehouse file there ("no such table: raw_resource").
    from connector.sync.pipeline import worker_url
    from connector.warehouse.engine import make_engine

    monkeypatch.chdir(tmp_path)
    relative = make_engine("sqlite:///demo-warehouse.db")
    try:
        assert worker_url(relative).get_secret_value() == f"sqlite:///{tmp_path / 'demo-warehouse.db'}"
    finally:
        relative.dispose()
    absolute = make_engine(f"sqlite:///{tmp_path}/wh.db")
    try:
        assert worker_url(absolute).get_secret_value() == f"sqlite:///{tmp_path}/wh.db"
    finally:
        absolute.dispose()
