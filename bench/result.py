"""What one runner reports about its own run (printed as one JSON line by the runner's process)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import orjson


@dataclass(slots=True)
class RunResult:
    runner: str
    fetched: int = 0
    loaded: int = 0
    #: Resources that failed validation (counted and skipped).
    invalid: int = 0
    pages: int = 0
    #: Seconds inside the runner's own work, start-up (imports, process) excluded.
    seconds: float = 0.0

    def to_json(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_json(cls, text: str) -> RunResult:
        data: dict[str, Any] = orjson.loads(text)
        return cls(**data)
