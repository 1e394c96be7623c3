"""The NDJSON folder source: files matched by name, gzip, page size, bad lines kept for dead letters."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path

import orjson
import pytest

from connector.errors import ConfigError, SourceFileError
from connector.fhir.ndjson import NdjsonPage, NdjsonSource


def sr(n: int) -> dict:
    return {
        "resourceType": "ServiceRequest",
        "id": f"sr-{n}",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
    }


def collect(source: NdjsonSource, resource_type: str) -> list[NdjsonPage]:
    async def run() -> list[NdjsonPage]:
        return [page async for page in source.pages(resource_type)]

    return asyncio.run(run())


def test_pages_span_plain_and_gzip_files(tmp_path: Path) -> None:
    (tmp_path / "ServiceRequest.000.ndjson").write_bytes(b"\n".join(orjson.dumps(sr(i)) for i in range(5)))
    with gzip.open(tmp_path / "ServiceRequest.001.ndjson.gz", "wb") as fh:
        fh.write(b"\n".join(orjson.dumps(sr(i)) for i in range(5, 12)) + b"\n\n")
    (tmp_path / "Coverage.ndjson").write_bytes(orjson.dumps({"resourceType": "Coverage", "id": "c1"}))
    pages = collect(NdjsonSource(tmp_path, page_size=4), "ServiceRequest")
    assert [len(p.resources) for p in pages] == [4, 4, 4]
    assert [p.number for p in pages] == [1, 2, 3]
    assert [r["id"] for p in pages for r in p.resources] == [f"sr-{i}" for i in range(12)]
    assert all(not p.bad_lines and not p.included for p in pages)


def test_mixed_file_is_filtered_by_resource_type(tmp_path: Path) -> None:
    lines = [sr(1), {"resourceType": "Coverage", "id": "c1"}, sr(2)]
    (tmp_path / "export.ndjson").write_bytes(b"\n".join(orjson.dumps(x) for x in lines))
    source = NdjsonSource(tmp_path, page_size=10)
    assert [r["id"] for p in collect(source, "ServiceRequest") for r in p.resources] == ["sr-1", "sr-2"]
    assert [r["id"] for p in collect(source, "Coverage") for r in p.resources] == ["c1"]


def test_bad_lines_are_reported_not_dropped(tmp_path: Path) -> None:
    (tmp_path / "ServiceRequest.ndjson").write_bytes(
        orjson.dumps(sr(1)) + b'\n{"resourceType": "ServiceRequest", "id": \n[1, 2]\n'
    )
    pages = collect(NdjsonSource(tmp_path, page_size=10), "ServiceRequest")
    assert [r["id"] for r in pages[0].resources] == ["sr-1"]
    assert [b.location for b in pages[0].bad_lines] == ["ServiceRequest.ndjson:2", "ServiceRequest.ndjson:3"]
    assert "not valid JSON" in pages[0].bad_lines[0].error
    assert "not a JSON object" in pages[0].bad_lines[1].error


def test_empty_stream_yields_one_empty_page(tmp_path: Path) -> None:
    pages = collect(NdjsonSource(tmp_path, page_size=10), "Claim")
    assert len(pages) == 1
    assert pages[0].resources == []


def test_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a folder"):
        collect(NdjsonSource(tmp_path / "nope", page_size=10), "Claim")


def test_a_truncated_gzip_file_is_an_error_naming_the_file_after_the_lines_before_it(tmp_path: Path) -> None:
    body = gzip.compress(b"".join(orjson.dumps(sr(n)) + b"\n" for n in range(5000)))
    (tmp_path / "ServiceRequest.ndjson.gz").write_bytes(body[: len(body) // 2])
    source = NdjsonSource(tmp_path, page_size=5)
    seen: list[str] = []

    async def read() -> None:
        async for page in source.pages("ServiceRequest"):
            seen.extend(r["id"] for r in page.resources)

    with pytest.raises(SourceFileError, match=r"ServiceRequest\.ndjson\.gz cannot be read past line \d+"):
        asyncio.run(read())
    assert 0 < len(seen) < 5000


COV = {"resourceType": "Coverage", "id": "c1", "status": "active"}


def _eight_lines() -> bytes:
    """The file of the report: 3 good ServiceRequests, 3 broken lines, `{"hello":"world"}`, a Coverage."""
    lines = [
        orjson.dumps(sr(1)),
        b'{"resourceType": "ServiceRequest", "id": ',
        orjson.dumps(sr(2)),
        b"[1, 2]",
        b'"just a string"',
        orjson.dumps({"hello": "world"}),
        orjson.dumps(COV),
        orjson.dumps(sr(3)),
    ]
    return b"\n".join(lines) + b"\n"


def test_every_line_of_a_types_file_is_a_resource_an_included_one_or_a_dead_letter(tmp_path: Path) -> None:
    (tmp_path / "ServiceRequest.ndjson").write_bytes(_eight_lines())
    source = NdjsonSource(tmp_path, page_size=100, configured=["ServiceRequest", "Coverage"])
    (page,) = collect(source, "ServiceRequest")
    assert [r["id"] for r in page.resources] == ["sr-1", "sr-2", "sr-3"]
    assert page.included == [COV]  # loaded as a Coverage, the endpoint syncs that type
    assert [(b.location, b.error.split(": ", 1)[1]) for b in page.bad_lines] == [
        ("ServiceRequest.ndjson:2", "not valid JSON (unexpected end of data)"),
        ("ServiceRequest.ndjson:4", "not a JSON object"),
        ("ServiceRequest.ndjson:5", "not a JSON object"),
        ("ServiceRequest.ndjson:6", "no resourceType"),
    ]
    assert len(page.resources) + len(page.included) + len(page.bad_lines) == 8
    # The Coverage stream does not read it again.
    assert collect(source, "Coverage")[0].resources == []


def test_a_line_of_a_type_not_synced_is_a_dead_letter_naming_the_type(tmp_path: Path) -> None:
    (tmp_path / "ServiceRequest.ndjson").write_bytes(_eight_lines())
    (page,) = collect(NdjsonSource(tmp_path, page_size=100, configured=["ServiceRequest"]), "ServiceRequest")
    assert page.included == []
    assert page.bad_lines[-1].location == "ServiceRequest.ndjson:7"
    assert "a Coverage, a type this endpoint does not sync" in page.bad_lines[-1].error


def test_lines_of_a_shared_file_and_of_a_file_no_stream_reads_are_counted_once(tmp_path: Path) -> None:
    mixed = [sr(1), COV, {"no": "type"}, {"resourceType": "Patient", "id": "p1"}]
    (tmp_path / "export.ndjson").write_bytes(b"\n".join(orjson.dumps(x) for x in mixed) + b"\nnot json\n")
    (tmp_path / "Patient.ndjson").write_bytes(orjson.dumps({"resourceType": "Patient", "id": "p2"}) + b"\n")
    source = NdjsonSource(tmp_path, page_size=100, configured=["Coverage", "ServiceRequest"])
    (coverage,) = collect(source, "Coverage")
    (requests,) = collect(source, "ServiceRequest")
    assert [r["id"] for r in coverage.resources] == ["c1"]
    assert [r["id"] for r in requests.resources] == ["sr-1"]
    # The first configured type answers for the lines nobody loads: once, with where they are.
    assert sorted(b.location for b in coverage.bad_lines) == [
        "Patient.ndjson:1",
        "export.ndjson:3",
        "export.ndjson:4",
        "export.ndjson:5",
    ]
    assert requests.bad_lines == []


def test_an_export_file_keeps_lines_of_other_types_for_the_manifest_count(tmp_path: Path) -> None:
    (tmp_path / "ServiceRequest.ndjson").write_bytes(_eight_lines())
    (page,) = collect(NdjsonSource(tmp_path, page_size=100), "ServiceRequest")
    assert len(page.resources) == 3
    assert page.included == []
    assert [b.location for b in page.bad_lines] == ["ServiceRequest.ndjson:2"] + [
        f"ServiceRequest.ndjson:{n}" for n in (4, 5)
    ]
