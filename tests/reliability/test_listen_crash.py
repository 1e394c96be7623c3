"""A SIGKILL of `connector listen` after it answered 200 and before it processed the notification loses
nothing: the notification was committed first, and the next `listen` processes it (issue 27)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa

from connector.warehouse.engine import make_engine
from tests.reliability.conftest import IDENTIFIER_SYSTEM, FaultServer, write_config

ROOT = Path(__file__).resolve().parents[2]
SECRET = "kill-test-secret"
NEW: dict[str, Any] = {
    "resourceType": "ServiceRequest",
    "id": "notified-1",
    "meta": {"versionId": "1", "lastUpdated": "2026-12-08T01:00:00.000Z"},
    "status": "active",
    "intent": "order",
    "subject": {"reference": "Patient/p1"},
    "authoredOn": "2026-12-08",
    "requester": {"reference": "Practitioner/dr1"},
}


@pytest.fixture
def server() -> Iterator[FaultServer]:
    fake = FaultServer()
    fake.by_id[NEW["id"]] = NEW
    try:
        yield fake
    finally:
        fake.close()


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listen(config: Path) -> subprocess.Popen[str]:
    """`connector listen`, returned once it says it is ready (subscribed, caught up, at work)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "connector", "listen", "--config", str(config), "--no-subscribe"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().startswith("ready")
    return process


def _processed(port: int, count: int) -> int:
    """Block until the listener processed `count` notifications (its long-poll)."""
    answer = httpx.get(
        f"http://127.0.0.1:{port}/health", params={"processed": str(count), "timeout": "120"}, timeout=130
    )
    processed: int = answer.json()["processed"]
    return processed


def _statuses(url: str) -> list[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return list(
                conn.scalars(sa.text("SELECT status FROM notification WHERE kind <> 'refused' ORDER BY id"))
            )
    finally:
        engine.dispose()


@pytest.mark.reliability
def test_sigkill_after_the_200_before_the_work_loses_nothing(server: FaultServer, tmp_path: Path) -> None:
    port = _port()
    url = f"sqlite:///{tmp_path / 'listen.db'}"
    config = write_config(tmp_path / "listen.toml", url, server.base)
    text = config.read_text().replace(
        "push_acknowledgments = true\n",
        f'push_acknowledgments = true\nsubscriptions = true\nsubscription_secret = "{SECRET}"\n'
        'case_summary = "off"\n',
    )
    config.write_text(text + f'[listen]\nport = {port}\npublic_url = "http://127.0.0.1:{port}"\n')
    first = _listen(config)
    try:
        server.block_read = True  # the worker will hang fetching the notified referral
        body = {
            "resourceType": "Bundle",
            "type": "history",
            "entry": [
                {
                    "resource": {
                        "resourceType": "Parameters",
                        "parameter": [
                            {"name": "type", "valueCode": "event-notification"},
                            {
                                "name": "notification-event",
                                "part": [
                                    {"name": "event-number", "valueString": "1"},
                                    {
                                        "name": "focus",
                                        "valueReference": {
                                            "reference": f"{server.base}/ServiceRequest/notified-1"
                                        },
                                    },
                                ],
                            },
                        ],
                    }
                }
            ],
        }
        answer = httpx.post(
            f"http://127.0.0.1:{port}/notify/clinic",
            content=orjson.dumps(body),
            headers={"Authorization": f"Bearer {SECRET}"},
            timeout=10,
        )
        assert answer.status_code == 200
        assert server.blocked.wait(60), "the worker never fetched the focus"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
        server.release.set()
    assert _statuses(url) == ["pending"]  # answered, not processed: still queued
    assert f"{IDENTIFIER_SYSTEM}|clinic/ServiceRequest/notified-1" not in server.tasks
    server.reset_faults()
    second = _listen(config)
    try:
        assert _processed(port, 1) == 1  # the queued notification, once the restart caught up
        assert _statuses(url) == ["done"]
        assert f"{IDENTIFIER_SYSTEM}|clinic/ServiceRequest/notified-1" in server.tasks
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
    tasks = [k for k in server.tasks if k.endswith("/notified-1")]
    assert len(tasks) == 1
