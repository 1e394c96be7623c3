"""The connector itself: `connector sync --config FILE --json`, the real CLI with its Prefect flow.

The harness writes one config per run (`write_config`), runs `connector migrate` first on PostgreSQL
(untimed: a warehouse is migrated once, not per sync), then times `sync_command` in a child process and
reads its JSON summary with `parse_summary`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.data import TYPES

ENDPOINT = "bench"
LEVELS: tuple[str, ...] = ("strict", "mapped")


def connector_bin() -> Path:
    """The `connector` script installed next to this Python (`.venv/bin/connector`)."""
    return Path(sys.executable).parent / "connector"


def config_text(*, warehouse_url: str, base_url: str, page_size: int, validation: str) -> str:
    """The TOML of one benchmark run: one endpoint, the three resource types, nothing pushed back.

    `validation` is written only for `mapped`: strict is the default, so the strict runs also work with a
    connector that does not know the key yet.
    """
    if validation not in LEVELS:
        raise ValueError(f"validation must be one of {', '.join(LEVELS)}")
    lines = [
        "# Written by bench/connector_run.py for one benchmark run.",
        "[warehouse]",
        f"url = {json.dumps(warehouse_url)}",
        "",
        "[[endpoints]]",
        f"name = {json.dumps(ENDPOINT)}",
        f"base_url = {json.dumps(base_url)}",
        f"resources = {json.dumps(list(TYPES))}",
        f"page_size = {int(page_size)}",
        'bulk = "never"',
    ]
    if validation != "strict":
        lines.append(f"validation = {json.dumps(validation)}")
    return "\n".join(lines) + "\n"


def write_config(
    directory: Path, *, warehouse_url: str, base_url: str, page_size: int, validation: str
) -> Path:
    path = directory / f"connector-{validation}.toml"
    path.write_text(
        config_text(
            warehouse_url=warehouse_url, base_url=base_url, page_size=page_size, validation=validation
        ),
        encoding="utf-8",
    )
    return path


def sync_command(config: Path) -> list[str]:
    return [str(connector_bin()), "sync", "--config", str(config), "--json"]


def migrate_command(config: Path) -> list[str]:
    return [str(connector_bin()), "migrate", "--config", str(config)]


@dataclass(slots=True)
class SyncSummary:
    status: str
    fetched: int
    loaded: int
    rejected: int
    #: The sync flow's own duration (the CLI's top-level `seconds`), when the CLI reports it.
    seconds: float | None
    #: From the first stream's start to the last one's end (`streams_seconds`), when reported.
    streams_seconds: float | None
    error: str | None


def parse_summary(stdout: str) -> SyncSummary:
    """Read `connector sync --json` output: per-stream rows summed, the top-level `seconds` if present."""
    start = stdout.find("{")
    if start < 0:
        raise ValueError("connector sync printed no JSON")
    data: dict[str, Any] = orjson.loads(stdout[start:])
    streams = data.get("streams") or []
    seconds = data.get("seconds")
    streams_seconds = data.get("streams_seconds")
    return SyncSummary(
        status=str(data.get("status")),
        fetched=sum(int(s.get("fetched") or 0) for s in streams),
        loaded=sum(int(s.get("loaded") or 0) for s in streams),
        rejected=sum(int(s.get("rejected") or 0) for s in streams),
        seconds=float(seconds) if isinstance(seconds, int | float) else None,
        streams_seconds=float(streams_seconds) if isinstance(streams_seconds, int | float) else None,
        error=data.get("error"),
    )
