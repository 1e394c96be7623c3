"""Turning searchset Bundles into pages, and deciding whether a next link may be followed.

Next links are followed exactly as the server wrote them: servers keep cursor state in them
(`_getpages`, `ct`, opaque tokens), so computing offsets ourselves would skip or repeat rows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any, overload

import httpx
import orjson
import simdjson

from connector.errors import FatalFhirError, TransientFhirError
from connector.fhir.http import url_path
from connector.fhir.page import Entries, Page, SourcePage

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


#: What a parsed Bundle's JSON objects and arrays are: Python's (orjson), or simdjson's unparsed proxies.
_OBJECT = (dict, simdjson.Object)
_ARRAY = (list, simdjson.Array)


def next_link(bundle: Any) -> str | None:
    """The Bundle.link[relation=next] URL as the server wrote it, if any."""
    links = bundle.get("link")
    for link in links if isinstance(links, _ARRAY) else ():
        if isinstance(link, _OBJECT) and link.get("relation") == "next" and link.get("url"):
            return str(link.get("url"))
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


def read_page(body: bytes, *, url: httpx.URL | str, number: int) -> tuple[Page, str | None]:
    """The page, its entries left unparsed, and its next link.

    The whole body is checked to be JSON and a Bundle (simdjson, about a tenth of a full parse), so a
    broken page is refetched; the head (links, meta) and the entries' search modes are read, nothing
    else. A body simdjson does not take (an integer beyond 64 bits, say) is parsed in full instead, with
    the same errors.
    """
    document = _simdjson_bundle(body)
    if document is None:
        document = parse_bundle(body, url=url)
    counts = [0, 0, 0]
    for entry in _entries(document):
        kind = _entry_kind(entry)
        if kind is not None:
            counts[kind] += 1
    total = document.get("total")
    page = Page(
        body,
        number,
        _last_updated(document),
        (counts[0], counts[1], counts[2]),
        total if isinstance(total, int) and not isinstance(total, bool) else None,
    )
    return page, next_link(document)


#: Each thread's simdjson parser, kept between pages: a new parser allocates its buffers for every page,
#: and with the fixed mmap threshold of `gc_tuning` each one is new memory from the kernel (860 page
#: faults for a 1,000-resource page; the parse took 1.8 µs a resource against 0.5).
_parsers = threading.local()
#: A parser keeps buffers for the largest page it parsed: larger pages get a parser of their own.
KEPT_PARSER_MAX_BYTES = 16 << 20


def _simdjson_bundle(body: bytes) -> Any:
    """`body` as simdjson's Bundle object (this thread's parser); None unless simdjson takes it as one.

    A parser refuses to parse again while objects of its last document are alive (a caller still holds
    one): a new parser takes the page then.
    """
    parser = _kept_parser() if len(body) <= KEPT_PARSER_MAX_BYTES else simdjson.Parser()
    try:
        try:
            document = parser.parse(body)
        except RuntimeError as exc:
            if not str(exc).startswith("Tried to re-use a parser"):
                raise
            document = simdjson.Parser().parse(body)
    except (ValueError, RuntimeError):
        return None
    if isinstance(document, simdjson.Object) and document.get("resourceType") == "Bundle":
        return document
    return None


def _kept_parser() -> Any:
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = simdjson.Parser()
    return parser


def entries_of(page: SourcePage) -> Entries:
    """The page's entries, parsed (a page of `Entries` is itself)."""
    if isinstance(page, Entries):
        return page
    return split_page(_loads_entry(page.body, page.number), number=page.number)


class ResourceTexts(Sequence[Any]):
    """Resources as their JSON texts, each parsed when it is read: iterating yields one at a time.

    A mapping worker validates, serializes and maps each resource right after parsing it, while its
    objects are in the CPU's caches, and drops it before parsing the next, whose objects then reuse that
    memory. A whole page parsed at once left each resource cold by the time it was read, its objects
    spread over memory freed by earlier pages: its canonical JSON took 8.8 µs against 1.4, and the page's
    parse 18 µs a resource against 5 for simdjson's split plus the resource's own parse.
    """

    __slots__ = ("number", "texts")

    def __init__(self, texts: list[bytes], *, number: int) -> None:
        self.texts = texts
        self.number = number

    def __len__(self) -> int:
        return len(self.texts)

    def __iter__(self) -> Iterator[Any]:
        for text in self.texts:
            yield _loads_entry(text, self.number)

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [_loads_entry(text, self.number) for text in self.texts[index]]
        return _loads_entry(self.texts[index], self.number)


def _loads_entry(text: bytes, number: int) -> Any:
    """JSON of page `number` (the page, or one resource of it), parsed by orjson."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        # simdjson took the page (it checks every page it defers); orjson refusing it too is a server's
        # fault a refetch may cure, as for any broken page.
        raise TransientFhirError(f"search page {number} is not JSON orjson can read") from None


def entry_texts(body: bytes, *, number: int) -> tuple[Sequence[Any], list[Any]]:
    """The matches of a page `read_page` left unparsed, as `ResourceTexts`, and its `_include`d resources.

    simdjson splits the page (it took the page once already, in `read_page`); each resource is then parsed
    on its own. A page simdjson does not take is parsed whole instead, as `entries_of` does.
    """
    document = _simdjson_bundle(body)
    if document is None:
        parsed = split_page(_loads_entry(body, number), number=number)
        return parsed.resources, parsed.included
    texts: tuple[list[bytes], list[bytes]] = ([], [])  # matches, includes: outcomes have nothing to load
    for entry in _entries(document):
        kind = _entry_kind(entry)
        if kind is not None and kind < len(texts):
            texts[kind].append(entry["resource"].mini)
    matches, included = texts
    return ResourceTexts(matches, number=number), [_loads_entry(text, number) for text in included]


def split_page(bundle: dict[str, Any], *, number: int) -> Entries:
    """Separate a searchset Bundle's entries by search.mode (match / include / outcome)."""
    sorted_entries: tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]] = ([], [], [])
    for entry in _entries(bundle):
        kind = _entry_kind(entry)
        if kind is not None:
            sorted_entries[kind].append(entry["resource"])
    resources, included, outcomes = sorted_entries
    return Entries(resources, included, outcomes, number, _last_updated(bundle))


def _entries(bundle: Any) -> Any:
    entries = bundle.get("entry")
    return entries if isinstance(entries, _ARRAY) else ()


#: Where `_entry_kind` sorts an entry by its search.mode; any other mode (or none) is a match.
_KIND = {"match": 0, "include": 1, "outcome": 2}


def _entry_kind(entry: Any) -> int | None:
    """0 for a match, 1 for an `_include`d resource, 2 for an outcome; None for an entry without a
    resource (only a fullUrl, say), which has nothing to load."""
    if not isinstance(entry, _OBJECT) or not isinstance(entry.get("resource"), _OBJECT):
        return None
    search = entry.get("search")
    mode = search.get("mode") if isinstance(search, _OBJECT) else None
    return _KIND.get(mode, 0) if isinstance(mode, str) else 0


def _last_updated(bundle: Any) -> str | None:
    """Bundle.meta.lastUpdated exactly as the server sent it."""
    meta = bundle.get("meta")
    value = meta.get("lastUpdated") if isinstance(meta, _OBJECT) else None
    return value if isinstance(value, str) else None
