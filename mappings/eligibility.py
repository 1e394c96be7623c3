"""Coverage -> `eligibility`, CoverageEligibilityResponse -> `eligibility_check`.

Only what the payer metrics need is kept: references, codes, plan and group values, dates and the benefit
counts of the therapies. The subscriber id identifies a person, so by default only its sha256 is stored
(enough to match the same member across coverages); `MappingOptions.keep_subscriber_id` keeps the clear
value too. Displays of payors that are people (self-pay by a Patient or RelatedPerson) are never stored.

The shared payer helpers (`payer_fields`, `base_row`) also serve `mappings.prior_auth`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

from mappings.elements import (
    coding,
    object_at,
    parse_fhir_datetime,
    reference,
    reference_and_type,
    reference_to,
    resource_meta,
)
from mappings.errors import MappingError
from mappings.fhir_ids import resource_label
from mappings.referral import resource_hash
from mappings.types import MapContext, MappedRecords

COVERAGE_CLASS = "http://terminology.hl7.org/CodeSystem/coverage-class"
BENEFIT_TYPE = "http://terminology.hl7.org/CodeSystem/benefit-type"
BENEFIT_NETWORK = "http://terminology.hl7.org/CodeSystem/benefit-network"

#: Payors and subjects that are people: their display is a name we must not store.
PERSON_TYPES = frozenset({"Patient", "RelatedPerson"})
#: `payer_key` of a coverage paid by the patient or a relative.
SELF_PAY = "self-pay"

DISCIPLINES = ("pt", "ot", "st")


@cache
def therapy_categories() -> dict[tuple[str, str], str]:
    """(system, code) -> 'pt' / 'ot' / 'st', from `data/therapy_benefit_categories.json`."""
    data = json.loads(
        resources.files("mappings").joinpath("data/therapy_benefit_categories.json").read_text()
    )
    return {
        (system, code): entry["discipline"]
        for system in data["systems"]
        for code, entry in data["codes"].items()
    }


@dataclass(frozen=True, slots=True)
class Payer:
    """Who pays, read from a Reference (Coverage.payor, Claim.insurer, ...)."""

    ref: str | None
    type: str | None
    display: str | None
    #: "system|value" of Reference.identifier (or of a contained Organization's first identifier).
    identifier: str | None

    @property
    def key(self) -> str | None:
        """One value to group by: 'self-pay', the literal reference, else the identifier, else the display."""
        if self.type in PERSON_TYPES:
            return SELF_PAY
        if self.ref and not self.ref.startswith("#"):
            return self.ref
        return self.identifier or self.display


def _identifier_token(identifier: Any) -> str | None:
    if not isinstance(identifier, dict) or not identifier.get("value"):
        return None
    return f"{identifier.get('system') or ''}|{identifier['value']}"


def _contained(resource: dict[str, Any], ref: str) -> dict[str, Any] | None:
    for item in resource.get("contained") or ():
        if isinstance(item, dict) and f"#{item.get('id')}" == ref:
            return item
    return None


def payer_fields(resource: dict[str, Any], ref: dict[str, Any] | None) -> Payer:
    """The payer a Reference names; a `#contained` Organization lends its name and identifier."""
    if not isinstance(ref, dict):
        return Payer(None, None, None, None)
    literal, rtype = reference_and_type(ref)
    display = ref.get("display") if isinstance(ref.get("display"), str) else None
    identifier = _identifier_token(ref.get("identifier"))
    if literal and literal.startswith("#"):
        target = _contained(resource, literal)
        if target is not None:
            rtype = rtype or target.get("resourceType")
            if rtype == "Organization":
                display = display or target.get("name")
                ids = target.get("identifier") or ()
                identifier = identifier or (_identifier_token(ids[0]) if ids else None)
    if rtype in PERSON_TYPES:
        display = None  # a person's name
    return Payer(literal, rtype, display, identifier)


def base_row(resource: dict[str, Any], ctx: MapContext) -> dict[str, Any]:
    """The natural key, version and content hash every resource row carries."""
    rtype, rid, version_id, last_updated, _ = resource_meta(resource)
    return {
        "endpoint": ctx.endpoint,
        "resource_type": rtype,
        "resource_id": rid,
        "version_id": version_id,
        "last_updated": last_updated,
        "content_hash": resource_hash(resource, ctx),
    }


def subscriber_id_hash(value: str) -> str:
    """sha256 hex of the subscriber id (surrounding blanks removed): equal ids match, the id is not stored."""
    return hashlib.sha256(value.strip().encode("utf-8")).hexdigest()


def _patient_ref(ref: dict[str, Any] | None) -> str | None:
    return reference_to(ref, "Patient")


# -- Coverage -> eligibility ------------------------------------------------------------------------


def _classes(resource: dict[str, Any]) -> dict[str, tuple[str | None, str | None]]:
    """coverage-class code -> (value, name) of its first occurrence; other systems are ignored."""
    found: dict[str, tuple[str | None, str | None]] = {}
    for item in resource.get("class") or ():
        code = coding(item.get("type"), COVERAGE_CLASS)[1]
        if code and code not in found:
            found[code] = (item.get("value"), item.get("name"))
    return found


def _class_tokens(resource: dict[str, Any]) -> list[str]:
    tokens = []
    for item in resource.get("class") or ():
        code = coding(item.get("type"))[1]
        if code and item.get("value"):
            tokens.append(f"{code}|{item['value']}")
    return tokens


def map_coverage(resource: dict[str, Any], ctx: MapContext) -> MappedRecords:
    """Map a validated Coverage to one `eligibility` row."""
    if resource.get("resourceType") != "Coverage":
        raise MappingError(f"{resource_label(resource)}: expected a Coverage")
    try:
        return {"eligibility": [_eligibility_row(resource, ctx)]}
    except MappingError as exc:
        raise MappingError(f"{resource_label(resource)}: {exc}") from None


def _eligibility_row(resource: dict[str, Any], ctx: MapContext) -> dict[str, Any]:
    payors = [p for p in resource.get("payor") or () if isinstance(p, dict)]
    if not payors:
        # R4 requires payor (1..*); without it the coverage cannot be attributed to a payer.
        raise MappingError("payor: missing")
    payer = payer_fields(resource, payors[0])
    classes = _classes(resource)
    plan_value, plan_name = classes.get("plan", (None, None))
    group_value, group_name = classes.get("group", (None, None))
    period = object_at(resource, "period")
    subscriber_id = resource.get("subscriberId")
    subscriber_id = subscriber_id if isinstance(subscriber_id, str) and subscriber_id.strip() else None
    # Rows are filled in place, starting from the key columns: a {**key, ...} literal would insert every
    # column twice, and rows are built for every resource.
    row = base_row(resource, ctx)
    row["status"] = resource.get("status")
    row["type_code"] = coding(resource.get("type"))[1]
    row["patient_ref"] = _patient_ref(resource.get("beneficiary"))
    row["subscriber_id_hash"] = subscriber_id_hash(subscriber_id) if subscriber_id else None
    row["subscriber_id"] = subscriber_id if subscriber_id and ctx.options.keep_subscriber_id else None
    row["relationship"] = coding(resource.get("relationship"))[1]
    row["payer_key"] = payer.key
    row["payor_ref"] = payer.ref
    row["payor_type"] = payer.type
    row["payor_display"] = payer.display
    row["payor_identifier"] = payer.identifier
    row["payor_refs"] = [ref for ref in (reference(p) for p in payors) if ref]
    row["plan_value"] = plan_value
    row["plan_name"] = plan_name
    row["group_value"] = group_value
    row["group_name"] = group_name
    row["classes"] = _class_tokens(resource)
    row["network"] = resource.get("network")
    row["coverage_order"] = resource.get("order")
    row["period_start"] = parse_fhir_datetime(period.get("start"), "period.start")
    row["period_end"] = parse_fhir_datetime(period.get("end"), "period.end")
    return row


# -- CoverageEligibilityResponse -> eligibility_check ---------------------------------------------


def _discipline(category: dict[str, Any] | None) -> str | None:
    table = therapy_categories()
    for item in (category or {}).get("coding") or ():
        found = table.get((item.get("system"), item.get("code")))
        if found:
            return found
    return None


def _visits(benefits: Iterable[dict[str, Any]]) -> tuple[int | None, int | None]:
    """(allowed, used) visits of a benefit item: the `visit` benefit's unsignedInt values."""
    for benefit in benefits:
        if coding(benefit.get("type"))[1] == "visit":
            return benefit.get("allowedUnsignedInt"), benefit.get("usedUnsignedInt")
    return None, None


def _therapy_benefits(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Per discipline: allowed / used visits, in-network items first (the benefits the practice bills)."""
    out: dict[str, Any] = {f"{d}_{k}_visits": None for d in DISCIPLINES for k in ("allowed", "used")}
    ranked = sorted(items, key=lambda item: coding(item.get("network"), BENEFIT_NETWORK)[1] != "in")
    for item in ranked:
        discipline = _discipline(item.get("category"))
        if discipline is None or item.get("excluded"):
            continue
        allowed, used = _visits(item.get("benefit") or ())
        if out[f"{discipline}_allowed_visits"] is None and out[f"{discipline}_used_visits"] is None:
            out[f"{discipline}_allowed_visits"] = allowed
            out[f"{discipline}_used_visits"] = used
    return out


def _authorization_required(items: list[dict[str, Any]]) -> bool | None:
    """Whether a prior authorization is needed: from the therapy items when there are any, else all items.

    True when any says so, False when all that say anything say no, None when none says.
    """
    therapy = [item for item in items if _discipline(item.get("category"))]
    flags = [item["authorizationRequired"] for item in therapy or items if "authorizationRequired" in item]
    if not flags:
        return None
    return any(flags)


def map_eligibility_response(resource: dict[str, Any], ctx: MapContext) -> MappedRecords:
    """Map a validated CoverageEligibilityResponse to one `eligibility_check` row."""
    if resource.get("resourceType") != "CoverageEligibilityResponse":
        raise MappingError(f"{resource_label(resource)}: expected a CoverageEligibilityResponse")
    try:
        return {"eligibility_check": [_check_row(resource, ctx)]}
    except MappingError as exc:
        raise MappingError(f"{resource_label(resource)}: {exc}") from None


def _serviced_at(resource: dict[str, Any]) -> datetime | None:
    if "servicedDate" in resource:
        return parse_fhir_datetime(resource["servicedDate"], "servicedDate")
    period = resource.get("servicedPeriod")
    if isinstance(period, dict):
        return parse_fhir_datetime(period.get("start"), "servicedPeriod.start")
    return None


def _check_row(resource: dict[str, Any], ctx: MapContext) -> dict[str, Any]:
    verified_at = parse_fhir_datetime(resource.get("created"), "created")
    if verified_at is None:
        raise MappingError("created: missing")  # 1..1 in R4; without it the check cannot be dated
    insurances = [i for i in resource.get("insurance") or () if isinstance(i, dict)]
    coverage_refs = [ref for ref in (reference(i.get("coverage")) for i in insurances) if ref]
    first = insurances[0] if insurances else {}
    items = [item for ins in insurances for item in ins.get("item") or () if isinstance(item, dict)]
    insurer = payer_fields(resource, resource.get("insurer"))
    disposition = resource.get("disposition")
    row = base_row(resource, ctx)
    row["status"] = resource.get("status")
    row["outcome"] = resource.get("outcome")
    row["purpose"] = [p for p in resource.get("purpose") or () if isinstance(p, str)]
    row["patient_ref"] = _patient_ref(resource.get("patient"))
    row["coverage_ref"] = coverage_refs[0] if coverage_refs else None
    row["coverage_refs"] = coverage_refs
    row["request_ref"] = reference(resource.get("request"))
    row["insurer_ref"] = insurer.ref
    row["insurer_display"] = insurer.display
    row["disposition"] = disposition if isinstance(disposition, str) else None
    row["inforce"] = first.get("inforce")
    row["verified_at"] = verified_at
    row["serviced_at"] = _serviced_at(resource)
    row.update(_therapy_benefits(items))
    row["authorization_required"] = _authorization_required(items)
    row["error_codes"] = [
        f"{system or ''}|{code}"
        for system, code, _ in (coding(e.get("code")) for e in resource.get("error") or ())
        if code
    ]
    return row
