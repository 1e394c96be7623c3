"""Turning searchset Bundles into pages, and deciding whether a next link may be followed.

Next links are followed exactly as the server wrote them: servers keep cursor state in them
(`_getpages`, `ct`, opaque tokens), so computing offsets ourselves would skip or repeat rows.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import httpx
import orjson
import simdjson

from connector.errors import FatalFhirError, TransientFhirError
from connector.fhir.http import url_path
from connector.fhir.page import Page

logger = logging.getLogger(__name__)

_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: httpx.URL) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the default port filled in, so `https://h` equals `https://h:443`."""
    return url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme)


def resolve(base_url: str, link: str) -> httpx.URL:
    """Resolve a possibly relative link against the endpoint base URL (treated as a directory)."""
    return httpx.URL(base_url.rstrip("/") + "/").join(link)


def check_same_origin(base_url: str, url: httpx.URL, *, what: str) -> None:
    """Refuse URLs that would send our credentials to another scheme, host or port (SSRF guard)."""
    if origin(url) != origin(httpx.URL(base_url)):
        # Name only the foreign origin: the rest of the link may carry search state with identifiers.
        raise FatalFhirError(
            f"refusing {what} to {url.scheme}://{url.host}"
            f"{':' + str(url.port) if url.port else ''}: not the endpoint's server"
        )


class NextLinkGuard:
    """Remembers the pages of one search; vets each next link before it is followed."""

    def __init__(self, base_url: str) -> None:
        self._base_url = base_url
        self._visited: set[str] = set()

    def visit(self, url: httpx.URL) -> None:
        """Record a URL that has been fetched (the first search URL, then every next link)."""
        self._visited.add(str(url))

    def next_url(self, link: str, *, page_number: int) -> httpx.URL | None:
        """The URL to fetch after page `page_number`, or None when the link was already visited.

        Raises FatalFhirError when the link points at another server.
        """
        url = resolve(self._base_url, link)
        check_same_origin(self._base_url, url, what=f"next link of page {page_number}")
        if str(url) in self._visited:
            # Page number only: the URL's query may hold patient identifiers.
            logger.warning("page %d links back to a page already read; stopping this search", page_number)
            return None
        return url


def next_link(bundle: dict[str, Any]) -> str | None:
    """The Bundle.link[relation=next] URL as the server wrote it, if any."""
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
            return str(link["url"])
    return None


def parse_bundle(body: bytes, *, url: httpx.URL | str) -> dict[str, Any]:
    """The page body as a Bundle; anything else (truncated JSON, an HTML error page) is transient."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise TransientFhirError(f"GET {url_path(url)} returned a page that is not valid JSON") from None
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        kind = data.get("resourceType") if isinstance(data, dict) else type(data).__name__
        raise TransientFhirError(f"GET {url_path(url)} returned {kind!s} instead of a Bundle")
    return data


def read_page(body: bytes, *, url: httpx.URL | str, number: int, defer: bool) -> tuple[Page, str | None]:
    """The page and its next link. With `defer`, the entries stay unparsed in `Page.body`.

    Deferring still checks that the whole body is JSON and a Bundle (simdjson, about a tenth of a full
    parse), so a broken page is refetched as before; the head (links, meta) and the entries' search
    modes are read, nothing else. A body simdjson does not take (an integer beyond 64 bits, say) is
    parsed in full instead, with the same errors as without `defer`.
    """
    if defer:
        try:
            document = simdjson.Parser().parse(body)
        except (ValueError, RuntimeError):
            document = None
        if isinstance(document, simdjson.Object) and document.get("resourceType") == "Bundle":
            return _deferred(document, body, number), _next_link_of(document.get("link"))
    bundle = parse_bundle(body, url=url)
    return split_page(bundle, number=number), next_link(bundle)


def _deferred(document: simdjson.Object, body: bytes, number: int) -> Page:
    """A page whose entries stay in `body`: counted by search mode as `split_page` sorts them."""
    counts = [0, 0, 0]
    entries = document.get("entry")
    for entry in entries if isinstance(entries, simdjson.Array) else ():
        if not isinstance(entry, simdjson.Object) or not isinstance(entry.get("resource"), simdjson.Object):
            continue
        search = entry.get("search")
        mode = search.get("mode") if isinstance(search, simdjson.Object) else None
        counts[_MODE_INDEX.get(mode, 0) if isinstance(mode, str) else 0] += 1
    meta = document.get("meta")
    last_updated = meta.get("lastUpdated") if isinstance(meta, simdjson.Object) else None
    return Page(
        resources=[],
        included=[],
        bundle_last_updated=last_updated if isinstance(last_updated, str) else None,
        number=number,
        body=body,
        deferred_counts=(counts[0], counts[1], counts[2]),
    )


_MODE_INDEX = {"match": 0, "include": 1, "outcome": 2}


def _next_link_of(links: Any) -> str | None:
    for link in links if isinstance(links, simdjson.Array) else ():
        if isinstance(link, simdjson.Object) and link.get("relation") == "next":
            url = link.get("url")
            if url and isinstance(url, str):
                return url
    return None


def with_entries(page: Page) -> Page:
    """The page with its entries parsed (itself when they are)."""
    if page.body is None:
        return page
    parsed = split_page(orjson.loads(page.body), number=page.number)
    return dataclasses.replace(parsed, bundle_last_updated=page.bundle_last_updated)


def split_page(bundle: dict[str, Any], *, number: int) -> Page:
    """Separate a searchset Bundle's entries by search.mode (match / include / outcome)."""
    resources: list[dict] = []
    included: list[dict] = []
    outcomes: list[dict] = []
    for entry in bundle.get("entry") or []:
        if not isinstance(entry, dict):
            continue
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            continue  # an entry without a resource (e.g. only fullUrl) has nothing to load
        search = entry.get("search") if isinstance(entry.get("search"), dict) else {}
        mode = search.get("mode")
        if mode == "include":
            included.append(resource)
        elif mode == "outcome":
            outcomes.append(resource)
        else:
            resources.append(resource)
    meta = bundle.get("meta") if isinstance(bundle.get("meta"), dict) else {}
    last_updated = meta.get("lastUpdated")
    return Page(
        resources=resources,
        included=included,
        bundle_last_updated=last_updated if isinstance(last_updated, str) else None,
        number=number,
        outcomes=outcomes,
    )
