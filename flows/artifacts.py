"""The markdown artifact each endpoint run publishes: per stream fetched / loaded / rejected /
unchanged / duration.

Names and counts only: no resource ids, no URLs (a base URL can name the practice's tenant), no errors
verbatim beyond their one-line reason, which never holds resource values.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from prefect.artifacts import acreate_markdown_artifact


def artifact_key(endpoint_name: str) -> str:
    """Prefect artifact keys are lowercase letters, digits and dashes; endpoint names may hold `_` and `.`."""
    return "sync-" + re.sub(r"[^a-z0-9-]+", "-", endpoint_name.lower()).strip("-")


def stream_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per stream: the windows of a backfill are added up (duration is the slowest window)."""
    rows: dict[str, dict[str, Any]] = {}
    for r in results:
        row = rows.setdefault(
            r["resource_type"],
            {
                "stream": r["resource_type"],
                "mode": r.get("mode", ""),
                "status": "succeeded",
                "windows": 0,
                "fetched": 0,
                "loaded": 0,
                "rejected": 0,
                "unchanged": 0,
                "seconds": 0.0,
            },
        )
        row["windows"] += 1
        for key in ("fetched", "loaded", "rejected", "unchanged"):
            row[key] += int(r.get(key) or 0)
        row["seconds"] = max(row["seconds"], float(r.get("seconds") or 0.0))
        if r.get("status") == "skipped" and row["windows"] == 1:
            row["status"] = "skipped"  # the export does not offer the type: not a failure
        elif r.get("status") not in ("succeeded", "skipped"):
            row["status"] = "failed"
    return list(rows.values())


def render(endpoint_name: str, results: Sequence[dict[str, Any]], failures: Sequence[str]) -> str:
    lines = [
        f"# Sync of `{endpoint_name}`",
        "",
        "| stream | mode | status | windows | fetched | loaded | rejected | unchanged | seconds |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in stream_rows(results):
        lines.append(
            f"| {row['stream']} | {row['mode']} | {row['status']} | {row['windows']} | {row['fetched']} "
            f"| {row['loaded']} | {row['rejected']} | {row['unchanged']} | {row['seconds']:.1f} |"
        )
    if failures:
        lines += ["", "## Failures", ""]
        lines += [f"- {_cell(reason)}" for reason in failures]
    return "\n".join(lines) + "\n"


_URL_RE = re.compile(r"https?://[^/\s]+")


def _cell(text: str) -> str:
    # Artifacts are read by everyone with access to the Prefect workspace (possibly Prefect Cloud): a
    # server's host can name the practice or tenant, so reasons keep the URL path only.
    return _URL_RE.sub("", " ".join(text.split())).replace("|", "/")[:300]


async def publish(endpoint_name: str, results: Sequence[dict[str, Any]], failures: Sequence[str]) -> None:
    await acreate_markdown_artifact(
        key=artifact_key(endpoint_name),
        markdown=render(endpoint_name, results, failures),
        description=f"Streams synced from {endpoint_name}: counts only",
    )
