"""One stream, end to end: fetch pages → validate and map (pure) → load in one transaction per page.

The watermark is the server's time (the largest `meta.lastUpdated` of the stream, or the Bundle's
`meta.lastUpdated` when resources carry none), never this machine's clock. It is written in the same
transaction as the stream's last page, so a run that fails half-way leaves it where it was (a long
backfill is split into windows by the flows instead of checkpointing mid-stream, which offset-paging
servers make unsafe: see `WatermarkTracker`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine

from connector.config import EndpointSettings
from connector.errors import ConnectorError, MappingError, TransientFhirError, WarehouseError
from connector.fhir.ndjson import NdjsonPage
from connector.fhir.page import Page
from connector.progress import sink
from connector.pushback.intents import intents
from connector.streams import Plan
from connector.warehouse import state
from connector.warehouse.writer import PageWrite, Reject, content_hash, write_page
from mappings.elements import parse_fhir_datetime, resource_meta
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
    included: int = 0
    pages: int = 0
    watermark: str | None = None
    error: str | None = None
    seconds: float = 0.0
    #: Whether the failure may pass on a retry (a timeout, a 5xx, the database briefly away).
    transient: bool = False

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
    if isinstance(resource, dict) and isinstance(resource.get("id"), str):
        return resource["id"][:64]
    return None


def _reject_payload(resource: Any) -> dict[str, Any]:
    """What a dead letter keeps: the resource, unless it nests too deep for the JSON encoders to store."""
    if too_deep(resource, MAX_DEPTH):
        return {"id": _reject_id(resource), "note": f"not kept: nested more than {MAX_DEPTH} levels deep"}
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
    ctx = MapContext(endpoint=endpoint, synced_at=synced_at, options=options or MappingOptions())
    out = MappedPage()
    for resource in resources:
        try:
            if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
                found = (
                    resource.get("resourceType") if isinstance(resource, dict) else type(resource).__name__
                )
                raise MappingError(f"expected a {resource_type}, got {found!r}")
            records = map_resource(resource, ctx)
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
                    "content_hash": content_hash(resource),
                    "payload": resource,
                    "deleted": erased,
                    "deleted_at": (last_updated or synced_at) if erased else None,
                }
            )
            for table, rows in records.items():
                out.mapped.setdefault(table, []).extend(rows)
        # Rejected resources are committed too (to dead_letter), so they count for the watermark.
        cursor = _cursor(resource, date_element) if isinstance(resource, dict) else None
        if cursor is not None:
            out.values.append(cursor[1])
            if out.newest is None or cursor[1] > out.newest[1]:
                out.newest = cursor
    return out


def search_params(
    plan: Plan, endpoint: EndpointSettings, watermark_at: datetime | None
) -> list[tuple[str, str]]:
    """The search parameters of one incremental run of a stream."""
    params: list[tuple[str, str]] = [("_count", str(endpoint.page_size))]
    params.extend(("_include", target) for target in plan.includes)
    since = None
    if watermark_at is not None:
        since = (watermark_at - timedelta(seconds=endpoint.overlap_seconds)).astimezone(UTC)
    if plan.mode == "last-updated":
        params.append(("_sort", "_lastUpdated"))
        if since is not None:
            params.append(("_lastUpdated", f"gt{_fhir_instant(since)}"))
    elif plan.mode == "date-param" and since is not None and plan.date_param:
        params.append((plan.date_param, f"gt{_fhir_instant(since)}"))
    return params


def _fhir_instant(moment: datetime) -> str:
    # Milliseconds and an explicit Z: servers compare at ms precision and a raw '+' breaks in URLs.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


async def run_stream(
    *,
    engine: Engine,
    endpoint: EndpointSettings,
    plan: Plan,
    pages: AsyncIterator[Page],
    run_id: str,
    synced_at: datetime,
    batch_size: int,
    commit_watermark: bool = True,
) -> StreamResult:
    """Load every page of one stream; records the run in `sync_run`; never raises for bad resources.

    With `commit_watermark=False` the watermark is left alone and only reported in `result.watermark`:
    a backfill window's end is not where the next run may start until every earlier window finished,
    so the flow advances it once it knows (see `flows/windows.py`).
    """
    rt = plan.resource_type
    result = StreamResult(endpoint.name, rt, plan.mode)
    started = time.monotonic()
    run_pk = await asyncio.to_thread(state.start_run, engine, run_id, endpoint.name, rt)
    options = endpoint.mapping.options()
    progress = sink()
    progress.stream_started(endpoint.name, rt)
    tracker = WatermarkTracker(plan.mode)
    try:
        page_iter = aiter(pages)
        page = await anext(page_iter, None)
        while page is not None:
            # Fetch the next page while this one is mapped and written: knowing whether this page is the
            # last decides whether its transaction carries the watermark.
            following = asyncio.ensure_future(anext(page_iter, None))
            try:
                mapped = _map_page(endpoint.name, rt, page, synced_at, plan.date_element, options)
                tracker.observe(page.bundle_last_updated, mapped)
                try:
                    next_page = await following
                except BaseException:
                    # Keep what this page holds; the watermark stays where it was.
                    await _write(engine, endpoint, rt, plan, mapped, None, batch_size, result, page)
                    raise
            except BaseException:
                following.cancel()
                raise
            watermark = tracker.safe() if next_page is None else None
            committed = watermark if commit_watermark else None
            await _write(engine, endpoint, rt, plan, mapped, committed, batch_size, result, page)
            if watermark is not None:
                result.watermark = watermark[0]
            page = next_page
    except (ConnectorError, OSError) as exc:
        result.status = "failed"
        result.error = _one_line(exc)
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
        result.seconds = round(time.monotonic() - started, 3)
        try:
            await asyncio.to_thread(
                state.finish_run,
                engine,
                run_pk,
                status=result.status,
                fetched=result.fetched,
                loaded=result.loaded,
                rejected=result.rejected,
                error=result.error,
            )
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


def _map_page(
    endpoint: str,
    rt: str,
    page: Page,
    synced_at: datetime,
    date_element: str | None,
    options: MappingOptions,
) -> MappedPage:
    mapped = map_resources(
        endpoint, rt, page.resources, synced_at, date_element=date_element, options=options
    )
    if isinstance(page, NdjsonPage):
        mapped.rejects.extend(
            Reject(endpoint, rt, None, bad.error, {"line": bad.location, "text": bad.text})
            for bad in page.bad_lines
        )
    mapped.fetched = len(page.resources) + (len(page.bad_lines) if isinstance(page, NdjsonPage) else 0)
    extra = map_included(endpoint, page.included, synced_at, options)
    mapped.included = extra
    return mapped


async def _write(
    engine: Engine,
    endpoint: EndpointSettings,
    rt: str,
    plan: Plan,
    mapped: MappedPage,
    watermark: tuple[str, datetime] | None,
    batch_size: int,
    result: StreamResult,
    page: Page,
) -> None:
    extra = mapped.included or MappedPage()
    tables = {t: list(rows) for t, rows in mapped.mapped.items()}
    for table, rows in extra.mapped.items():
        tables.setdefault(table, []).extend(rows)
    write = PageWrite(
        endpoint=endpoint.name,
        resource_type=rt,
        raw=mapped.raw + extra.raw,
        mapped=tables,
        rejects=mapped.rejects + extra.rejects,
        watermark=watermark[0] if watermark else None,
        watermark_at=watermark[1] if watermark else None,
        mode=plan.mode,
        outbox=intents(endpoint, tables),
        deletions=mapped.deletions + extra.deletions,
    )
    written = await asyncio.to_thread(write_page, engine, write, batch_size=batch_size)
    loaded = written.loaded_by_type.get(rt, 0)
    result.pages += 1
    result.fetched += mapped.fetched
    result.included += len(page.included)
    result.loaded += loaded
    result.rejected += len(mapped.rejects)
    if watermark:
        result.watermark = watermark[0]
    sink().page_done(endpoint.name, rt, fetched=mapped.fetched, loaded=loaded, rejected=len(mapped.rejects))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:500]
