"""One endpoint's run, apart from running it: the plan (which streams page, in which windows, which go by
Bulk $export, whose deletions are swept from `_history`), the deletion sweep, and the watermark a windowed
backfill earns once its windows finished. The flow composes these; it holds no sync logic of its own."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine

from connector.config import EndpointSettings, RuntimeSettings
from connector.errors import ConnectorError, MappingError
from connector.fhir import capabilities as caps
from connector.fhir.client import FhirClient
from connector.fhir.history import deleted_since, supports_history
from connector.streams import Plan, plan_stream, stream_for
from connector.sync.bulk import should_use_bulk
from connector.sync.pipeline import StreamResult
from connector.sync.windows import Window, ordered_watermark, plan_windows
from connector.warehouse import bulk_state, state
from connector.warehouse.writer import PageWrite, write_page

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """A stream that pages this run: its search plan and, for a large first load, its windows."""

    plan: Plan
    windows: tuple[Window, ...] = ()


@dataclass(slots=True)
class EndpointPlan:
    searched: list[StreamPlan] = field(default_factory=list)
    #: Streams loaded by Bulk $export (a first load, or an export an earlier run left pending).
    bulk: list[str] = field(default_factory=list)
    #: Per stream: read `_history` for deletions since then, after the run.
    sweeps: dict[str, datetime] = field(default_factory=dict)
    #: Default streams the server's CapabilityStatement does not list: not searched (`skipped`).
    unoffered: list[str] = field(default_factory=list)


async def plan_endpoint(
    endpoint: EndpointSettings,
    engine: Engine,
    client: FhirClient | None,
    capability: dict[str, Any] | None,
    runtime: RuntimeSettings,
    resource_types: Sequence[str],
    *,
    full_refresh: bool = False,
) -> EndpointPlan:
    """Decide how each stream runs. `full_refresh` forgets the streams' watermarks first."""
    out = EndpointPlan()
    pending = endpoint.is_server and bulk_state.pending_export(engine, endpoint.name) is not None
    offered = caps.resource_types(capability or {})
    for resource_type in resource_types:
        if offered and resource_type not in offered and not endpoint.lists(resource_type):
            # A type synced by default that this server does not have (sekmet has no Goal): nothing to
            # read, and not the user's mistake. A type the config names is searched and fails loudly.
            out.unoffered.append(resource_type)
            continue
        plan = plan_stream(endpoint, stream_for(resource_type), capability)
        if full_refresh:
            state.reset_watermark(engine, endpoint.name, resource_type)
        _, watermark_at = state.get_watermark(engine, endpoint.name, resource_type)
        if (
            client is not None
            and watermark_at is not None
            and supports_history(capability or {}, resource_type)
        ):
            out.sweeps[resource_type] = watermark_at - timedelta(seconds=endpoint.overlap_seconds)
        if should_use_bulk(endpoint, capability or {}, watermark_at is not None, pending=pending):
            out.bulk.append(resource_type)
            continue
        windows = await plan_windows(client, plan, endpoint, runtime, watermark_at)
        out.searched.append(StreamPlan(plan, tuple(windows)))
    return out


UNOFFERED = "the server's CapabilityStatement does not list it"


def record_unoffered(
    engine: Engine, run_id: str, endpoint: str, resource_types: Sequence[str]
) -> list[StreamResult]:
    """A `skipped` result (and sync_run row) for each default stream the server does not offer."""
    results = []
    for resource_type in resource_types:
        log.info("%s/%s: not synced: %s", endpoint, resource_type, UNOFFERED)
        result = StreamResult(endpoint, resource_type, "search", status="skipped", error=UNOFFERED)
        state.finish_run(engine, state.start_run(engine, run_id, endpoint, resource_type), result)
        results.append(result)
    return results


async def sweep_deletions(
    client: FhirClient, engine: Engine, endpoint_name: str, sweeps: dict[str, datetime]
) -> list[str]:
    """Mark deleted what the server deleted since each stream's previous run; returns failure reasons."""
    failures: list[str] = []
    for resource_type, since in sweeps.items():
        try:
            deletions = await deleted_since(client, resource_type, since)
            if deletions:
                write_page(engine, PageWrite(endpoint_name, resource_type, deletions=deletions))
            log.info("%s: %d deletion(s) in _history", resource_type, len(deletions))
        except (ConnectorError, MappingError) as exc:
            failures.append(f"{resource_type} deletions: {exc}")
    return failures


@dataclass(frozen=True, slots=True)
class WindowOutcome:
    """How one backfill window ended: its result, or None when it failed."""

    endpoint: str
    plan: Plan
    window: Window
    result: StreamResult | None


def advance_window_watermarks(engine: Engine, outcomes: Sequence[WindowOutcome]) -> dict[str, str | None]:
    """After a windowed backfill, move each stream's watermark over the windows that finished, in order;
    the stream's new watermark (None: unchanged). A failed window stops it: nothing before it is missing."""
    by_stream: dict[str, list[WindowOutcome]] = {}
    for outcome in outcomes:
        by_stream.setdefault(outcome.plan.resource_type, []).append(outcome)
    moved: dict[str, str | None] = {}
    for resource_type, windows in by_stream.items():
        windows.sort(key=lambda o: o.window.index)
        ordered = [(o.result is not None, o.result.watermark if o.result else None) for o in windows]
        watermark = ordered_watermark(ordered)
        if watermark is not None:
            first = windows[0]
            # An empty page that only carries the watermark: write_page never moves it backwards.
            write_page(
                engine, PageWrite(first.endpoint, resource_type, watermark=watermark, mode=first.plan.mode)
            )
        finished = next((i for i, (done, _) in enumerate(ordered) if not done), len(ordered))
        log.info(
            "%s: %d of %d backfill windows finished in order; watermark %s",
            resource_type,
            finished,
            len(ordered),
            watermark or "unchanged",
        )
        moved[resource_type] = watermark
    return moved
