"""A folder of Bulk Data NDJSON files as a source of pages, read line by line.

Files are matched to a resource type by name (`ServiceRequest.ndjson`, `ServiceRequest.003.ndjson.gz`,
`ServiceRequest-part1.ndjson`); files whose name names no known type are scanned and filtered by each
line's `resourceType`, so an export written as one mixed file still works.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import AsyncGenerator, Iterator, Sequence
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
class Included:
    """A resource of another synced type found in a type's file: loaded as that type."""

    resource: dict[str, Any]


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
    """Streams resources of one type from a folder of `*.ndjson` / `*.ndjson.gz` files.

    With `configured` (the endpoint's resource types, as for an `ndjson_dir`) every line is accounted for
    exactly once. A file named after the stream's type gives it all its lines: its resources, resources of
    another configured type (as `included`: loaded into that type's tables, counted as included), and as
    dead letters with file, line and reason the lines that are not JSON, not an object, have no
    `resourceType`, or are of a type the endpoint does not sync. A file whose name names no type is shared
    by every stream; its unusable lines go to the first configured type, so they are counted once.

    Without `configured` (an export file, whose manifest `count` the caller checks) lines of another type
    or of no type are left out, and bad JSON of the named type is a dead letter.
    """

    def __init__(self, directory: Path, page_size: int = 200, configured: Sequence[str] = ()) -> None:
        self.directory = directory
        self.page_size = page_size
        self.configured = tuple(configured)

    def files(self) -> list[Path]:
        if not self.directory.is_dir():
            raise ConfigError(f"ndjson_dir {self.directory} is not a folder")
        return sorted(p for p in self.directory.iterdir() if p.is_file() and p.name.endswith(_SUFFIXES))

    def files_for(self, resource_type: str) -> list[Path]:
        """Files named after `resource_type`, plus files whose name names no resource type at all; with
        `configured`, also files named after a type the endpoint does not sync (its first type reads them)."""
        chosen = []
        for path in self.files():
            named = _type_of(path)
            if named == resource_type or named is None or self._orphan_reader(named) == resource_type:
                chosen.append(path)
        return chosen

    def _orphan_reader(self, named: str | None) -> str | None:
        """The stream that accounts for a file (or line) of `named`, when no stream of its own does."""
        if not self.configured or (named is not None and named in self.configured):
            return None
        return self.configured[0]

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

    def line_count(self, path: Path) -> int:
        """The file's non-empty lines, read to its end (SourceFileError naming it if it cannot be)."""
        return sum(1 for _ in self._lines(path))

    def _items(self, resource_type: str) -> Iterator[dict[str, Any] | BadLine | Included]:
        for path in self.files_for(resource_type):
            named = _type_of(path)
            # This stream answers for the file's unusable lines: its own file, or one no stream names.
            owner = named == resource_type or self._orphan_reader(named) == resource_type
            for number, line in self._lines(path):
                location = f"{path.name}:{number}"

                def bad(reason: str, location: str = location, line: bytes = line) -> BadLine:
                    return BadLine(location, f"{location}: {reason}", line.decode("utf-8", "replace"))

                try:
                    resource = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    if owner:
                        yield bad(f"not valid JSON ({exc.msg})")
                    continue
                if not isinstance(resource, dict):
                    if owner:
                        yield bad("not a JSON object")
                    continue
                rtype = resource.get("resourceType")
                if rtype == resource_type:
                    yield resource
                elif not self.configured or not owner:
                    # An export file (its manifest count says whether lines are missing), or a shared
                    # file's line that another stream loads or accounts for.
                    continue
                elif not isinstance(rtype, str) or not rtype:
                    yield bad("no resourceType")
                elif rtype not in self.configured:
                    yield bad(f"a {rtype[:64]}, a type this endpoint does not sync (not in `resources`)")
                elif named is not None:
                    yield Included(resource)  # another synced type in this stream's file: load it as such

    async def pages(self, resource_type: str) -> AsyncGenerator[NdjsonPage, None]:
        resources: list[dict[str, Any]] = []
        included: list[dict[str, Any]] = []
        bad: list[BadLine] = []
        number = 0
        for item in self._items(resource_type):
            if isinstance(item, BadLine):
                bad.append(item)
            elif isinstance(item, Included):
                included.append(item.resource)
            else:
                resources.append(item)
            if len(resources) + len(bad) + len(included) >= self.page_size:
                number += 1
                yield NdjsonPage(resources, included, number=number, bad_lines=bad)
                resources, included, bad = [], [], []
        if resources or bad or included or number == 0:
            yield NdjsonPage(resources, included, number=number + 1, bad_lines=bad)
