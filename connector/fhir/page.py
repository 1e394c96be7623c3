"""Pages as the sources give them to the page executor (`connector.mapping_pool.page_mapper`).

A search `Page` is always the Bundle's bytes as the server sent them, checked to be a JSON Bundle, with
what paging needs of its head and how many entries of each kind it holds: its entries are parsed once,
where the page is mapped (in a worker process, or by `connector.fhir.paging.entries_of`). `Entries` are
resources already parsed: an NDJSON page, or a search page after the unchanged resources were taken out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias


@dataclass(frozen=True, slots=True)
class Page:
    """One searchset Bundle, unparsed."""

    body: bytes = field(repr=False)
    #: 1-based page number within the search.
    number: int
    #: Bundle.meta.lastUpdated exactly as the server sent it (used as a watermark candidate).
    bundle_last_updated: str | None
    #: Entries holding a resource, by search.mode: (match or none, include, outcome).
    counts: tuple[int, int, int] = (0, 0, 0)
    #: Bundle.total, when the server gives it: the search's size (for progress).
    total: int | None = None


@dataclass(frozen=True, slots=True)
class Entries:
    """Parsed resources of one page."""

    #: The resources the search (or the file) holds: search.mode "match" or absent.
    resources: list[dict[str, Any]]
    #: Entries with search.mode == "include" (`_include` / `_revinclude` targets).
    included: list[dict[str, Any]] = field(default_factory=list)
    #: OperationOutcome entries with search.mode == "outcome": server warnings about the search.
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    number: int = 0
    bundle_last_updated: str | None = None


#: What a stream's source yields and the page executor takes.
SourcePage: TypeAlias = Page | Entries


def counts_of(page: SourcePage) -> tuple[int, int]:
    """(matches, included) of a page, parsed or not."""
    if isinstance(page, Page):
        return page.counts[0], page.counts[1]
    return len(page.resources), len(page.included)
