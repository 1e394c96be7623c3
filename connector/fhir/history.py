"""Deletions seen in a type's `_history`: a search never returns a deleted resource, its history does.

A DELETE shows as a history entry with `request.method = DELETE` (and usually no resource); its time is
`response.lastModified`, else the Bundle's `meta.lastUpdated` (server time either way).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from connector.errors import MappingError, TransientFhirError
from connector.fhir.client import FhirClient
from connector.fhir.paging import NextLinkGuard, next_link
from mappings.elements import parse_fhir_datetime
from mappings.fhir_ids import REFERENCE_TAIL_RE


def supports_history(capability: dict[str, Any], resource_type: str) -> bool:
    """Whether the server declares `history-type` for the resource type."""
    for rest in capability.get("rest") or []:
        if rest.get("mode", "server") != "server":
            continue
        for resource in rest.get("resource") or []:
            if resource.get("type") == resource_type:
                codes = {i.get("code") for i in resource.get("interaction") or []}
                return "history-type" in codes
    return False


def _when(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return parse_fhir_datetime(text, "lastModified")
    except MappingError:
        return None


def deletions_in(bundle: dict[str, Any], resource_type: str) -> list[tuple[str, str, datetime]]:
    """(resource_type, id, when) of the DELETE entries of one history Bundle."""
    fallback = _when((bundle.get("meta") or {}).get("lastUpdated"))
    found: list[tuple[str, str, datetime]] = []
    for entry in bundle.get("entry") or []:
        request = entry.get("request") or {}
        if str(request.get("method", "")).upper() != "DELETE":
            continue
        match = REFERENCE_TAIL_RE.search(str(request.get("url") or entry.get("fullUrl") or ""))
        when = _when((entry.get("response") or {}).get("lastModified")) or fallback
        if match and match.group(1) == resource_type and when is not None:
            found.append((resource_type, match.group(2), when))
    return found


async def deleted_since(
    client: FhirClient, resource_type: str, since: datetime, *, page_size: int = 200
) -> list[tuple[str, str, datetime]]:
    """Every deletion of `resource_type` the server recorded after `since`, following next links."""
    # `_since` as the server writes instants (milliseconds, Z): some servers compare it as text.
    stamp = since.strftime("%Y-%m-%dT%H:%M:%S.") + f"{since.microsecond // 1000:03d}Z"
    guard = NextLinkGuard(client.base_url)
    url: str | None = f"{client.base_url}/{resource_type}/_history"
    params: list[tuple[str, str]] | None = [("_since", stamp), ("_count", str(page_size))]
    found: list[tuple[str, str, datetime]] = []
    number = 1
    while url is not None:
        response = await client.request("GET", url, params=params)
        try:
            bundle = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise TransientFhirError(f"{resource_type}/_history page {number} is not JSON") from None
        guard.visit(response.request.url)
        found.extend(deletions_in(bundle, resource_type))
        link = next_link(bundle)
        following = guard.next_url(link, page_number=number) if link else None
        url, params, number = (str(following), None, number + 1) if following else (None, None, number)
    return found
