"""Incremental runs skip resources stored exactly so already: counted as fetched, never mapped again."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

import mappings.registry
from connector.config import EndpointSettings
from connector.streams import Plan
from connector.sync.pipeline import StreamResult, run_stream
from connector.warehouse import state
from tests.pages import pages_of

SYNCED_AT = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
PLAN = Plan("ServiceRequest", "last-updated", None, "test")
ENDPOINT = EndpointSettings(name="clinic", base_url="https://emr.test/fhir")


def referral(n: int, updated: str, status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": f"sr{n}",
        "meta": {"versionId": "1", "lastUpdated": updated},
        "status": status,
        "intent": "order",
        "subject": {"reference": f"Patient/p{n}"},
        "authoredOn": "2026-10-01",
    }


def sync(engine: Engine, resources: list[dict[str, Any]], *, skip_unchanged: bool) -> StreamResult:
    return asyncio.run(
        run_stream(
            engine=engine,
            endpoint=ENDPOINT,
            plan=PLAN,
            pages=pages_of(resources, 3),
            run_id="r",
            synced_at=SYNCED_AT,
            batch_size=50,
            skip_unchanged=skip_unchanged,
        )
    )


def test_an_unchanged_resource_is_not_validated_mapped_or_written_again(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = [referral(n, f"2026-11-01T10:00:0{n}Z") for n in range(7)]
    assert sync(engine, first, skip_unchanged=True).loaded == 7  # nothing stored yet: all mapped

    mapped: list[str] = []
    real = mappings.registry.map_resource

    def counting(resource: dict[str, Any], ctx: Any) -> Any:
        mapped.append(resource["id"])
        return real(resource, ctx)

    monkeypatch.setattr("connector.sync.pipeline.map_resource", counting)
    again = copy.deepcopy(first)
    again[2]["status"] = "completed"  # a real change, same lastUpdated: the hash tells
    again.append(referral(7, "2026-11-01T10:00:09Z"))
    result = sync(engine, again, skip_unchanged=True)
    assert result.status == "succeeded"
    assert (result.fetched, result.loaded) == (8, 2)
    assert sorted(mapped) == ["sr2", "sr7"]
    assert state.get_watermark(engine, "clinic", "ServiceRequest")[0] == "2026-11-01T10:00:09Z"
    with engine.connect() as conn:
        statuses: dict[str, str] = dict(
            conn.execute(sa.text("select resource_id, status from referral")).all()
        )
    assert statuses["sr2"] == "completed"
    assert len(statuses) == 8


def test_without_skipping_everything_is_mapped_again(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    first = [referral(n, f"2026-11-01T10:00:0{n}Z") for n in range(4)]
    sync(engine, first, skip_unchanged=False)
    calls: list[str] = []
    real = mappings.registry.map_resource

    def counted(resource: Any, ctx: Any) -> Any:
        calls.append(resource["id"])
        return real(resource, ctx)

    monkeypatch.setattr("connector.sync.pipeline.map_resource", counted)
    result = sync(engine, first, skip_unchanged=False)
    assert (result.fetched, result.loaded) == (4, 0)
    assert len(calls) == 4


def test_a_deleted_resource_sent_again_is_not_skipped(engine: Engine) -> None:
    resources = [referral(1, "2026-11-01T10:00:01Z")]
    sync(engine, resources, skip_unchanged=True)
    erased = [referral(1, "2026-11-01T10:00:02Z", status="entered-in-error")]
    sync(engine, erased, skip_unchanged=True)
    back = [referral(1, "2026-11-01T10:00:03Z")]
    assert sync(engine, back, skip_unchanged=True).loaded == 1
