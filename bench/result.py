"""What one runner reports about its own run (printed as one JSON line by the runner's process)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
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


def runner_main(
    prog: str,
    description: str,
    url_help: str,
    run: Callable[..., RunResult],
    argv: Sequence[str] | None = None,
) -> None:
    """A runner's command line: `--base`, `--url`, `--page-size`; prints its RunResult as one JSON line."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--base", required=True, help="FHIR base URL, e.g. http://127.0.0.1:PORT/n20000")
    parser.add_argument("--url", required=True, help=url_help)
    parser.add_argument("--page-size", type=int, default=1000)
    args = parser.parse_args(argv)
    result = run(args.base, args.url, page_size=args.page_size)
    sys.stdout.write(result.to_json() + "\n")
