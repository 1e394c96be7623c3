"""Deletions: a resource deleted on the server (history DELETE, Bulk `deleted`, entered-in-error) is marked
deleted, leaves the mapped tables and views, and is not resurrected by an older copy (both databases)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import respx
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.config import EndpointSettings
from connector.fhir.client import FhirClient
from connector.fhir.history import deleted_since, deletions_in, supports_history
from connector.sync.pipeline import map_resources
from connector.warehouse.bulk_state import mark_deleted
from connector.warehouse.writer import PageWrite, write_page

BASE = "https://emr.test/fhir"
SYNCED = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def sr(rid: str, updated: str, **kw: Any) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": rid,
        "meta": {"versionId": "1", "lastUpdated": updated},
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "authoredOn": "2026-11-02",
    } | kw


def load(engine: Engine, *resources: dict[str, Any]) -> None:
    mapped = map_resources("emr", "ServiceRequest", list(resources), SYNCED)
    assert not mapped.rejects
    write_page(
        engine,
        PageWrite("emr", "ServiceRequest", raw=mapped.raw, mapped=mapped.mapped, deletions=mapped.deletions),
    )


def state(engine: Engine) -> tuple[list[str], dict[str, tuple[bool, bool]], int]:
    with engine.connect() as conn:
        referrals = sorted(conn.execute(sa.text("SELECT resource_id FROM referral")).scalars())
        raw = {
            r[0]: (bool(r[1]), r[2] is not None)
            for r in conn.execute(sa.text("SELECT resource_id, deleted, deleted_at FROM raw_resource"))
        }
        weekly = conn.execute(
            sa.text("SELECT COALESCE(SUM(referrals), 0) FROM v_referrals_weekly")
        ).scalar_one()
    return referrals, raw, int(weekly)


def test_deletion_removes_mapped_rows_and_an_older_copy_does_not_return(engine: Engine) -> None:
    load(engine, sr("a", "2026-11-02T10:00:00Z"), sr("b", "2026-11-02T10:00:00Z"))
    assert state(engine) == (["a", "b"], {"a": (False, False), "b": (False, False)}, 2)
    marked = mark_deleted(engine, "emr", [("ServiceRequest", "a")], datetime(2026, 11, 3, tzinfo=UTC))
    assert marked == 1
    assert state(engine) == (["b"], {"a": (True, True), "b": (False, False)}, 1)
    # A late page still carrying the version from before the deletion changes nothing.
    load(engine, sr("a", "2026-11-02T10:00:00Z"))
    assert state(engine) == (["b"], {"a": (True, True), "b": (False, False)}, 1)
    # A newer version (created again after the deletion) comes back.
    load(engine, sr("a", "2026-11-04T10:00:00Z"))
    assert state(engine) == (["a", "b"], {"a": (False, False), "b": (False, False)}, 2)


def test_a_deletion_older_than_the_stored_version_is_ignored(engine: Engine) -> None:
    load(engine, sr("a", "2026-11-05T10:00:00Z"))
    assert mark_deleted(engine, "emr", [("ServiceRequest", "a")], datetime(2026, 11, 3, tzinfo=UTC)) == 0
    assert state(engine)[0] == ["a"]


def test_deletion_of_a_resource_never_seen_leaves_a_tombstone(engine: Engine) -> None:
    mark_deleted(engine, "emr", [("ServiceRequest", "ghost")], datetime(2026, 11, 3, tzinfo=UTC))
    load(engine, sr("ghost", "2026-11-01T00:00:00Z"))  # an older copy from a slow page
    assert state(engine) == ([], {"ghost": (True, True)}, 0)


def test_entered_in_error_leaves_the_views(engine: Engine) -> None:
    load(engine, sr("a", "2026-11-02T10:00:00Z"), sr("b", "2026-11-02T10:00:00Z"))
    load(engine, sr("a", "2026-11-06T10:00:00Z", status="entered-in-error"))
    assert state(engine) == (["b"], {"a": (True, True), "b": (False, False)}, 1)
    with engine.connect() as conn:
        payload = conn.execute(
            sa.text("SELECT payload FROM raw_resource WHERE resource_id = 'a'")
        ).scalar_one()
    # The last version is kept for the record (SQLite hands JSON back as text).
    assert (orjson.loads(payload) if isinstance(payload, str) else payload)["status"] == "entered-in-error"


def history_bundle(entries: list[dict[str, Any]], next_url: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "history",
        "entry": entries,
        "meta": {"lastUpdated": "2026-11-10T00:00:00Z"},
    }
    if next_url:
        body["link"] = [{"relation": "next", "url": next_url}]
    return body


def deleted_entry(rid: str, when: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"request": {"method": "DELETE", "url": f"ServiceRequest/{rid}"}}
    if when:
        entry["response"] = {"status": "204", "lastModified": when}
    return entry


def test_history_deletions_are_read_across_pages() -> None:
    endpoint = EndpointSettings(name="emr", base_url=BASE)
    updated = {
        "resource": sr("kept", "2026-11-08T00:00:00Z"),
        "request": {"method": "PUT", "url": "ServiceRequest/kept"},
    }
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        # The more specific route first: respx takes the first route that matches.
        mock.get("/ServiceRequest/_history", params={"page": "2"}).respond(
            json=history_bundle([deleted_entry("x2", None)])
        )
        first = mock.get("/ServiceRequest/_history").respond(
            json=history_bundle(
                [deleted_entry("x1", "2026-11-09T08:00:00.000Z"), updated],
                f"{BASE}/ServiceRequest/_history?page=2",
            )
        )

        async def go() -> list[tuple[str, str, datetime]]:
            async with FhirClient(endpoint) as client:
                return await deleted_since(client, "ServiceRequest", datetime(2026, 11, 8, 9, 30, tzinfo=UTC))

        found = asyncio.run(go())
    assert first.calls[0].request.url.params["_since"] == "2026-11-08T09:30:00.000Z"
    assert found == [
        ("ServiceRequest", "x1", datetime(2026, 11, 9, 8, 0, tzinfo=UTC)),
        ("ServiceRequest", "x2", datetime(2026, 11, 10, 0, 0, tzinfo=UTC)),  # the Bundle's time
    ]


def test_history_parsing_and_capability() -> None:
    bundle = history_bundle(
        [
            {
                "request": {"method": "DELETE", "url": "ServiceRequest/a/_history/3"},
                "response": {"lastModified": "2026-11-09T00:00:00Z"},
            },
            {
                "request": {"method": "DELETE", "url": "Coverage/c"},
                "response": {"lastModified": "2026-11-09T00:00:00Z"},
            },
        ]
    )
    assert [d[:2] for d in deletions_in(bundle, "ServiceRequest")] == [("ServiceRequest", "a")]
    capability = {
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {"type": "ServiceRequest", "interaction": [{"code": "read"}, {"code": "history-type"}]},
                    {"type": "Coverage", "interaction": [{"code": "search-type"}]},
                ],
            }
        ]
    }
    assert supports_history(capability, "ServiceRequest") is True
    assert supports_history(capability, "Coverage") is False
    assert httpx.URL(BASE).host == "emr.test"
