"""The minimal flat mapping the floor and naive runners share: one row per resource.

Columns: endpoint, resource_type, resource_id, version_id, last_updated, status, subject (the patient
reference), code ("system|code" of the main code) and the resource itself as JSON. This is the least work
a loader can do and still be useful, so it sets the floor the connector is compared with.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson

ENDPOINT = "bench"
COLUMNS: tuple[str, ...] = (
    "endpoint",
    "resource_type",
    "resource_id",
    "version_id",
    "last_updated",
    "status",
    "subject",
    "code",
    "payload",
)
_SUBJECT = {"ServiceRequest": "subject", "Coverage": "beneficiary", "Claim": "patient"}


def _first_coding(concept: Any) -> str | None:
    if not isinstance(concept, dict):
        return None
    for coding in concept.get("coding") or ():
        if isinstance(coding, dict) and coding.get("code"):
            return f"{coding.get('system') or ''}|{coding['code']}"
    return None


def main_code(resource: dict[str, Any]) -> str | None:
    """ServiceRequest.code, Coverage.type, the first Claim.item.productOrService, as "system|code"."""
    rtype = resource.get("resourceType")
    if rtype == "ServiceRequest":
        return _first_coding(resource.get("code"))
    if rtype == "Coverage":
        return _first_coding(resource.get("type"))
    if rtype == "Claim":
        items = resource.get("item") or [{}]
        return _first_coding(items[0].get("productOrService"))
    return None


def flat_row(resource: dict[str, Any]) -> dict[str, Any]:
    """One resource as a flat row (the payload stays a dict; each loader encodes it its own way)."""
    meta = resource.get("meta") or {}
    subject = resource.get(_SUBJECT.get(resource.get("resourceType", ""), "subject")) or {}
    return {
        "endpoint": ENDPOINT,
        "resource_type": resource["resourceType"],
        "resource_id": resource["id"],
        "version_id": meta.get("versionId"),
        "last_updated": meta.get("lastUpdated"),
        "status": resource.get("status"),
        "subject": subject.get("reference") if isinstance(subject, dict) else None,
        "code": main_code(resource),
        "payload": resource,
    }


def pages(client: httpx.Client, base: str, resource_type: str, page_size: int) -> Iterator[list[dict]]:
    """Each searchset page's resources, following `next` links as the server wrote them."""
    url: str | None = f"{base}/{resource_type}?_count={page_size}&_sort=_lastUpdated"
    seen: set[str] = set()
    while url is not None:
        if url in seen:
            raise RuntimeError(f"{resource_type}: the server linked back to a page already read")
        seen.add(url)
        response = client.get(url)
        response.raise_for_status()
        bundle = orjson.loads(response.content)
        yield [e["resource"] for e in bundle.get("entry") or () if "resource" in e]
        url = next((link["url"] for link in bundle.get("link") or () if link.get("relation") == "next"), None)
