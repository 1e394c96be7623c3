"""Prefect flows that sync endpoints: one flow run per endpoint, one task run per resource stream.

Flow parameters are the config file path and names only: settings (with secrets) are loaded inside the
run, so nothing sensitive reaches the Prefect API. Logs carry counts and names, never resources.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.engine import Engine

from connector.config import EndpointSettings, Settings, load_settings
from connector.errors import ConnectorError, TransientFhirError, WarehouseError
from connector.fhir.client import FhirClient
from connector.fhir.ndjson import NdjsonSource
from connector.fhir.page import Page
from connector.pipeline import StreamResult, run_stream, search_params
from connector.streams import Plan, plan_stream, stream_for
from connector.warehouse import state
from connector.warehouse.engine import ensure_schema, make_engine


class StreamFailed(ConnectorError):
    """A stream ended failed; `transient` says whether a Prefect task retry may help."""

    def __init__(self, result: StreamResult, *, transient: bool) -> None:
        super().__init__(f"{result.endpoint}/{result.resource_type}: {result.error}")
        self.result = result
        self.transient = transient


class EndpointFailed(ConnectorError):
    pass


@dataclass(slots=True)
class EndpointRun:
    """What every stream task of one endpoint run shares: settings, one HTTP client, one DB engine."""

    settings: Settings
    endpoint: EndpointSettings
    engine: Engine
    client: FhirClient | None
    ndjson: NdjsonSource | None
    run_id: str
    synced_at: datetime
    full_refresh: bool

    def pages(self, plan: Plan, params: list[tuple[str, str]]) -> AsyncIterator[Page]:
        if self.ndjson is not None:
            return self.ndjson.pages(plan.resource_type)
        assert self.client is not None
        return self.client.search(plan.resource_type, params)


def _retry_transient_only(task: Any, task_run: Any, state: Any) -> bool:
    # Fatal errors (bad config, 4xx, auth) fail the same way on every try.
    exc = state.data
    if isinstance(exc, StreamFailed):
        return exc.transient
    return isinstance(exc, TransientFhirError | WarehouseError)


@task(
    name="sync-stream",
    task_run_name="{resource_type}",
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=_retry_transient_only,
    cache_policy=NO_CACHE,
)
async def sync_stream(run: EndpointRun, plan: Plan, resource_type: str) -> dict[str, Any]:
    """Fetch → map → load one resource stream of one endpoint."""
    endpoint = run.endpoint
    if run.full_refresh:
        state.reset_watermark(run.engine, endpoint.name, resource_type)
    _, watermark_at = state.get_watermark(run.engine, endpoint.name, resource_type)
    params = search_params(plan, endpoint, watermark_at)
    result = await run_stream(
        engine=run.engine,
        endpoint=endpoint,
        plan=plan,
        pages=run.pages(plan, params),
        run_id=run.run_id,
        synced_at=run.synced_at,
        batch_size=run.settings.warehouse.batch_size,
    )
    if result.status != "succeeded":
        raise StreamFailed(result, transient=result.transient)
    return result.as_dict()


@flow(name="sync-endpoint", flow_run_name="sync-{endpoint_name}", validate_parameters=True)
async def sync_endpoint(
    config_path: str,
    endpoint_name: str,
    resources: list[str] | None = None,
    full_refresh: bool = False,
    run_id: str | None = None,
) -> list[dict[str, Any]]:
    """Sync every enabled stream of one endpoint; the run fails if any stream failed (after its retries)."""
    logger = get_run_logger()
    settings = load_settings(config_path)
    endpoint = settings.endpoint(endpoint_name)
    wanted = [r for r in endpoint.resources if not resources or r in resources]
    run_id = run_id or str(uuid.uuid4())
    engine = make_engine(settings.warehouse.url)
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    try:
        ensure_schema(engine)
        async with AsyncExitStack() as stack:
            client = ndjson = None
            capability = None
            if endpoint.is_server:
                client = await stack.enter_async_context(FhirClient(endpoint))
                capability = await client.capabilities()
            else:
                assert endpoint.ndjson_dir is not None
                ndjson = NdjsonSource(endpoint.ndjson_dir, endpoint.page_size)
            run = EndpointRun(
                settings, endpoint, engine, client, ndjson, run_id, datetime.now(UTC), full_refresh
            )
            for resource_type in wanted:
                plan = plan_stream(endpoint, stream_for(resource_type), capability)
                logger.info("%s: %s mode (%s)", resource_type, plan.mode, plan.reason)
                task_state = await sync_stream(run, plan, resource_type, return_state=True)
                if task_state.is_completed():
                    results.append(await task_state.aresult())
                else:
                    exc = await task_state.aresult(raise_on_failure=False)
                    if isinstance(exc, StreamFailed):
                        results.append(exc.result.as_dict())
                    failures.append(f"{resource_type}: {exc}")
    finally:
        engine.dispose()
    if failures:
        raise EndpointFailed(f"{endpoint_name}: {len(failures)} stream(s) failed: " + "; ".join(failures))
    return results


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
