"""Prefect flows that sync endpoints: one flow run per endpoint, one task run per resource stream.

Flow parameters are the config file path and names only: settings (with secrets) are loaded inside the
run, so nothing sensitive reaches the Prefect API. Logs carry counts and names, never resources. The flows
only compose: what a run does is in `connector.sync` (the plan, the stream pipeline, Bulk export,
deletions, watermarks); tasks return typed results (`StreamResult`).

Stream tasks take one picklable `StreamJob` (config path, endpoint name, plan, backfill window, run id)
and build what they need from it, so the same code runs on the flow's event loop, in worker processes
and on a Dask cluster (`[runtime] task_runner`). On the flow's own loop a task is also handed the run's
settings and engine (`local`) instead of building its own; each task opens its own FHIR client, because an
httpx.AsyncClient belongs to the event loop it was opened on, and the process and Dask runners give a
task a loop of its own.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from sqlalchemy.engine import Engine

from connector.config import EndpointSettings, Settings, load_settings, with_directory
from connector.errors import ConnectorError, TransientFhirError, WarehouseError
from connector.fhir.client import FhirClient
from connector.fhir.ndjson import NdjsonSource
from connector.fhir.page import SourcePage
from connector.mapping_pool import page_mapper, pages_ahead
from connector.pushback.run import push_round, queue_round
from connector.streams import Plan
from connector.subscriptions.polling import resting_streams
from connector.sync.bulk import run_bulk_backfill, search_falls_back_to_bulk
from connector.sync.crawl import PatientCrawl
from connector.sync.endpoint import (
    EndpointPlan,
    WindowOutcome,
    advance_window_watermarks,
    plan_endpoint,
    record_unoffered,
    sweep_deletions,
)
from connector.sync.pipeline import StreamResult, run_stream
from connector.sync.receipts import take_receipts
from connector.sync.windows import Window, window_params
from connector.warehouse import state
from connector.warehouse.engine import ensure_schema, make_engine
from connector.warehouse.episode_links import INPUT_TYPES as EPISODE_INPUT_TYPES
from connector.warehouse.episode_links import derive_episode_links
from connector.warehouse.visit_links import INPUT_TYPES, derive_visit_links
from flows import artifacts
from flows.runners import run_tasks

# connector.sync logs through the standard library; Prefect shows these loggers in the run's log.
logging.getLogger("connector").setLevel(logging.INFO)


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

    @property
    def label(self) -> str:
        rt = self.plan.resource_type
        return f"{rt} window {self.window.label}" if self.window else rt


@dataclass(frozen=True, slots=True)
class Local:
    """The flow's settings and engine, handed to the tasks that run on the flow's own loop."""

    settings: Settings
    engine: Engine


def _retry_transient_only(task: Any, task_run: Any, state: Any) -> bool:
    # Fatal errors (bad config, 4xx, auth) fail the same way on every try.
    exc = state.data
    if isinstance(exc, StreamFailed):
        return exc.transient
    return isinstance(exc, TransientFhirError) or (isinstance(exc, WarehouseError) and exc.transient)


@asynccontextmanager
async def _stream_resources(
    job: StreamJob, local: Local | None
) -> AsyncIterator[tuple[Settings, EndpointSettings, Engine]]:
    if local is not None:
        yield local.settings, local.settings.endpoint(job.endpoint_name), local.engine
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
async def sync_stream(job: StreamJob, local: Local | None = None) -> StreamResult:
    """Fetch → map → load one resource stream (or one backfill window of it) of one endpoint."""
    plan = job.plan
    async with _stream_resources(job, local) as (settings, endpoint, engine), AsyncExitStack() as stack:
        pages: AsyncIterator[SourcePage]
        incremental = False
        crawl: PatientCrawl | None = None
        if endpoint.is_server:
            client = await stack.enter_async_context(FhirClient(endpoint))
            watermark_at = None
            if job.window is None:
                _, watermark_at = await asyncio.to_thread(
                    state.get_watermark, engine, endpoint.name, plan.resource_type
                )
            # After the first run, the overlap before the watermark is mostly resources stored already.
            incremental = watermark_at is not None
            if endpoint.crawls_per_patient(plan.resource_type):
                crawl = PatientCrawl(client, engine, endpoint, plan, watermark_at, job.run_id)
                pages = crawl.pages()
            else:
                # A page's entries are parsed where it is mapped, once (see `connector.fhir.page`).
                pages = client.search(
                    plan.resource_type, window_params(plan, endpoint, job.window, watermark_at)
                )
        else:
            assert endpoint.ndjson_dir is not None
            pages = NdjsonSource(endpoint.ndjson_dir, endpoint.page_size, endpoint.resources).pages(
                plan.resource_type
            )
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
        if crawl is not None and result.status == "succeeded":
            await asyncio.to_thread(crawl.record)
    if result.status != "succeeded":
        raise StreamFailed(result, transient=result.transient)
    return result


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
) -> list[StreamResult]:
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
    return results


async def _bulk_round(
    config_path: str,
    endpoint_name: str,
    resource_types: list[str],
    run_id: str,
    synced_at: datetime,
    capability: dict[str, Any] | None,
) -> tuple[list[StreamResult], list[str]]:
    """Run the bulk-export task for these streams: their results, and the failure reasons among them.

    A stream the export skipped (the server does not offer its type) is not a failure.
    """
    if not resource_types:
        return [], []
    types = with_directory(resource_types)  # $export has no _include: the referral sources come along
    # With return_state=True a task called in an async flow is awaited for its State; Prefect's types
    # say it returns the State itself.
    task_state = await bulk_backfill(  # type: ignore[misc]
        config_path, endpoint_name, types, run_id, synced_at, capability, return_state=True
    )
    if not task_state.is_completed():
        return [], [f"bulk export: {await task_state.aresult(raise_on_failure=False)}"]
    results: list[StreamResult] = await task_state.aresult()
    failures = [
        f"{r.resource_type} (bulk): {r.error}" for r in results if r.status not in ("succeeded", "skipped")
    ]
    return results, failures


@dataclass(slots=True)
class _Round:
    """What one endpoint run collected: every stream's result and every failure's one-line reason."""

    results: list[StreamResult]
    failures: list[str]
    windows: list[WindowOutcome]
    #: Streams whose search the server does not offer: loaded by Bulk $export instead.
    fallback: list[str]


@flow(name="sync-endpoint", flow_run_name="sync-{endpoint_name}", validate_parameters=True)
async def sync_endpoint(
    config_path: str,
    endpoint_name: str,
    resources: list[str] | None = None,
    full_refresh: bool = False,
    run_id: str | None = None,
    scheduled: bool = False,
) -> list[dict[str, Any]]:
    """Sync every enabled stream of one endpoint; the run fails if any stream failed (after its retries).

    Streams (and the windows of a backfill) run in parallel, at most `max_parallel_streams` at once; the
    push-back runs after all of them. A `scheduled` run leaves a stream whose subscription is healthy to
    the listener, polling it only every `[listen] healthy_poll_minutes` (the safety net).
    """
    settings = load_settings(config_path)
    endpoint = settings.endpoint(endpoint_name)
    wanted = [r for r in endpoint.resources if not resources or r in resources]
    if scheduled and not full_refresh:
        engine = make_engine(settings.warehouse.url)
        try:
            ensure_schema(engine)
            resting = resting_streams(engine, endpoint, settings.listen)
        finally:
            engine.dispose()
        for rtype, why in resting.items():
            get_run_logger().info("%s: not polled this run: %s", rtype, why)
        wanted = [r for r in wanted if r not in resting]
    run = EndpointRun(
        settings,
        endpoint,
        make_engine(settings.warehouse.url),
        None,
        None,
        run_id or str(uuid.uuid4()),
        datetime.now(UTC),
        full_refresh,
    )
    try:
        ensure_schema(run.engine)
        async with AsyncExitStack() as stack:
            done = await _sync_streams(config_path, run, wanted, stack)
            await _derive_visits(run, done.results)
            done.failures += await _push(run)
        await artifacts.publish(endpoint.name, [r.as_dict() for r in done.results], done.failures)
    finally:
        run.engine.dispose()
    if done.failures:
        failures = done.failures
        raise EndpointFailed(f"{endpoint_name}: {len(failures)} stream(s) failed: " + "; ".join(failures))
    return [r.as_dict() for r in done.results]


async def _sync_streams(
    config_path: str, run: EndpointRun, wanted: list[str], stack: AsyncExitStack
) -> _Round:
    """Plan the endpoint, then run its export, its searches, a fallback export and the deletion sweep."""
    endpoint = run.endpoint
    capability = None
    if endpoint.is_server:
        run.client = await stack.enter_async_context(FhirClient(endpoint))
        capability = await run.client.capabilities()
    else:
        assert endpoint.ndjson_dir is not None
        run.ndjson = NdjsonSource(endpoint.ndjson_dir, endpoint.page_size, endpoint.resources)
    plan = await plan_endpoint(
        endpoint,
        run.engine,
        run.client,
        capability,
        run.settings.runtime,
        wanted,
        full_refresh=run.full_refresh,
    )
    _log_plan(plan)

    def export(types: list[str]) -> Any:
        return _bulk_round(config_path, endpoint.name, types, run.run_id, run.synced_at, capability)

    results, failures = await export(plan.bulk)
    results += record_unoffered(run.engine, run.run_id, endpoint.name, plan.unoffered)
    jobs = [
        StreamJob(config_path, endpoint.name, s.plan, run.run_id, run.synced_at, window=w)
        for s in plan.searched
        for w in (s.windows or (None,))
    ]
    states = await _run_jobs(jobs, Local(run.settings, run.engine))
    done = await _collect(jobs, states, endpoint, capability)
    done.results[:0], done.failures[:0] = results, failures
    if done.fallback:
        get_run_logger().warning(
            "search not available for %s: Bulk $export instead", ", ".join(done.fallback)
        )
        for resource_type in done.fallback:
            state.replace_failed_runs(
                run.engine,
                run.run_id,
                endpoint.name,
                resource_type,
                "search not available: Bulk $export instead",
            )
        more, failed = await export(done.fallback)
        done.results += more
        done.failures += failed
    advance_window_watermarks(run.engine, done.windows)
    if run.client is not None:
        done.failures += await sweep_deletions(run.client, run.engine, endpoint.name, plan.sweeps)
        await take_receipts(run.client, run.engine, endpoint, run.run_id, done.results)
    return done


def _log_plan(plan: EndpointPlan) -> None:
    logger = get_run_logger()
    for resource_type in plan.bulk:
        logger.info("%s: bulk $export backfill", resource_type)
    for s in plan.searched:
        windows = f", backfill in {len(s.windows)} windows" if s.windows else ""
        logger.info("%s: %s mode (%s)%s", s.plan.resource_type, s.plan.mode, s.plan.reason, windows)


async def _derive_visits(run: EndpointRun, results: list[StreamResult]) -> None:
    """Visits, then episodes, plans, goals and notes linked (and evaluations inferred) for the patients this
    run wrote (all on a full refresh), before push-back reads them; nothing to do (and no table scan) when
    none of their types was loaded."""
    visits = run.endpoint.visits
    since = None if run.full_refresh else run.synced_at
    loaded = any(r.loaded for r in results if r.resource_type in INPUT_TYPES)
    if visits.infer_evaluations and (loaded or run.full_refresh):
        await asyncio.to_thread(
            derive_visit_links, run.engine, run.endpoint.name, since, visits.evaluation_window_days
        )
    # Then the episode's rows, which can follow their visits' links.
    if run.full_refresh or any(r.loaded for r in results if r.resource_type in EPISODE_INPUT_TYPES):
        await asyncio.to_thread(derive_episode_links, run.engine, run.endpoint.name, since)


async def _push(run: EndpointRun) -> list[str]:
    """Push-back after the streams; the failure reasons."""
    endpoint = run.endpoint
    if not endpoint.pushes:
        return []
    if run.settings.push_target(endpoint) is None:
        # An NDJSON folder has no server to write to: queue what would be sent (`connector push
        # --dry-run` shows it) and leave it pending.
        queue_round(run.engine, endpoint, run.synced_at)
        return []
    push_state = await push_back(run, return_state=True)  # type: ignore[misc]
    if push_state.is_completed():
        return []
    return [f"push: {await push_state.aresult(raise_on_failure=False)}"]


async def _collect(
    jobs: list[StreamJob], states: list[Any], endpoint: EndpointSettings, capability: dict[str, Any] | None
) -> _Round:
    """The stream tasks' results and failures, the backfill windows' outcomes, and the streams whose
    search the server does not offer (to load by Bulk $export instead)."""
    done = _Round([], [], [], [])
    for job, task_state in zip(jobs, states, strict=True):
        result: StreamResult | None = None
        if task_state.is_completed():
            result = await task_state.aresult()
            done.results.append(result)
        else:
            _failed(job, await task_state.aresult(raise_on_failure=False), endpoint, capability, done)
        if job.window is not None:
            done.windows.append(WindowOutcome(job.endpoint_name, job.plan, job.window, result))
    return done


def _failed(
    job: StreamJob, exc: Any, endpoint: EndpointSettings, capability: dict[str, Any] | None, done: _Round
) -> None:
    if not isinstance(exc, StreamFailed):
        done.failures.append(f"{job.label}: {exc}")
    elif job.window is None and search_falls_back_to_bulk(endpoint, capability, exc.result.http_status):
        done.fallback.append(job.plan.resource_type)
    else:
        done.results.append(exc.result)
        done.failures.append(f"{job.label}: {exc}")


async def _run_jobs(jobs: list[StreamJob], local: Local) -> list[Any]:
    if not jobs:
        return []
    endpoint_name = jobs[0].endpoint_name
    runtime = local.settings.runtime
    # The tag lets a Prefect tag concurrency limit cap one EMR across every worker and machine
    # (`prefect concurrency-limit create endpoint:NAME N`); the semaphore caps it within this run.
    stream_task = sync_stream.with_options(tags=await endpoint_tags(endpoint_name))
    return await run_tasks(
        stream_task, jobs, runtime, runtime.parallel_streams(endpoint_name), local={"local": local}
    )


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


@flow(name="sync-all", validate_parameters=True)
async def sync_all(
    config_path: str,
    endpoints: list[str] | None = None,
    resources: list[str] | None = None,
    full_refresh: bool = False,
    run_id: str | None = None,
) -> dict[str, str]:
    """Sync every enabled endpoint; one failing endpoint does not stop the others."""
    outcome: dict[str, str] = {}
    for name in _endpoint_names(load_settings(config_path), endpoints):
        sub = await sync_endpoint(config_path, name, resources, full_refresh, run_id, return_state=True)
        failed_with = None if sub.is_completed() else await sub.aresult(raise_on_failure=False)
        outcome[name] = "succeeded" if failed_with is None else f"failed: {failed_with}"
    failed = {n: o for n, o in outcome.items() if o != "succeeded"}
    if failed:
        raise EndpointFailed("; ".join(f"{n} {o}" for n, o in failed.items()))
    return outcome


def _endpoint_names(settings: Settings, endpoints: list[str] | None) -> list[str]:
    """The enabled endpoints to sync, in config order; an unknown name is a config error, not a no-op."""
    for name in endpoints or []:
        settings.endpoint(name)
    return [e.name for e in settings.endpoints if e.enabled and (not endpoints or e.name in endpoints)]
