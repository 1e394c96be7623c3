"""The Prefect API a CLI run talks to: the one `PREFECT_API_URL` names, or a local server shared by every
connector process on this machine.

Without `PREFECT_API_URL`, Prefect starts a temporary server per process and gives it 20 s to answer. On a
loaded host that start-up alone can take longer (the run dies with "Timed out while attempting to connect to
ephemeral Prefect API server"), and several syncs started at once each start one on the same SQLite file.
Prefect's advice for anything beyond a trial is one long-running server; this module runs that server for
the user, on demand:

- The first CLI process that needs it starts `python -m connector.prefect_server` (uvicorn with Prefect's
  API app, no UI) on a free 127.0.0.1 port, detached, and writes `server.json` beside it; later processes
  find it there and reuse it. A lock file serialises the check-and-start, so eight syncs started by one cron
  line start one server.
- Every process using the server holds a shared lock on `users.lock` for as long as it runs. The server
  exits once nobody has held that lock for `idle_seconds` (the next cron run within that time reuses it);
  a crashed client's lock goes with its process, so nothing keeps a server alive by mistake.
- The start-up is given `start_timeout` seconds (default 120, `[runtime] prefect_start_timeout`), not 20.

The files live in `$PREFECT_HOME/connector-server/` (the server's database is Prefect's own, in
`$PREFECT_HOME`). A failure is a `PrefectApiError` with one line saying what failed and what to set.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import httpx

from connector.errors import ConnectorError

#: How long the shared server lives once its last user has gone: long enough for back-to-back runs.
DEFAULT_IDLE_SECONDS = 300.0
DEFAULT_START_TIMEOUT = 120.0
SERVER_DIR = "connector-server"


class PrefectApiError(ConnectorError):
    """The Prefect API cannot be reached or started; the message says what to set."""


@dataclass(frozen=True)
class ServerFiles:
    """Where the shared server's lock, state and log files are."""

    root: Path

    @property
    def start_lock(self) -> Path:
        return self.root / "start.lock"

    @property
    def users_lock(self) -> Path:
        return self.root / "users.lock"

    @property
    def state(self) -> Path:
        return self.root / "server.json"

    @property
    def log(self) -> Path:
        return self.root / "server.log"


def shown_url(url: str) -> str:
    """The API address without credentials or query, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"


def healthy(url: str, timeout: float = 5.0) -> bool:
    try:
        response = httpx.get(f"{url.rstrip('/')}/health", timeout=timeout)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def _lock(path: Path, mode: int) -> IO[bytes]:
    handle = path.open("ab")
    fcntl.flock(handle.fileno(), mode)
    return handle


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state(files: ServerFiles) -> dict[str, object] | None:
    try:
        data = json.loads(files.state.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _running_server(files: ServerFiles, version: str) -> str | None:
    """The URL of a live shared server of this Prefect version, or None."""
    state = read_state(files)
    if not state or state.get("prefect") != version:
        return None
    pid, url = state.get("pid"), state.get("url")
    if not isinstance(pid, int) or not isinstance(url, str) or not _pid_alive(pid):
        return None
    return url if healthy(url) else None


def _start_server(files: ServerFiles, *, version: str, start_timeout: float, idle_seconds: float) -> str:
    """Start the shared server and wait until it answers; the caller holds the start lock."""
    deadline = time.monotonic() + start_timeout
    last_exit: int | None = None
    for _attempt in range(3):  # another program may take the free port between choosing and binding it
        port = _free_port()
        url = f"http://127.0.0.1:{port}/api"
        with files.log.open("ab") as log:
            process = subprocess.Popen(  # noqa: S603 - this Python, fixed arguments
                [
                    sys.executable,
                    "-m",
                    "connector.prefect_server",
                    "--port",
                    str(port),
                    "--dir",
                    str(files.root),
                    "--idle",
                    str(idle_seconds),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # outlives this process; a Ctrl-C here does not reach it
                # Its database goes where its lock files are, whatever this process's environment says.
                env={**os.environ, "PREFECT_HOME": str(files.root.parent)},  # noqa: TID251
            )
        while time.monotonic() < deadline:
            if process.poll() is not None:
                last_exit = process.returncode
                break
            if healthy(url, timeout=2.0):
                files.state.write_text(json.dumps({"pid": process.pid, "url": url, "prefect": version}))
                return url
            time.sleep(0.2)
        else:
            process.terminate()
            raise PrefectApiError(
                f"the local Prefect server did not answer within {start_timeout:.0f} s (log: {files.log}); "
                "raise [runtime] prefect_start_timeout, or set PREFECT_API_URL to a running Prefect server"
            )
    raise PrefectApiError(
        f"the local Prefect server exited with code {last_exit} while starting (log: {files.log}); "
        "set PREFECT_API_URL to a running Prefect server (`prefect server start`)"
    )


def _configured_url() -> str | None:
    """PREFECT_API_URL from the environment or the active Prefect profile."""
    try:
        from prefect.settings import get_current_settings

        url = get_current_settings().api.url
    except ValueError as exc:  # pydantic's ValidationError: a PREFECT_* variable or profile is invalid
        first = str(exc).strip().splitlines()[:2]
        raise PrefectApiError(f"Prefect's settings are invalid: {' '.join(first)}") from None
    return str(url) if url else None


@contextlib.contextmanager
def prefect_api(
    *, start_timeout: float = DEFAULT_START_TIMEOUT, idle_seconds: float = DEFAULT_IDLE_SECONDS
) -> Iterator[str]:
    """Run the block against a reachable Prefect API; yields its URL."""
    url = _configured_url()
    if url is not None:
        if not healthy(url, timeout=min(start_timeout, 15.0)):
            raise PrefectApiError(
                f"the Prefect API at {shown_url(url)} (PREFECT_API_URL) does not answer; start that server "
                "or unset PREFECT_API_URL to let the connector run its own"
            )
        yield url
        return
    from prefect import __version__ as version
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    files = ServerFiles(Path(get_current_settings().home) / SERVER_DIR)
    try:
        files.root.mkdir(parents=True, exist_ok=True)
        # Taken before the start lock, released when this process ends: the server does not stop under us.
        users = _lock(files.users_lock, fcntl.LOCK_SH)
    except OSError as exc:
        raise PrefectApiError(
            f"cannot use {files.root} for the local Prefect server ({exc.strerror}); set PREFECT_HOME to a "
            "writable folder or PREFECT_API_URL to a running Prefect server"
        ) from None
    try:
        with _lock(files.start_lock, fcntl.LOCK_EX):
            url = _running_server(files, version) or _start_server(
                files, version=version, start_timeout=start_timeout, idle_seconds=idle_seconds
            )
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        users.close()


def stop_shared_server(home: Path) -> bool:
    """Stop the shared server under `home` (tests, `make clean`); True if one was running."""
    files = ServerFiles(home / SERVER_DIR)
    state = read_state(files)
    if not state or not isinstance(state.get("pid"), int):
        return False
    pid = state["pid"]
    assert isinstance(pid, int)
    with contextlib.suppress(OSError):
        files.state.unlink()
    if not _pid_alive(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not _gone(pid):
        time.sleep(0.1)
    return True


def _gone(pid: int) -> bool:
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)  # reaps it when this process started it
    except ChildProcessError:
        return not _pid_alive(pid)
    return done == pid


__all__ = [
    "DEFAULT_IDLE_SECONDS",
    "DEFAULT_START_TIMEOUT",
    "PrefectApiError",
    "ServerFiles",
    "healthy",
    "prefect_api",
    "read_state",
    "shown_url",
    "stop_shared_server",
]
