"""The referral intake checklist: which standard intake items a ServiceRequest lacks.

Items (the endpoint chooses which are required, `MappingOptions.intake_required`):

- `diagnosis`: a coded reason (a `reasonCode` with a code) or a `reasonReference` to a Condition or
  Observation; a free-text reason alone cannot be billed or authorized, so it does not count.
- `referral_reason`: what is asked for, `code` (coded or text) or a `note`.
- `payer`: at least one `insurance` reference.
- `requested_start`: a start date (`occurrenceDateTime`, `occurrencePeriod.start`, or a Timing's first event
  or bounds start); a frequency alone ("3 times a week") is not a start date.
- `referrer`: a `requester` that identifies someone (reference, identifier or name).
- `patient`: a `subject` that identifies a patient (a reference or identifier, not a Group/Device/Location).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from mappings.elements import reference_type

_NOT_A_PATIENT = frozenset({"Group", "Device", "Location"})


def _has_identity(ref: Any) -> bool:
    """A Reference that points at something: a literal reference or an identifier."""
    if not isinstance(ref, dict):
        return False
    identifier = ref.get("identifier")
    return bool(ref.get("reference")) or (isinstance(identifier, dict) and bool(identifier.get("value")))


# The checks are plain loops rather than any(<generator>): they run for every referral, and creating a
# generator costs more than scanning the lists (mostly of one or two items) takes.


def _any_code(codings: Any) -> bool:
    """Whether a list of Codings has one with a code."""
    for item in codings or ():  # noqa: SIM110 - see above
        if isinstance(item, dict) and item.get("code"):
            return True
    return False


def _any_identity(refs: Any) -> bool:
    for ref in refs or ():  # noqa: SIM110 - see above
        if _has_identity(ref):
            return True
    return False


def _has_diagnosis(resource: dict[str, Any], _start: datetime | None) -> bool:
    for concept in resource.get("reasonCode") or ():
        if _any_code(concept.get("coding") if isinstance(concept, dict) else None):
            return True
    return _any_identity(resource.get("reasonReference"))


def _has_referral_reason(resource: dict[str, Any], _start: datetime | None) -> bool:
    code = resource.get("code")
    if isinstance(code, dict) and (code.get("text") or _any_code(code.get("coding"))):
        return True
    for note in resource.get("note") or ():  # noqa: SIM110 - see above
        if isinstance(note, dict) and note.get("text"):
            return True
    return False


def _has_payer(resource: dict[str, Any], _start: datetime | None) -> bool:
    return _any_identity(resource.get("insurance"))


def _has_requested_start(_resource: dict[str, Any], start: datetime | None) -> bool:
    return start is not None


def _has_referrer(resource: dict[str, Any], _start: datetime | None) -> bool:
    requester = resource.get("requester")
    return _has_identity(requester) or (isinstance(requester, dict) and bool(requester.get("display")))


def _has_patient(resource: dict[str, Any], _start: datetime | None) -> bool:
    subject = resource.get("subject")
    return _has_identity(subject) and reference_type(subject) not in _NOT_A_PATIENT


_CHECKS: dict[str, Callable[[dict[str, Any], datetime | None], bool]] = {
    "diagnosis": _has_diagnosis,
    "referral_reason": _has_referral_reason,
    "payer": _has_payer,
    "requested_start": _has_requested_start,
    "referrer": _has_referrer,
    "patient": _has_patient,
}


def intake_missing(
    resource: dict[str, Any], requested_start: datetime | None, required: Sequence[str]
) -> list[str]:
    """The required items the referral lacks, in the order they are required.

    `requested_start` is the already parsed start (the referral mapper computes it once). Unknown item
    names raise KeyError: the config validates them, so one here is a programming error.
    """
    return [item for item in dict.fromkeys(required) if not _CHECKS[item](resource, requested_start)]
