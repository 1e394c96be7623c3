"""Search pages for `run_stream` in tests: resources cut into pages as a server would."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from connector.fhir.page import Page


async def pages_of(resources: Sequence[Any], size: int) -> AsyncIterator[Page]:
    """`resources` in pages of `size`, numbered from 1, with nothing included."""
    for number, start in enumerate(range(0, len(resources), size), 1):
        yield Page(
            resources=list(resources[start : start + size]),
            included=[],
            bundle_last_updated=None,
            number=number,
        )
