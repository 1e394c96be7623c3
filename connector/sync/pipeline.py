"""One stream, end to end: fetch pages → validate and map (pure) → load in one transaction per page.

The watermark is the server's time (the largest `meta.lastUpdated` of the stream, or the Bundle's
`meta.lastUpdated` when resources carry none), never this machine's clock. It is written in the same
transaction as the stream's last page (or, when mapping workers write the pages, in one of its own once
every page is committed), so a run that fails half-way leaves it where it was (a long
backfill is split into windows by the flows instead of checkpointing mid-stream, which offset-paging
servers make unsafe: see `WatermarkTracker`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from connector.config import EndpointSettings
from connector.errors import ConnectorError, FhirError, MappingError, TransientFhirError, WarehouseError
from connector.fhir.ndjson import NdjsonPage
from connector.fhir.page import Entries, Page, SourcePage, counts_of
from connector.fhir.paging import entries_of
from connector.progress import sink
from connector.pushback.intents import intents
from connector.streams import Plan
from connector.warehouse import state
from connector.warehouse.upsert import JsonText
from connector.warehouse.writer import PageWrite, PageWriteResult, Reject, write_page
from mappings.canonical import canonical_json, digest
from mappings.elements import fhir_instant, parse_fhir_datetime, resource_meta
from mappings.fhir_ids import resource_label
from mappings.registry import map_resource
from mappings.types import MapContext, MappingOptions
from mappings.validate import MAX_DEPTH, too_deep

log = logging.getLogger(__name__)


@dataclass(slots=True)
class StreamResult:
    endpoint: str
    resource_type: str
    mode: str
    status: str = "running"
    fetched: int = 0
    loaded: int = 0
    rejected: int = 0
    #: Fetched, but stored exactly so already: fetched = loaded + rejected + unchanged.
    unchanged: int = 0
    included: int = 0
    pages: int = 0
    watermark: str | None = None
    error: str | None = None
    seconds: float = 0.0
    #: Whether the failure may pass on a retry (a timeout, a 5xx, the database briefly away).
    transient: bool = False
    #: The HTTP status of the server answer the stream failed on, if it failed on one.
    http_status: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class MappedPage:
    raw: list[dict[str, Any]] = field(default_factory=list)
    mapped: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    rejects: list[Reject] = field(default_factory=list)
    #: (raw text, parsed) of the newest cursor value among the page's resources.
    newest: tuple[str, datetime] | None = None
    fetched: int = 0
    included: MappedPage | None = None
    #: Every cursor value of the page (for the watermark's offset-paging guard).
    values: list[datetime] = field(default_factory=list)
    #: Resources marked entered-in-error: (resource_type, resource_id, when).
    deletions: list[tuple[str, str, datetime]] = field(default_factory=list)
    #: Resources skipped because they are stored exactly so already (incremental runs).
    unchanged: int = 0
    #: Set when a mapping worker already wrote the page (all but the watermark, see `PageSink`); raw,
    #: mapped, rejects and included are then left empty, and `rejected_written` counts the rejects.
    written: PageWriteResult | None = None
    rejected_written: int = 0


class WatermarkTracker:
    """Where the next incremental run may start, from what this run saw (server times only).

    Normally the newest cursor value loaded. But a server that pages by offset shifts its pages when a
    resource is updated during the walk (it moves to the end), so the resource at the next page boundary
    is never returned. Such an update shows as a resource newer than the first page's Bundle time (the
    server's clock when the search began); then the watermark stops at the last page fetched before
    that update, and the next run reads the rest again (upserts make the repeats harmless).
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        #: Per page: (the server's time of the page, the newest cursor value on it).
        self.pages: list[tuple[datetime | None, tuple[str, datetime] | None]] = []
        self.search_began: tuple[str, datetime] | None = None
        self.earliest_update_during_walk: datetime | None = None

    def observe(self, bundle_last_updated: str | None, mapped: MappedPage) -> None:
        bundle = (
            _cursor({"meta": {"lastUpdated": bundle_last_updated}}, None) if bundle_last_updated else None
        )
        if not self.pages:
            self.search_began = bundle
        self.pages.append((bundle[1] if bundle else None, mapped.newest))
        if self.search_began is not None and self.mode == "last-updated":
            began = self.search_began[1]
            for value in mapped.values:
                if value > began and (
                    self.earliest_update_during_walk is None or value < self.earliest_update_during_walk
                ):
                    self.earliest_update_during_walk = value

    def safe(self) -> tuple[str, datetime] | None:
        if self.mode == "full":
            return None
        clean = self.pages
        if self.earliest_update_during_walk is not None:
            changed = self.earliest_update_during_walk
            first_after = next(
                (i for i, (at, _) in enumerate(self.pages) if at is not None and at >= changed), None
            )
            if first_after is not None:
                clean = self.pages[:first_after]
        newest = max((n for _, n in clean if n is not None), key=lambda n: n[1], default=None)
        if newest is None and self.mode == "last-updated" and clean is self.pages:
            # Resources without meta.lastUpdated: the Bundle's own time is the server's view of "now".
            return self.search_began
        return newest


def _element(resource: dict[str, Any], path: str) -> Any:
    node: Any = resource
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _cursor(resource: dict[str, Any], date_element: str | None) -> tuple[str, datetime] | None:
    """The value the watermark tracks for this resource: meta.lastUpdated, or the date-param element."""
    path = date_element or "meta.lastUpdated"
    raw = _element(resource, path)
    if not isinstance(raw, str):
        return None
    try:
        parsed = parse_fhir_datetime(raw, path)
    except MappingError:
        return None
    return (raw, parsed) if parsed is not None else None


def _reject_id(resource: Any) -> str | None:
    rid = resource.get("id") if isinstance(resource, dict) else None
    return rid[:64] if isinstance(rid, str) else None


def _reject_payload(resource: Any) -> dict[str, Any]:
    """What a dead letter keeps: the resource, unless it nests too deep for the JSON encoders to store."""
    if too_deep(resource, MAX_DEPTH):
        return {"id": _reject_id(resource), "note": f"not kept: nested more than {MAX_DEPTH} levels deep"}
    try:
        text = orjson.dumps(resource)
    except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits
        return {"id": _reject_id(resource), "note": "not kept: not storable as JSON"}
    if _holds_nul(text):
        return {"id": _reject_id(resource), "note": "not kept: a string holds NUL (PostgreSQL refuses it)"}
    return resource if isinstance(resource, dict) else {"value": resource}


def map_resources(
    endpoint: str,
    resource_type: str,
    resources: Sequence[Any],
    synced_at: datetime,
    *,
    date_element: str | None = None,
    options: MappingOptions | None = None,
) -> MappedPage:
    """Validate and map one page of resources; invalid ones become rejects, the rest raw + mapped rows.

    Pure apart from the CPU: no I/O, no clock (the sync time is passed in).
    """
    options = options or MappingOptions()
    out = MappedPage()
    for resource in resources:
        try:
            if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
                found = (
                    resource.get("resourceType") if isinstance(resource, dict) else type(resource).__name__
                )
                raise MappingError(f"expected a {resource_type}, got {found!r}")
            # Serialized once, here (in a mapping worker when there is one): the hash is taken of the
            # same canonical bytes that are stored, and the mappers' rows carry it too. A resource that
            # cannot be stored is a dead letter, but its validation problems are told first.
            try:
                canonical: bytes | None = _canonical(resource)
            except MappingError as exc:
                canonical, unstorable = None, exc
            hashed = digest(canonical) if canonical is not None else None
            records = _map_one(resource, MapContext(endpoint, synced_at, options, hashed, canonical))
            if canonical is None:
                raise unstorable
            rtype, rid, version_id, last_updated, _ = resource_meta(resource)
            erased = resource.get("status") == "entered-in-error"
            if erased:
                # Recorded in error: kept raw as deleted, and out of every mapped table and view.
                records = {}
                out.deletions.append((rtype, rid, last_updated or synced_at))
        except MappingError as exc:
            out.rejects.append(
                Reject(
                    endpoint,
                    resource_type,
                    _reject_id(resource),
                    str(exc),
                    _reject_payload(resource),
                )
            )
        else:
            out.raw.append(
                {
                    "endpoint": endpoint,
                    "resource_type": rtype,
                    "resource_id": rid,
                    "version_id": version_id,
                    "last_updated": last_updated,
                    "content_hash": hashed,
                    "payload": JsonText(canonical.decode()),
                    "deleted": erased,
                    "deleted_at": (last_updated or synced_at) if erased else None,
                }
            )
            for table, rows in records.items():
                out.mapped.setdefault(table, []).extend(rows)
        # Rejected resources are committed too (to dead_letter), so they count for the watermark.
        _advance_cursor(out, resource, date_element)
    return out


def _canonical(resource: dict[str, Any]) -> bytes:
    """The resource as canonical JSON (sorted keys): what is stored and hashed."""
    try:
        text = canonical_json(resource)
    except orjson.JSONEncodeError as exc:  # an integer beyond 64 bits, nesting beyond orjson's limit
        raise MappingError(
            f"{resource_label(resource)}: cannot store the resource: {type(exc).__name__}"
        ) from None
    if _holds_nul(text):
        # Valid JSON and valid FHIR, but PostgreSQL cannot store it (jsonb and text refuse NUL): a dead
        # letter on every database, instead of a page that fails on PostgreSQL again on every retry.
        raise MappingError(f"{resource_label(resource)}: cannot store the resource: a string holds NUL")
    return text


#: `\u0000` as a JSON escape, not preceded by an escaped backslash (which would make it text).
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def _holds_nul(text: bytes) -> bool:
    """Whether JSON text (as orjson writes it) has a string holding the NUL character."""
    return b"\\u0000" in text and _NUL_ESCAPE.search(text) is not None


def _map_one(resource: dict[str, Any], ctx: MapContext) -> dict[str, list[dict[str, Any]]]:
    """`map_resource`, with a mapper tripping over a shape validation let through as a dead letter."""
    try:
        return map_resource(resource, ctx)
    except (AttributeError, TypeError, ValueError, KeyError, IndexError) as exc:
        # Validation accepts some odd shapes (an element given as a JSON string, say) that a mapper
        # does not expect: the resource is not mappable, the run goes on.
        log.warning("%s: a mapper failed with %s", resource_label(resource), type(exc).__name__)
        raise MappingError(f"{resource_label(resource)}: cannot map: {type(exc).__name__}") from None


def _advance_cursor(out: MappedPage, resource: Any, date_element: str | None) -> None:
    cursor = _cursor(resource, date_element) if isinstance(resource, dict) else None
    if cursor is not None:
        out.values.append(cursor[1])
        if out.newest is None or cursor[1] > out.newest[1]:
            out.newest = cursor


def search_params(
    plan: Plan, endpoint: EndpointSettings, watermark_at: datetime | None
) -> list[tuple[str, str]]:
    """The search parameters of one incremental run of a stream (within the endpoint profile's rules:
    its `_count` limit, and `ge` where the server takes no `gt`)."""
    params: list[tuple[str, str]] = [("_count", str(endpoint.search_count()))]
    params.extend(("_include", target) for target in plan.includes)
    since = None
    if watermark_at is not None:
        since = (watermark_at - timedelta(seconds=endpoint.overlap_seconds)).astimezone(UTC)
    if plan.mode == "last-updated":
        params.append(("_sort", "_lastUpdated"))
        if since is not None:
            prefix = endpoint.vendor.incremental_prefix() or "gt"
            params.append(("_lastUpdated", f"{prefix}{fhir_instant(since)}"))
    elif plan.mode == "date-param" and since is not None and plan.date_param:
        params.append((plan.date_param, f"gt{fhir_instant(since)}"))
    return params


@dataclass(frozen=True, slots=True)
class PageSink:
    """Where a mapping worker process writes the page it mapped, so that its rows never cross back.

    Only for a warehouse every process reaches (PostgreSQL, a SQLite file). The worker writes the page in
    one transaction of its own, as `_write` would, but never the watermark: the stream commits that once
    every page before it is written.
    """

    #: The warehouse URL, password included: a secret that crosses to the worker only, never shown.
    url: SecretStr
    endpoint: EndpointSettings
    mode: str
    batch_size: int


def worker_url(engine: Engine) -> SecretStr:
    """The warehouse URL a mapping worker connects with: a relative SQLite path made absolute here, since
    a pooled worker kept the working directory of the run that started it, not this run's."""
    url = engine.url
    database = url.database or ""
    if (
        url.get_backend_name() == "sqlite"
        and database not in ("", ":memory:")
        and not database.startswith("file:")
    ):
        url = url.set(database=str(Path(database).expanduser().resolve()))
    return SecretStr(url.render_as_string(hide_password=False))


@dataclass(frozen=True, slots=True)
class MapJob:
    """One page to validate and map, with what the mapping needs besides the resources."""

    endpoint: str
    resource_type: str
    page: SourcePage
    synced_at: datetime
    date_element: str | None
    options: MappingOptions
    #: Where a worker may write the page itself; None: the stream writes it.
    sink: PageSink | None = None


#: Validates and maps one page: `map_inline`, or a process pool's (see `connector.mapping_pool`).
PageMapper = Callable[[MapJob], Awaitable[MappedPage]]


async def map_inline(job: MapJob) -> MappedPage:
    """Map the page in this process (small pages, tests, or no worker processes configured).

    In a thread: streams share an event loop, which keeps fetching for the others meanwhile.
    """
    return await asyncio.to_thread(map_page, job)


#: Pages mapped ahead of the one being written: enough to keep every worker busy, few enough that
#: memory stays flat however long the stream.
MAX_PAGES_AHEAD = 4


async def run_stream(
    *,
    engine: Engine,
    endpoint: EndpointSettings,
    plan: Plan,
    pages: AsyncIterator[SourcePage],
    run_id: str,
    synced_at: datetime,
    batch_size: int,
    commit_watermark: bool = True,
    mapper: PageMapper = map_inline,
    pages_ahead: int = 2,
    skip_unchanged: bool = False,
) -> StreamResult:
    """Load every page of one stream; records the run in `sync_run`; never raises for bad resources.

    Fetching, mapping and writing overlap: while page k is written (one transaction), the pages after it
    are mapped (`mapper`, possibly in worker processes) and fetched, at most `pages_ahead` of them.
    Pages written here are written in order, so the last one carries the watermark. A worker process
    writes the page it mapped itself when the warehouse allows (`PageSink`): such pages commit in any
    order, and the watermark follows once the last of them is committed.

    With `skip_unchanged` (incremental runs), resources stored exactly so already (the overlap before the
    watermark, a server resending what did not change) are counted as fetched and not mapped again.

    With `commit_watermark=False` the watermark is left alone and only reported in `result.watermark`:
    a backfill window's end is not where the next run may start until every earlier window finished,
    so the flow advances it once it knows (see `flows/windows.py`).
    """
    rt = plan.resource_type
    result = StreamResult(endpoint.name, rt, plan.mode)
    started = time.monotonic()
    run_pk = await asyncio.to_thread(state.start_run, engine, run_id, endpoint.name, rt)
    options = endpoint.mapping_options()
    progress = sink()
    progress.stream_started(endpoint.name, rt)
    tracker = WatermarkTracker(plan.mode)
    sink_to = (
        PageSink(worker_url(engine), endpoint, plan.mode, batch_size) if shared_by_processes(engine) else None
    )
    ahead: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max(1, min(pages_ahead, MAX_PAGES_AHEAD)))

    async def produce() -> None:
        try:
            async for page in pages:
                if isinstance(page, Page) and page.number == 1 and page.total is not None:
                    progress.stream_total(endpoint.name, rt, page.total)
                unchanged: list[dict[str, Any]] = []
                if skip_unchanged:
                    page = entries_of(page)  # the hashes are checked here
                    stored = await _stored_hashes(engine, endpoint.name, rt, page)
                    page, unchanged = _without_unchanged(page, stored)
                job = MapJob(endpoint.name, rt, page, synced_at, plan.date_element, options, sink_to)
                mapping = _counting_unchanged(mapper(job), unchanged, plan.date_element)
                # The queue keeps what the write needs of the page, not its resources: those are freed
                # once mapped (or shipped to a worker), so memory does not grow with the pages in flight.
                seen = _PageSeen(page.bundle_last_updated, counts_of(page)[1])
                del page, job
                await ahead.put((seen, asyncio.ensure_future(mapping)))
        except Exception as exc:  # handed to the consumer, which writes the pages before it first
            await ahead.put(_Failed(exc))
        else:
            await ahead.put(None)

    producer = asyncio.create_task(produce())
    try:
        item = await ahead.get()
        while item is not None:
            if isinstance(item, _Failed):
                raise item.error
            seen, mapping = item
            mapped = await mapping
            tracker.observe(seen.bundle_last_updated, mapped)
            following = await ahead.get()
            if isinstance(following, _Failed):
                # Keep what this page holds; the watermark stays where it was.
                await _write(engine, endpoint, rt, plan, mapped, None, batch_size, result, seen.included)
                raise following.error
            watermark = tracker.safe() if following is None else None
            committed = watermark if commit_watermark else None
            await _write(engine, endpoint, rt, plan, mapped, committed, batch_size, result, seen.included)
            if watermark is not None:
                result.watermark = watermark[0]
            item = following
    except (ConnectorError, MappingError, OSError) as exc:
        result.status = "failed"
        result.error = _one_line(exc)
        result.http_status = exc.status if isinstance(exc, FhirError) else None
        result.transient = isinstance(exc, TransientFhirError) or (
            isinstance(exc, WarehouseError) and exc.transient
        )
        log.error("%s/%s failed after %d page(s): %s", endpoint.name, rt, result.pages, result.error)
    except BaseException as exc:
        result.status = "failed"
        result.error = f"{type(exc).__name__}: {_one_line(exc)}"
        raise
    else:
        result.status = "succeeded"
    finally:
        await _stop(producer, ahead)
        result.seconds = round(time.monotonic() - started, 3)
        try:
            await asyncio.to_thread(state.finish_run, engine, run_pk, result)
        except WarehouseError as exc:
            # The rows (or the failure) stand; only the run log could not be written. Never let this
            # replace the stream's own outcome.
            log.warning("%s/%s: %s", endpoint.name, rt, exc)
        progress.stream_finished(endpoint.name, rt, status=result.status)
    log.info(
        "%s/%s: %s, fetched %d, loaded %d, rejected %d in %.1fs",
        endpoint.name,
        rt,
        result.status,
        result.fetched,
        result.loaded,
        result.rejected,
        result.seconds,
    )
    return result


async def _stored_hashes(engine: Engine, endpoint: str, rt: str, page: Entries) -> dict[str, str]:
    ids = [r["id"] for r in page.resources if isinstance(r, dict) and isinstance(r.get("id"), str)]
    if not ids:
        return {}
    return await asyncio.to_thread(state.stored_hashes, engine, endpoint, rt, ids)


def _without_unchanged(page: Entries, stored: Mapping[str, str]) -> tuple[Entries, list[dict[str, Any]]]:
    """The page without the resources stored exactly so already (checked here, so that a page with
    nothing new costs a hash per resource, not a trip to a worker), and those resources."""
    if not stored:
        return page, []
    keep: list[Any] = []
    same: list[dict[str, Any]] = []
    for resource in page.resources:
        rid = resource.get("id") if isinstance(resource, dict) else None
        stored_hash = stored.get(rid) if isinstance(rid, str) else None
        try:
            unchanged = stored_hash is not None and digest(_canonical(resource)) == stored_hash
        except MappingError:
            unchanged = False  # not storable: mapping makes it a dead letter
        (same if unchanged else keep).append(resource)
    return (dataclasses.replace(page, resources=keep) if same else page), same


async def _counting_unchanged(
    mapping: Awaitable[MappedPage], unchanged: list[dict[str, Any]], date_element: str | None
) -> MappedPage:
    mapped = await mapping
    mapped.fetched += len(unchanged)
    mapped.unchanged += len(unchanged)
    for resource in unchanged:
        _advance_cursor(mapped, resource, date_element)  # they are stored: the watermark may pass them
    return mapped


@dataclass(frozen=True, slots=True)
class _PageSeen:
    """What writing a page needs once its resources are mapped."""

    bundle_last_updated: str | None
    included: int


@dataclass(frozen=True, slots=True)
class _Failed:
    """Fetching (or the page source) failed: raised by the consumer after the pages before it."""

    error: Exception


_Item = tuple[_PageSeen, "asyncio.Future[MappedPage]"] | _Failed | None


async def _stop(producer: asyncio.Task[None], ahead: asyncio.Queue[_Item]) -> None:
    """Stop fetching, and wait for pages still being mapped (a worker's result must not go astray)."""
    producer.cancel()
    await asyncio.gather(producer, return_exceptions=True)
    while not ahead.empty():
        item = ahead.get_nowait()
        if isinstance(item, tuple):
            item[1].cancel()
            await asyncio.gather(item[1], return_exceptions=True)


def map_included(
    endpoint: str,
    resources: Sequence[dict[str, Any]],
    synced_at: datetime,
    options: MappingOptions | None = None,
) -> MappedPage:
    """Resources that came with `_include`: kept raw (and mapped when a mapper exists), grouped by type."""
    out = MappedPage()
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in resources:
        by_type.setdefault(str(resource.get("resourceType")), []).append(resource)
    for rtype, group in by_type.items():
        part = map_resources(endpoint, rtype, group, synced_at, options=options)
        out.raw.extend(part.raw)
        out.rejects.extend(part.rejects)
        out.deletions.extend(part.deletions)
        for table, rows in part.mapped.items():
            out.mapped.setdefault(table, []).extend(rows)
    return out


def map_lists(
    endpoint: str,
    rt: str,
    resources: Sequence[Any],
    included: Sequence[dict[str, Any]],
    synced_at: datetime,
    date_element: str | None,
    options: MappingOptions,
) -> MappedPage:
    """A page's matches and `_include`d resources, validated and mapped (pure; runs in workers)."""
    mapped = map_resources(endpoint, rt, resources, synced_at, date_element=date_element, options=options)
    mapped.fetched = len(resources)
    mapped.included = map_included(endpoint, included, synced_at, options)
    return mapped


def add_bad_lines(job: MapJob, mapped: MappedPage) -> MappedPage:
    """NDJSON lines that were not JSON objects become dead letters too, and count as fetched."""
    page = job.page
    if isinstance(page, NdjsonPage) and page.bad_lines:
        mapped.rejects.extend(
            Reject(job.endpoint, job.resource_type, None, bad.error, {"line": bad.location, "text": bad.text})
            for bad in page.bad_lines
        )
        mapped.fetched += len(page.bad_lines)
    return mapped


def map_page(job: MapJob) -> MappedPage:
    page = entries_of(job.page)
    mapped = map_lists(
        job.endpoint,
        job.resource_type,
        page.resources,
        page.included,
        job.synced_at,
        job.date_element,
        job.options,
    )
    return add_bad_lines(job, mapped)


def shared_by_processes(engine: Engine) -> bool:
    """Whether another process opening the engine's URL reaches the same database (not in-memory SQLite)."""
    url = engine.url
    if url.get_backend_name() == "postgresql":
        return True
    database = url.database or ""
    in_file = database not in ("", ":memory:") and not database.startswith("file:")
    return url.get_backend_name() == "sqlite" and in_file


def page_write(
    endpoint: EndpointSettings,
    rt: str,
    mode: str,
    mapped: MappedPage,
    watermark: tuple[str, datetime] | None,
) -> PageWrite:
    """What one mapped page writes: its rows, its `_include`d resources' rows, dead letters, outbox items."""
    extra = mapped.included or MappedPage()
    tables = {t: list(rows) for t, rows in mapped.mapped.items()}
    for table, rows in extra.mapped.items():
        tables.setdefault(table, []).extend(rows)
    return PageWrite(
        endpoint=endpoint.name,
        resource_type=rt,
        raw=mapped.raw + extra.raw,
        mapped=tables,
        rejects=mapped.rejects + extra.rejects,
        watermark=watermark[0] if watermark else None,
        watermark_at=watermark[1] if watermark else None,
        mode=mode,
        outbox=intents(endpoint, tables),
        deletions=mapped.deletions + extra.deletions,
    )


def write_mapped(engine: Engine, sink: PageSink, rt: str, mapped: MappedPage) -> MappedPage:
    """Write a mapped page (in a worker: see `PageSink`); returns what the stream still needs of it."""
    write = page_write(sink.endpoint, rt, sink.mode, mapped, None)
    written = write_page(engine, write, batch_size=sink.batch_size)
    return MappedPage(
        newest=mapped.newest,
        fetched=mapped.fetched,
        values=mapped.values,
        unchanged=mapped.unchanged,
        written=written,
        rejected_written=len(mapped.rejects),
    )


async def _write(
    engine: Engine,
    endpoint: EndpointSettings,
    rt: str,
    plan: Plan,
    mapped: MappedPage,
    watermark: tuple[str, datetime] | None,
    batch_size: int,
    result: StreamResult,
    included: int,
) -> None:
    written = mapped.written
    if written is None:
        write = page_write(endpoint, rt, plan.mode, mapped, watermark)
        written = await asyncio.to_thread(write_page, engine, write, batch_size=batch_size)
    elif watermark is not None:
        # The page itself is committed already (by a worker, as were the pages before it).
        only_watermark = PageWrite(
            endpoint.name, rt, watermark=watermark[0], watermark_at=watermark[1], mode=plan.mode
        )
        await asyncio.to_thread(write_page, engine, only_watermark, batch_size=batch_size)
    loaded = written.loaded_by_type.get(rt, 0)
    rejected = len(mapped.rejects) + mapped.rejected_written
    result.pages += 1
    result.fetched += mapped.fetched
    result.unchanged += mapped.unchanged
    result.included += included
    result.loaded += loaded
    result.rejected += rejected
    if watermark:
        result.watermark = watermark[0]
    sink().page_done(endpoint.name, rt, fetched=mapped.fetched, loaded=loaded, rejected=rejected)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:500]
