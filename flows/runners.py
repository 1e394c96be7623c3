"""Where an endpoint run's stream tasks run, chosen by `[runtime] task_runner`, and bounded running.

`threads` (the default) runs the tasks concurrently on the flow's own event loop: their blocking work
(database writes, mapping) already goes to threads and to the pool of mapping workers, and a task run
there borrows the flow's Prefect client. A task handed to Prefect's ThreadPoolTaskRunner got a thread, an
event loop and two Prefect API clients of its own, each building an SSL context from the CA bundle: about
150 ms of CPU per task, and a first sync of a big server has a dozen (backfill windows).

`processes` and `dask` build the Prefect task runner inside the flow run from the config (not fixed in
the `@flow` decorator), so a deployment picks up a changed `[runtime]` table on its next run without
being redeployed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from prefect import State, Task
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner

from connector.config import RuntimeSettings

J = TypeVar("J")


def build_task_runner(runtime: RuntimeSettings, parallel: int) -> TaskRunner[Any] | None:
    """processes | dask, sized to the endpoint's stream parallelism; None for threads (the flow's loop)."""
    if runtime.task_runner == "processes":
        return ProcessPoolTaskRunner(max_workers=parallel)
    if runtime.task_runner == "dask":
        # Imported here: dask is only loaded by runs that use it.
        from prefect_dask.task_runners import DaskTaskRunner

        if runtime.dask_address:
            return DaskTaskRunner(address=runtime.dask_address)
        # A local cluster of worker processes (mapping is CPU-bound; threads would share the GIL).
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": parallel,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            }
        )
    return None


async def run_tasks(
    task: Task[..., Any],
    jobs: Sequence[J],
    runtime: RuntimeSettings,
    limit: int,
    *,
    local: Mapping[str, Any] | None = None,
) -> list[State[Any]]:
    """Run `task(job=...)` for every job, at most `limit` at once; the final states in job order.

    `local`: more arguments for tasks that run on this loop (objects that do not pickle, such as an engine);
    tasks sent to worker processes or Dask build their own.
    """
    runner = build_task_runner(runtime, min(limit, max(len(jobs), 1)))
    if runner is None:
        extra = dict(local or {})
        return await run_bounded(jobs, limit, lambda job: task(job=job, return_state=True, **extra))
    with runner:
        return await run_bounded(jobs, limit, lambda job: _submitted(runner, task, job))


async def _submitted(runner: TaskRunner[Any], task: Task[..., Any], job: Any) -> State[Any]:
    future = runner.submit(task, {"job": job})
    # PrefectFuture.wait blocks: wait in a thread so the flow's event loop keeps going.
    await asyncio.to_thread(future.wait)
    state: State[Any] = future.state
    return state


async def run_bounded(
    jobs: Sequence[J], limit: int, run: Callable[[J], Awaitable[State[Any]]]
) -> list[State[Any]]:
    """`run` every job, at most `limit` at once; returns the final states in job order.

    A process pool already bounds itself, but the flow's loop does not, and a shared Dask cluster has as
    many slots as it has workers: this keeps an endpoint to its EMR's rate limit whatever the runner.
    """
    gate = asyncio.Semaphore(limit)

    async def one(job: J) -> State[Any]:
        async with gate:
            return await run(job)

    return list(await asyncio.gather(*(one(job) for job in jobs)))
