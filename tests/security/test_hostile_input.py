"""Hostile and broken resources: each is a dead letter (or rejected) with a clear reason; nothing crashes.

Through the pure `map_resources` and end to end through `run_stream` (respx server, real warehouse on
SQLite and PostgreSQL): huge strings, deep nesting, wrong types, unknown types, duplicate ids, and ids
written to break SQL or paths. The tables must still be there afterwards: SQL is parameterised.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
import respx
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.config import EndpointSettings, RetrySettings
from connector.errors import MappingError
from connector.fhir.client import FhirClient
from connector.streams import Plan
from connector.sync.pipeline import StreamResult, map_resources, run_stream
from mappings.registry import map_resource
from mappings.types import MapContext
from mappings.validate import validate

BASE = "https://emr.test/fhir"
SYNCED_AT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
PLAN = Plan("ServiceRequest", "last-updated", None, "test")
TEN_MB = "A" * (10 * 1024 * 1024)
SQL_ID = "x'); DROP TABLE referral;--"
PATH_ID = "../../etc/passwd"


def sr(rid: str = "sr1", updated: str = "2026-11-01T10:00:00Z", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": rid,
        "meta": {"versionId": "1", "lastUpdated": updated},
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "authoredOn": "2026-10-01",
        **extra,
    }


def nested_extension(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"url": "http://example.org/leaf", "valueString": "x"}
    for _ in range(depth):
        node = {"url": "http://example.org/nest", "extension": [node]}
    return node


def nested_contained(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"resourceType": "Basic", "id": "b0", "code": {"text": "x"}}
    for n in range(1, depth):
        node = {"resourceType": "Basic", "id": f"b{n}", "code": {"text": "x"}, "contained": [node]}
    return node


def hostile() -> dict[str, dict[str, Any] | Any]:
    """Name -> a resource that must become a dead letter, never a row."""
    return {
        "huge-string-in-unknown-element": sr("huge1", note=[{"text": "ok"}], bogusElement=TEN_MB),
        "huge-id": sr(TEN_MB),
        "deep-extension": sr("deep1", extension=[nested_extension(200)]),
        "deep-contained": sr("deep2", contained=[nested_contained(200)]),
        "status-is-a-list": sr("wrong1", status=["active"]),
        "status-is-an-object": sr("wrong2", status={"code": "active"}),
        "subject-is-a-string": sr("wrong3", subject="Patient/p1"),
        "authored-is-a-number": sr("wrong4", authoredOn=20261001),
        "id-is-a-number": {**sr(), "id": 12345},
        "sql-id": sr(SQL_ID),
        "path-id": sr(PATH_ID),
        "newline-key": sr("key1", **{"bad\nkey": "x"}),
        "not-an-object": ["ServiceRequest"],
        "contained-without-type": sr("ct1", contained=[{"resourceType": "", "id": "c"}]),
    }


# ------------------------------------------------------------------------------- pure: validate / map


def test_fixed_crashes_in_validate_are_mapping_errors() -> None:
    # Regressions found by the fuzzer (tests/security/test_mapper_fuzz.py): each used to escape as a
    # TypeError / KeyError, or echo an input key (with its newline) into the one-line reason.
    cases = {
        "unhashable status": sr(status=[]),
        "contained resourceType ''": sr(contained=[{"resourceType": "", "id": "c"}]),
        "newline in an unknown key": sr(meta={"\n": None}),
    }
    for name, resource in cases.items():
        with pytest.raises(MappingError) as caught:
            validate(resource)
        assert "\n" not in str(caught.value), name
        assert str(caught.value).startswith("ServiceRequest/sr1: invalid ServiceRequest:"), name


def test_error_locations_do_not_echo_unknown_keys() -> None:
    with pytest.raises(MappingError) as caught:
        validate(sr(**{"Jane Doe 1970-01-01": "x", "k" * 1000: "y"}))
    text = str(caught.value)
    assert "Jane Doe" not in text
    assert "k" * 100 not in text
    assert "<invalid name>" in text


@pytest.mark.parametrize("name", sorted(hostile()))
def test_each_hostile_resource_is_a_reject_with_a_short_clear_reason(name: str) -> None:
    resource = hostile()[name]
    page = map_resources("clinic", "ServiceRequest", [resource, sr("fine")], SYNCED_AT)
    assert [r["resource_id"] for r in page.raw] == ["fine"]
    assert len(page.rejects) == 1
    reason = page.rejects[0].error
    assert "\n" not in reason
    assert 0 < len(reason) < 1000
    assert TEN_MB[:100] not in reason
    assert SQL_ID not in reason
    assert PATH_ID not in reason
    # The dead letter's resource_id is bounded (a 10 MB id is cut to 64 characters).
    assert page.rejects[0].resource_id is None or len(page.rejects[0].resource_id) <= 64


def test_hostile_id_reasons_say_the_id_is_invalid() -> None:
    for rid in (SQL_ID, PATH_ID):
        with pytest.raises(MappingError, match=r"ServiceRequest/<invalid id>: invalid ServiceRequest: id"):
            map_resource(sr(rid), MapContext("clinic", SYNCED_AT))


def test_unknown_resource_types_are_rejected() -> None:
    ctx = MapContext("clinic", SYNCED_AT)
    for rtype in ("NotAThing", "../Patient", "Patient'; --", "", TEN_MB[:70]):
        with pytest.raises(MappingError, match=r"(unknown|missing) resourceType"):
            map_resource({"resourceType": rtype, "id": "x"}, ctx)
    # On a stream, a resource of another type is a dead letter too.
    page = map_resources("clinic", "ServiceRequest", [{"resourceType": "NotAThing", "id": "x"}], SYNCED_AT)
    assert page.raw == []
    assert "expected a ServiceRequest" in page.rejects[0].error


def test_a_ten_megabyte_string_in_a_valid_element_is_kept_not_crashed_on() -> None:
    # A long note is valid FHIR: it is loaded (the raw payload keeps it), the mapper does not choke.
    page = map_resources("clinic", "ServiceRequest", [sr("big", note=[{"text": TEN_MB}])], SYNCED_AT)
    assert [r["resource_id"] for r in page.raw] == ["big"]
    assert page.rejects == []


# ------------------------------------------------------------------------- end to end: run_stream


def _endpoint() -> EndpointSettings:
    retry = RetrySettings(max_attempts=1, initial_backoff_seconds=0, max_backoff_seconds=0)
    return EndpointSettings(name="clinic", base_url=BASE, page_size=50, retry=retry)


async def _no_wait(_: float) -> None:
    return None


def _bundle(resources: list[Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }


def _run(engine: Engine, resources: list[Any]) -> StreamResult:
    ep = _endpoint()

    async def go() -> StreamResult:
        async with FhirClient(ep, sleep=_no_wait) as client:
            return await run_stream(
                engine=engine,
                endpoint=ep,
                plan=PLAN,
                pages=client.search("ServiceRequest", [("_sort", "_lastUpdated")]),
                run_id="hostile",
                synced_at=SYNCED_AT,
                batch_size=100,
            )

    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/ServiceRequest").respond(json=_bundle(resources))
        return asyncio.run(go())


def _rows(engine: Engine, sql: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql)).all()]


def test_hostile_page_loads_the_good_and_dead_letters_the_rest(engine: Engine) -> None:
    bad = hostile()
    page = [*bad.values(), sr("good1"), sr("good2", "2026-11-02T10:00:00Z")]
    result = _run(engine, page)
    assert result.status == "succeeded", result.error
    # An entry whose resource is not a JSON object is skipped by the page reader (nothing to load).
    assert (result.fetched, result.loaded, result.rejected) == (len(page) - 1, 2, len(bad) - 1)
    tables = set(sa.inspect(engine).get_table_names())
    assert {"referral", "raw_resource", "dead_letter", "sync_state"} <= tables
    assert _rows(engine, "select resource_id from referral order by resource_id") == [("good1",), ("good2",)]
    letters = _rows(engine, "select resource_id, error from dead_letter")
    assert len(letters) == len(bad) - 1
    ids = {rid for rid, _ in letters}
    # Stored as data, verbatim (bounded to 64 characters), never run as SQL or used as a path.
    assert {SQL_ID, PATH_ID, TEN_MB[:64]} <= ids
    assert all("\n" not in error and len(error) < 1000 for _, error in letters)
    deep = _rows(engine, "select payload from dead_letter where resource_id = 'deep1'")
    assert len(deep) == 1
    assert "nested more than" in str(deep[0][0])
    assert _rows(engine, "select watermark from sync_state where resource_type = 'ServiceRequest'") == [
        ("2026-11-02T10:00:00Z",)
    ]


def test_duplicate_ids_in_one_page_keep_one_row_the_newest_version(engine: Engine) -> None:
    older = sr("dup", "2026-11-01T10:00:00Z", priority="routine")
    newer = {
        **sr("dup", "2026-11-01T12:00:00Z", priority="urgent"),
        "meta": {"versionId": "2", "lastUpdated": "2026-11-01T12:00:00Z"},
    }
    for order in ([older, newer], [newer, older]):
        result = _run(engine, order)
        assert result.status == "succeeded", result.error
        assert result.rejected == 0
        assert _rows(engine, "select resource_id, priority from referral") == [("dup", "urgent")]
        assert _rows(engine, "select resource_id, version_id from raw_resource") == [("dup", "2")]


def test_a_huge_valid_string_is_loaded_and_kept_in_the_raw_payload(engine: Engine) -> None:
    result = _run(engine, [sr("big", note=[{"text": TEN_MB}])])
    assert (result.status, result.loaded, result.rejected) == ("succeeded", 1, 0), result.error
    assert _rows(engine, "select resource_id from referral") == [("big",)]
