"""Orchestration pieces without a Prefect server: windows, watermark ordering, runtime settings, runners,
artifacts, deployments, the CLI commands, and the pipeline's commit_watermark hook."""

from __future__ import annotations

import asyncio
import pickle
import tomllib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import respx
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from connector.config import (
    EXAMPLE_CONFIG,
    ConfigError,
    EndpointSettings,
    RetrySettings,
    RuntimeSettings,
    parse_settings,
)
from connector.fhir.client import FhirClient
from connector.streams import Plan
from connector.sync.pipeline import StreamResult, run_stream, search_params
from connector.sync.windows import Window, ordered_watermark, plan_windows, split_range, window_params
from connector.warehouse import state
from flows.artifacts import artifact_key, render, stream_rows

BASE = "https://emr.test/fhir"
PLAN = Plan("ServiceRequest", "last-updated", None, "test")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def endpoint(**kw: Any) -> EndpointSettings:
    retry = RetrySettings(max_attempts=1, initial_backoff_seconds=0, max_backoff_seconds=0)
    return EndpointSettings(name="clinic", base_url=BASE, page_size=2, retry=retry, **kw)


# ---------------------------------------------------------------- windows


def test_split_range_covers_everything_with_open_ends() -> None:
    windows = split_range(T0, T0 + timedelta(days=4), 4)
    assert [(w.start, w.end) for w in windows] == [
        (None, "2026-01-02T00:00:00.000Z"),
        ("2026-01-02T00:00:00.000Z", "2026-01-03T00:00:00.000Z"),
        ("2026-01-03T00:00:00.000Z", "2026-01-04T00:00:00.000Z"),
        ("2026-01-04T00:00:00.000Z", None),
    ]
    assert [w.label for w in windows] == ["1/4", "2/4", "3/4", "4/4"]


def test_split_range_needs_a_range_and_drops_empty_windows() -> None:
    assert split_range(T0, T0, 4) == []
    assert split_range(T0, T0 + timedelta(days=1), 1) == []
    # 2 ms cut into 8: bounds repeat at millisecond precision; no empty window is made.
    windows = split_range(T0, T0 + timedelta(milliseconds=2), 8)
    starts = [w.start for w in windows[1:]]
    assert len(starts) == len(set(starts)) == 2


def test_window_params_bound_the_search_and_ignore_the_watermark() -> None:
    ep = endpoint()
    middle = Window(1, 3, "2026-01-02T00:00:00.000Z", "2026-01-03T00:00:00.000Z")
    params = window_params(PLAN, ep, middle, None)
    assert ("_lastUpdated", "ge2026-01-02T00:00:00.000Z") in params
    assert ("_lastUpdated", "lt2026-01-03T00:00:00.000Z") in params
    assert ("_sort", "_lastUpdated") in params
    last = window_params(PLAN, ep, Window(2, 3, "2026-01-03T00:00:00.000Z", None), None)
    assert [v for k, v in last if k == "_lastUpdated"] == ["ge2026-01-03T00:00:00.000Z"]
    # No window: the ordinary incremental search.
    assert window_params(PLAN, ep, None, T0) == search_params(PLAN, ep, T0)


def test_ordered_watermark_stops_at_the_first_unfinished_window() -> None:
    a, b, c = "2026-01-01T10:00:00Z", "2026-01-02T10:00:00Z", "2026-01-04T10:00:00Z"
    assert ordered_watermark([(True, a), (True, b), (True, c)]) == c
    assert ordered_watermark([(True, a), (False, None), (True, c)]) == a
    assert ordered_watermark([(False, None), (True, c)]) is None
    # An empty window finished too: it does not stop the advance.
    assert ordered_watermark([(True, a), (True, None), (True, b)]) == b
    # Compared as instants, not as text.
    assert ordered_watermark([(True, "2026-01-02T12:00:00+05:00"), (True, "2026-01-02T08:00:00Z")]) == (
        "2026-01-02T08:00:00Z"
    )


def _bundle(updated: str | None) -> dict[str, Any]:
    entry = [{"resource": {"resourceType": "ServiceRequest", "id": "x", "meta": {"lastUpdated": updated}}}]
    return {"resourceType": "Bundle", "type": "searchset", "entry": entry if updated else []}


def _windows(mock: respx.MockRouter, runtime: RuntimeSettings, **kw: Any) -> list[Window]:
    async def go() -> list[Window]:
        async with FhirClient(endpoint()) as client:
            return await plan_windows(client, kw.get("plan", PLAN), endpoint(), runtime, kw.get("watermark"))

    return asyncio.run(go())


def probes(mock: respx.MockRouter, total: Any) -> None:
    count = mock.get("/ServiceRequest", params={"_summary": "count"})
    if total is None:
        count.respond(400, json={"resourceType": "OperationOutcome"})
    else:
        count.respond(json={"resourceType": "Bundle", "type": "searchset", "total": total})
    mock.get("/ServiceRequest", params={"_sort": "_lastUpdated"}).respond(
        json=_bundle("2026-01-01T00:00:00Z")
    )
    mock.get("/ServiceRequest", params={"_sort": "-_lastUpdated"}).respond(
        json=_bundle("2026-01-05T00:00:00Z")
    )


def test_plan_windows_splits_a_big_stream_between_oldest_and_newest() -> None:
    with respx.mock(base_url=BASE) as mock:
        probes(mock, 50_000)
        windows = _windows(mock, RuntimeSettings(backfill_windows=4))
    assert [w.start for w in windows] == [
        None,
        "2026-01-02T00:00:00.000Z",
        "2026-01-03T00:00:00.000Z",
        "2026-01-04T00:00:00.000Z",
    ]


def test_plan_windows_keeps_small_streams_whole_but_splits_when_the_server_cannot_count() -> None:
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        probes(mock, 12)
        assert _windows(mock, RuntimeSettings(backfill_windows=4, backfill_min_resources=100)) == []
    with respx.mock(base_url=BASE) as mock:
        probes(mock, None)  # `_summary=count` refused: tolerated
        assert len(_windows(mock, RuntimeSettings(backfill_windows=4, backfill_min_resources=100))) == 4


def test_plan_windows_only_for_a_first_last_updated_sync() -> None:
    runtime = RuntimeSettings(backfill_windows=4, backfill_min_resources=0)
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        route = mock.get("/ServiceRequest").respond(json=_bundle("2026-01-01T00:00:00Z"))
        assert _windows(mock, runtime, watermark=T0) == []
        assert _windows(mock, runtime, plan=Plan("ServiceRequest", "full", None, "t")) == []
        assert _windows(mock, RuntimeSettings(backfill_windows=1)) == []
        assert route.call_count == 0


def test_plan_windows_falls_back_to_one_task_when_the_server_cannot_sort() -> None:
    with respx.mock(base_url=BASE) as mock:
        mock.get("/ServiceRequest").respond(400, json={"resourceType": "OperationOutcome"})
        assert _windows(mock, RuntimeSettings(backfill_windows=4, backfill_min_resources=0)) == []


# ---------------------------------------------------------------- pipeline hook


def test_run_stream_without_committing_reports_the_watermark_and_leaves_it(engine: Engine) -> None:
    resources = [
        {
            "resourceType": "ServiceRequest",
            "id": f"sr{n}",
            "meta": {"versionId": "1", "lastUpdated": f"2026-11-0{n}T10:00:00Z"},
            "status": "active",
            "intent": "order",
            "subject": {"reference": "Patient/p1"},
        }
        for n in (1, 2)
    ]
    body = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}

    async def go(commit: bool) -> StreamResult:
        ep = endpoint()
        async with FhirClient(ep) as client:
            return await run_stream(
                engine=engine,
                endpoint=ep,
                plan=PLAN,
                pages=client.search("ServiceRequest", search_params(PLAN, ep, None)),
                run_id="w",
                synced_at=T0,
                batch_size=10,
                commit_watermark=commit,
            )

    with respx.mock(base_url=BASE) as mock:
        mock.get("/ServiceRequest").respond(json=body)
        result = asyncio.run(go(False))
        assert (result.status, result.loaded, result.watermark) == ("succeeded", 2, "2026-11-02T10:00:00Z")
        assert state.get_watermark(engine, "clinic", "ServiceRequest") == (None, None)
        result = asyncio.run(go(True))
    assert result.watermark == "2026-11-02T10:00:00Z"
    assert state.get_watermark(engine, "clinic", "ServiceRequest")[0] == "2026-11-02T10:00:00Z"


# ---------------------------------------------------------------- settings and runners


def _settings(runtime: str) -> Any:
    data = tomllib.loads(f'[runtime]\n{runtime}\n[[endpoints]]\nname = "a"\nndjson_dir = "x"\n')
    return parse_settings(data)


def test_runtime_settings_defaults_and_validation() -> None:
    settings = _settings("")
    assert settings.runtime.task_runner == "threads"
    assert settings.runtime.backfill_windows == 4
    assert _settings("endpoint_parallel_streams = { a = 1 }").runtime.parallel_streams("a") == 1
    assert _settings("max_parallel_streams = 3").runtime.parallel_streams("b") == 3
    for bad, message in [
        ('task_runner = "celery"', "runtime.task_runner"),
        ('dask_address = "tcp://s:8786"', "only used with"),
        ('task_runner = "dask"\ndask_address = "s:8786"', "not a Dask scheduler address"),
        ("max_parallel_streams = 0", "runtime.max_parallel_streams"),
        ("backfill_windows = 0", "runtime.backfill_windows"),
        ("workers = 3", "runtime.workers: unknown key"),
    ]:
        with pytest.raises(ConfigError, match=message):
            _settings(bad)


def test_example_config_runtime_table_parses_when_uncommented() -> None:
    text = "\n".join(
        line[2:]
        if line.startswith("# [runtime]")
        or (
            line.startswith("# ")
            and "=" in line
            and line[2:].split("=")[0].strip()
            in (
                "task_runner",
                "max_parallel_streams",
                "backfill_windows",
                "backfill_min_resources",
                "endpoint_parallel_streams",
            )
        )
        else line
        for line in EXAMPLE_CONFIG.splitlines()
    )
    settings = parse_settings(tomllib.loads(text))
    assert settings.runtime.task_runner == "threads"
    assert settings.runtime.endpoint_parallel_streams == {"clinic-emr": 2}


def test_build_task_runner_per_setting() -> None:
    from prefect.task_runners import ProcessPoolTaskRunner
    from prefect_dask.task_runners import DaskTaskRunner

    from flows.runners import build_task_runner

    assert build_task_runner(RuntimeSettings(), 3) is None  # threads: the flow's own event loop
    assert isinstance(build_task_runner(RuntimeSettings(task_runner="processes"), 2), ProcessPoolTaskRunner)
    local = build_task_runner(RuntimeSettings(task_runner="dask"), 2)
    assert isinstance(local, DaskTaskRunner)
    assert local.cluster_kwargs["n_workers"] == 2
    remote = build_task_runner(RuntimeSettings(task_runner="dask", dask_address="tcp://sched:8786"), 2)
    assert isinstance(remote, DaskTaskRunner)
    assert remote.address == "tcp://sched:8786"


def test_run_bounded_keeps_to_the_limit_and_the_job_order() -> None:
    from flows.runners import run_bounded

    jobs = list(range(7))
    running: set[int] = set()
    released: set[int] = set()
    most = 0

    async def main() -> list[Any]:
        changed = asyncio.Condition()
        go = {job: asyncio.Event() for job in jobs}

        async def run(job: int) -> Any:
            nonlocal most
            async with changed:
                running.add(job)
                most = max(most, len(running))
                changed.notify_all()
            await go[job].wait()
            async with changed:
                running.discard(job)
                changed.notify_all()
            return f"state {job}"

        async def finish_newest_first() -> None:
            # Each time as many jobs run as the limit allows, let the newest one finish: out of order.
            while len(released) < len(jobs):
                async with changed:
                    await changed.wait_for(
                        lambda: len(running - released) == min(3, len(jobs) - len(released))
                    )
                    newest = max(running - released)
                released.add(newest)
                go[newest].set()

        # The 60 s only turns a hang (fewer jobs started than the limit) into a failure.
        states, _ = await asyncio.wait_for(
            asyncio.gather(run_bounded(jobs, 3, run), finish_newest_first()), timeout=60
        )
        return list(states)

    states = asyncio.run(main())
    assert states == [f"state {job}" for job in jobs]
    assert (most, running) == (3, set())


def test_stream_failure_and_jobs_cross_process_boundaries() -> None:
    from flows.sync import StreamFailed, StreamJob

    result = StreamResult("clinic", "ServiceRequest", "last-updated", status="failed", error="HTTP 503")
    # What a process pool or Dask does with a task's exception and input (our own bytes: S301 is moot).
    again = pickle.loads(pickle.dumps(StreamFailed(result, transient=True)))  # noqa: S301
    assert again.transient is True
    assert again.result.error == "HTTP 503"
    assert str(again) == "clinic/ServiceRequest: HTTP 503"
    job = StreamJob("/c.toml", "clinic", PLAN, "r", T0, window=Window(0, 2, None, "2026-01-02T00:00:00.000Z"))
    assert pickle.loads(pickle.dumps(job)) == job  # noqa: S301
    assert job.label == "ServiceRequest window 1/2"


# ---------------------------------------------------------------- artifacts


def test_artifact_adds_windows_up_per_stream_and_strips_hosts() -> None:
    results = [
        {
            "resource_type": "Claim",
            "mode": "last-updated",
            "status": "succeeded",
            "fetched": 3,
            "loaded": 2,
            "rejected": 1,
            "seconds": 1.5,
        },
        {
            "resource_type": "Claim",
            "mode": "last-updated",
            "status": "failed",
            "fetched": 4,
            "loaded": 1,
            "rejected": 0,
            "unchanged": 3,
            "seconds": 2.5,
        },
        {
            "resource_type": "Coverage",
            "mode": "full",
            "status": "succeeded",
            "fetched": 0,
            "loaded": 0,
            "rejected": 0,
            "seconds": 0.1,
        },
    ]
    rows = stream_rows(results)
    assert rows[0] | {} == {
        "stream": "Claim",
        "mode": "last-updated",
        "status": "failed",
        "windows": 2,
        "fetched": 7,
        "loaded": 3,
        "rejected": 1,
        "unchanged": 3,
        "seconds": 2.5,
    }
    text = render("Clinic_EMR", results, ["Claim window 2/2: GET https://emr.clinic-x.org/fhir/Claim | 503"])
    assert "| Claim | last-updated | failed | 2 | 7 | 3 | 1 | 3 | 2.5 |" in text
    assert "emr.clinic-x.org" not in text
    assert "GET /fhir/Claim / 503" in text
    assert artifact_key("Clinic_EMR.main") == "sync-clinic-emr-main"


# ---------------------------------------------------------------- deployments and CLI


CONFIG = """
[warehouse]
url = "sqlite:///wh.db"
[[endpoints]]
name = "north"
base_url = "https://north.test/fhir"
schedule = "*/15 * * * *"
[[endpoints]]
name = "south"
ndjson_dir = "exports"
[[endpoints]]
name = "off"
ndjson_dir = "exports"
enabled = false
"""


def test_one_deployment_per_enabled_endpoint_on_its_schedule(tmp_path: Any) -> None:
    from prefect.types.entrypoint import EntrypointType

    from flows.deployments import endpoint_deployments

    path = tmp_path / "connector.toml"
    path.write_text(CONFIG)
    settings = parse_settings(tomllib.loads(CONFIG), source=path)
    deployments = endpoint_deployments(settings, path)
    assert [d.name for d in deployments] == ["north", "south"]
    north, south = deployments
    # `scheduled`: a healthy subscription's stream is polled only hourly (docs/subscriptions.md).
    assert north.parameters == {
        "config_path": str(path.resolve()),
        "endpoint_name": "north",
        "scheduled": True,
    }
    assert [s.schedule.cron for s in north.schedules or []] == ["*/15 * * * *"]  # type: ignore[union-attr]
    assert south.schedules in (None, [])
    assert "endpoint:north" in north.tags
    module = endpoint_deployments(settings, path, module_entrypoint=True)
    assert module[0].entrypoint_type == EntrypointType.MODULE_PATH
    assert module[0].entrypoint == "flows.sync.sync_endpoint"


def test_cli_deploy_registers_the_endpoints_with_the_work_pool(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import prefect

    from connector.cli import app

    calls: list[dict[str, Any]] = []

    def fake_deploy(*deployments: Any, **kw: Any) -> list[Any]:
        calls.append({"names": [d.name for d in deployments], **kw})
        return []

    monkeypatch.setattr(prefect, "deploy", fake_deploy)
    path = tmp_path / "connector.toml"
    path.write_text(CONFIG)
    result = CliRunner().invoke(app, ["deploy", "--config", str(path), "--work-pool", "pool-a"])
    assert result.exit_code == 0, result.output
    assert calls == [
        {
            "names": ["north", "south"],
            "work_pool_name": "pool-a",
            "build": False,
            "push": False,
            "print_next_steps_message": False,
            "ignore_warnings": True,
        }
    ]
    assert "sync-endpoint/north to pool-a (*/15 * * * *)" in result.output


def test_cli_serve_serves_the_endpoint_deployments(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import prefect

    from connector.cli import app

    served: list[Any] = []
    monkeypatch.setattr(prefect, "serve", lambda *d, **kw: served.append(([x.name for x in d], kw)))
    path = tmp_path / "connector.toml"
    path.write_text(CONFIG)
    result = CliRunner().invoke(app, ["serve", "--config", str(path), "--limit", "2"])
    assert result.exit_code == 0, result.output
    assert served == [(["north", "south"], {"limit": 2, "pause_on_shutdown": True})]
    bad = CliRunner().invoke(app, ["serve", "--config", str(tmp_path / "missing.toml")])
    assert bad.exit_code == 1
    assert "configuration file not found" in bad.output
