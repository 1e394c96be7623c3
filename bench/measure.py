"""Run a command as a child process and measure its wall time and peak RSS.

Peak RSS is the largest sum of the resident set sizes of the child and all its descendants (worker
processes, a Prefect server started by the CLI), sampled from the parent every `interval` seconds. Pages
shared between processes count once per process, so the figure errs on the high side for process pools.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(slots=True)
class Measured:
    command: list[str]
    returncode: int
    wall_seconds: float
    peak_rss_bytes: int
    stdout: str
    stderr: str

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_bytes / 1e6


def tree_rss(process: psutil.Process) -> int:
    """RSS of a process and its descendants; processes that exit while we look are skipped."""
    total = 0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for member in members:
        try:
            total += member.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return total


def run_measured(
    command: Sequence[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    interval: float = 0.05,
    timeout: float | None = None,
) -> Measured:
    """Run `command` to completion; stdout and stderr go to temporary files (no pipe can fill up)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        child = subprocess.Popen(  # noqa: S603 - commands are built by the harness, not from input
            list(command), stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd, env=env
        )
        watched = psutil.Process(child.pid)
        peak = 0
        deadline = None if timeout is None else started + timeout
        while True:
            peak = max(peak, tree_rss(watched))
            try:
                child.wait(timeout=interval)
                break
            except subprocess.TimeoutExpired:
                if deadline is not None and time.perf_counter() > deadline:
                    _kill_tree(watched)
                    child.wait()
                    break
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        return Measured(
            command=list(command),
            returncode=child.returncode,
            wall_seconds=round(wall, 3),
            peak_rss_bytes=peak,
            stdout=out.read().decode("utf-8", "replace"),
            stderr=err.read().decode("utf-8", "replace"),
        )


def _kill_tree(process: psutil.Process) -> None:
    try:
        members = [*process.children(recursive=True), process]
    except psutil.NoSuchProcess:
        return
    for member in members:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            continue
