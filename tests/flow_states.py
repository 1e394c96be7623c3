"""Running a Prefect flow to its final state from a synchronous test."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from prefect import State


def final_state(called: Awaitable[State[Any]]) -> State[Any]:
    """`asyncio.run` of a flow called with `return_state=True`.

    Prefect types that call as an Awaitable; asyncio.run wants a coroutine, which it is at run time.
    """
    return asyncio.run(called)  # type: ignore[arg-type]
