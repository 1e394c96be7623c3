"""The task runner of an endpoint run, chosen by `[runtime] task_runner`, and bounded submission.

The runner is built inside the flow run from the config (not fixed in the `@flow` decorator), so a
deployment picks up a changed `[runtime]` table on its next run without being redeployed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from prefect.futures import PrefectFuture
from prefect.states import State
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from connector.config import RuntimeSettings

J = TypeVar("J")


def build_task_runner(runtime: RuntimeSettings, parallel: int) -> TaskRunner[Any]:
    """threads | processes | dask, sized to the endpoint's stream parallelism."""
    if runtime.task_runner == "processes":
        return ProcessPoolTaskRunner(max_workers=parallel)
    if runtime.task_runner == "dask":
        # Imported here: dask is only loaded by runs that use it.
        from prefect_dask import DaskTaskRunner

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
    return ThreadPoolTaskRunner(max_workers=parallel)


async def run_bounded(
    jobs: Sequence[J], limit: int, submit: Callable[[J], PrefectFuture[Any]]
) -> list[State[Any]]:
    """Submit every job, at most `limit` running at once; returns the final states in job order.

    The runner's own pool size already bounds threads and processes, but a shared Dask cluster has as many
    slots as it has workers: this keeps an endpoint to its EMR's rate limit whatever the runner.
    """
    gate = asyncio.Semaphore(limit)

    async def one(job: J) -> State[Any]:
        async with gate:
            future = submit(job)
            # PrefectFuture.wait blocks: wait in a thread so the flow's event loop keeps going.
            await asyncio.to_thread(future.wait)
            return future.state

    return list(await asyncio.gather(*(one(job) for job in jobs)))
