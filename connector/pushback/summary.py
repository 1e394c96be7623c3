"""The case summary to the referring clinician (pure): a short structured text at three milestones, after
the evaluation, at each progress report and at discharge, as a Communication (default) or a
DocumentReference.

The text holds no more than: the discipline, the functional goals and how far the patient got, the
recommended frequency, the attendance so far, and the next step. It is built from warehouse rows, never
from a note's text. No I/O, no clock: the caller passes the facts and the time.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from connector.pushback.resources import instant

LOINC = "http://loinc.org"
#: LOINC "Summary of episode note": the type of the DocumentReference form.
SUMMARY_TYPE = ("34133-9", "Summary of episode note")
DISCIPLINE_NAMES = {
    "PT": "Physical therapy",
    "OT": "Occupational therapy",
    "SLP": "Speech-language pathology",
}
#: Milestone -> (what happened, the next step).
MILESTONE_TEXT = {
    "evaluation": (
        "evaluation completed",
        "treatment starts as planned; the next update follows the progress report",
    ),
    "progress": (
        "progress report",
        "treatment continues; the next update follows the next progress report or discharge",
    ),
    "discharge": ("discharged", "care is complete; no further visits are planned"),
}
#: Goal achievement (goal-achievement codes) and lifecycle words, as a referrer reads them.
_GOAL_WORDS = {
    "in-progress": "in progress",
    "improving": "improving",
    "worsening": "worsening",
    "no-change": "no change",
    "achieved": "achieved",
    "sustaining": "sustaining",
    "not-achieved": "not achieved",
    "no-progress": "no progress",
    "not-attainable": "not attainable",
}
MASK = "•••"


@dataclass(frozen=True, slots=True)
class GoalFact:
    description: str
    #: achievementStatus code, else the lifecycleStatus.
    status: str | None


@dataclass(frozen=True, slots=True)
class CaseFacts:
    """Everything a summary says and where it goes, read from the warehouse at push time."""

    endpoint: str
    identifier_system: str
    referral_id: str
    #: evaluation | progress | discharge
    milestone: str
    #: The outbox item's key suffix, unique per summary (`summary:progress:<note id>`).
    key: str
    discipline: str | None
    owner: str
    task_id: str | None
    patient_ref: str | None
    requester_ref: str | None
    requester_display: str | None
    goals: Sequence[GoalFact] = field(default_factory=tuple)
    visits_per_week: float | None = None
    plan_weeks: float | None = None
    attended: int = 0
    no_shows: int = 0
    cancelled: int = 0
    upcoming: int = 0


def _number(value: float) -> str:
    return f"{value:g}"


def frequency_text(per_week: float | None, weeks: float | None) -> str:
    if per_week is None:
        return "not stated"
    text = f"{_number(per_week)} visit{'s' if per_week != 1 else ''} a week"
    return text + (f" for {_number(weeks)} week{'s' if weeks != 1 else ''}" if weeks else "")


def _goal_line(goal: GoalFact) -> str:
    words = _GOAL_WORDS.get(goal.status or "", goal.status)
    return f"{goal.description} ({words})" if words else goal.description


def _response(facts: CaseFacts) -> str:
    counted: dict[str, int] = {}
    for goal in facts.goals:
        word = _GOAL_WORDS.get(goal.status or "", goal.status or "no status")
        counted[word] = counted.get(word, 0) + 1
    goals = ", ".join(f"{n} {word}" for word, n in sorted(counted.items(), key=lambda kv: (-kv[1], kv[0])))
    scheduled = facts.attended + facts.no_shows
    attendance = f"{facts.attended} of {scheduled} scheduled visit{'s' if scheduled != 1 else ''} attended"
    extras = [f"{facts.no_shows} no-show{'s' if facts.no_shows != 1 else ''}"] if facts.no_shows else []
    extras += [f"{facts.cancelled} cancelled"] if facts.cancelled else []
    extras += [f"{facts.upcoming} booked"] if facts.upcoming else []
    attendance += f" ({', '.join(extras)})" if extras else ""
    return f"goals {goals}; {attendance}" if goals else attendance


def summary_text(facts: CaseFacts) -> str:
    """The summary in five lines."""
    discipline = DISCIPLINE_NAMES.get(facts.discipline or "", "Therapy")
    happened, next_step = MILESTONE_TEXT[facts.milestone]
    goals = "; ".join(_goal_line(g) for g in facts.goals) or "none recorded yet"
    return "\n".join(
        [
            f"{discipline} update: {happened}",
            f"Functional goals: {goals}",
            f"Recommended frequency: {frequency_text(facts.visits_per_week, facts.plan_weeks)}",
            f"Patient response: {_response(facts)}",
            f"Next step: {next_step}",
        ]
    )


def summary_identifier(facts: CaseFacts) -> str:
    return f"{facts.endpoint}/ServiceRequest/{facts.referral_id}/{facts.key}"


def _ref(reference: str | None) -> dict[str, str] | None:
    return {"reference": reference} if reference else None


def _recipient(facts: CaseFacts) -> dict[str, str] | None:
    if facts.requester_ref and not facts.requester_ref.startswith("#"):
        return {"reference": facts.requester_ref}
    if facts.requester_display:
        return {"display": facts.requester_display}
    return None


def build_case_summary(facts: CaseFacts, *, form: str, sent: datetime) -> dict[str, object]:
    """The summary as a Communication (`form` "communication") or a DocumentReference
    ("document-reference")."""
    text = summary_text(facts)
    identifier = [{"system": facts.identifier_system, "value": summary_identifier(facts)}]
    referral = {"reference": f"ServiceRequest/{facts.referral_id}"}
    task = _ref(f"Task/{facts.task_id}" if facts.task_id else None)
    recipient = _recipient(facts)
    patient = _ref(facts.patient_ref)
    if form == "communication":
        resource: dict[str, object] = {
            "resourceType": "Communication",
            "identifier": identifier,
            "basedOn": [referral],
            "status": "completed",
            "category": [{"text": "case summary"}],
            "sent": instant(sent),
            "sender": {"reference": facts.owner},
            "payload": [{"contentString": text}],
        }
        if patient:
            resource["subject"] = patient
        if task:
            resource["about"] = [task]
        if recipient:
            resource["recipient"] = [recipient]
        return resource
    if form != "document-reference":
        raise ValueError(f"unknown case summary form {form!r}")
    code, display = SUMMARY_TYPE
    resource = {
        "resourceType": "DocumentReference",
        "identifier": identifier,
        "status": "current",
        "docStatus": "final",
        "type": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": "case summary"},
        "date": instant(sent),
        "author": [{"reference": facts.owner}],
        "description": f"{DISCIPLINE_NAMES.get(facts.discipline or '', 'Therapy')} case summary",
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "data": base64.b64encode(text.encode("utf-8")).decode("ascii"),
                }
            }
        ],
        "context": {"related": [referral, *([task] if task else [])]},
    }
    if patient:
        resource["subject"] = patient
    return resource


def masked(resource: dict[str, object]) -> dict[str, object]:
    """The summary with its text replaced by a mask: its structure, for dry runs, logs and the outbox."""
    out = dict(resource)
    if "payload" in out:
        out["payload"] = [{"contentString": MASK}]
    if "content" in out:
        out["content"] = [{"attachment": {"contentType": "text/plain; charset=utf-8", "data": MASK}}]
    return out
