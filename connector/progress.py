"""Progress reporting from the sync engine to whoever shows it (the CLI's rich bars, or nobody).

Only counts cross this seam, never resources.
"""

from __future__ import annotations

import threading
from typing import Protocol


class ProgressSink(Protocol):
    def stream_started(self, endpoint: str, resource_type: str) -> None: ...

    def stream_total(self, endpoint: str, resource_type: str, total: int) -> None:
        """The server's count of what a search (or a window of it) will fetch (`Bundle.total`)."""

    def patients_done(self, endpoint: str, resource_type: str, done: int, total: int | None) -> None:
        """A per-patient crawl finished its `done`-th patient of `total` (None: not known up front)."""

    def page_done(
        self, endpoint: str, resource_type: str, *, fetched: int, loaded: int, rejected: int
    ) -> None: ...

    def stream_finished(self, endpoint: str, resource_type: str, *, status: str) -> None: ...


class _NullSink:
    def stream_started(self, endpoint: str, resource_type: str) -> None:
        return None

    def stream_total(self, endpoint: str, resource_type: str, total: int) -> None:
        return None

    def patients_done(self, endpoint: str, resource_type: str, done: int, total: int | None) -> None:
        return None

    def page_done(
        self, endpoint: str, resource_type: str, *, fetched: int, loaded: int, rejected: int
    ) -> None:
        return None

    def stream_finished(self, endpoint: str, resource_type: str, *, status: str) -> None:
        return None


_lock = threading.Lock()
_sink: ProgressSink = _NullSink()


def set_sink(sink: ProgressSink | None) -> None:
    """Install a sink for this process (the CLI does, around a sync); None removes it."""
    global _sink
    with _lock:
        _sink = sink if sink is not None else _NullSink()


def sink() -> ProgressSink:
    return _sink
