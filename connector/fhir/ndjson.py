"""A folder of Bulk Data NDJSON files as a source of pages, read line by line.

Files are matched to a resource type by name (`ServiceRequest.ndjson`, `ServiceRequest.003.ndjson.gz`,
`ServiceRequest-part1.ndjson`); files whose name names no known type are scanned and filtered by each
line's `resourceType`, so an export written as one mixed file still works.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from connector.errors import ConfigError, SourceFileError
from connector.fhir.page import Entries

_SUFFIXES = (".ndjson", ".ndjson.gz")
_TYPE_RE = re.compile(r"^([A-Z][A-Za-z]+)(?:[.\-_].*)?$")


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that is not a JSON object: recorded as a dead letter, never silently skipped."""

    location: str
    error: str
    text: str


@dataclass(frozen=True, slots=True)
class NdjsonPage(Entries):
    """The resources of up to `page_size` lines, and the lines that are not JSON objects."""

    bad_lines: list[BadLine] = field(default_factory=list)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "the compressed file ends early (truncated)"
    return f"corrupt compressed data ({type(exc).__name__})"


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _type_of(path: Path) -> str | None:
    match = _TYPE_RE.match(_stem(path))
    return match.group(1) if match else None


class NdjsonSource:
    """Streams resources of one type from a folder of `*.ndjson` / `*.ndjson.gz` files."""

    def __init__(self, directory: Path, page_size: int = 200) -> None:
        self.directory = directory
        self.page_size = page_size

    def files(self) -> list[Path]:
        if not self.directory.is_dir():
            raise ConfigError(f"ndjson_dir {self.directory} is not a folder")
        return sorted(p for p in self.directory.iterdir() if p.is_file() and p.name.endswith(_SUFFIXES))

    def files_for(self, resource_type: str) -> list[Path]:
        """Files named after `resource_type`, plus files whose name names no resource type at all."""
        chosen = []
        for path in self.files():
            named = _type_of(path)
            if named == resource_type or named is None:
                chosen.append(path)
        return chosen

    def _lines(self, path: Path) -> Iterator[tuple[int, bytes]]:
        opener: Any = gzip.open if path.name.endswith(".gz") else open
        stream: IO[bytes]
        number = 0
        try:
            with opener(path, "rb") as stream:
                for number, line in enumerate(stream, start=1):
                    if line.strip():
                        yield number, line
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            # A truncated or corrupt gzip stream: the lines before it stand, the file is not complete.
            raise SourceFileError(f"{path.name} cannot be read past line {number}: {_reason(exc)}") from None

    def _items(self, resource_type: str) -> Iterator[dict[str, Any] | BadLine]:
        for path in self.files_for(resource_type):
            named = _type_of(path)
            for number, line in self._lines(path):
                location = f"{path.name}:{number}"
                try:
                    resource = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    if named == resource_type:
                        yield BadLine(
                            location,
                            f"{location}: not valid JSON ({exc.msg})",
                            line.decode("utf-8", "replace"),
                        )
                    continue
                if not isinstance(resource, dict):
                    if named == resource_type:
                        yield BadLine(
                            location, f"{location}: not a JSON object", line.decode("utf-8", "replace")
                        )
                    continue
                if resource.get("resourceType") == resource_type:
                    yield resource

    async def pages(self, resource_type: str) -> AsyncGenerator[NdjsonPage, None]:
        resources: list[dict[str, Any]] = []
        bad: list[BadLine] = []
        number = 0
        for item in self._items(resource_type):
            if isinstance(item, BadLine):
                bad.append(item)
            else:
                resources.append(item)
            if len(resources) + len(bad) >= self.page_size:
                number += 1
                yield NdjsonPage(resources, number=number, bad_lines=bad)
                resources, bad = [], []
        if resources or bad or number == 0:
            yield NdjsonPage(resources, number=number + 1, bad_lines=bad)
