"""The Prefect API of CLI runs: PREFECT_API_URL when set (one line when it does not answer), else one local
server shared by every connector process, started once under a lock and stopped when nobody uses it."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from connector.prefect_api import ServerFiles, read_state, shown_url, stop_shared_server
from connector.prefect_server import idle_for

CONNECTOR = Path(sys.executable).parent / "connector"


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port nothing answers on: bound here but not listening, so no other process can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def _config(tmp_path: Path) -> Path:
    folder = tmp_path / "files"
    folder.mkdir()
    config = tmp_path / "connector.toml"
    config.write_text(
        f'[warehouse]\nurl = "sqlite:///{tmp_path / "wh.db"}"\n'
        f'[[endpoints]]\nname = "files"\nndjson_dir = "{folder}"\nresources = ["ServiceRequest"]\n'
    )
    return config


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(extra)
    return env


def test_shown_url_drops_credentials_and_query() -> None:
    assert (
        shown_url("https://user:s3cret@prefect.example:4443/api?token=x")
        == "https://prefect.example:4443/api"
    )


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_an_unreachable_prefect_api_url_is_one_line_and_rc_1(
    tmp_path: Path, json_flag: list[str], closed_port: int
) -> None:
    port = closed_port
    result = subprocess.run(
        [str(CONNECTOR), "sync", "-c", str(_config(tmp_path)), *json_flag],
        env=_env(PREFECT_API_URL=f"http://admin:hunter2@127.0.0.1:{port}/api", PREFECT_HOME=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    # Without --json the line saying what it syncs comes first; then one line of error.
    assert lines[:-1] == ([] if json_flag else [lines[0]])
    assert lines[-1] == (
        f"error: the Prefect API at http://127.0.0.1:{port}/api (PREFECT_API_URL) does not answer; start "
        "that server or unset PREFECT_API_URL to let the connector run its own"
    )
    assert "hunter2" not in result.stdout + result.stderr


def _hold(files: ServerFiles, name: str, mode: int) -> object:
    handle = (files.root / name).open("ab")
    fcntl.flock(handle.fileno(), mode)
    return handle


def test_the_server_is_idle_only_when_nobody_uses_it_and_nobody_starts_one(tmp_path: Path) -> None:
    files = ServerFiles(tmp_path)
    user = _hold(files, "users.lock", fcntl.LOCK_SH)
    last_used, held = idle_for(files, 0.0)
    assert held is None
    assert last_used > 0.0
    user.close()  # type: ignore[attr-defined]

    starter = _hold(files, "start.lock", fcntl.LOCK_EX)
    assert idle_for(files, 0.0)[1] is None  # someone is checking or starting: not idle
    starter.close()  # type: ignore[attr-defined]

    last_used, held = idle_for(files, 0.0)
    assert held is not None
    assert last_used == 0.0
    # While the server holds both, a new user waits (it then starts a fresh server).
    with pytest.raises(BlockingIOError):
        _hold(files, "users.lock", fcntl.LOCK_SH | fcntl.LOCK_NB)
    for handle in held:
        handle.close()


CLIENT = """
import sys
from connector.prefect_api import prefect_api
with prefect_api(idle_seconds=float(sys.argv[1])) as url:
    print(url, flush=True)
    sys.stdin.read()
"""


def _clients(home: Path, n: int, idle: float) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(idle)],
            env=_env(PREFECT_HOME=str(home)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]


def _servers_under(home: Path) -> list[str]:
    listing = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if "connector.prefect_server" in line and str(home) in line]


def _server_exits(home: Path, timeout: float) -> bool:
    """Wait (on the processes themselves, not a clock) for the servers under `home` to exit."""
    listing = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True, check=True)
    pids = [
        int(line.split()[0])
        for line in listing.stdout.splitlines()
        if "connector.prefect_server" in line and str(home) in line
    ]
    _, alive = psutil.wait_procs([psutil.Process(pid) for pid in pids], timeout=timeout)
    return not alive


def test_processes_started_at_once_share_one_server_which_stops_when_idle(tmp_path: Path) -> None:
    home = tmp_path / "prefect"
    clients = _clients(home, 3, idle=1.0)
    try:
        urls = {client.stdout.readline().strip() for client in clients}  # type: ignore[union-attr]
        assert len(urls) == 1
        assert next(iter(urls)).startswith("http://127.0.0.1:")
        assert len(_servers_under(home)) == 1
        state = read_state(ServerFiles(home / "connector-server"))
        assert state is not None
        assert state["url"] in urls
        # Used, it keeps running whatever its idle time; a later client finds it and reuses it.
        late = _clients(home, 1, idle=1.0)[0]
        assert late.stdout.readline().strip() in urls  # type: ignore[union-attr]
        late.communicate("")
    finally:
        for client in clients:
            client.communicate("")
    # Nobody holds it any more: it removes its state file and exits by itself.
    assert _server_exits(home, timeout=120)
    assert read_state(ServerFiles(home / "connector-server")) is None
    assert not stop_shared_server(home)


def test_a_server_whose_folder_is_removed_stops(tmp_path: Path) -> None:
    home = tmp_path / "prefect"
    (client,) = _clients(home, 1, idle=300.0)  # a long idle time: only the missing folder stops it
    try:
        assert client.stdout.readline().startswith("http://127.0.0.1:")  # type: ignore[union-attr]
    finally:
        client.communicate("")
    assert len(_servers_under(home)) == 1
    import shutil

    shutil.rmtree(home / "connector-server")
    assert _server_exits(home, timeout=120)
