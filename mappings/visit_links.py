"""Visits linked to referrals, and evaluations told from treatment, where the resources do not say.

A pure function of one patient's (or a few patients') referrals and visits; `connector.warehouse.visit_links`
reads them from the warehouse after a sync and writes back what changed.

1. **Link.** A visit `basedOn` a ServiceRequest keeps that referral (`referral_link` `basedOn`). Any other
   visit with a start is linked to the patient's latest referral of the same discipline (a visit or
   referral of discipline `other` matches any) received on or before the visit's day and at most
   `window_days` before it (`inferred`). An Encounter whose Appointment is in the warehouse is left out: it
   follows its Appointment (the views join the two).
2. **Kind.** A kind decided by a code (`code`, `config`) stays. Among each referral's visits with no
   decided kind: when none of its visits is an evaluation by code, the first one attended or booked on or
   after the referral's day and within the window is its evaluation (if there is none, the first no-show:
   the evaluation was scheduled and missed); the visits after the evaluation (decided or inferred) are
   treatment (`kind_source` `inferred`). Visits before it (a cancelled first booking) stay `other`.

Inferred values are recomputed from the mapped ones every time, so a referral that arrives later, or a
visit that gains a code, moves the inference with it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta

#: Visit statuses that make an inferred evaluation, in order of preference.
_EVALUATION_STATUSES = (("fulfilled", "booked"), ("noshow",))
DEFAULT_WINDOW_DAYS = 90


@dataclass(frozen=True, slots=True)
class ReferralFacts:
    """What the rule needs of a referral: `ServiceRequest/<id>`, its patient, discipline and day."""

    ref: str
    patient_ref: str
    discipline: str
    received_on: date


@dataclass(frozen=True, slots=True)
class VisitFacts:
    """What the rule needs of a `visit` row, as stored (inferred values included)."""

    resource_type: str
    resource_id: str
    patient_ref: str
    referral_ref: str | None
    referral_link: str | None
    kind: str
    kind_source: str | None
    discipline: str
    status: str
    start_at: datetime | None
    appointment_ref: str | None

    @property
    def key(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"

    @property
    def stored(self) -> VisitLink:
        return VisitLink(self.referral_ref, self.referral_link, self.kind, self.kind_source)


@dataclass(frozen=True, slots=True)
class VisitLink:
    """The decided link and kind of one visit."""

    referral_ref: str | None
    referral_link: str | None
    kind: str
    kind_source: str | None


def _mapped(visit: VisitFacts) -> VisitLink:
    """The visit as its mapper wrote it: inferred values undone."""
    link = visit.stored
    if link.referral_link == "inferred":
        link = replace(link, referral_ref=None, referral_link=None)
    if link.kind_source == "inferred":
        link = replace(link, kind="other", kind_source=None)
    return link


def _start(visit: VisitFacts) -> datetime:
    assert visit.start_at is not None
    return visit.start_at


def _day(visit: VisitFacts) -> date:
    return _start(visit).date()


def _disciplines_match(a: str, b: str) -> bool:
    return a == b or "other" in (a, b)


def _in_window(day: date, received_on: date, window: timedelta) -> bool:
    return received_on <= day <= received_on + window


def _link(visit: VisitFacts, referrals: list[ReferralFacts], window: timedelta) -> ReferralFacts | None:
    """The patient's latest referral of the visit's discipline received within the window before it."""
    day = _day(visit)
    matches = [
        r
        for r in referrals
        if _in_window(day, r.received_on, window) and _disciplines_match(r.discipline, visit.discipline)
    ]
    return max(matches, key=lambda r: (r.received_on, r.ref), default=None)


def _infer_kinds(
    visits: list[VisitFacts],
    decided: dict[str, VisitLink],
    referral: ReferralFacts | None,
    window: timedelta,
) -> None:
    """Evaluation / treatment for one referral's visits whose kind no code decided (in `decided`)."""
    timed = sorted((v for v in visits if v.start_at is not None), key=lambda v: (_start(v), v.key))
    evaluation = next((v for v in timed if decided[v.key].kind == "evaluation"), None)
    if evaluation is None:
        open_ = [
            v
            for v in timed
            if decided[v.key].kind_source is None
            and (referral is None or _in_window(_day(v), referral.received_on, window))
        ]
        for statuses in _EVALUATION_STATUSES:
            evaluation = next((v for v in open_ if v.status in statuses), None)
            if evaluation is not None:
                _infer(decided, evaluation, "evaluation")
                break
    if evaluation is None:
        return
    for v in timed[timed.index(evaluation) + 1 :]:
        if decided[v.key].kind_source is None:
            _infer(decided, v, "treatment")


def _infer(decided: dict[str, VisitLink], visit: VisitFacts, kind: str) -> None:
    decided[visit.key] = replace(decided[visit.key], kind=kind, kind_source="inferred")


def link_visits(
    referrals: Iterable[ReferralFacts], visits: Iterable[VisitFacts], window_days: int = DEFAULT_WINDOW_DAYS
) -> dict[str, VisitLink]:
    """The link and kind of every visit (by `Type/id`), by the rules of this module."""
    window = timedelta(days=window_days)
    by_patient: dict[str, list[ReferralFacts]] = defaultdict(list)
    by_ref: dict[str, ReferralFacts] = {}
    for r in referrals:
        by_patient[r.patient_ref].append(r)
        by_ref[r.ref] = r
    visits = list(visits)
    appointments = {v.key for v in visits if v.resource_type == "Appointment"}
    decided = {v.key: _mapped(v) for v in visits}
    groups: dict[str, list[VisitFacts]] = defaultdict(list)
    for v in visits:
        if v.resource_type == "Encounter" and v.appointment_ref in appointments:
            continue  # it follows its Appointment
        link = decided[v.key]
        if link.referral_ref is None and v.start_at is not None:
            found = _link(v, by_patient.get(v.patient_ref, []), window)
            if found is not None:
                link = decided[v.key] = replace(link, referral_ref=found.ref, referral_link="inferred")
        if link.referral_ref is not None:
            groups[link.referral_ref].append(v)
    for ref, members in groups.items():
        _infer_kinds(members, decided, by_ref.get(ref), window)
    return decided
