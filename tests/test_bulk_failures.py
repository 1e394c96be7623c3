"""Issue 21: what the SMART Bulk Data reference server found, reproduced on a respx router.

A type whose export failed (an `error` entry naming it, a broken file, a file whose lines are not the
manifest's `count`) is a failed stream: its watermark stays, the export is forgotten for it, and the next run
exports it again while the healthy types keep their new watermark. The kick-off asks only for the types the
CapabilityStatement lists, and a 400 naming one type is retried without it.
"""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

import httpx
import orjson
import respx
from sqlalchemy.engine import Engine

from connector.config import EndpointSettings
from connector.fhir.bulk import parse_manifest
from connector.sync.bulk import failed_types, run_bulk_backfill
from connector.sync.pipeline import StreamResult
from connector.warehouse import bulk_state, state
from tests.test_bulk_sync import (
    BASE,
    FILES,
    STATUS,
    SYNCED_AT,
    TX_TIME,
    FakeTime,
    count,
    endpoint,
    manifest,
    ndjson,
    sample,
    settings_for,
)

TYPES = ("ServiceRequest", "Coverage", "Encounter")
SECOND_STATUS = f"{BASE}/bulkstatus/job-2"
SECOND_TX = "2026-11-25T07:00:00.000Z"


def run(
    engine: Engine,
    ep: EndpointSettings,
    types: tuple[str, ...] = TYPES,
    capability: dict[str, Any] | None = None,
    run_id: str = "run-1",
) -> dict[str, StreamResult]:
    fake = FakeTime()
    results = asyncio.run(
        run_bulk_backfill(
            settings_for(ep),
            ep,
            engine,
            resource_types=list(types),
            run_id=run_id,
            synced_at=SYNCED_AT,
            capability=capability,
            sleep=fake.wait,
            now=fake.clock,
        )
    )
    return {r.resource_type: r for r in results}


def smart_error(file_name: str) -> dict[str, Any]:
    """What the reference server's `some_file_generation_failed` fault writes for a failed file."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": "processing", "diagnostics": f"Failed to export {file_name}"}
        ],
    }


def capability_of(*types: str) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "fhirVersion": "4.0.1",
        "rest": [
            {
                "mode": "server",
                "resource": [{"type": t} for t in types],
                "operation": [
                    {
                        "name": "export",
                        "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
                    }
                ],
            }
        ],
    }


def test_types_the_manifest_reports_failed_keep_their_watermark_and_the_next_run_exports_them(
    engine: Engine,
) -> None:
    srs, coverages, encounters = sample("ServiceRequest", 3), sample("Coverage", 2), sample("Encounter", 4)
    ep = endpoint(resources=list(TYPES))
    with respx.mock(assert_all_called=True) as mock:
        mock.get(f"{BASE}/$export").respond(202, headers={"Content-Location": STATUS})
        mock.get(STATUS).respond(
            200,
            json=manifest(
                [("ServiceRequest", f"{FILES}/1.ServiceRequest.ndjson")],
                # As the reference server writes them: type OperationOutcome, the failed file in the name.
                error=[
                    {"type": "OperationOutcome", "url": f"{FILES}/err/2.Coverage.ndjson", "count": 2},
                    {"type": "OperationOutcome", "url": f"{FILES}/err/3.Encounter.ndjson", "count": 4},
                ],
            ),
        )
        mock.get(f"{FILES}/1.ServiceRequest.ndjson").respond(200, content=ndjson(srs))
        mock.get(f"{FILES}/err/2.Coverage.ndjson").respond(
            200, content=ndjson([smart_error("2.Coverage.ndjson")])
        )
        mock.get(f"{FILES}/err/3.Encounter.ndjson").respond(
            200, content=ndjson([smart_error("3.Encounter.ndjson")])
        )
        delete = mock.delete(STATUS).respond(202)
        first = run(engine, ep)

    assert {t: r.status for t, r in first.items()} == {
        "ServiceRequest": "succeeded",
        "Coverage": "failed",
        "Encounter": "failed",
    }
    assert "Failed to export 2.Coverage.ndjson" in (first["Coverage"].error or "")
    assert "Failed to export 3.Encounter.ndjson" in (first["Encounter"].error or "")
    assert not first["Coverage"].transient
    # The failed types' watermarks did not move to the transactionTime; the healthy one's did.
    assert state.get_watermark(engine, "clinic", "ServiceRequest")[0] == TX_TIME
    assert state.get_watermark(engine, "clinic", "Coverage") == (None, None)
    assert state.get_watermark(engine, "clinic", "Encounter") == (None, None)
    # Nothing waits for the export: it is deleted once, and nothing is pending for the next run to resume.
    assert delete.call_count == 1
    assert bulk_state.pending_export(engine, "clinic") is None
    # The run log says which types failed and why.
    failed_runs = {
        r["resource_type"]: r["error"] for r in state.runs_for(engine, "run-1") if r["status"] == "failed"
    }
    assert set(failed_runs) == {"Coverage", "Encounter"}

    # The next (healthy) run exports the two failed types, and only them, and brings their resources in.
    with respx.mock(assert_all_called=True) as mock:
        kickoff = mock.get(f"{BASE}/$export").respond(202, headers={"Content-Location": SECOND_STATUS})
        mock.get(SECOND_STATUS).respond(
            200,
            json=manifest(
                [("Coverage", f"{FILES}/4.Coverage.ndjson"), ("Encounter", f"{FILES}/5.Encounter.ndjson")],
                transactionTime=SECOND_TX,
            ),
        )
        mock.get(f"{FILES}/4.Coverage.ndjson").respond(200, content=ndjson(coverages))
        mock.get(f"{FILES}/5.Encounter.ndjson").respond(200, content=ndjson(encounters))
        mock.delete(SECOND_STATUS).respond(202)
        second = run(engine, ep, types=("Coverage", "Encounter"), run_id="run-2")
    assert {t: r.status for t, r in second.items()} == {"Coverage": "succeeded", "Encounter": "succeeded"}
    assert kickoff.calls.last.request.url.params["_type"] == "Coverage,Encounter"
    assert "_since" not in kickoff.calls.last.request.url.params
    assert count(engine, "raw_resource", resource_type="Coverage") == 2
    assert count(engine, "raw_resource", resource_type="Encounter") == 4
    assert state.get_watermark(engine, "clinic", "Coverage")[0] == SECOND_TX
    # The healthy type kept the watermark of the first export.
    assert state.get_watermark(engine, "clinic", "ServiceRequest")[0] == TX_TIME


def test_a_file_whose_lines_are_not_the_manifest_count_fails_its_stream(engine: Engine) -> None:
    srs = sample("ServiceRequest", 3)
    coverage_lines = ndjson(sample("Coverage", 2)) + ndjson([smart_error("x")])  # a line of another type
    ep = endpoint()
    with respx.mock(assert_all_called=True) as mock:
        mock.get(f"{BASE}/$export").respond(202, headers={"Content-Location": STATUS})
        mock.get(STATUS).respond(
            200,
            json=manifest([])
            | {
                "output": [
                    {"type": "ServiceRequest", "url": f"{FILES}/sr.ndjson", "count": 3},
                    {"type": "Coverage", "url": f"{FILES}/cov.ndjson", "count": 3},
                ]
            },
        )
        mock.get(f"{FILES}/sr.ndjson").respond(200, content=ndjson(srs))
        mock.get(f"{FILES}/cov.ndjson").respond(200, content=coverage_lines)
        delete = mock.delete(STATUS).respond(202)
        results = run(engine, ep, types=("ServiceRequest", "Coverage"))
    assert results["ServiceRequest"].status == "succeeded"
    assert results["Coverage"].status == "failed"
    error = results["Coverage"].error or ""
    assert "/fhir/bulkfiles/cov.ndjson" in error
    assert "holds 2 Coverage line(s)" in error
    assert "count is 3" in error
    # What the file held is loaded; the stream is exported again by the next run.
    assert count(engine, "raw_resource", resource_type="Coverage") == 2
    assert state.get_watermark(engine, "clinic", "Coverage") == (None, None)
    assert bulk_state.pending_export(engine, "clinic") is None
    assert delete.call_count == 1


def test_a_truncated_gzip_file_fails_its_stream_naming_the_file(engine: Engine) -> None:
    body = gzip.compress(ndjson(sample("Coverage", 4)))
    with respx.mock(assert_all_called=True) as mock:
        mock.get(f"{BASE}/$export").respond(202, headers={"Content-Location": STATUS})
        mock.get(STATUS).respond(200, json=manifest([("Coverage", f"{FILES}/cov.ndjson.gz")]))
        mock.get(f"{FILES}/cov.ndjson.gz").respond(200, content=body[: len(body) - 12])
        mock.delete(STATUS).respond(202)
        results = run(engine, endpoint(), types=("Coverage",))
    result = results["Coverage"]
    assert result.status == "failed"
    assert "/fhir/bulkfiles/cov.ndjson.gz" in (result.error or "")
    assert "truncated" in (result.error or "")
    assert state.get_watermark(engine, "clinic", "Coverage") == (None, None)


def test_kickoff_asks_only_for_types_the_capability_statement_lists(engine: Engine) -> None:
    with respx.mock(assert_all_called=True) as mock:
        kickoff = mock.get(f"{BASE}/$export").respond(202, headers={"Content-Location": STATUS})
        mock.get(STATUS).respond(200, json=manifest([("Coverage", f"{FILES}/cov.ndjson")]))
        mock.get(f"{FILES}/cov.ndjson").respond(200, content=ndjson(sample("Coverage", 2)))
        mock.delete(STATUS).respond(202)
        results = run(
            engine,
            endpoint(),
            types=("ServiceRequest", "Coverage"),
            capability=capability_of("Coverage", "Patient"),
        )
    assert kickoff.calls.last.request.url.params["_type"] == "Coverage"
    assert results["Coverage"].status == "succeeded"
    assert results["ServiceRequest"].status == "skipped"
    assert "CapabilityStatement does not list it" in (results["ServiceRequest"].error or "")
    # Skipped, not done: no watermark, so a server that starts offering it gets it exported.
    assert state.get_watermark(engine, "clinic", "ServiceRequest") == (None, None)
    runs = {r["resource_type"]: r["status"] for r in state.runs_for(engine, "run-1")}
    assert runs == {"ServiceRequest": "skipped", "Coverage": "succeeded"}


def test_a_kickoff_refused_for_one_type_is_retried_without_it(engine: Engine) -> None:
    refusal = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "processing",
                "diagnostics": 'The requested resource type "ServiceRequest" is not available on this server',
            }
        ],
    }
    with respx.mock(assert_all_called=True) as mock:
        kickoff = mock.get(f"{BASE}/$export").mock(
            side_effect=[
                httpx.Response(400, json=refusal),
                httpx.Response(202, headers={"Content-Location": STATUS}),
            ]
        )
        mock.get(STATUS).respond(200, json=manifest([("Coverage", f"{FILES}/cov.ndjson")]))
        mock.get(f"{FILES}/cov.ndjson").respond(200, content=ndjson(sample("Coverage", 2)))
        mock.delete(STATUS).respond(202)
        # The server lists no types at all: nothing to filter on, the 400 tells.
        results = run(engine, endpoint(), types=("ServiceRequest", "Coverage"), capability=capability_of())
    assert [c.request.url.params["_type"] for c in kickoff.calls] == ["ServiceRequest,Coverage", "Coverage"]
    assert results["Coverage"].status == "succeeded"
    assert results["ServiceRequest"].status == "skipped"
    assert "not available on this server" in (results["ServiceRequest"].error or "")


def test_a_400_naming_no_requested_type_fails_the_export(engine: Engine) -> None:
    refusal = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": "bad _since"}],
    }
    with respx.mock(assert_all_called=True) as mock:
        kickoff = mock.get(f"{BASE}/$export").respond(400, json=refusal)
        results = run(engine, endpoint(), types=("ServiceRequest", "Coverage"))
    assert kickoff.call_count == 1
    assert {r.status for r in results.values()} == {"failed"}
    assert all("bad _since" in (r.error or "") for r in results.values())


def test_files_gone_send_one_delete(engine: Engine) -> None:
    with respx.mock(assert_all_called=True) as mock:
        mock.get(f"{BASE}/$export").respond(202, headers={"Content-Location": STATUS})
        mock.get(STATUS).respond(200, json=manifest([("Coverage", f"{FILES}/cov.ndjson")]))
        mock.get(f"{FILES}/cov.ndjson").respond(410)
        delete = mock.delete(STATUS).respond(202)
        results = run(engine, endpoint(), types=("Coverage",))
    assert results["Coverage"].status == "failed"
    assert results["Coverage"].transient
    assert delete.call_count == 1
    assert bulk_state.pending_export(engine, "clinic") is None


def test_an_expired_status_url_is_not_sent_a_delete(engine: Engine) -> None:
    bulk_state.save_kickoff(engine, "clinic", ["Coverage"], STATUS, SYNCED_AT)
    with respx.mock(assert_all_called=False) as mock:
        poll = mock.get(STATUS).respond(410)
        delete = mock.delete(STATUS).respond(202)
        results = run(engine, endpoint(), types=("Coverage",))
    assert poll.call_count == 1
    assert delete.call_count == 0
    assert results["Coverage"].status == "failed"
    assert bulk_state.pending_export(engine, "clinic") is None


# -- which types an error outcome fails ----------------------------------------------------------------------


def test_failed_types_reads_names_from_texts_and_the_file_name() -> None:
    types = ["Claim", "ClaimResponse", "Coverage"]
    assert failed_types(smart_error("2.Claim.ndjson"), "/files/x/2.Claim.ndjson", types) == ["Claim"]
    # A name inside another never counts: ClaimResponse is not Claim.
    outcome = {"issue": [{"severity": "fatal", "details": {"text": "ClaimResponse export aborted"}}]}
    assert failed_types(outcome, "/files/err.ndjson", types) == ["ClaimResponse"]
    located = {"issue": [{"severity": "error", "expression": ["Coverage.payor"]}]}
    assert failed_types(located, "/files/err.ndjson", types) == ["Coverage"]


def test_an_error_that_names_no_type_fails_every_stream_and_a_warning_fails_none() -> None:
    types = ["ServiceRequest", "Coverage"]
    vague = {"issue": [{"severity": "error", "code": "exception", "diagnostics": "disk full"}]}
    assert failed_types(vague, "/files/errors.ndjson", types) == types
    warning = {"issue": [{"severity": "warning", "diagnostics": "some resources were slow"}]}
    assert failed_types(warning, "/files/errors.ndjson", types) == []
    # Naming only a type that was not asked for: that type's problem, not these streams'.
    other = {"issue": [{"severity": "error", "diagnostics": "Claim/77 could not be exported"}]}
    assert failed_types(other, "/files/errors.ndjson", types) == []


def test_operation_outcomes_listed_as_output_are_read_as_errors() -> None:
    body = manifest(
        [("Coverage", f"{FILES}/cov.ndjson"), ("OperationOutcome", f"{FILES}/oo.ndjson")],
    )
    parsed = parse_manifest(orjson.dumps(body), base_url=BASE)
    assert [f.type for f in parsed.output] == ["Coverage"]
    assert [f.url for f in parsed.error] == [f"{FILES}/oo.ndjson"]
