"""Load the bundled sample data (Bulk NDJSON) into a FHIR server, for local development with HAPI FHIR.

    python docker/load_sample_data.py http://hapi:8080/fhir [connector/demo/data]

Each resource is written with `PUT [base]/[type]/[id]` inside `batch` Bundles, so ids (and the references
between the sample resources) are kept and a second load changes nothing. Directory resources go first.
It waits for the server's `/metadata` first: in docker compose the loader starts before HAPI is ready.
Prints counts only.
"""

from __future__ import annotations

import gzip
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

#: Referenced resources before the resources that reference them.
ORDER = (
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "Coverage",
    "ServiceRequest",
    "Appointment",
    "Encounter",
    "CoverageEligibilityResponse",
    "Claim",
    "ClaimResponse",
    "ExplanationOfBenefit",
)
BATCH = 100
DEFAULT_DATA = Path(__file__).resolve().parent.parent / "connector" / "demo" / "data"


def _rank(path: Path) -> tuple[int, str]:
    rt = path.name.split(".", 1)[0]
    return (ORDER.index(rt) if rt in ORDER else len(ORDER), path.name)


def resources(folder: Path) -> Iterator[dict[str, Any]]:
    """Every resource of the folder's `*.ndjson[.gz]` files, in reference order."""
    files = sorted((p for p in folder.iterdir() if p.name.endswith((".ndjson", ".ndjson.gz"))), key=_rank)
    for path in files:
        opener: Any = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as stream:
            for line in stream:
                if line.strip():
                    yield orjson.loads(line)


def batch_bundle(chunk: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
            }
            for r in chunk
        ],
    }


def wait_for_server(client: httpx.Client, base: str, timeout: float, sleep: Any = time.sleep) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.get(f"{base}/metadata").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() >= deadline:
            raise SystemExit(f"{base}/metadata did not answer within {timeout:.0f}s")
        sleep(5)


def load(
    base: str, folder: Path, *, client: httpx.Client, wait_seconds: float = 300, sleep: Any = time.sleep
) -> dict[str, int]:
    """PUT every resource; returns {"loaded": n, "failed": m}. Failed entries are counted, not retried."""
    base = base.rstrip("/")
    wait_for_server(client, base, wait_seconds, sleep)
    counts = {"loaded": 0, "failed": 0}
    chunk: list[dict[str, Any]] = []

    def flush() -> None:
        if not chunk:
            return
        response = client.post(
            base, content=orjson.dumps(batch_bundle(chunk)), headers={"Content-Type": "application/fhir+json"}
        )
        response.raise_for_status()
        for entry in response.json().get("entry") or []:
            status = str((entry.get("response") or {}).get("status", ""))
            counts["loaded" if status[:1] == "2" else "failed"] += 1
        chunk.clear()

    for resource in resources(folder):
        chunk.append(resource)
        if len(chunk) >= BATCH:
            flush()
    flush()
    return counts


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    folder = Path(argv[1]) if len(argv) > 1 else DEFAULT_DATA
    with httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0)) as client:
        counts = load(argv[0], folder, client=client)
    print(f"loaded {counts['loaded']} resource(s), {counts['failed']} failed")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
