"""One page of a FHIR search, split the way the loaders need it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Page:
    """One searchset Bundle, already separated by `entry.search.mode`."""

    #: Entries whose search.mode is "match" or absent: the resources the search asked for.
    resources: list[dict]
    #: Entries with search.mode == "include" (`_include` / `_revinclude` targets).
    included: list[dict]
    #: Bundle.meta.lastUpdated exactly as the server sent it (used as a watermark candidate).
    bundle_last_updated: str | None
    #: 1-based page number within the search.
    number: int
    #: OperationOutcome entries with search.mode == "outcome": server warnings about the search.
    outcomes: list[dict] = field(default_factory=list)
