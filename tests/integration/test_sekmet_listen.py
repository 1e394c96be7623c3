"""Push-based intake against sekmet-fhir (issue 27), on a server of this module's own.

`connector listen` runs as users run it (a subprocess with a connector.toml); it subscribes to sekmet's
R4 Backport topic for new ServiceRequests (id-only), so each create is notified and acknowledged by a Task.
Then the listener is stopped while 5 more referrals are created; whatever sekmet then does with the failed
deliveries, the restarted listener catches up by a search before it says it is ready.
The create-to-Task seconds are written to tests/integration/.listen-results for docs/subscriptions.md.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
from collections.abc import Iterator
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
#: The longest a test waits for the listener's work on a busy 2-core host (it waits on the work, not a time).
DEADLINE = 120.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # `listen` says "ready" on stdout once it subscribed and caught up: the test waits for that line.
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("ready"), self._stderr()

    def wait_processed(self, count: int) -> int:
        """Block until the listener processed `count` event notifications (its long-poll), or its timeout."""
        answer = httpx.get(
            f"http://127.0.0.1:{self.port}/health",
            params={"processed": str(count), "timeout": str(DEADLINE)},
            timeout=DEADLINE + 10,
        )
        processed: int = answer.json()["processed"]
        return processed

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
    # One notification per create; each is processed (written, its Task sent) before it counts.
    assert listening.wait_processed(FIRST) >= FIRST
    tasks = listening.tasks_by_focus()
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
    stored = query(listening.url, "select count(*) from intake_latency where seconds is not null")
    assert stored[0][0] == FIRST
    status = connector("status", "--config", str(listening.config), "--json", cwd=listening.folder)
    assert status.returncode == 0, status.stderr
    (health,) = orjson.loads(status.stdout)["subscriptions"]
    assert (health["style"], health["status"], health["healthy"]) == ("topic", "active", True)
    assert health["p50_seconds"] is not None
    assert health["p95_seconds"] >= health["p50_seconds"]


def test_referrals_created_while_the_listener_is_down_are_caught_up(listening: Listening) -> None:
    listening.stop()
    missed = {listening.create_referral(100 + n)["id"] for n in range(LATER)}
    # Whatever sekmet made of its failed deliveries meanwhile (it retries, then puts the Subscription in
    # `error` and drops the events), the restarted listener's catch-up searches from the watermark before it
    # says it is ready: by then the missed referrals are written and acknowledged.
    listening.start()
    tasks = listening.tasks_by_focus()
    assert missed <= set(tasks)
    assert all(len(tasks[rid]) == 1 for rid in missed)
    assert sum(len(t) for t in tasks.values()) == FIRST + LATER  # one per referral, never a second
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
