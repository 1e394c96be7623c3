"""Backfill windows: a first sync of a big server stream split into `_lastUpdated` ranges run in parallel.

The server is asked for its oldest and newest `meta.lastUpdated` of the stream (`_sort=_lastUpdated` and
`_sort=-_lastUpdated`, one resource each) and the range between them is cut into equal windows. The
first window has no lower bound and the last none above, so resources older than the probe or updated
while the backfill runs are still read. Each window loads without touching the watermark; the flow then
advances it window by window, in order, and stops at the first window that did not finish
(`ordered_watermark`): the next run starts after the last window before which nothing is missing.

Limitation (documented in docs/orchestration.md): on a server that pages by offset, an update during a
bounded window's walk moves the resource out of the window and can shift an unchanged one past a page
boundary without a sign the window could see; set `backfill_windows = 1` for such servers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime

from connector.config import EndpointSettings, RuntimeSettings
from connector.errors import FhirError, MappingError
from connector.fhir.client import FhirClient
from connector.fhir.paging import entries_of
from connector.streams import Plan
from connector.sync.pipeline import search_params
from mappings.elements import fhir_instant, parse_fhir_datetime

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Window:
    """One `_lastUpdated` range [start, end) of a backfill; None means unbounded on that side."""

    index: int
    count: int
    start: str | None
    end: str | None

    @property
    def label(self) -> str:
        return f"{self.index + 1}/{self.count}"


def split_range(oldest: datetime, newest: datetime, count: int) -> list[Window]:
    """`count` windows covering everything: (-inf, b1), [b1, b2), ..., [b(count-1), +inf)."""
    if count <= 1 or newest <= oldest:
        return []
    step = (newest - oldest) / count
    bounds = [fhir_instant(oldest + step * i) for i in range(1, count)]
    # Bounds are cut to milliseconds: a very short range may repeat one; drop the empty windows that makes.
    bounds = sorted(dict.fromkeys(bounds))
    if not bounds:
        return []
    edges: list[str | None] = [None, *bounds, None]
    total = len(edges) - 1
    return [Window(i, total, edges[i], edges[i + 1]) for i in range(total)]


def window_params(
    plan: Plan, endpoint: EndpointSettings, window: Window | None, watermark_at: datetime | None
) -> list[tuple[str, str]]:
    """The stream's search parameters, restricted to the window when there is one."""
    if window is None:
        return search_params(plan, endpoint, watermark_at)
    params = search_params(plan, endpoint, None)
    if window.start is not None:
        params.append(("_lastUpdated", f"ge{window.start}"))
    if window.end is not None:
        # `le` where the server takes no `lt` (Oracle Health): a resource on the edge is read twice, and
        # the second read is an unchanged upsert.
        upper = "lt" if "lt" in endpoint.vendor.last_updated_prefixes else "le"
        params.append(("_lastUpdated", f"{upper}{window.end}"))
    return params


async def _first_last_updated(client: FhirClient, resource_type: str, sort: str) -> datetime | None:
    async with aclosing(client.search(resource_type, [("_sort", sort), ("_count", "1")])) as pages:
        async for page in pages:
            for resource in entries_of(page).resources:
                raw = (resource.get("meta") or {}).get("lastUpdated")
                if isinstance(raw, str):
                    try:
                        return parse_fhir_datetime(raw, "meta.lastUpdated")
                    except MappingError:
                        return None
            return None
    return None


async def server_count(
    client: FhirClient, resource_type: str, params: Sequence[tuple[str, str]] = ()
) -> int | None:
    """The server's count of the type (of the search `params`), or None when it cannot say (`_summary=count`
    is optional)."""
    try:
        response = await client.request("GET", resource_type, params=[*params, ("_summary", "count")])
        total = response.json().get("total")
    except (FhirError, ValueError, AttributeError):
        return None
    return total if isinstance(total, int) else None


async def plan_windows(
    client: FhirClient | None,
    plan: Plan,
    endpoint: EndpointSettings,
    runtime: RuntimeSettings,
    watermark_at: datetime | None,
) -> list[Window]:
    """The windows of this stream's run; [] means one unwindowed task (incremental runs, small streams)."""
    prefixes = endpoint.vendor.last_updated_prefixes
    if (
        client is None
        or watermark_at is not None
        or plan.mode != "last-updated"
        or runtime.backfill_windows <= 1
        # A window needs a lower and an upper bound (athenahealth takes only gt / ge).
        or "ge" not in prefixes
        or endpoint.crawls_per_patient(plan.resource_type)
        or not ({"lt", "le"} & set(prefixes))
    ):
        return []
    rt = plan.resource_type
    if runtime.backfill_min_resources > 0:
        total = await server_count(client, rt)
        if total is not None and total < runtime.backfill_min_resources:
            return []
    try:
        oldest = await _first_last_updated(client, rt, "_lastUpdated")
        newest = await _first_last_updated(client, rt, "-_lastUpdated")
    except FhirError as exc:
        # A server that cannot sort still syncs, just in one task.
        log.warning("%s/%s: no backfill windows (%s)", endpoint.name, rt, type(exc).__name__)
        return []
    if oldest is None or newest is None:
        return []
    return split_range(oldest.astimezone(UTC), newest.astimezone(UTC), runtime.backfill_windows)


def ordered_watermark(outcomes: Sequence[tuple[bool, str | None]]) -> str | None:
    """Where the next run may start after a windowed backfill: per window, in order, (finished, safe value).

    The newest safe value of the windows up to (not including) the first unfinished one. Later windows may
    have loaded rows, but the gap before them must be read again, so their values do not count.
    """
    best: tuple[datetime, str] | None = None
    for finished, value in outcomes:
        if not finished:
            break
        if value is None:
            continue
        parsed = parse_fhir_datetime(value, "watermark")
        if parsed is not None and (best is None or parsed > best[0]):
            best = (parsed, value)
    return best[1] if best else None
