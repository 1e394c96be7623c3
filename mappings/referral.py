"""ServiceRequest -> `referral` row: one row per referral, keyed by (endpoint, resource_type, resource_id).

Only coded, non-identifying facts are kept: no patient names or addresses, no notes, no free-text
instructions. The requester's display is kept because it names the referring clinician or organization,
unless the requester is the patient or a relative.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import orjson

from connector.errors import MappingError
from mappings.elements import (
    CPT,
    SNOMED,
    codes,
    coding,
    parse_fhir_datetime,
    reference,
    reference_type,
    resource_meta,
)
from mappings.types import MapContext, MappedRecords, Mapper
from mappings.validate import resource_label

# Requesters whose display would be a person's name we must not store.
_PERSONAL_REQUESTERS = frozenset({"Patient", "RelatedPerson"})


def content_hash(resource: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys), so an unchanged resource is recognised on re-sync."""
    try:
        return hashlib.sha256(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)).hexdigest()
    except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits
        label = resource_label(resource)
        raise MappingError(f"{label}: cannot serialise resource: {type(exc).__name__}") from None


def _requested_start(resource: dict[str, Any]) -> datetime | None:
    """When the service should start: occurrenceDateTime, the period start, or the Timing's first event."""
    if "occurrenceDateTime" in resource:
        return parse_fhir_datetime(resource["occurrenceDateTime"], "occurrenceDateTime")
    period = resource.get("occurrencePeriod")
    if isinstance(period, dict):
        return parse_fhir_datetime(period.get("start"), "occurrencePeriod.start")
    timing = resource.get("occurrenceTiming")
    if isinstance(timing, dict):
        events = timing.get("event") or []
        if events:
            return parse_fhir_datetime(events[0], "occurrenceTiming.event")
        bounds = (timing.get("repeat") or {}).get("boundsPeriod")
        if isinstance(bounds, dict):
            return parse_fhir_datetime(bounds.get("start"), "occurrenceTiming.repeat.boundsPeriod.start")
    return None


def _service(code: dict[str, Any] | None) -> tuple[str | None, str | None, str | None]:
    """The ordered service: a SNOMED CT coding if any, else CPT, else the first coding (or text only)."""
    for system in (SNOMED, CPT):
        found = coding(code, system)
        if found[1] is not None:
            return found
    return coding(code)


def _category_code(categories: list[dict[str, Any]] | None) -> str | None:
    for concept in categories or ():
        code = coding(concept)[1]
        if code:
            return code
    return None


def map_service_request(resource: dict[str, Any], ctx: MapContext) -> MappedRecords:
    """Map a validated ServiceRequest to one `referral` row."""
    rtype, rid, version_id, last_updated, _ = resource_meta(resource)
    if rtype != "ServiceRequest":
        raise MappingError(f"{resource_label(resource)}: expected a ServiceRequest")
    try:
        return {"referral": [_referral_row(resource, ctx, rid, version_id, last_updated)]}
    except MappingError as exc:
        # Element helpers name the element only; add which resource it was.
        raise MappingError(f"{rtype}/{rid}: {exc}") from None


def _referral_row(
    resource: dict[str, Any],
    ctx: MapContext,
    rid: str,
    version_id: str | None,
    last_updated: datetime | None,
) -> dict[str, Any]:
    subject = resource.get("subject")
    requester = resource.get("requester")
    requester_type = reference_type(requester)
    service_system, service_code, service_display = _service(resource.get("code"))
    coverage_refs = [
        ref for ref in (reference(item) for item in resource.get("insurance") or ()) if ref is not None
    ]
    return {
        "endpoint": ctx.endpoint,
        "resource_type": "ServiceRequest",
        "resource_id": rid,
        "version_id": version_id,
        "last_updated": last_updated,
        "content_hash": content_hash(resource),
        "status": resource.get("status"),
        "intent": resource.get("intent"),
        "priority": resource.get("priority"),
        "category_code": _category_code(resource.get("category")),
        "authored_on": parse_fhir_datetime(resource.get("authoredOn"), "authoredOn"),
        "requested_start": _requested_start(resource),
        "patient_ref": reference(subject) if reference_type(subject) == "Patient" else None,
        "requester_ref": reference(requester),
        "requester_display": (
            requester.get("display")
            if isinstance(requester, dict) and requester_type not in _PERSONAL_REQUESTERS
            else None
        ),
        "service_system": service_system,
        "service_code": service_code,
        "service_display": service_display,
        "reason_codes": codes(resource.get("reasonCode")),
        "coverage_ref": coverage_refs[0] if coverage_refs else None,
        "coverage_refs": coverage_refs,
    }


#: Resource type -> mappers of the referral subject (gathered by `mappings.registry`).
MAPPERS: dict[str, tuple[Mapper, ...]] = {"ServiceRequest": (map_service_request,)}
TARGET_TABLES: dict[str, tuple[str, ...]] = {"ServiceRequest": ("referral",)}
