"""The therapy episode: EpisodeOfCare -> `episode`, CarePlan -> `care_plan`, Goal -> `goal`, DocumentReference
-> `clinical_note` (metadata only).

Stored: codes, dates, statuses and references, and a Goal's short description (a functional goal such as
"Walk 500 ft without a device", which the case summary to the referrer names). Never stored: the text of a
note, its attachments or its description, a plan's description or notes, a goal's notes.

Each row names its referral where the resource does (`referral_link` `reference`): an EpisodeOfCare's
`referralRequest`, a CarePlan's `basedOn` / `activity.reference` / `supportingInfo`, a Goal's `addresses`, a
DocumentReference's `context.related` pointing at a ServiceRequest. The others are linked after the sync by
`connector.warehouse.episode_links` (through their plan or encounter, else the patient + discipline rule).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from mappings.discipline import code_texts, code_tokens, discipline_of
from mappings.elements import coding, parse_fhir_datetime, reference, reference_to
from mappings.eligibility import base_row
from mappings.errors import MappingError
from mappings.fhir_ids import resource_label
from mappings.types import MapContext, MappedRecords

LOINC = "http://loinc.org"
#: LOINC document types -> note kind (the LOINC Document Ontology's kinds of note).
NOTE_KINDS_BY_CODE = {
    f"{LOINC}|11506-3": "progress",  # Progress note
    f"{LOINC}|18842-5": "discharge",  # Discharge summary
    f"{LOINC}|18776-5": "plan-of-care",  # Plan of care note
}
#: Words of a note type's text or display -> note kind, where no code decides (first match wins).
NOTE_KIND_WORDS = (
    ("discharge", "discharge"),
    ("progress", "progress"),
    ("plan of care", "plan-of-care"),
    ("re-eval", "progress"),
    ("reevaluation", "progress"),
    ("evaluation", "evaluation"),
    ("initial eval", "evaluation"),
    ("assessment", "evaluation"),
)
#: Longest goal description kept (a functional goal is a line, not a note).
GOAL_TEXT_MAX = 200
_WEEK_DAYS = {"s": 1 / 86400, "min": 1 / 1440, "h": 1 / 24, "d": 1.0, "wk": 7.0, "mo": 30.4375, "a": 365.25}


def _expect(resource: dict[str, Any], rtype: str) -> None:
    if resource.get("resourceType") != rtype:
        raise MappingError(f"{resource_label(resource)}: expected a {rtype}")


def _first_referral(refs: Iterable[Any]) -> str | None:
    for ref in refs:
        found = reference_to(ref, "ServiceRequest") if isinstance(ref, dict) else None
        if found:
            return found
    return None


def _period(value: Any, element: str) -> tuple[datetime | None, datetime | None]:
    period = value if isinstance(value, dict) else {}
    return (
        parse_fhir_datetime(period.get("start"), f"{element}.start"),
        parse_fhir_datetime(period.get("end"), f"{element}.end"),
    )


def _discipline(concepts: Iterable[Any], ctx: MapContext) -> str:
    return discipline_of(
        code_tokens(c for c in concepts if isinstance(c, dict)), ctx.options.discipline_codes
    )


def _linked(row: dict[str, Any], referral: str | None) -> dict[str, Any]:
    row["referral_ref"] = referral
    row["referral_link"] = "reference" if referral else None
    return row


# -- EpisodeOfCare -> episode -----------------------------------------------------------------------


def map_episode(resource: dict[str, Any], ctx: MapContext) -> MappedRecords:
    """Map a validated EpisodeOfCare to one `episode` row."""
    _expect(resource, "EpisodeOfCare")
    start, end = _period(resource.get("period"), "period")
    row = base_row(resource, ctx)
    row.update(
        status=resource.get("status"),
        discipline=_discipline(resource.get("type") or (), ctx),
        patient_ref=reference_to(resource.get("patient"), "Patient"),
        care_manager_ref=reference(resource.get("careManager")),
        managing_organization_ref=reference_to(resource.get("managingOrganization"), "Organization"),
        period_start=start,
        period_end=end,
    )
    return {"episode": [_linked(row, _first_referral(resource.get("referralRequest") or ()))]}


# -- CarePlan -> care_plan ----------------------------------------------------------------------------


def visits_per_week(timing: Any) -> tuple[float | None, float | None]:
    """(visits per week, weeks) of a Timing's repeat: `frequency` per `period` `periodUnit`, and its
    `boundsDuration` in weeks."""
    repeat = (timing or {}).get("repeat") if isinstance(timing, dict) else None
    if not isinstance(repeat, dict):
        return None, None
    per_week = None
    frequency, period, unit = repeat.get("frequency"), repeat.get("period"), repeat.get("periodUnit")
    if isinstance(frequency, int) and isinstance(period, int | float) and period > 0 and unit in _WEEK_DAYS:
        per_week = round(frequency * 7.0 / (period * _WEEK_DAYS[unit]), 2)
    bounds = repeat.get("boundsDuration")
    weeks = None
    if isinstance(bounds, dict) and isinstance(bounds.get("value"), int | float):
        days = _WEEK_DAYS.get(bounds.get("code") or bounds.get("unit") or "")
        weeks = round(bounds["value"] * days / 7.0, 2) if days else None
    return per_week, weeks


def map_care_plan(resource: dict[str, Any], ctx: MapContext) -> MappedRecords:
    """Map a validated CarePlan to one `care_plan` row: status, period, the frequency of its first
    scheduled activity, its goals; never its description or notes."""
    _expect(resource, "CarePlan")
    activities = [a for a in resource.get("activity") or () if isinstance(a, dict)]
    details = [a["detail"] for a in activities if isinstance(a.get("detail"), dict)]
    per_week, weeks = None, None
    for detail in details:
        per_week, weeks = visits_per_week(detail.get("scheduledTiming"))
        if per_week is not None:
            break
    start, end = _period(resource.get("period"), "period")
    referral = _first_referral(
        [
            *(resource.get("basedOn") or ()),
            *(a.get("reference") for a in activities),
            *(resource.get("supportingInfo") or ()),
        ]
    )
    concepts = [*(resource.get("category") or ()), *(d.get("code") for d in details)]
    row = base_row(resource, ctx)
    row.update(
        status=resource.get("status"),
        intent=resource.get("intent"),
        discipline=_discipline(concepts, ctx),
        patient_ref=reference_to(resource.get("subject"), "Patient"),
        encounter_ref=reference_to(resource.get("encounter"), "Encounter"),
        created_at=parse_fhir_datetime(resource.get("created"), "created"),
        period_start=start,
        period_end=end,
        visits_per_week=per_week,
        plan_weeks=weeks,
        activities=len(activities),
        goal_refs=[g for g in (reference_to(r, "Goal") for r in resource.get("goal") or ()) if g],
    )
    return {"care_plan": [_linked(row, referral)]}


# -- Goal -> goal ----------------------------------------------------------------------------------------


def _goal_text(concept: Any) -> str | None:
    _system, _code, text = coding(concept if isinstance(concept, dict) else None)
    if not isinstance(text, str) or not text.strip():
        return None
    text = " ".join(text.split())
    return text if len(text) <= GOAL_TEXT_MAX else text[: GOAL_TEXT_MAX - 1] + "…"


def map_goal(resource: dict[str, Any], ctx: MapContext) -> MappedRecords:
    """Map a validated Goal to one `goal` row (its short description, never its notes)."""
    _expect(resource, "Goal")
    description = resource.get("description")
    system, code, _ = coding(description if isinstance(description, dict) else None)
    targets = [t for t in resource.get("target") or () if isinstance(t, dict)]
    due = next((t["dueDate"] for t in targets if isinstance(t.get("dueDate"), str)), None)
    row = base_row(resource, ctx)
    row.update(
        lifecycle_status=resource.get("lifecycleStatus"),
        achievement_status=coding(resource.get("achievementStatus"))[1],
        description=_goal_text(description),
        description_code=f"{system or ''}|{code}" if code else None,
        discipline=_discipline(resource.get("category") or (), ctx),
        patient_ref=reference_to(resource.get("subject"), "Patient"),
        start_date=parse_fhir_datetime(resource.get("startDate"), "startDate"),
        target_date=parse_fhir_datetime(due, "target.dueDate"),
        status_date=parse_fhir_datetime(resource.get("statusDate"), "statusDate"),
    )
    return {"goal": [_linked(row, _first_referral(resource.get("addresses") or ()))]}


# -- DocumentReference -> clinical_note ----------------------------------------------------------------


def note_kind(concept: dict[str, Any] | None) -> str:
    """evaluation / progress / discharge / plan-of-care / other: the type's LOINC code, else its words."""
    for token in code_tokens([concept]):
        if token in NOTE_KINDS_BY_CODE:
            return NOTE_KINDS_BY_CODE[token]
    for text in code_texts([concept]):
        for word, kind in NOTE_KIND_WORDS:
            if word in text:
                return kind
    return "other"


def map_clinical_note(resource: dict[str, Any], ctx: MapContext) -> MappedRecords:
    """Map a validated DocumentReference to one `clinical_note` row: what kind of note, when, by whom, for
    which visit; never its content, attachments or description."""
    _expect(resource, "DocumentReference")
    doc_type = resource.get("type") if isinstance(resource.get("type"), dict) else None
    system, code, _ = coding(doc_type)
    context: dict[str, Any] = resource["context"] if isinstance(resource.get("context"), dict) else {}
    authors = [reference(a) for a in resource.get("author") or ()]
    encounters = [reference_to(e, "Encounter") for e in context.get("encounter") or ()]
    row = base_row(resource, ctx)
    row.update(
        status=resource.get("status"),
        doc_status=resource.get("docStatus"),
        type_system=system if code else None,
        type_code=code,
        note_kind=note_kind(doc_type),
        discipline=_discipline([doc_type, context.get("practiceSetting")], ctx),
        patient_ref=reference_to(resource.get("subject"), "Patient"),
        # A contained author ("#a2") names a person inside the note: not a reference worth keeping.
        author_ref=next((a for a in authors if a and not a.startswith("#")), None),
        encounter_ref=next((e for e in encounters if e), None),
        note_date=parse_fhir_datetime(resource.get("date"), "date"),
    )
    return {"clinical_note": [_linked(row, _first_referral(context.get("related") or ()))]}
