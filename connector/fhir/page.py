"""One page of a FHIR search, split the way the loaders need it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Page:
    """One searchset Bundle, already separated by `entry.search.mode`."""

    #: Entries whose search.mode is "match" or absent: the resources the search asked for.
    resources: list[dict[str, Any]]
    #: Entries with search.mode == "include" (`_include` / `_revinclude` targets).
    included: list[dict[str, Any]]
    #: Bundle.meta.lastUpdated exactly as the server sent it (used as a watermark candidate).
    bundle_last_updated: str | None
    #: 1-based page number within the search.
    number: int
    #: OperationOutcome entries with search.mode == "outcome": server warnings about the search.
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    #: The Bundle as the server sent it, when its entries are left unparsed (`resources`, `included` and
    #: `outcomes` are then empty and `deferred_counts` counts them): a mapping worker parses them, so a
    #: page is parsed once, not here and again there. `paging.with_entries` parses them here.
    body: bytes | None = field(default=None, repr=False)
    #: Of a page with `body`: its (match, include, outcome) entries that hold a resource.
    deferred_counts: tuple[int, int, int] = (0, 0, 0)

    @property
    def counts(self) -> tuple[int, int]:
        """(matches, included) of the page, whether its entries are parsed or not."""
        if self.body is not None:
            return self.deferred_counts[0], self.deferred_counts[1]
        return len(self.resources), len(self.included)

    @property
    def outcome_count(self) -> int:
        """OperationOutcome entries of the page, whether its entries are parsed or not."""
        return self.deferred_counts[2] if self.body is not None else len(self.outcomes)
