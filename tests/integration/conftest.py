"""A real third-party FHIR R4 server for the integration tests: sekmet-fhir, in its own virtualenv.

The server is installed once into `.cache/sekmet-venv` (gitignored) so its pins never steer ours, started
per test session on a free 127.0.0.1 port with a temporary SQLite database, and stopped by its pid.
Its lab/payer simulator (which answers new ServiceRequests, Tasks and Claims by itself a few seconds after
they are written) and its traffic log (which stores request bodies) are turned off in its settings file.

When the server cannot be installed (no package index reachable) the tests are skipped locally with the
reason, and fail when CI=true.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.practice import Practice, generate, load

SEKMET_VERSION = "0.1.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
VENV = REPO_ROOT / ".cache" / "sekmet-venv"
#: Written last by a successful install; a venv without it (an interrupted install) is rebuilt.
MARKER = VENV / f".sekmet-fhir-{SEKMET_VERSION}"
INSTALL_TIMEOUT = 900
STARTUP_TIMEOUT = 60.0


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"sekmet-fhir {SEKMET_VERSION} is unavailable and CI=true: {reason}")
    pytest.skip(f"sekmet-fhir {SEKMET_VERSION} is unavailable: {reason}")


def _venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_sekmet() -> Path:
    """The python of a virtualenv holding sekmet-fhir, created (once) when missing.

    Several test sessions may share one checkout: a lock file keeps a second session from deleting the
    virtualenv the first is still installing.
    """
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with (VENV.parent / "sekmet-venv.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _install()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _install() -> Path:
    if MARKER.exists() and _venv_python().exists():
        return _venv_python()
    shutil.rmtree(VENV, ignore_errors=True)
    steps = (
        [sys.executable, "-m", "venv", str(VENV)],
        # uvicorn comes with sekmet-fhir (uvicorn[standard]); nothing else is needed.
        [str(_venv_python()), "-m", "pip", "install", "--quiet", f"sekmet-fhir=={SEKMET_VERSION}"],
    )
    for cmd in steps:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            _unavailable(f"{cmd[2]} failed: {type(exc).__name__}")
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            _unavailable(f"`{' '.join(cmd[1:4])}` exited {done.returncode}: {' | '.join(tail)}")
    MARKER.write_text(f"sekmet-fhir=={SEKMET_VERSION}\n", encoding="utf-8")
    return _venv_python()


def sekmet_settings(base_url: str, folder: Path) -> str:
    """sekmet's settings.yaml (format: `sekmet.config.Settings`), as YAML-compatible JSON-style text."""
    # base_url matters: sekmet writes absolute next links from it, not from the request's Host header.
    return "\n".join(
        (
            f'base_url: "{base_url}"',
            'host: "127.0.0.1"',
            f'data_dir: "{folder / "data"}"',
            f'db_path: "{folder / "data" / "sekmet.db"}"',
            f'own_private_key_path: "{folder / "keys" / "sekmet_private.pem"}"',
            # The traffic log would store every request and response body (resources) in its database.
            "log_inbound: false",
            # The simulator acts on new ServiceRequests, Tasks, Appointments and Claims by itself.
            "simulator:",
            "  enabled: false",
            "",
        )
    )


def _wait_for_metadata(base_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """The server was handed a socket that listens already: a request waits in its backlog until the
    server accepts it, so one GET with the start-up timeout is the whole wait (no polling, no clock)."""
    try:
        response = httpx.get(f"{base_url}/metadata", timeout=STARTUP_TIMEOUT)
    except httpx.TransportError as exc:
        state = f"exited with {process.returncode}" if process.poll() is not None else "did not answer"
        raise RuntimeError(
            f"sekmet {state} ({type(exc).__name__}) within {STARTUP_TIMEOUT:.0f}s: {log.read_text()[-2000:]}"
        ) from None
    if response.status_code != 200:
        raise RuntimeError(f"sekmet answered {response.status_code} to /metadata: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def serve_sekmet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start an empty sekmet-fhir server; yields its FHIR base URL (`http://127.0.0.1:<port>/fhir`)."""
    python = ensure_sekmet()
    folder = tmp_path_factory.mktemp("sekmet")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = int(listener.getsockname()[1])
    base_url = f"http://127.0.0.1:{port}/fhir"
    settings = folder / "settings.yaml"
    settings.write_text(sekmet_settings(base_url, folder), encoding="utf-8")
    log = folder / "server.log"
    # Nothing of our own interpreter setup may leak into the server's virtualenv.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["SEKMET_CONFIG"] = str(settings)
    cmd = [str(python), "-m", "uvicorn", "sekmet.main:app_factory", "--factory"]
    cmd += ["--fd", str(listener.fileno()), "--log-level", "warning"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            cmd, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, pass_fds=(listener.fileno(),)
        )
    listener.close()  # the server holds its own copy
    try:
        _wait_for_metadata(base_url, process, log)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture(scope="session")
def sekmet_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running sekmet-fhir server shared by the session (the generated practice is loaded into it)."""
    with serve_sekmet(tmp_path_factory) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def own_sekmet_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A sekmet-fhir server of the module's own, for data that must not change the shared server's counts."""
    with serve_sekmet(tmp_path_factory) as base_url:
        yield base_url


@pytest.fixture(scope="session")
def fhir(sekmet_base_url: str) -> Iterator[httpx.Client]:
    """A plain HTTP client on the server, for loading and changing data behind the connector's back."""
    with httpx.Client(base_url=sekmet_base_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def practice(fhir: httpx.Client) -> Practice:
    """The generated practice, loaded into the server (once per session)."""
    generated = generate()
    load(fhir, generated)
    return generated
