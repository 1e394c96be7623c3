"""The referral subject's mappers: referrals, their sources and the visits that follow them.

- ServiceRequest -> one `referral` row (discipline, intake checklist, source), plus a `referral_source` row
  when the requester is a contained Practitioner / PractitionerRole / Organization.
- Practitioner / PractitionerRole / Organization (the `_include`d requesters, or streams of their own)
  -> `referral_source` rows (`mappings.referral_source`).
- Appointment / Encounter -> `visit` rows (`mappings.visit`).

Every row is keyed by (endpoint, resource_type, resource_id) and carries the version, lastUpdated and the
content hash of its resource. Only coded, non-identifying facts are kept: no patient names or addresses,
no notes, no free-text instructions. The requester's display is kept because it names the referring
clinician or organization, unless the requester is the patient or a relative.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from mappings.canonical import canonical_json, digest
from mappings.discipline import code_tokens, discipline_of
from mappings.elements import (
    CPT,
    SNOMED,
    ResourceMeta,
    codes,
    coding,
    parse_fhir_datetime,
    reference,
    reference_and_type,
    reference_to,
    resource_meta,
)
from mappings.errors import MappingError
from mappings.fhir_ids import resource_label
from mappings.intake import intake_missing
from mappings.referral_source import (
    SELF_REQUESTERS,
    SOURCE_RESOURCES,
    requester_source_type,
    source_columns,
)
from mappings.types import MapContext, MappedRecords, MappingOptions
from mappings.visit import appointment_columns, encounter_columns


def content_hash(resource: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys), so an unchanged resource is recognised on re-sync."""
    try:
        return digest(canonical_json(resource))
    except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits
        label = resource_label(resource)
        raise MappingError(f"{label}: cannot serialise resource: {type(exc).__name__}") from None


def resource_hash(resource: dict[str, Any], ctx: MapContext) -> str:
    """`content_hash` of the resource `ctx` is for (given by the caller, or taken here)."""
    return ctx.resource_hash if ctx.resource_hash is not None else content_hash(resource)


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


def _refs(refs: list[dict[str, Any]] | None) -> list[str]:
    found = []
    for item in refs or ():
        ref = reference(item)
        if ref is not None:
            found.append(ref)
    return found


def _key_columns(resource: dict[str, Any], ctx: MapContext) -> dict[str, Any]:
    """The natural key, version, lastUpdated and content hash every mapped row starts with."""
    return _key_of(resource, ctx, resource_meta(resource))


def _key_of(resource: dict[str, Any], ctx: MapContext, meta: ResourceMeta) -> dict[str, Any]:
    """`_key_columns` from the resource's already read `resource_meta`."""
    rtype, rid, version_id, last_updated, _ = meta
    return {
        "endpoint": ctx.endpoint,
        "resource_type": rtype,
        "resource_id": rid,
        "version_id": version_id,
        "last_updated": last_updated,
        "content_hash": resource_hash(resource, ctx),
    }


def _mapped(
    table: str,
    expected: tuple[str, ...],
    resource: dict[str, Any],
    ctx: MapContext,
    columns: Callable[[dict[str, Any], MappingOptions], dict[str, Any]],
) -> MappedRecords:
    """One row of `table`: the key columns plus `columns(resource)`; errors name the resource."""
    if resource.get("resourceType") not in expected:
        raise MappingError(f"{resource_label(resource)}: expected a {' or '.join(expected)}")
    row = _key_columns(resource, ctx)
    try:
        row.update(columns(resource, ctx.options))  # in place, as in `_referral_row`
    except MappingError as exc:
        # Element helpers name the element only; add which resource it was.
        raise MappingError(f"{row['resource_type']}/{row['resource_id']}: {exc}") from None
    return {table: [row]}


def map_service_request(resource: dict[str, Any], ctx: MapContext) -> MappedRecords:
    """Map a validated ServiceRequest to one `referral` row (and a contained requester's source row)."""
    meta = resource_meta(resource)
    rtype, rid = meta[0], meta[1]
    if rtype != "ServiceRequest":
        raise MappingError(f"{resource_label(resource)}: expected a ServiceRequest")
    try:
        key = _key_of(resource, ctx, meta)
        row = _referral_row(key, resource, ctx.options)
        records: MappedRecords = {"referral": [row]}
        contained = _contained_source(resource, key)
        if contained is not None:
            row["source_ref"] = f"{contained['resource_type']}/{contained['resource_id']}"
            row["source_type"] = row["source_type"] or contained["source_type"]
            records["referral_source"] = [contained]
        return records
    except MappingError as exc:
        raise MappingError(f"{rtype}/{rid}: {exc}") from None


def _contained_source(resource: dict[str, Any], key: dict[str, Any]) -> dict[str, Any] | None:
    """A `referral_source` row for a requester that lives inside the ServiceRequest (`#id`).

    Its key is (source type, "<ServiceRequest id>#<contained id>"): contained ids are only unique within
    their resource. It takes the ServiceRequest's version and lastUpdated, its own content hash.
    """
    literal = reference(resource.get("requester"))
    if not literal or not literal.startswith("#"):
        return None
    for item in resource.get("contained") or ():
        if not isinstance(item, dict) or item.get("id") != literal[1:]:
            continue
        if item.get("resourceType") not in SOURCE_RESOURCES:
            return None  # a contained Patient / RelatedPerson: a self-referral, never stored
        source_id = f"{key['resource_id']}#{item['id']}"
        return {
            **key,
            "resource_type": item["resourceType"],
            "resource_id": source_id,
            "content_hash": content_hash(item),
            "source_ref": f"{item['resourceType']}/{source_id}",
            **source_columns(item),
        }
    return None


def _referral_row(key: dict[str, Any], resource: dict[str, Any], options: MappingOptions) -> dict[str, Any]:
    """The `referral` row: the key columns, then what the ServiceRequest says."""
    subject = resource.get("subject")
    if not isinstance(subject, dict) or not subject:
        raise MappingError("subject: missing")
    requester = resource.get("requester")
    requester_ref, requester_type = reference_and_type(requester)
    service_system, service_code, service_display = _service(resource.get("code"))
    coverage_refs = _refs(resource.get("insurance"))
    requested_start = _requested_start(resource)
    source_type = requester_source_type(requester)
    if requester_ref is not None and requester_ref.startswith("#"):
        source_ref = None  # set from the contained resource, when it is a source
        if source_type is None and _contained_type(resource, requester_ref) in SELF_REQUESTERS:
            source_type = "self"
    else:
        source_ref = None if source_type == "self" else requester_ref
    performers = _refs(resource.get("performer"))
    # Discipline from what is ordered first, then from whom it is ordered (performerType).
    tokens = code_tokens([resource.get("code"), resource.get("performerType")])
    missing = intake_missing(resource, requested_start, options.intake_required)
    # Rows are filled in place, from a copy of the key columns: a {**key, ...} literal would insert every
    # column twice, and rows are built for every resource.
    row = dict(key)
    row["status"] = resource.get("status")
    row["intent"] = resource.get("intent")
    row["priority"] = resource.get("priority")
    row["category_code"] = _category_code(resource.get("category"))
    row["authored_on"] = parse_fhir_datetime(resource.get("authoredOn"), "authoredOn")
    row["requested_start"] = requested_start
    row["patient_ref"] = reference_to(subject, "Patient")
    row["requester_ref"] = requester_ref
    row["requester_display"] = (
        requester.get("display")
        if isinstance(requester, dict) and requester_type not in SELF_REQUESTERS
        else None
    )
    row["service_system"] = service_system
    row["service_code"] = service_code
    row["service_display"] = service_display
    row["reason_codes"] = codes(resource.get("reasonCode"))
    row["reason_refs"] = _refs(resource.get("reasonReference"))
    row["coverage_ref"] = coverage_refs[0] if coverage_refs else None
    row["coverage_refs"] = coverage_refs
    row["discipline"] = discipline_of(tokens, options.discipline_codes)
    row["performer_ref"] = performers[0] if performers else None
    row["based_on_refs"] = _refs(resource.get("basedOn"))
    row["replaces_refs"] = _refs(resource.get("replaces"))
    row["source_ref"] = source_ref
    row["source_type"] = source_type
    row["intake_missing"] = missing
    row["intake_complete"] = not missing
    return row


def _contained_type(resource: dict[str, Any], literal: str) -> str | None:
    for item in resource.get("contained") or ():
        if isinstance(item, dict) and item.get("id") == literal[1:]:
            return item.get("resourceType")
    return None


def map_referral_source(resource: dict[str, Any], ctx: MapContext) -> MappedRecords:
    """Map a validated Practitioner, PractitionerRole or Organization to one `referral_source` row."""

    def columns(res: dict[str, Any], _options: MappingOptions) -> dict[str, Any]:
        return {"source_ref": f"{res['resourceType']}/{res['id']}", **source_columns(res)}

    return _mapped("referral_source", SOURCE_RESOURCES, resource, ctx, columns)


def map_appointment(resource: dict[str, Any], ctx: MapContext) -> MappedRecords:
    """Map a validated Appointment to one `visit` row; MappingError when it has no Patient participant."""
    return _mapped("visit", ("Appointment",), resource, ctx, appointment_columns)


def map_encounter(resource: dict[str, Any], ctx: MapContext) -> MappedRecords:
    """Map a validated Encounter to one `visit` row; MappingError when its subject is not a Patient."""
    return _mapped("visit", ("Encounter",), resource, ctx, encounter_columns)
