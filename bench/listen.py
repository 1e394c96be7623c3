"""`python -m bench.listen [--n N] [--hogs K]`: how fast `connector listen` answers a notification.

The listener's promise is an answer well under 200 ms (athenahealth allows 2 s) because it only commits the
notification before answering. This starts the listener's app on uvicorn (a thread, a SQLite warehouse in a
temporary folder, no worker: the answers alone are measured), POSTs N id-only notifications one after
another and prints the answer times (p50, p95, max), with K CPU hogs beside it when asked.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import orjson
import uvicorn

from connector.config import parse_settings
from connector.subscriptions.app import create_app
from connector.warehouse.engine import ensure_schema, make_engine

SECRET = "bench-secret"  # noqa: S105 - the benchmark listener's own throwaway secret


def _notification(n: int) -> bytes:
    status = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "type", "valueCode": "event-notification"},
            {
                "name": "notification-event",
                "part": [
                    {"name": "event-number", "valueString": str(n)},
                    {
                        "name": "focus",
                        "valueReference": {"reference": f"https://emr.test/fhir/ServiceRequest/b{n}"},
                    },
                ],
            },
        ],
    }
    return orjson.dumps({"resourceType": "Bundle", "type": "history", "entry": [{"resource": status}]})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=200, help="notifications to send")
    parser.add_argument("--hogs", type=int, default=0, help="CPU-spinning processes beside the listener")
    args = parser.parse_args(argv)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        settings = parse_settings(
            {
                "warehouse": {"url": url},
                "endpoints": [
                    {"name": "emr", "base_url": "https://emr.test/fhir", "subscriptions": True,
                     "subscription_secret": SECRET, "resources": ["ServiceRequest"]},
                ],
            }
        )  # fmt: skip
        engine = make_engine(url)
        ensure_schema(engine)
        app = create_app(settings, engine, subscribe=False, worker=False)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
        seconds: list[float] = []
        try:
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {SECRET}"}
            ) as client:
                for n in range(args.n):
                    body = _notification(n)
                    started = time.perf_counter()
                    answer = client.post("/notify/emr", content=body)
                    seconds.append(time.perf_counter() - started)
                    assert answer.status_code == 200, answer.text
        finally:
            for hog in hogs:
                hog.kill()
            server.should_exit = True
            thread.join(10)
            engine.dispose()
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[-(-95 * len(ms) // 100) - 1]
    print(f"listen answers, {args.n} notifications, {args.hogs} hog(s): p50 {statistics.median(ms):.1f} ms, "
          f"p95 {p95:.1f} ms, max {ms[-1]:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
