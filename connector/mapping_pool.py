"""Validation and mapping in worker processes, so a sync uses every core.

Validating FHIR resources is CPU-bound Python: threads would share one core (the GIL). Pages of at least
`MIN_POOL_PAGE` resources are mapped in a process pool shared by every stream of this process, while the
streams' event loops fetch the next pages. Resources cross to the worker as one orjson document (much
cheaper than pickling the dicts). When the warehouse is one every process reaches (`PageSink`), the worker
also writes the page, in its own transaction: its rows never cross back (pickling them both ways cost
about as much as writing them). Otherwise they come back as rows, the raw JSON already serialized
(`JsonText`), and the stream writes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy.engine import Engine

from connector.errors import ConnectorError
from connector.fhir.ndjson import NdjsonPage
from connector.fhir.page import Entries, Page, counts_of
from connector.fhir.paging import entry_texts
from connector.gc_tuning import freeze_startup_objects
from connector.sync.pipeline import (
    MapJob,
    MappedPage,
    PageMapper,
    PageSink,
    add_bad_lines,
    map_inline,
    map_lists,
    write_mapped,
)
from connector.warehouse.engine import make_engine
from mappings.types import MappingOptions

log = logging.getLogger(__name__)

#: Smaller pages are mapped in the stream's own process: shipping them costs more than it saves.
MIN_POOL_PAGE = 64

_lock = threading.Lock()
_pools: dict[int, ProcessPoolExecutor] = {}


class MappingWorkerError(ConnectorError):
    """A mapping worker process died (killed, out of memory); the stream fails and may be retried."""


def default_workers() -> int:
    """One worker per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def page_mapper(workers: int | None) -> PageMapper:
    """`map_inline` for 0 workers, else a mapper using a pool of `workers` (None: one per core)."""
    count = default_workers() if workers is None else workers
    if count <= 0:
        return map_inline
    return PoolMapper(count)


def pages_ahead(workers: int | None) -> int:
    """Pages a stream maps ahead of the one it writes: one per worker, and one being fetched."""
    return (default_workers() if workers is None else workers) + 1


class PoolMapper:
    """Maps pages in a shared process pool of `workers` processes."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    async def __call__(self, job: MapJob) -> MappedPage:
        page = job.page
        if sum(counts_of(page)) < MIN_POOL_PAGE:
            return await map_inline(job)
        if isinstance(page, Page):
            document, deferred = page.body, True  # the worker parses the Bundle (once, there)
        else:
            try:
                document, deferred = orjson.dumps([page.resources, page.included]), False
            except orjson.JSONEncodeError:
                # Nested deeper than orjson goes: such a page is mapped here, where it becomes dead letters.
                return await map_inline(job)
        # A page with NDJSON lines that are not JSON is written here: those lines become dead letters too.
        sink = job.sink if not (isinstance(page, NdjsonPage) and page.bad_lines) else None
        # Only the document travels on: the page itself can go while the worker maps.
        rest = dataclasses.replace(page, resources=[], included=[]) if isinstance(page, NdjsonPage) else None
        job = dataclasses.replace(job, page=rest or Entries([], number=page.number))
        del page
        pool = _pool(self.workers)
        loop = asyncio.get_running_loop()
        try:
            mapped = await loop.run_in_executor(
                pool,
                _map_in_worker,
                job.endpoint,
                job.resource_type,
                document,
                deferred,
                job.synced_at,
                job.date_element,
                job.options,
                sink,
            )
        except BrokenProcessPool:
            _discard(self.workers, pool)
            raise MappingWorkerError(
                f"a mapping worker process died while mapping a {job.resource_type} page"
            ) from None
        return add_bad_lines(job, mapped)


def _map_in_worker(
    endpoint: str,
    resource_type: str,
    document: bytes,
    deferred: bool,
    synced_at: datetime,
    date_element: str | None,
    options: MappingOptions,
    sink: PageSink | None,
) -> MappedPage:
    resources: Sequence[Any]
    if deferred:
        resources, included = entry_texts(document, number=0)
    else:
        resources, included = orjson.loads(document)
    mapped = map_lists(endpoint, resource_type, resources, included, synced_at, date_element, options)
    if sink is None:
        return mapped
    del resources, included
    engine = _engine(sink.url.get_secret_value())
    # SQLite has one write lock, and a writer that finds it taken polls for it, sleeping up to 100 ms at a
    # time: the pages' writes took turns erratically (a 100,000-resource load ran 15 to 32 s). The workers
    # queue on a lock of their own instead, which wakes the next one as soon as it is free.
    with _sqlite_writes if engine.dialect.name == "sqlite" else contextlib.nullcontext():
        return write_mapped(engine, sink, resource_type, mapped)


#: The warehouse engines of this worker process, by URL (one connection each, kept between pages).
_engines: dict[str, Engine] = {}


def _engine(url: str) -> Engine:
    engine = _engines.get(url)
    if engine is None:
        engine = _engines[url] = make_engine(url)
    return engine


#: Held by the worker writing to a SQLite warehouse (the pool's workers share it; see `_map_in_worker`).
_sqlite_writes: AbstractContextManager[Any] = contextlib.nullcontext()


def _start_worker(sqlite_writes: AbstractContextManager[Any]) -> None:
    global _sqlite_writes
    _sqlite_writes = sqlite_writes
    warm_up()  # cached already in a worker forked from the warm fork server


def warm_up() -> None:
    """Build what validating each mapped type needs once per worker, not on its first page."""
    from connector.errors import MappingError
    from mappings.registry import MAPPERS
    from mappings.validate_mapped import validate_mapped
    from mappings.validate_strict import strict_validator

    for resource_type in MAPPERS:
        strict_validator(resource_type)
        with contextlib.suppress(MappingError):  # the point was building its schema
            validate_mapped({"resourceType": resource_type, "id": "warm-up"})
    freeze_startup_objects()


def _worker_context() -> Any:
    """Workers forked from a fork server that imported the mapping code and built the validators once
    (`connector.pool_preload`), where the platform has one; spawned (each importing it all) elsewhere.

    Never a plain fork of this process: the flow runs threads (Prefect, httpx), and a forked child could
    inherit a lock some other thread held. The fork server is a process of its own, without those threads.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["connector.pool_preload"])
    return context


def _pool(workers: int) -> ProcessPoolExecutor:
    with _lock:
        pool = _pools.get(workers)
        if pool is None:
            context = _worker_context()
            pool = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=context,
                initializer=_start_worker,
                initargs=(context.Lock(),),
            )
            _pools[workers] = pool
        return pool


def _discard(workers: int, pool: ProcessPoolExecutor) -> None:
    with _lock:
        if _pools.get(workers) is pool:
            del _pools[workers]
    pool.shutdown(wait=False, cancel_futures=True)


def shutdown() -> None:
    """Stop every worker process (the CLI does at exit; tests that start pools do)."""
    with _lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)
