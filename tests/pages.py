"""Pages for `run_stream` in tests: resources cut into pages as a server would, already parsed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from connector.fhir.page import Entries


async def pages_of(resources: Sequence[Any], size: int) -> AsyncIterator[Entries]:
    """`resources` in pages of `size`, numbered from 1, with nothing included."""
    for number, start in enumerate(range(0, len(resources), size), 1):
        yield Entries(list(resources[start : start + size]), number=number)
