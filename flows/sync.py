"""Prefect flows that sync endpoints: one flow run per endpoint, one task run per resource stream.

Flow parameters are the config file path and names only: settings (with secrets) are loaded inside the
run, so nothing sensitive reaches the Prefect API. Logs carry counts and names, never resources.

Stream tasks take one picklable `StreamJob` (config path, endpoint name, plan, backfill window, run id)
and build what they need from it, so the same code runs on the flow's event loop, in worker processes
and on a Dask cluster (`[runtime] task_runner`). In the flow's own process a task borrows the run's
settings and engine instead of building its own; each task opens its own FHIR client, because an
httpx.AsyncClient belongs to the event loop it was opened on, and the process and Dask runners give a
task a loop of its own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from sqlalchemy.engine import Engine

from connector.bulk_sync import run_bulk_backfill, search_falls_back_to_bulk, should_use_bulk
from connector.config import EndpointSettings, Settings, load_settings, with_directory
from connector.errors import ConnectorError, MappingError, TransientFhirError, WarehouseError
from connector.fhir.client import FhirClient
from connector.fhir.history import deleted_since, supports_history
from connector.fhir.ndjson import NdjsonSource
from connector.fhir.page import Page
from connector.gc_tuning import freeze_startup_objects
from connector.mapping_pool import page_mapper, pages_ahead
from connector.pipeline import StreamResult, run_stream
from connector.pushback.run import push_round, queue_metrics
from connector.streams import Plan, plan_stream, stream_for
from connector.warehouse import bulk_state, state
from connector.warehouse.engine import ensure_schema, make_engine
from connector.warehouse.writer import PageWrite, write_page
from flows import artifacts
from flows.runners import run_tasks
from flows.windows import Window, ordered_watermark, plan_windows, window_params


class StreamFailed(ConnectorError):
    """A stream ended failed; `transient` says whether a Prefect task retry may help."""

    def __init__(self, result: StreamResult, transient: bool = False) -> None:
        super().__init__(f"{result.endpoint}/{result.resource_type}: {result.error}")
        self.result = result
        self.transient = transient

    def __reduce__(self) -> tuple[Any, ...]:
        # Raised in worker processes and Dask workers: pickle rebuilds it from these, not from `args`.
        return (type(self), (self.result, self.transient))


class EndpointFailed(ConnectorError):
    pass


@dataclass(slots=True)
class EndpointRun:
    """What the flow's own tasks (push-back) share: settings, the flow's HTTP client, one DB engine."""

    settings: Settings
    endpoint: EndpointSettings
    engine: Engine
    client: FhirClient | None
    ndjson: NdjsonSource | None
    run_id: str
    synced_at: datetime
    full_refresh: bool


@dataclass(frozen=True, slots=True)
class StreamJob:
    """One stream task's input: picklable and free of secrets and resource content."""

    config_path: str
    endpoint_name: str
    plan: Plan
    run_id: str
    synced_at: datetime
    window: Window | None = None
    #: Key of the flow's settings and engine in `_SHARED` (used when the task runs in the flow's process).
    shared_key: str | None = None

    @property
    def label(self) -> str:
        rt = self.plan.resource_type
        return f"{rt} window {self.window.label}" if self.window else rt


#: Settings and engine of the endpoint runs of this process, by `StreamJob.shared_key`.
_SHARED: dict[str, tuple[Settings, Engine]] = {}


def _share(key: str, resources: tuple[Settings, Engine] | None) -> None:
    # Flows touch `_SHARED` only through here: a process-pool or Dask submission pickles the flow run
    # context, flow function included, by value, and with it the globals the function names; an engine
    # does not pickle. Module-level helpers are pickled by reference.
    if resources is None:
        _SHARED.pop(key, None)
    else:
        _SHARED[key] = resources


def _retry_transient_only(task: Any, task_run: Any, state: Any) -> bool:
    # Fatal errors (bad config, 4xx, auth) fail the same way on every try.
    exc = state.data
    if isinstance(exc, StreamFailed):
        return exc.transient
    return isinstance(exc, TransientFhirError) or (isinstance(exc, WarehouseError) and exc.transient)


@asynccontextmanager
async def _stream_resources(job: StreamJob) -> AsyncIterator[tuple[Settings, EndpointSettings, Engine]]:
    shared = _SHARED.get(job.shared_key or "")
    if shared is not None:
        settings, engine = shared
        yield settings, settings.endpoint(job.endpoint_name), engine
        return
    # Another process (process pool, Dask worker): read the config there, so no secret is pickled.
    settings = load_settings(job.config_path)
    engine = make_engine(settings.warehouse.url)
    try:
        yield settings, settings.endpoint(job.endpoint_name), engine
    finally:
        engine.dispose()


@task(
    name="sync-stream",
    task_run_name="{job.label}",
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=_retry_transient_only,
    cache_policy=NO_CACHE,
)
async def sync_stream(job: StreamJob) -> dict[str, Any]:
    """Fetch → map → load one resource stream (or one backfill window of it) of one endpoint."""
    plan = job.plan
    async with _stream_resources(job) as (settings, endpoint, engine), AsyncExitStack() as stack:
        pages: AsyncIterator[Page]
        incremental = False
        if endpoint.is_server:
            client = await stack.enter_async_context(FhirClient(endpoint))
            watermark_at = None
            if job.window is None:
                _, watermark_at = await asyncio.to_thread(
                    state.get_watermark, engine, endpoint.name, plan.resource_type
                )
            # After the first run, the overlap before the watermark is mostly resources stored already.
            incremental = watermark_at is not None
            params = window_params(plan, endpoint, job.window, watermark_at)
            # With mapping workers, a page's entries are parsed there, once (see `Page.body`).
            defer = settings.runtime.mapping_workers() != 0
            pages = client.search(plan.resource_type, params, defer_entries=defer)
        else:
            assert endpoint.ndjson_dir is not None
            pages = NdjsonSource(endpoint.ndjson_dir, endpoint.page_size).pages(plan.resource_type)
        result = await run_stream(
            engine=engine,
            endpoint=endpoint,
            plan=plan,
            pages=pages,
            run_id=job.run_id,
            synced_at=job.synced_at,
            batch_size=settings.warehouse.batch_size,
            # A window's end is only safe once every earlier window finished: the flow decides.
            commit_watermark=job.window is None,
            mapper=page_mapper(settings.runtime.mapping_workers()),
            pages_ahead=pages_ahead(settings.runtime.mapping_workers()),
            skip_unchanged=incremental,
        )
    if result.status != "succeeded":
        raise StreamFailed(result, transient=result.transient)
    return result.as_dict()


@task(
    name="push-back",
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=_retry_transient_only,
    cache_policy=NO_CACHE,
)
async def push_back(run: EndpointRun) -> dict[str, Any]:
    """Queue this period's metrics and deliver the outbox (acknowledgments, measures, reports)."""
    # The acknowledgment time is when the server took the Task, not when the sync began.
    summary = await push_round(run.settings, run.endpoint, run.engine)
    get_run_logger().info(
        "push: sent %s, waiting %s, failed %s", summary.sent, summary.waiting, summary.failed
    )
    return {"sent": summary.sent, "waiting": summary.waiting, "failed": summary.failed}


@task(name="bulk-export", cache_policy=NO_CACHE)
async def bulk_backfill(
    config_path: str,
    endpoint_name: str,
    resource_types: list[str],
    run_id: str,
    synced_at: datetime,
    capability: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Load the streams' first (or resumed) backfill through Bulk $export; one result per stream."""
    settings = load_settings(config_path)
    endpoint = settings.endpoint(endpoint_name)
    engine = make_engine(settings.warehouse.url)
    try:
        results = await run_bulk_backfill(
            settings,
            endpoint,
            engine,
            resource_types=resource_types,
            run_id=run_id,
            synced_at=synced_at,
            capability=capability,
        )
    finally:
        engine.dispose()
    return [r.as_dict() for r in results]


async def _bulk_round(
    config_path: str,
    endpoint_name: str,
    resource_types: list[str],
    run_id: str,
    synced_at: datetime,
    capability: dict[str, Any] | None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Run the bulk-export task for these streams: their results, and the failure reasons among them.

    A stream the export skipped (the server does not offer its type) is not a failure.
    """
    types = with_directory(resource_types)  # $export has no _include: the referral sources come along
    # With return_state=True a task called in an async flow is awaited for its State; Prefect's types
    # say it returns the State itself.
    task_state = await bulk_backfill(  # type: ignore[misc]
        config_path, endpoint_name, types, run_id, synced_at, capability, return_state=True
    )
    if not task_state.is_completed():
        return [], [f"bulk export: {await task_state.aresult(raise_on_failure=False)}"]
    results: list[dict[str, Any]] = await task_state.aresult()
    failures = [
        f"{r['resource_type']} (bulk): {r['error']}"
        for r in results
        if r["status"] not in ("succeeded", "skipped")
    ]
    return results, failures


@flow(name="sync-endpoint", flow_run_name="sync-{endpoint_name}", validate_parameters=True)
async def sync_endpoint(
    config_path: str,
    endpoint_name: str,
    resources: list[str] | None = None,
    full_refresh: bool = False,
    run_id: str | None = None,
) -> list[dict[str, Any]]:
    """Sync every enabled stream of one endpoint; the run fails if any stream failed (after its retries).

    Streams (and the windows of a backfill) run in parallel, at most `max_parallel_streams` at once; the
    push-back runs after all of them.
    """
    logger = get_run_logger()
    freeze_startup_objects()
    settings = load_settings(config_path)
    endpoint = settings.endpoint(endpoint_name)
    runtime = settings.runtime
    wanted = [r for r in endpoint.resources if not resources or r in resources]
    run_id = run_id or str(uuid.uuid4())
    synced_at = datetime.now(UTC)
    engine = make_engine(settings.warehouse.url)
    shared_key = f"{run_id}/{endpoint_name}/{uuid.uuid4()}"
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    try:
        ensure_schema(engine)
        _share(shared_key, (settings, engine))
        async with AsyncExitStack() as stack:
            client = ndjson = None
            capability = None
            if endpoint.is_server:
                client = await stack.enter_async_context(FhirClient(endpoint))
                capability = await client.capabilities()
            else:
                assert endpoint.ndjson_dir is not None
                ndjson = NdjsonSource(endpoint.ndjson_dir, endpoint.page_size)
            jobs: list[StreamJob] = []
            bulk_types: list[str] = []
            # Streams whose deletions since their last run are read from `_history` after the run.
            sweeps: dict[str, datetime] = {}
            pending_export = (
                endpoint.is_server and bulk_state.pending_export(engine, endpoint.name) is not None
            )
            for resource_type in wanted:
                plan = plan_stream(endpoint, stream_for(resource_type), capability)
                if full_refresh:
                    state.reset_watermark(engine, endpoint.name, resource_type)
                _, watermark_at = state.get_watermark(engine, endpoint.name, resource_type)
                if (
                    client is not None
                    and watermark_at is not None
                    and supports_history(capability or {}, resource_type)
                ):
                    sweeps[resource_type] = watermark_at - timedelta(seconds=endpoint.overlap_seconds)
                if endpoint.is_server and should_use_bulk(
                    endpoint, capability or {}, watermark_at is not None, pending=pending_export
                ):
                    # A first load (or a resumed export) goes through Bulk $export instead of paging.
                    bulk_types.append(resource_type)
                    logger.info("%s: bulk $export backfill", resource_type)
                    continue
                windows = await plan_windows(client, plan, endpoint, runtime, watermark_at)
                logger.info(
                    "%s: %s mode (%s)%s",
                    resource_type,
                    plan.mode,
                    plan.reason,
                    f", backfill in {len(windows)} windows" if windows else "",
                )
                base = StreamJob(config_path, endpoint.name, plan, run_id, synced_at, shared_key=shared_key)
                if windows:
                    jobs.extend(_with_window(base, w) for w in windows)
                else:
                    jobs.append(base)
            if bulk_types:
                done_bulk, failed_bulk = await _bulk_round(
                    config_path, endpoint.name, bulk_types, run_id, synced_at, capability
                )
                results += done_bulk
                failures += failed_bulk
            states = await _run_jobs(jobs, endpoint.name, settings)
            outcomes, fallback = await _collect(jobs, states, endpoint, capability, results, failures)
            if fallback:
                logger.warning("search not available for %s: Bulk $export instead", ", ".join(fallback))
                for resource_type in fallback:
                    state.replace_failed_runs(
                        engine,
                        run_id,
                        endpoint.name,
                        resource_type,
                        "search not available: Bulk $export instead",
                    )
                done_bulk, failed_bulk = await _bulk_round(
                    config_path, endpoint.name, fallback, run_id, synced_at, capability
                )
                results += done_bulk
                failures += failed_bulk
            _advance_window_watermarks(engine, outcomes)
            if client is not None:
                failures.extend(await _sweep_deletions(client, engine, endpoint.name, sweeps))
            run = EndpointRun(settings, endpoint, engine, client, ndjson, run_id, synced_at, full_refresh)
            if endpoint.pushes and settings.push_target(endpoint) is not None:
                push_state = await push_back(run, return_state=True)  # type: ignore[misc]
                if not push_state.is_completed():
                    failures.append(f"push: {await push_state.aresult(raise_on_failure=False)}")
            elif endpoint.pushes:
                # An NDJSON folder has no server to write to: queue what would be sent (`connector push
                # --dry-run` shows it) and leave it pending.
                queue_metrics(engine, endpoint, run.synced_at)
        await artifacts.publish(endpoint.name, results, failures)
    finally:
        _share(shared_key, None)
        engine.dispose()
    if failures:
        raise EndpointFailed(f"{endpoint_name}: {len(failures)} stream(s) failed: " + "; ".join(failures))
    return results


async def _sweep_deletions(
    client: FhirClient, engine: Engine, endpoint_name: str, sweeps: dict[str, datetime]
) -> list[str]:
    """Mark deleted what the server deleted since each stream's previous run; returns failure reasons."""
    failures: list[str] = []
    for resource_type, since in sweeps.items():
        try:
            deletions = await deleted_since(client, resource_type, since)
            if deletions:
                write_page(engine, PageWrite(endpoint_name, resource_type, deletions=deletions))
            get_run_logger().info("%s: %d deletion(s) in _history", resource_type, len(deletions))
        except (ConnectorError, MappingError) as exc:
            failures.append(f"{resource_type} deletions: {exc}")
    return failures


async def _collect(
    jobs: list[StreamJob],
    states: list[Any],
    endpoint: EndpointSettings,
    capability: dict[str, Any] | None,
    results: list[dict[str, Any]],
    failures: list[str],
) -> tuple[list[tuple[StreamJob, dict[str, Any] | None]], list[str]]:
    """Add the stream tasks' results and failures; returns each job with its result (None when it
    failed), and the streams whose search the server does not offer, to load by Bulk $export instead."""
    outcomes: list[tuple[StreamJob, dict[str, Any] | None]] = []
    fallback: list[str] = []
    for job, task_state in zip(jobs, states, strict=True):
        if task_state.is_completed():
            done: dict[str, Any] = await task_state.aresult()
            results.append(done)
            outcomes.append((job, done))
            continue
        exc = await task_state.aresult(raise_on_failure=False)
        outcomes.append((job, None))
        if not isinstance(exc, StreamFailed):
            failures.append(f"{job.label}: {exc}")
        elif job.window is None and search_falls_back_to_bulk(endpoint, capability, exc.result.http_status):
            fallback.append(job.plan.resource_type)
        else:
            results.append(exc.result.as_dict())
            failures.append(f"{job.label}: {exc}")
    return outcomes, fallback


def _with_window(base: StreamJob, window: Window) -> StreamJob:
    return StreamJob(
        base.config_path,
        base.endpoint_name,
        base.plan,
        base.run_id,
        base.synced_at,
        window=window,
        shared_key=base.shared_key,
    )


async def _run_jobs(jobs: list[StreamJob], endpoint_name: str, settings: Settings) -> list[Any]:
    parallel = settings.runtime.parallel_streams(endpoint_name)
    # The tag lets a Prefect tag concurrency limit cap one EMR across every worker and machine
    # (`prefect concurrency-limit create endpoint:NAME N`); the semaphore caps it within this run.
    stream_task = sync_stream.with_options(tags=await endpoint_tags(endpoint_name))
    return await run_tasks(stream_task, jobs, settings.runtime, parallel)


async def endpoint_tags(endpoint_name: str) -> list[str]:
    """`endpoint:NAME` for the stream tasks when a Prefect concurrency limit on that tag exists.

    A tagged task asks the Prefect server for a slot of each tag's limit as it starts, even when there is
    none; several stream tasks asking at once got a SQLite-backed server (the temporary one included) to
    answer 503, and each waited about two seconds to ask again: most of a sync with nothing new. One look
    per run instead; when the server cannot say, the tag stays and the task engine asks as before.
    """
    tag = f"endpoint:{endpoint_name}"
    try:
        async with get_client() as client:
            await client.read_global_concurrency_limit_by_name(f"tag:{tag}")
    except ObjectNotFound:
        return []
    except Exception as exc:  # unreachable, refused: keep the tag (and its limit)
        get_run_logger().debug("concurrency limit lookup failed: %s", type(exc).__name__)
    return [tag]


def _advance_window_watermarks(
    engine: Engine, outcomes: list[tuple[StreamJob, dict[str, Any] | None]]
) -> None:
    """After a windowed backfill, move each stream's watermark over the windows that finished, in order.

    `outcomes` holds each job with its result (None when it failed). Unwindowed jobs wrote their own.
    """
    logger = get_run_logger()
    by_stream: dict[str, list[tuple[Window, StreamJob, dict[str, Any] | None]]] = {}
    for job, result in outcomes:
        if job.window is not None:
            by_stream.setdefault(job.plan.resource_type, []).append((job.window, job, result))
    for resource_type, windows in by_stream.items():
        windows.sort(key=lambda item: item[0].index)
        ordered = [(result is not None, (result or {}).get("watermark")) for _w, _j, result in windows]
        watermark = ordered_watermark(ordered)
        finished = next((i for i, (done, _) in enumerate(ordered) if not done), len(ordered))
        if watermark is not None:
            job = windows[0][1]
            # An empty page that only carries the watermark: write_page never moves it backwards.
            write_page(
                engine, PageWrite(job.endpoint_name, resource_type, watermark=watermark, mode=job.plan.mode)
            )
        logger.info(
            "%s: %d of %d backfill windows finished in order; watermark %s",
            resource_type,
            finished,
            len(ordered),
            watermark or "unchanged",
        )


@flow(name="sync-all", validate_parameters=True)
async def sync_all(
    config_path: str,
    endpoints: list[str] | None = None,
    resources: list[str] | None = None,
    full_refresh: bool = False,
    run_id: str | None = None,
) -> dict[str, str]:
    """Sync every enabled endpoint; one failing endpoint does not stop the others."""
    settings = load_settings(config_path)
    names = [e.name for e in settings.endpoints if e.enabled and (not endpoints or e.name in endpoints)]
    if endpoints:
        for name in endpoints:
            settings.endpoint(name)  # unknown names are a config error, not a silent no-op
    outcome: dict[str, str] = {}
    for name in names:
        sub = await sync_endpoint(config_path, name, resources, full_refresh, run_id, return_state=True)
        if sub.is_completed():
            outcome[name] = "succeeded"
        else:
            exc = await sub.aresult(raise_on_failure=False)
            outcome[name] = f"failed: {exc}"
    failed = {n: o for n, o in outcome.items() if o != "succeeded"}
    if failed:
        raise EndpointFailed("; ".join(f"{n} {o}" for n, o in failed.items()))
    return outcome
