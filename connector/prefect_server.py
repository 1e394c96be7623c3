"""The shared local Prefect API server (`python -m connector.prefect_server`), started by
`connector.prefect_api` when `PREFECT_API_URL` is not set.

It serves Prefect's API app with uvicorn on 127.0.0.1 and stops itself once no connector process has held
`users.lock` for `--idle` seconds. Like Prefect's temporary server it runs no background services (no
scheduler): a CLI run needs only the API.

To stop, it takes the start lock and then the users lock exclusively (both without waiting), removes
`server.json` and keeps both locks until it has exited: a client that arrives meanwhile waits for the users
lock and then starts a new server, never one that is going away.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import threading
import time
from pathlib import Path
from typing import IO

from connector.prefect_api import ServerFiles


def _try_lock(path: Path) -> IO[bytes] | None:
    handle = path.open("ab")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def idle_for(files: ServerFiles, last_used: float) -> tuple[float, list[IO[bytes]] | None]:
    """(when it was last seen in use, the two locks if nobody uses it and nobody is starting one)."""
    start = _try_lock(files.start_lock)
    if start is None:
        return time.monotonic(), None
    users = _try_lock(files.users_lock)
    if users is None:
        start.close()
        return time.monotonic(), None
    return last_used, [start, users]


def _watch(server: object, files: ServerFiles, idle_seconds: float, poll: float) -> None:
    last_used = time.monotonic()
    while not getattr(server, "should_exit", False):
        time.sleep(poll)
        try:
            last_used, held = idle_for(files, last_used)
        except OSError:
            # Its folder is gone (PREFECT_HOME removed): no client can find this server any more.
            server.should_exit = True  # type: ignore[attr-defined]
            return
        if held is None:
            continue
        if time.monotonic() - last_used >= idle_seconds:
            with contextlib.suppress(OSError):
                files.state.unlink()
            server.should_exit = True  # type: ignore[attr-defined]
            return  # the locks stay held (the handles are never closed) until the process exits
        for handle in held:
            handle.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="connector.prefect_server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--idle", type=float, default=300.0)
    args = parser.parse_args(argv)

    import uvicorn
    from prefect.server.api.server import create_app

    config = uvicorn.Config(
        create_app(ephemeral=True, final=True),
        host="127.0.0.1",
        port=args.port,
        log_level="error",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    files = ServerFiles(args.dir)
    poll = min(5.0, max(0.5, args.idle / 10))
    threading.Thread(target=_watch, args=(server, files, args.idle, poll), daemon=True).start()
    server.run()


if __name__ == "__main__":
    main()
