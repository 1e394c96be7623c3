"""Claim (use = claim) -> one `claim` row and one `claim_item` row per item.

Pre-authorization and predetermination Claims belong to the payer subject and give {} here. Only codes,
references, dates and amounts are kept: no patient names, no free text, no supporting documents.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from mappings.adjudication import payer_key
from mappings.elements import (
    CPT,
    coding,
    object_at,
    parse_fhir_datetime,
    reference,
    reference_and_type,
    resource_meta,
)
from mappings.errors import MappingError
from mappings.referral import resource_hash
from mappings.types import MapContext, MappedRecords

HCPCS = "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
_HCPCS_SYSTEMS = frozenset(
    {HCPCS, "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets", "urn:oid:2.16.840.1.113883.6.285"}
)


def _money(value: Any) -> float | None:
    if not isinstance(value, dict) or value.get("value") is None:
        return None
    return float(round(Decimal(str(value["value"])), 2))


def _procedure(concept: Any) -> tuple[str | None, str | None, str | None]:
    """The billed service: a CPT or HCPCS coding if any, else the first coding."""
    if not isinstance(concept, dict):
        return None, None, None
    for item in concept.get("coding") or ():
        if isinstance(item, dict) and (item.get("system") == CPT or item.get("system") in _HCPCS_SYSTEMS):
            return item.get("system"), item.get("code"), item.get("display") or concept.get("text")
    return coding(concept)


def _service_request_refs(resource: dict[str, Any]) -> list[str]:
    """ServiceRequests the claim bills for: `referral`, then references in extensions of the claim or its
    items and in supportingInfo.valueReference (where EMRs put the order they bill against)."""
    candidates: list[Any] = [resource.get("referral")]
    holders = [resource, *(item for item in resource.get("item") or () if isinstance(item, dict))]
    for holder in holders:
        for ext in holder.get("extension") or ():
            if isinstance(ext, dict):
                candidates.append(ext.get("valueReference"))
    for info in resource.get("supportingInfo") or ():
        candidates.append(info.get("valueReference"))
    refs: list[str] = []
    for ref in candidates:
        if not isinstance(ref, dict):
            continue  # most extensions and supportingInfo carry other values
        literal, rtype = reference_and_type(ref)
        if literal and rtype == "ServiceRequest" and literal not in refs:
            refs.append(literal)
    return refs


def _identifier(resource: dict[str, Any]) -> str | None:
    for ident in resource.get("identifier") or ():
        if isinstance(ident, dict) and ident.get("value"):
            return f"{ident.get('system') or ''}|{ident['value']}"
    return None


def _focal_coverage(resource: dict[str, Any]) -> str | None:
    insurances = [i for i in resource.get("insurance") or () if isinstance(i, dict)]
    focal = [i for i in insurances if i.get("focal")] or insurances
    return reference(focal[0].get("coverage")) if focal else None


def _currency(resource: dict[str, Any], total: Any) -> str | None:
    """The total's currency, else the first item's (claims without a total still price their lines)."""
    if isinstance(total, dict) and isinstance(total.get("currency"), str):
        return str(total["currency"])
    for item in resource.get("item") or ():
        for key in ("net", "unitPrice"):
            money = item.get(key) if isinstance(item, dict) else None
            if isinstance(money, dict) and isinstance(money.get("currency"), str):
                return str(money["currency"])
    return None


def map_claim(resource: dict[str, Any], ctx: MapContext) -> MappedRecords:
    """Map a validated Claim of use `claim`; pre-authorizations and predeterminations give {}."""
    if resource.get("use") != "claim":
        return {}
    rtype, rid, version_id, last_updated, _ = resource_meta(resource)
    if rtype != "Claim":
        raise MappingError(f"{rtype}/{rid}: expected a Claim")
    try:
        return _map(resource, ctx, rid, version_id, last_updated)
    except MappingError as exc:
        raise MappingError(f"Claim/{rid}: {exc}") from None


def _map(
    resource: dict[str, Any], ctx: MapContext, rid: str, version_id: str | None, last_updated: datetime | None
) -> MappedRecords:
    created = parse_fhir_datetime(resource.get("created"), "created")
    if created is None:  # required in R4; days-to-decision and claim months hang on it
        raise MappingError("created: missing")
    common: dict[str, Any] = {
        "endpoint": ctx.endpoint,
        "resource_type": "Claim",
        "resource_id": rid,
        "version_id": version_id,
        "last_updated": last_updated,
        "content_hash": resource_hash(resource, ctx),
    }
    items: list[dict[str, Any]] = []
    seen: set[int] = set()
    for item in resource.get("item") or ():
        seq = item.get("sequence")
        if seq in seen:  # the key of the line: two items with one sequence cannot both be stored
            raise MappingError("item.sequence: repeated")
        seen.add(seq)
        system, code, display = _procedure(item.get("productOrService"))
        quantity = object_at(item, "quantity")
        period = object_at(item, "servicedPeriod")
        serviced = item.get("servicedDate") or period.get("start")
        # Rows are filled in place, from a copy of the key columns: a {**key, ...} literal would insert every
        # column twice, and rows are built for every resource.
        row = dict(common)
        row["item_sequence"] = seq
        row["product_system"] = system
        row["product_code"] = code
        row["product_display"] = display
        row["modifiers"] = [c for m in item.get("modifier") or () for c in [coding(m)[1]] if c]
        row["quantity"] = float(quantity["value"]) if quantity.get("value") is not None else None
        row["unit_price"] = _money(item.get("unitPrice"))
        row["net_amount"] = _money(item.get("net"))
        row["serviced_date"] = parse_fhir_datetime(serviced, "item.servicedDate")
        items.append(row)
    billable = object_at(resource, "billablePeriod")
    # The claim this one replaces or corrects: relationship `prior` (or none given) first.
    related_claims = [r for r in resource.get("related") or () if reference(r.get("claim"))]
    related_claims.sort(key=lambda r: coding(r.get("relationship"))[1] not in (None, "prior"))
    related = related_claims[0] if related_claims else None
    insurer = resource.get("insurer")
    total = resource.get("total")
    service_requests = _service_request_refs(resource)
    claim_row = dict(common)
    claim_row["status"] = resource.get("status")
    claim_row["claim_type"] = coding(resource.get("type"))[1]
    claim_row["identifier"] = _identifier(resource)
    claim_row["patient_ref"] = reference(resource.get("patient"))
    claim_row["provider_ref"] = reference(resource.get("provider"))
    claim_row["insurer_ref"] = reference(insurer)
    claim_row["payer_key"] = payer_key(insurer)
    claim_row["coverage_ref"] = _focal_coverage(resource)
    claim_row["created"] = created
    claim_row["billable_start"] = parse_fhir_datetime(billable.get("start"), "billablePeriod.start")
    claim_row["billable_end"] = parse_fhir_datetime(billable.get("end"), "billablePeriod.end")
    claim_row["total_amount"] = _money(total) if isinstance(total, dict) else None
    claim_row["currency"] = _currency(resource, total)
    claim_row["item_count"] = len(items)
    claim_row["service_codes"] = [
        f"{i['product_system'] or ''}|{i['product_code']}" for i in items if i["product_code"]
    ]
    claim_row["service_request_ref"] = service_requests[0] if service_requests else None
    claim_row["related_claim_ref"] = reference(related.get("claim")) if related else None
    claim_row["related_relationship"] = coding(related.get("relationship"))[1] if related else None
    return {"claim": [claim_row], "claim_item": items}
