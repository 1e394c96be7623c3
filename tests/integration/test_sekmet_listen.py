"""Push-based intake against sekmet-fhir (issue 27), on a server of this module's own.

`connector listen` runs as users run it (a subprocess with a connector.toml); it subscribes to sekmet's
R4 Backport topic for new ServiceRequests (id-only), so each create is notified and acknowledged by a Task.
Then the listener is stopped while 5 more referrals are created; sekmet gives up on them (its Subscription
goes to `error`, and it never re-sends); the restarted listener reactivates the Subscription and catches up.
The create-to-Task seconds are written to tests/integration/.listen-results for docs/subscriptions.md.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.test_sekmet import ENDPOINT, connector, query, utc
from tests.integration.test_sekmet_pushback import everything

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECRET = "listen-test-secret"
FIRST, LATER = 20, 5
#: Generous deadlines for conditions on a busy 2-core host; the tests wait for a condition, never a time.
DEADLINE = 120.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], what: str, deadline: float = DEADLINE) -> Any:
    """Poll `condition` until it is truthy (the server or the listener works in the background)."""
    end = time.monotonic() + deadline
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@dataclass
class Listening:
    fhir: httpx.Client
    base_url: str
    folder: Path
    config: Path
    url: str
    port: int
    process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "connector", "listen", "--config", str(self.config)],
            cwd=self.folder,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(self._ready, "the listener to subscribe and catch up")

    def _ready(self) -> bool:
        try:
            answer = httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2)
        except httpx.HTTPError:
            assert self.process is not None
            assert self.process.poll() is None, self._stderr()
            return False
        return bool(answer.json().get("ready"))

    def _stderr(self) -> str:
        assert self.process is not None
        return self.process.stderr.read()[-3000:] if self.process.stderr else ""

    def stop(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)

    def create_referral(self, n: int) -> dict[str, Any]:
        body = {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91251008"}]},
            "subject": {"reference": f"Patient/ls-pat-{n % 3}"},
            "authoredOn": "2026-12-08T00:00:00Z",
            "requester": {"reference": "Practitioner/ls-dr"},
        }
        created = self.fhir.post(
            "ServiceRequest", json=body, headers={"Content-Type": "application/fhir+json"}
        )
        assert created.status_code == 201, created.text
        resource: dict[str, Any] = created.json()
        return resource

    def tasks_by_focus(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for task in everything(self.fhir, "Task"):
            out.setdefault(task["focus"]["reference"].removeprefix("ServiceRequest/"), []).append(task)
        return out

    def subscription_status(self) -> str | None:
        rows = query(self.url, "select server_id from subscription_state where endpoint = :e", e=ENDPOINT)
        if not rows:
            return None
        found = self.fhir.get(f"Subscription/{rows[0][0]}").raise_for_status().json()
        status: str | None = found.get("status")
        return status


@pytest.fixture(scope="module")
def listening(own_sekmet_base_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listening]:
    folder = tmp_path_factory.mktemp("listen")
    url = f"sqlite:///{folder / 'warehouse.db'}"
    port = _free_port()
    config = folder / "connector.toml"
    config.write_text(
        f'[warehouse]\nurl = "{url}"\n\n'
        f'[listen]\nport = {port}\npublic_url = "http://127.0.0.1:{port}"\ncheck_seconds = 1\n\n'
        f'[[endpoints]]\nname = "{ENDPOINT}"\nbase_url = "{own_sekmet_base_url}"\n'
        'resources = ["ServiceRequest"]\n'
        f'subscriptions = true\nsubscription_secret = "{SECRET}"\nheartbeat_seconds = 5\n'
        'push_acknowledgments = true\nowner = "Organization/ls-practice"\ncase_summary = "off"\n'
        '[endpoints.auth]\ntype = "none"\n',
        encoding="utf-8",
    )
    config.chmod(0o600)
    with httpx.Client(base_url=own_sekmet_base_url, timeout=60) as fhir:
        run = Listening(fhir, own_sekmet_base_url, folder, config, url, port)
        run.start()
        try:
            yield run
        finally:
            if run.process is not None and run.process.poll() is None:
                run.stop()


def test_each_created_referral_is_acknowledged_once(listening: Listening) -> None:
    assert listening.subscription_status() == "active"
    created = [listening.create_referral(n) for n in range(FIRST)]
    ids = {r["id"] for r in created}
    tasks = wait_for(
        lambda: (found := listening.tasks_by_focus()) and ids <= set(found) and found,
        f"{FIRST} Tasks on the server",
    )
    assert {rid: len(tasks[rid]) for rid in ids} == dict.fromkeys(ids, 1)
    seconds = [
        (utc(tasks[r["id"]][0]["authoredOn"]) - utc(r["meta"]["lastUpdated"])).total_seconds()
        for r in created
    ]
    p50, p95 = statistics.median(seconds), sorted(seconds)[int(0.95 * len(seconds)) - 1]
    (ROOT / "tests" / "integration" / ".listen-results").write_text(
        f"created {FIRST}\nseconds_p50 {p50:.2f}\nseconds_p95 {p95:.2f}\nseconds_max {max(seconds):.2f}\n"
    )
    # The listener recorded the same latencies itself (notification -> Task).
    # (written just after the Task is sent, so it may trail the server by a moment)
    wait_for(
        lambda: (
            query(listening.url, "select count(*) from intake_latency where seconds is not null")[0][0]
            == FIRST
        ),
        "the listener's own latency rows",
    )
    status = connector("status", "--config", str(listening.config), "--json", cwd=listening.folder)
    assert status.returncode == 0, status.stderr
    (health,) = orjson.loads(status.stdout)["subscriptions"]
    assert (health["style"], health["status"], health["healthy"]) == ("topic", "active", True)
    assert health["p50_seconds"] is not None
    assert health["p95_seconds"] >= health["p50_seconds"]


def test_referrals_created_while_the_listener_is_down_are_caught_up(listening: Listening) -> None:
    listening.stop()
    missed = {listening.create_referral(100 + n)["id"] for n in range(LATER)}
    # sekmet retries for about 7 s, then puts the Subscription in `error` and drops the events.
    wait_for(lambda: listening.subscription_status() == "error", "sekmet to give up on the listener")
    listening.start()
    tasks = wait_for(
        lambda: (found := listening.tasks_by_focus()) and missed <= set(found) and found,
        "the missed referrals' Tasks",
    )
    assert all(len(tasks[rid]) == 1 for rid in missed)
    assert sum(len(t) for t in tasks.values()) == FIRST + LATER  # one per referral, never a second
    assert listening.subscription_status() == "active"  # reactivated
    reasons = query(
        listening.url, "select catch_up_reason from subscription_state where endpoint = :e", e=ENDPOINT
    )
    # The start's catch-up brought them; a later check may have caught up again (a gap, the error it found).
    assert reasons[0][0].startswith(("the listener started", "the subscription was", "a gap in the event"))


def test_a_notification_with_a_wrong_secret_is_refused(listening: Listening) -> None:
    target = f"http://127.0.0.1:{listening.port}/notify/{ENDPOINT}"
    body = {"resourceType": "Bundle", "type": "history", "entry": []}
    wrong = httpx.post(target, json=body, headers={"Authorization": "Bearer not-the-secret"}, timeout=10)
    missing = httpx.post(target, json=body, timeout=10)
    assert (wrong.status_code, missing.status_code) == (401, 401)
    assert wrong.json()["resourceType"] == "OperationOutcome"
    refused = query(listening.url, "select count(*) from notification where status = 'refused'")
    assert refused[0][0] >= 2
