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
