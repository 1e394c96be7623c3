"""Pre-authorization Claim -> `prior_auth_request` (+ `prior_auth_request_item`), its ClaimResponse ->
`prior_auth_response` (+ `prior_auth_response_item`).

The request and the decision are stored in separate tables, each keyed by its own resource, and joined by
the `prior_authorization` view on `ClaimResponse.request`; so whichever arrives first, the other links to
it when it arrives, and a newer version of one never overwrites what the other wrote.

Only `use = preauthorization` is handled here; claims (`use = claim`) belong to `mappings.claim`, and
for them these mappers return nothing. A Da Vinci PAS claim inquiry (`profile-claim-inquiry`) asks about a
request already made; it is a dead letter with that reason rather than a second request.

The decision is read, in this order, from the X12 306 review action of the Da Vinci PAS / HRex
`reviewAction` extension (per item adjudication, or on the ClaimResponse itself in older PAS versions),
then from the FHIR elements: `outcome` queued -> pending, error -> error, item adjudication amounts
(benefit / eligible > 0 approved, = 0 denied), and a `preAuthRef` without item detail -> approved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

from mappings.elements import coding, parse_fhir_datetime, reference, reference_to
from mappings.eligibility import base_row, payer_fields
from mappings.errors import MappingError
from mappings.fhir_ids import resource_label
from mappings.types import MapContext, MappedRecords

ADJUDICATION = "http://terminology.hl7.org/CodeSystem/adjudication"
# Extension URLs end in these names in PAS 1.x/2.x and HRex (hl7.org/fhir/us/davinci-pas|davinci-hrex/...).
_REVIEW_ACTION = "extension-reviewAction"
_REVIEW_ACTION_CODE = "extension-reviewActionCode"
_AUTHORIZED_DETAIL = "extension-itemAuthorizedDetail"
# A PAS claim inquiry asks the payer about an authorization already requested: not a request of its own.
_INQUIRY_PROFILE = "/profile-claim-inquiry"
_ITEM_PERIODS = ("extension-itemPreAuthPeriod", "extension-itemAuthorizedDate")
# Adjudication categories whose amount says what the payer will cover.
_COVERED_CATEGORIES = ("benefit", "eligible")

#: Decisions of a response (and of each of its items).
DECIDED = frozenset({"approved", "modified", "partial", "denied", "not_required"})
APPROVED = frozenset({"approved", "modified"})
#: Item decisions that count as an approved item (A2 "certified - partial" approves part of the item).
ITEM_APPROVED = frozenset({"approved", "modified", "partial"})


@cache
def review_actions() -> tuple[frozenset[str], dict[str, str]]:
    """(X12 306 systems, code -> decision), from `data/x12_306_review_actions.json`."""
    data = json.loads(resources.files("mappings").joinpath("data/x12_306_review_actions.json").read_text())
    return frozenset(data["systems"]), {code: entry["decision"] for code, entry in data["codes"].items()}


def _is_preauth(resource: dict[str, Any], rtype: str) -> bool:
    if resource.get("resourceType") != rtype:
        raise MappingError(f"{resource_label(resource)}: expected a {rtype}")
    return resource.get("use") == "preauthorization"


def _url_is(extension: dict[str, Any], name: str) -> bool:
    url = extension.get("url")
    return isinstance(url, str) and (url == name.removeprefix("extension-") or url.endswith(f"/{name}"))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# -- Claim (use = preauthorization) -> prior_auth_request ------------------------------------------


def map_preauth_claim(resource: dict[str, Any], ctx: MapContext) -> MappedRecords:
    """Map a validated pre-authorization Claim to its request row and item rows; {} for other uses."""
    if not _is_preauth(resource, "Claim"):
        return {}
    if _is_inquiry(resource):
        raise MappingError(
            f"{resource_label(resource)}: a Da Vinci PAS claim inquiry asks about an authorization already "
            "requested; it is not a request, so it is not counted as one"
        )
    try:
        return _request_rows(resource, ctx)
    except MappingError as exc:
        raise MappingError(f"{resource_label(resource)}: {exc}") from None


def _is_inquiry(resource: dict[str, Any]) -> bool:
    profiles = (resource.get("meta") or {}).get("profile") or ()
    return any(isinstance(p, str) and p.split("|")[0].endswith(_INQUIRY_PROFILE) for p in profiles)


def _service(concept: dict[str, Any] | None) -> tuple[str | None, str | None]:
    system, code, _ = coding(concept)
    return (system, code) if code else (None, None)


def _focal_coverage(resource: dict[str, Any]) -> str | None:
    insurances = [i for i in resource.get("insurance") or () if isinstance(i, dict)]
    ordered = sorted(insurances, key=lambda i: not i.get("focal"))  # the focal coverage first
    for insurance in ordered:
        ref = reference(insurance.get("coverage"))
        if ref:
            return ref
    return None


def _request_rows(resource: dict[str, Any], ctx: MapContext) -> MappedRecords:
    requested_at = parse_fhir_datetime(resource.get("created"), "created")
    if requested_at is None:
        raise MappingError("created: missing")  # 1..1; without it there is no turnaround
    base = base_row(resource, ctx)
    items: list[dict[str, Any]] = []
    for position, item in enumerate(resource.get("item") or (), start=1):
        system, code = _service(item.get("productOrService"))
        quantity = _number((item.get("quantity") or {}).get("value"))
        items.append(
            {
                **base,
                "sequence": item.get("sequence", position),
                "service_system": system,
                "service_code": code,
                # No quantity means one unit of the service (one visit, one evaluation).
                "units": 1.0 if quantity is None else quantity,
            }
        )
    insurer = payer_fields(resource, resource.get("insurer"))
    patient = resource.get("patient")
    referral = reference(resource.get("referral"))
    # Rows are filled in place, from a copy of the key columns: a {**key, ...} literal would insert every
    # column twice, and rows are built for every resource.
    request = dict(base)
    request["status"] = resource.get("status")
    request["priority"] = coding(resource.get("priority"))[1]
    request["patient_ref"] = reference_to(patient, "Patient")
    request["coverage_ref"] = _focal_coverage(resource)
    request["payer_key"] = insurer.key
    request["insurer_ref"] = insurer.ref
    request["insurer_display"] = insurer.display
    request["insurer_identifier"] = insurer.identifier
    request["provider_ref"] = reference(resource.get("provider"))
    request["referral_ref"] = referral if referral and referral.startswith("ServiceRequest/") else None
    request["requested_at"] = requested_at
    request["items_requested"] = len(items)
    request["units_requested"] = sum(item["units"] for item in items)
    request["service_codes"] = [
        f"{i['service_system'] or ''}|{i['service_code']}" for i in items if i["service_code"]
    ]
    # The item table is always named, so a new version with no items still clears the old ones.
    return {"prior_auth_request": [request], "prior_auth_request_item": items}


# -- ClaimResponse (use = preauthorization) -> prior_auth_response ---------------------------------


def _review_code(extension: dict[str, Any]) -> str | None:
    """The X12 306 code of a reviewAction extension: complex (PAS 2 / HRex) or a plain value (PAS 1)."""
    systems, _ = review_actions()
    for key in ("valueCode", "valueString"):
        if isinstance(extension.get(key), str):
            return extension[key].strip() or None
    concepts = [extension.get("valueCodeableConcept")]
    concepts += [
        sub.get("valueCodeableConcept")
        for sub in extension.get("extension") or ()
        if isinstance(sub, dict) and _url_is(sub, _REVIEW_ACTION_CODE)
    ]
    for concept in concepts:
        for item in (concept or {}).get("coding") or ():
            if item.get("code") and (item.get("system") in systems or item.get("system") is None):
                return str(item["code"])
    return None


def _review_codes(extensions: Any) -> list[str]:
    codes = []
    for extension in extensions or ():
        if isinstance(extension, dict) and _url_is(extension, _REVIEW_ACTION):
            code = _review_code(extension)
            if code:
                codes.append(code)
    return codes


def _review_numbers(extensions: Any) -> list[str]:
    """The authorization numbers of reviewAction extensions (PAS 2.x puts them there, not in preAuthRef)."""
    numbers = []
    for extension in extensions or ():
        if isinstance(extension, dict) and _url_is(extension, _REVIEW_ACTION):
            for sub in extension.get("extension") or ():
                if not isinstance(sub, dict) or sub.get("url") != "number":
                    continue
                value = sub.get("valueString")
                if isinstance(value, str) and value.strip():
                    numbers.append(value.strip())
    return numbers


def _authorization_number(resource: dict[str, Any]) -> str | None:
    """preAuthRef, else the first reviewAction number of the response, its items or their adjudications."""
    if isinstance(resource.get("preAuthRef"), str) and resource["preAuthRef"]:
        return str(resource["preAuthRef"])
    numbers = _review_numbers(resource.get("extension"))
    for item in [*(resource.get("item") or ()), *(resource.get("addItem") or ())]:
        if isinstance(item, dict):
            for adjudication in item.get("adjudication") or ():
                if isinstance(adjudication, dict):
                    numbers += _review_numbers(adjudication.get("extension"))
            numbers += _review_numbers(item.get("extension"))
    return numbers[0] if numbers else None


def _decision_of_code(code: str) -> str:
    return review_actions()[1].get(code, "unknown")


@dataclass(slots=True)
class _Line:
    item_sequence: int | None
    added: bool
    service_system: str | None
    service_code: str | None
    review_action: str | None
    decision: str | None
    units_authorized: float | None
    covered_amount: float | None


def _covered_amount(adjudications: list[dict[str, Any]]) -> float | None:
    """The amount the payer covers: the `benefit` adjudication, else the `eligible` one."""
    amounts: dict[str, float] = {}
    for adjudication in adjudications:
        system, code, _ = coding(adjudication.get("category"))
        amount = _number((adjudication.get("amount") or {}).get("value"))
        if code in _COVERED_CATEGORIES and system in (ADJUDICATION, None) and amount is not None:
            amounts.setdefault(code, amount)
    return next((amounts[c] for c in _COVERED_CATEGORIES if c in amounts), None)


def _authorized_units(item: dict[str, Any]) -> float | None:
    """Units the payer authorized: addItem.quantity or the PAS itemAuthorizedDetail quantity."""
    quantity = _number((item.get("quantity") or {}).get("value"))
    if quantity is not None:
        return quantity
    for extension in item.get("extension") or ():
        if isinstance(extension, dict) and _url_is(extension, _AUTHORIZED_DETAIL):
            for sub in extension.get("extension") or ():
                if sub.get("url") == "quantity":
                    return _number((sub.get("valueQuantity") or {}).get("value"))
    return None


def _line(item: dict[str, Any], added: bool) -> _Line:
    adjudications = [a for a in item.get("adjudication") or () if isinstance(a, dict)]
    codes = [code for a in adjudications for code in _review_codes(a.get("extension"))]
    codes += _review_codes(item.get("extension"))
    amount = _covered_amount(adjudications)
    decision: str | None
    if codes:
        decision = _combine([_decision_of_code(code) for code in codes])
    elif amount is not None:
        decision = "approved" if amount > 0 else "denied"
    else:
        decision = None
    sequence = item.get("itemSequence")
    if isinstance(sequence, list):  # addItem.itemSequence lists the request items it replaces
        sequence = sequence[0] if len(sequence) == 1 else None
    system, code = _service(item.get("productOrService")) if added else (None, None)
    return _Line(
        sequence, added, system, code, codes[0] if codes else None, decision, _authorized_units(item), amount
    )


def _combine(decisions: list[str]) -> str:
    """One decision from several (items of a response, or review actions of an item)."""
    found = set(decisions)
    if "pending" in found:
        return "pending"  # not final until every item is decided
    if len(found) > 1:
        found.discard("not_required")  # "no action required" on some items does not change the rest
        found.discard("unknown")
    if len(found) == 1:
        return found.pop()
    if found <= APPROVED:
        return "modified"
    if found <= {"approved", "modified", "partial", "denied"}:
        return "partial"
    return "unknown"


def _response_decision(resource: dict[str, Any], lines: list[_Line], top_codes: list[str]) -> str:
    outcome = resource.get("outcome")
    if outcome == "error":
        return "error"
    if outcome == "queued":
        return "pending"
    decided = [line.decision for line in lines if line.decision]
    if decided:
        return _combine(decided)
    if top_codes:
        return _combine([_decision_of_code(code) for code in top_codes])
    if resource.get("preAuthRef"):
        return "approved"
    return "unknown"


def _pre_auth_period(resource: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    """preAuthPeriod, else the span of the PAS/HRex per-item authorized periods."""
    period = resource.get("preAuthPeriod")
    if isinstance(period, dict):
        return (
            parse_fhir_datetime(period.get("start"), "preAuthPeriod.start"),
            parse_fhir_datetime(period.get("end"), "preAuthPeriod.end"),
        )
    starts: list[datetime] = []
    ends: list[datetime] = []
    for item in [*(resource.get("item") or ()), *(resource.get("addItem") or ())]:
        for extension in item.get("extension") or ():
            if isinstance(extension, dict) and any(_url_is(extension, name) for name in _ITEM_PERIODS):
                value = extension.get("valuePeriod") or {}
                start = parse_fhir_datetime(value.get("start"), "item.extension.valuePeriod.start")
                end = parse_fhir_datetime(value.get("end"), "item.extension.valuePeriod.end")
                starts += [start] if start else []
                ends += [end] if end else []
    return (min(starts) if starts else None, max(ends) if ends else None)


def map_preauth_response(resource: dict[str, Any], ctx: MapContext) -> MappedRecords:
    """Map a validated pre-authorization ClaimResponse to its response and item rows; {} for other uses."""
    if not _is_preauth(resource, "ClaimResponse"):
        return {}
    try:
        return _response_rows(resource, ctx)
    except MappingError as exc:
        raise MappingError(f"{resource_label(resource)}: {exc}") from None


def _response_rows(resource: dict[str, Any], ctx: MapContext) -> MappedRecords:
    responded_at = parse_fhir_datetime(resource.get("created"), "created")
    if responded_at is None:
        raise MappingError("created: missing")
    lines = [_line(item, False) for item in resource.get("item") or ()]
    lines += [_line(item, True) for item in resource.get("addItem") or ()]
    top_codes = _review_codes(resource.get("extension"))
    decision = _response_decision(resource, lines, top_codes)
    start, end = _pre_auth_period(resource)
    request = resource.get("request")
    insurer = payer_fields(resource, resource.get("insurer"))
    patient = resource.get("patient")
    insurances = sorted(
        (i for i in resource.get("insurance") or () if isinstance(i, dict)), key=lambda i: not i.get("focal")
    )
    coverage_refs = [ref for ref in (reference(i.get("coverage")) for i in insurances) if ref]
    disposition = resource.get("disposition")
    base = base_row(resource, ctx)
    item_rows = [
        {
            **base,
            "line": number,
            "item_sequence": line.item_sequence,
            "added": line.added,
            "service_system": line.service_system,
            "service_code": line.service_code,
            "review_action": line.review_action,
            "decision": line.decision,
            "units_authorized": line.units_authorized,
            "covered_amount": line.covered_amount,
        }
        for number, line in enumerate(lines, start=1)
    ]
    decided_items = [line for line in lines if line.decision in DECIDED]
    response = dict(base)
    response["status"] = resource.get("status")
    response["outcome"] = resource.get("outcome")
    response["decision"] = decision
    response["review_actions"] = sorted(
        {*top_codes, *(line.review_action for line in lines if line.review_action)}
    )
    # Only a literal Claim reference links; a conditional one (Claim?identifier=...) cannot.
    response["request_ref"] = reference_to(request, "Claim")
    response["patient_ref"] = reference_to(patient, "Patient")
    response["coverage_ref"] = coverage_refs[0] if coverage_refs else None
    response["payer_key"] = insurer.key
    response["insurer_ref"] = insurer.ref
    response["insurer_display"] = insurer.display
    response["insurer_identifier"] = insurer.identifier
    response["responded_at"] = responded_at
    response["pre_auth_ref"] = _authorization_number(resource)
    response["pre_auth_start"] = start
    response["pre_auth_end"] = end
    response["disposition"] = disposition if isinstance(disposition, str) else None
    response["items_decided"] = len(decided_items)
    response["items_approved"] = sum(1 for line in decided_items if line.decision in ITEM_APPROVED)
    response["error_codes"] = [
        f"{system or ''}|{code}"
        for system, code, _ in (coding(e.get("code")) for e in resource.get("error") or ())
        if code
    ]
    return {"prior_auth_response": [response], "prior_auth_response_item": item_rows}
