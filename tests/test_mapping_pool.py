"""Pages mapped in worker processes: the same rows as mapping in-process, and the same load."""

from __future__ import annotations

import asyncio
import copy
import gzip
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import resources as package_files
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector import mapping_pool
from connector.config import EndpointSettings
from connector.fhir.page import Page
from connector.pipeline import MapJob, MappedPage, map_page, run_stream
from connector.streams import Plan
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
    page = Page(resources=resources, included=included, bundle_last_updated=None, number=1)
    job = MapJob("clinic", "ServiceRequest", page, SYNCED_AT, None, MappingOptions(validation="strict"))
    pooled = asyncio.run(mapping_pool.PoolMapper(2)(job))
    here = map_page(job)
    assert comparable(pooled) == comparable(here)
    assert pooled.rejects  # the demo's invalid referrals are among them
    assert len(pooled.raw) + len(pooled.rejects) == 230


def test_small_pages_stay_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pool(workers: int) -> None:
        raise AssertionError("a small page went to the pool")

    monkeypatch.setattr(mapping_pool, "_pool", no_pool)
    page = Page(
        resources=service_requests(mapping_pool.MIN_POOL_PAGE - 1),
        included=[],
        bundle_last_updated=None,
        number=1,
    )
    job = MapJob("clinic", "ServiceRequest", page, SYNCED_AT, None, MappingOptions())
    assert len(asyncio.run(mapping_pool.PoolMapper(2)(job)).raw) > 0


def test_page_mapper_zero_workers_maps_inline() -> None:
    from connector.pipeline import map_inline

    assert mapping_pool.page_mapper(0) is map_inline
    assert isinstance(mapping_pool.page_mapper(None), mapping_pool.PoolMapper)
    assert mapping_pool.pages_ahead(3) == 4


def _load(engine: Engine, workers: int) -> tuple[int, str | None, list[tuple[str, str]]]:
    resources = service_requests(400)
    for n, resource in enumerate(resources):
        resource["meta"] = {"versionId": "1", "lastUpdated": f"2026-11-01T10:{n // 60:02d}:{n % 60:02d}Z"}

    endpoint = EndpointSettings(name="clinic", base_url="https://emr.test/fhir")
    result = asyncio.run(
        run_stream(
            engine=engine,
            endpoint=endpoint,
            plan=PLAN,
            pages=pages_of(resources, 100),
            run_id="r",
            synced_at=SYNCED_AT,
            batch_size=100,
            mapper=mapping_pool.page_mapper(workers),
            pages_ahead=mapping_pool.pages_ahead(workers),
        )
    )
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


def test_a_dead_worker_fails_the_page_clearly_and_the_next_page_gets_a_new_pool() -> None:
    import os
    import signal

    page = Page(resources=service_requests(100), included=[], bundle_last_updated=None, number=1)
    job = MapJob("clinic", "ServiceRequest", page, SYNCED_AT, None, MappingOptions())
    mapper = mapping_pool.PoolMapper(1)
    assert asyncio.run(mapper(job)).raw  # the pool is up
    pool = mapping_pool._pool(1)
    for process in list(pool._processes.values()):  # as the OOM killer would
        os.kill(process.pid, signal.SIGKILL)
        process.join()
    with pytest.raises(mapping_pool.MappingWorkerError, match="mapping worker process died"):
        asyncio.run(mapper(job))
    assert mapping_pool._pool(1) is not pool
    assert len(asyncio.run(mapper(job)).raw) > 0
