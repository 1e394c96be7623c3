"""Appointment / Encounter -> `visit` columns: one row per visit of a patient, linked to its referral.

Every Appointment and Encounter with a patient becomes a visit (the first visit per patient is computed
from all of them), whether or not it is `basedOn` a ServiceRequest; `referral_ref` is NULL when it is not.

- kind: `evaluation` / `treatment` from the visit's codes (`Appointment.serviceType` and
  `appointmentType`, `Encounter.type` and `serviceType`) through the shipped code map (`kind_source`
  `code`); else `evaluation` when a code or a word of the type's text is one of the endpoint's
  `[endpoints.visits]` evaluation codes / words (`config`); else `other`, until the sync's inference
  (`mappings.visit_links`) links visits that are not `basedOn` a referral and tells a referral's
  evaluation from its treatment visits (`inferred`).
- status, normalised over both resources:
  `booked` (Appointment booked; Encounter planned), `fulfilled` (the patient came: Appointment arrived /
  checked-in / fulfilled; Encounter arrived / triaged / in-progress / onleave / finished), `noshow`,
  `cancelled`, and `other` (proposed, pending, waitlist, entered-in-error, unknown). The raw value is kept
  in `fhir_status`.
"""

from __future__ import annotations

from typing import Any

from mappings.discipline import code_texts, code_tokens, discipline_of, visit_kind_and_source
from mappings.elements import parse_fhir_datetime, reference, reference_and_type
from mappings.errors import MappingError
from mappings.types import MappingOptions

VISIT_STATUSES: tuple[str, ...] = ("booked", "fulfilled", "noshow", "cancelled", "other")

_APPOINTMENT_STATUS = {
    "booked": "booked",
    "arrived": "fulfilled",
    "checked-in": "fulfilled",
    "fulfilled": "fulfilled",
    "noshow": "noshow",
    "cancelled": "cancelled",
}
_ENCOUNTER_STATUS = {
    "planned": "booked",
    "arrived": "fulfilled",
    "triaged": "fulfilled",
    "in-progress": "fulfilled",
    "onleave": "fulfilled",
    "finished": "fulfilled",
    "cancelled": "cancelled",
}


def _referral_ref(based_on: list[dict[str, Any]] | None) -> str | None:
    """The first `basedOn` that is a ServiceRequest (CarePlans and others are not referrals)."""
    for ref in based_on or ():
        target, rtype = reference_and_type(ref)
        if rtype == "ServiceRequest":
            return target
    return None


def _referral(based_on: list[dict[str, Any]] | None) -> dict[str, Any]:
    ref = _referral_ref(based_on)
    return {"referral_ref": ref, "referral_link": "basedOn" if ref else None}


def _common(
    status: str | None,
    status_map: dict[str, str],
    concepts: list[Any],
    options: MappingOptions,
) -> dict[str, Any]:
    tokens = code_tokens(concepts)
    kind, source = visit_kind_and_source(
        tokens, code_texts(concepts), options.evaluation_codes, options.evaluation_text
    )
    return {
        "kind": kind,
        "kind_source": source,
        "discipline": discipline_of(tokens, options.discipline_codes),
        "status": status_map.get(status or "", "other"),
        "fhir_status": status,
        "type_codes": tokens,
    }


def appointment_columns(resource: dict[str, Any], options: MappingOptions) -> dict[str, Any]:
    """The `visit` columns of an Appointment; MappingError when no participant is a Patient."""
    patient_ref = None
    for participant in resource.get("participant") or ():
        actor = participant.get("actor") if isinstance(participant, dict) else None
        target, rtype = reference_and_type(actor)
        if rtype == "Patient" and target:
            patient_ref = target
            break
    if patient_ref is None:
        raise MappingError("participant: no Patient participant with a reference")
    concepts = [*(resource.get("serviceType") or ()), resource.get("appointmentType")]
    return {
        **_referral(resource.get("basedOn")),
        "patient_ref": patient_ref,
        **_common(resource.get("status"), _APPOINTMENT_STATUS, concepts, options),
        "start_at": parse_fhir_datetime(resource.get("start"), "start"),
        "booked_at": parse_fhir_datetime(resource.get("created"), "created"),
        "appointment_ref": None,
    }


def encounter_columns(resource: dict[str, Any], options: MappingOptions) -> dict[str, Any]:
    """The `visit` columns of an Encounter; MappingError when its subject is not a Patient."""
    subject = resource.get("subject")
    patient_ref, rtype = reference_and_type(subject)
    if rtype != "Patient" or not patient_ref:
        raise MappingError("subject: not a Patient reference")
    concepts = [*(resource.get("type") or ()), resource.get("serviceType")]
    period = resource.get("period")
    start = period.get("start") if isinstance(period, dict) else None
    appointments = [ref for ref in (reference(a) for a in resource.get("appointment") or ()) if ref]
    return {
        **_referral(resource.get("basedOn")),
        "patient_ref": patient_ref,
        **_common(resource.get("status"), _ENCOUNTER_STATUS, concepts, options),
        "start_at": parse_fhir_datetime(start, "period.start"),
        "booked_at": None,
        "appointment_ref": appointments[0] if appointments else None,
    }
