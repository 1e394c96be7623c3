"""Where the connector's flow runs report to: one Prefect server for the whole benchmark, or none.

`--prefect server` (default) starts `prefect server start` once, with its own PREFECT_HOME in the
benchmark's temporary folder, and points every `connector sync` at it (PREFECT_API_URL), as a deployment
does: each sync then pays for the Prefect client, not for booting an API server. `--prefect ephemeral`
leaves the CLI to start its own temporary server per run (the default for a bare `connector sync` on a
laptop), with a longer start-up timeout so a busy machine does not fail the run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

MODES: tuple[str, ...] = ("server", "ephemeral")


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment plus `extra`, for the runners' child processes.

    The benchmark is not the connector: it prepares the environment the CLI children start in (the
    connector itself still reads the environment only in connector/config.py).
    """
    env = dict(os.environ)  # noqa: TID251 - see the docstring
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PrefectApi:
    """The Prefect settings the connector runs get; `process` is the server the harness started, if any."""

    mode: str
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    url: str | None = None

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # The server runs in a session of its own (uvicorn and services are its children): end that group.
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> PrefectApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(mode: str, home: Path, *, timeout: float = 300.0) -> PrefectApi:
    home.mkdir(parents=True, exist_ok=True)
    base = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",
    }
    if mode == "ephemeral":
        return PrefectApi(mode, child_env(**base))
    if mode != "server":
        raise ValueError(f"--prefect must be one of {', '.join(MODES)}")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    command = [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--no-ui", "--analytics-off"]
    with (home / "server.log").open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - the venv's own prefect CLI, fixed arguments
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(**base),
            start_new_session=True,
        )
    api = PrefectApi(mode, child_env(**base, PREFECT_API_URL=url), process, url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited ({process.returncode}); see {home / 'server.log'}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return api
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    api.stop()
    raise RuntimeError(f"prefect server did not answer within {timeout:.0f} s; see {home / 'server.log'}")
