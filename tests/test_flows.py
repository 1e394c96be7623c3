"""Prefect flows: one failing endpoint does not stop the others; the run ends Failed with the reason."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine


@pytest.fixture(scope="module")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def service_request(n: int) -> dict:
    return {
        "resourceType": "ServiceRequest",
        "id": f"sr{n}",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "meta": {"lastUpdated": f"2026-11-0{n}T10:00:00Z"},
    }


def test_sync_all_runs_every_endpoint_and_fails_with_the_reason(
    prefect_harness: None, tmp_path: Path, warehouse_url: str, engine: Engine
) -> None:
    from flows.sync import sync_all

    good = tmp_path / "good"
    good.mkdir()
    with gzip.open(good / "ServiceRequest.ndjson.gz", "wb") as fh:
        fh.write(b"\n".join(orjson.dumps(service_request(n)) for n in (1, 2, 3)))
    config = tmp_path / "connector.toml"
    config.write_text(
        f'[warehouse]\nurl = "{warehouse_url}"\n'
        '[[endpoints]]\nname = "broken"\nndjson_dir = "missing-folder"\nresources = ["ServiceRequest"]\n'
        '[[endpoints]]\nname = "good"\nndjson_dir = "good"\nresources = ["ServiceRequest", "Claim"]\n'
    )
    flow_state = asyncio.run(sync_all(str(config), run_id="run-x", return_state=True))
    assert flow_state.is_failed()
    assert "broken" in (flow_state.message or "") or "broken" in str(
        flow_state.result(raise_on_failure=False)
    )
    with engine.connect() as conn:
        runs = conn.execute(
            sa.text(
                "select endpoint, resource_type, status, loaded from sync_run where run_id = 'run-x' "
                "order by endpoint, resource_type, id"
            )
        ).all()
        referrals = conn.execute(
            sa.text("select count(*) from referral where endpoint = 'good'")
        ).scalar_one()
    assert referrals == 3
    # The broken endpoint's stream is retried by Prefect only for transient errors: a missing folder is not.
    assert [tuple(r) for r in runs] == [
        ("broken", "ServiceRequest", "failed", 0),
        ("good", "Claim", "succeeded", 0),
        ("good", "ServiceRequest", "succeeded", 3),
    ]
