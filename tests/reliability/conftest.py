"""A fault-injecting FHIR server on 127.0.0.1 and helpers to compare warehouses.

`FaultServer` serves 300 ServiceRequests (every 50th one invalid, so dead letters are part of the picture)
as searchset pages that follow `_offset` next links, and a conditional-create Task endpoint that honours
`If-None-Exist` and counts the Tasks it holds. Faults are scripted per page: each request for page k
takes the next fault of `faults[k]` (one-shot), so "503 twice, then fine" is `["503", "503"]`.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson
import pytest
import sqlalchemy as sa

from connector.warehouse import state
from connector.warehouse.engine import make_engine

TOTAL = 300
PAGE_SIZE = 50
IDENTIFIER_SYSTEM = "urn:test:ack"
START = datetime(2026, 10, 1, tzinfo=UTC)


def updated(n: int) -> str:
    return (START + timedelta(minutes=n)).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def service_request(n: int) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": f"sr{n:03d}",
        "meta": {"versionId": "1", "lastUpdated": updated(n)},
        "status": "active" if n % 10 == 1 else "completed",  # ~30 to acknowledge
        "intent": "order",
        "subject": {"reference": f"Patient/p{n % 17}"},
        "authoredOn": "2026-09-01",
        # The referrer, who gets the case summaries.
        "requester": {"reference": "Practitioner/dr1"},
    }
    if n % 50 == 7:
        del resource["subject"]  # a dead letter
    return resource


RESOURCES = [service_request(n) for n in range(TOTAL)]
INVALID = sum(1 for r in RESOURCES if "subject" not in r)
#: Active, valid referrals: each gets exactly one acknowledgment Task.
ACKNOWLEDGEABLE = sum(1 for r in RESOURCES if "subject" in r and r["status"] == "active")


class FaultServer:
    def __init__(self) -> None:
        self.faults: dict[int, list[str]] = {}
        #: Called (in the server thread) before page k is answered: lock the database, kill a backend...
        self.before_page: dict[int, Callable[[], None]] = {}
        #: Page k's next link: "missing", "loop" (back to the page before), "gap" (an empty page first).
        self.links: dict[int, str] = {}
        self.served: Counter[str] = Counter()
        self.requests: Counter[int] = Counter()
        self.slow_seconds = 5.0
        #: Block the request for page k (or Task POST number n) until `release` is set.
        self.block_page: int | None = None
        self.block_post: int | None = None
        self.block_post_after_create = True
        self.blocked = threading.Event()
        self.release = threading.Event()
        self.tasks: dict[str, dict[str, Any]] = {}
        #: Case summaries, by identifier token, and every Task PUT (the Task milestones), in order.
        self.communications: dict[str, dict[str, Any]] = {}
        self.task_puts: list[tuple[str, str]] = []
        #: Resources served by id only (`GET ServiceRequest/<id>`), not by search: a notified referral.
        self.by_id: dict[str, dict[str, Any]] = {}
        #: Hold every read by id until `release` is set (a listener stuck fetching a notified focus).
        self.block_read = False
        #: POSTs of Tasks and Communications, counted together (`block_post` numbers them).
        self.task_posts = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset_faults(self) -> None:
        self.faults.clear()
        self.before_page.clear()
        self.links.clear()
        self.block_page = self.block_post = None
        self.block_read = False
        self.blocked.clear()
        self.release.clear()

    def forget_pushes(self) -> None:
        """An empty server again for push-back: no Task, no Communication, nothing counted."""
        self.tasks.clear()
        self.communications.clear()
        self.task_puts.clear()
        self.task_posts = 0

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ HTTP
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.get(self)

            def do_POST(self) -> None:
                fake.post(self)

            def do_PUT(self) -> None:
                fake.put(self)

        return Handler

    @staticmethod
    def send(
        h: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        content_type: str = "application/fhir+json",
        length: int | None = None,
    ) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(body)
        h.wfile.flush()

    def get(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        params = parse_qsl(parts.query, keep_blank_values=True)
        if parts.path == "/fhir/metadata":
            self.send(h, 200, orjson.dumps(capability()))
        elif parts.path == "/fhir/ServiceRequest":
            self.search(h, params)
        elif parts.path.startswith("/fhir/ServiceRequest/"):
            if self.block_read:
                self.blocked.set()
                self.release.wait(60)
                return
            by_id = self.by_id.get(parts.path.rsplit("/", 1)[1])
            if by_id is None:
                self.send(h, 404, orjson.dumps({"resourceType": "OperationOutcome"}))
            else:
                self.send(h, 200, orjson.dumps(by_id))
        elif parts.path == "/fhir/Task":
            value = dict(params).get("identifier", "")
            with self.lock:
                found = [self.tasks[value]] if value in self.tasks else []
            bundle = {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [{"resource": t} for t in found],
            }
            self.send(h, 200, orjson.dumps(bundle))
        else:
            self.send(h, 404, orjson.dumps({"resourceType": "OperationOutcome"}))

    def search(self, h: BaseHTTPRequestHandler, params: list[tuple[str, str]]) -> None:
        query = dict(params)
        items = RESOURCES
        if "_lastUpdated" in query:
            bound = query["_lastUpdated"]
            assert bound.startswith("gt"), bound
            at = datetime.fromisoformat(bound[2:])
            items = [r for r in items if datetime.fromisoformat(r["meta"]["lastUpdated"]) > at]
        if query.get("_summary") == "count":
            self.send(
                h, 200, orjson.dumps({"resourceType": "Bundle", "type": "searchset", "total": len(items)})
            )
            return
        size = int(query.get("_count", PAGE_SIZE))
        offset = int(query.get("_offset", "0"))
        number = offset // size
        rest = [(k, v) for k, v in params if k not in ("_offset", "_gap")]
        if "_gap" in query:  # the inserted empty page: no entries, a next link to the real page
            link = f"{self.base}/ServiceRequest?{urlencode([*rest, ('_offset', str(offset))])}"
            body = {
                "resourceType": "Bundle",
                "type": "searchset",
                "link": [{"relation": "next", "url": link}],
            }
            self.send(h, 200, orjson.dumps(body))
            return
        with self.lock:
            self.requests[number] += 1
            script = self.faults.get(number) or []
            fault = script.pop(0) if script else None
            hook = self.before_page.pop(number, None)
        if self.block_page == number:
            self.blocked.set()
            self.release.wait(60)
            return
        if hook is not None:
            hook()
        page = items[offset : offset + size]
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            # The server's clock when the search ran: no change since its newest resource.
            "meta": {"lastUpdated": updated(TOTAL - 1)},
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in page],
            "link": [],
        }
        mode = self.links.get(number)
        if offset + size < len(items) and mode != "missing":
            following = [*rest, ("_offset", str(offset + size))]
            if mode == "loop":  # back to the previous page, exactly as it was linked before
                following = [*rest, ("_offset", str(max(offset - size, size)))]
            elif mode == "gap":
                following.append(("_gap", "1"))
            bundle["link"].append(
                {"relation": "next", "url": f"{self.base}/ServiceRequest?{urlencode(following)}"}
            )
        data = orjson.dumps(bundle)
        if fault is None:
            with self.lock:
                self.served.update(r["id"] for r in page)
            self.send(h, 200, data)
        elif fault in ("429", "503"):
            outcome = orjson.dumps({"resourceType": "OperationOutcome", "issue": [{"diagnostics": "busy"}]})
            self.send(h, int(fault), outcome, {"Retry-After": "0"} if fault == "429" else None)
        elif fault == "slow":
            # Past the client's read timeout: it gives up and retries; this answer goes nowhere.
            self.release.wait(self.slow_seconds)
        elif fault == "reset":
            h.send_response(200)
            h.send_header("Content-Type", "application/fhir+json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            # SO_LINGER 0: close with a TCP RST in the middle of the body.
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
            h.close_connection = True
        elif fault == "truncated":
            self.send(h, 200, data[: len(data) // 3])
        elif fault == "html":
            page_html = b"<html><body><h1>Service temporarily unavailable</h1></body></html>"
            self.send(h, 200, page_html, content_type="text/html")
        else:
            raise AssertionError(f"unknown fault {fault!r}")

    def put(self, h: BaseHTTPRequestHandler) -> None:
        """Conditional update of a Task (`PUT Task?identifier=...`): a milestone of its referral's life."""
        body = orjson.loads(h.rfile.read(int(h.headers.get("Content-Length", "0"))))
        parts = urlsplit(h.path)
        key = dict(parse_qsl(parts.query)).get("identifier", "")
        with self.lock:
            old = self.tasks.get(key)
            if parts.path != "/fhir/Task" or old is None:
                self.send(h, 404, orjson.dumps({"resourceType": "OperationOutcome"}))
                return
            version = str(int(old["meta"]["versionId"]) + 1)
            self.tasks[key] = body | {"id": old["id"], "meta": {"versionId": version}}
            self.task_puts.append((key, body["status"]))
            answer = self.tasks[key]
        self.send(h, 200, orjson.dumps(answer))

    def post(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length", "0")))
        path = urlsplit(h.path).path
        if path not in ("/fhir/Task", "/fhir/Communication"):
            self.send(h, 404, orjson.dumps({"resourceType": "OperationOutcome"}))
            return
        held = self.tasks if path == "/fhir/Task" else self.communications
        task = orjson.loads(body)
        condition = h.headers.get("If-None-Exist", "")
        assert condition.startswith("identifier="), condition
        key = condition.removeprefix("identifier=")
        with self.lock:
            self.task_posts += 1
            number = self.task_posts
        block = self.block_post == number
        if block and not self.block_post_after_create:
            self.blocked.set()
            self.release.wait(60)
            return
        with self.lock:
            existing = held.get(key)
            if existing is None:
                existing = task | {"id": f"{path[6].lower()}{len(held) + 1}", "meta": {"versionId": "1"}}
                held[key] = existing
                status = 201
            else:
                status = 200
        if block:  # the resource exists now; its answer never reaches the client
            self.blocked.set()
            self.release.wait(60)
            return
        location = f"{self.base}/{path.rsplit('/', 1)[1]}/{existing['id']}/_history/1"
        self.send(h, status, orjson.dumps(existing), {"Location": location})


def capability() -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "fhirVersion": "4.0.1",
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {"type": "ServiceRequest", "searchParam": [{"name": "_lastUpdated", "type": "date"}]},
                    {
                        "type": "Task",
                        "conditionalCreate": True,
                        "conditionalUpdate": True,
                        "searchParam": [{"name": "identifier", "type": "token"}],
                    },
                    {
                        "type": "Communication",
                        "conditionalCreate": True,
                        "searchParam": [{"name": "identifier", "type": "token"}],
                    },
                ],
            }
        ],
    }


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    server = FaultServer()
    try:
        yield server
    finally:
        server.close()


def write_config(
    path: Path, warehouse: str, base: str, *, read_timeout: float = 5.0, attempts: int = 6
) -> Path:
    path.write_text(
        f'[warehouse]\nurl = "{warehouse}"\nbatch_size = 20\n'
        "[runtime]\nbackfill_windows = 1\n"
        f'[[endpoints]]\nname = "clinic"\nbase_url = "{base}"\nresources = ["ServiceRequest"]\n'
        f"page_size = {PAGE_SIZE}\noverlap_seconds = 0\npush_acknowledgments = true\n"
        f'owner = "Organization/practice"\nidentifier_system = "{IDENTIFIER_SYSTEM}"\n'
        f"[endpoints.retry]\nmax_attempts = {attempts}\ninitial_backoff_seconds = 0.01\n"
        "max_backoff_seconds = 0.05\nretry_after_cap_seconds = 0.05\n"
        f"[endpoints.timeouts]\nread = {read_timeout}\nconnect = 2\n"
    )
    return path


Snapshot = dict[str, Any]


def snapshot(url: str) -> Snapshot:
    """What a sync leaves behind, minus timestamps and attempt counters."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:

            def rows(sql: str) -> list[tuple[Any, ...]]:
                return [tuple(r) for r in conn.execute(sa.text(sql))]

            snap: dict[str, Any] = {
                "referral": rows(
                    "select resource_id, status, patient_ref from referral order by resource_id"
                ),
                "raw": rows(
                    "select resource_id, version_id, content_hash, deleted from raw_resource "
                    "order by resource_id"
                ),
                "dead_letter": rows(
                    "select resource_id, payload_hash, error, resolved_at is null from dead_letter "
                    "order by resource_id, payload_hash"
                ),
                "outbox": rows("select kind, item_key from outbox order by kind, item_key"),
            }
        snap["watermark"] = state.get_watermark(engine, "clinic", "ServiceRequest")[0]
    finally:
        engine.dispose()
    return snap


def expected_ids() -> list[str]:
    return sorted(r["id"] for r in RESOURCES if "subject" in r)
