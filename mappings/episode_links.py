"""The therapy episode's rows linked to referrals where the resources do not name one (pure).

A row that names its ServiceRequest keeps it (`referral_link` `reference`). The others, of one patient, are
linked by the first rule that finds a referral:

1. `care_plan`: a goal listed by a linked CarePlan belongs to that plan's referral;
2. `encounter`: a plan or note written at a visit (`encounter`) linked to a referral belongs to it;
3. `episode`: a plan, goal or note dated within a linked episode of the same discipline belongs to it;
4. `inferred`: the patient's latest referral of the same discipline (`other` matches any) received on or
   before the row's date and at most `HORIZON_DAYS` before it; an episode is linked by this rule only.

Episodes are linked first, then plans, goals and notes, so the later rules see the earlier links. Inferred
links are recomputed from the mapped ones every time, like the visits' (`mappings.visit_links`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from mappings.visit_links import ReferralFacts

#: A plan of care runs for months: a note or goal a year after the referral still belongs to it.
HORIZON_DAYS = 365
#: The tables, in the order they are linked.
TABLES = ("episode", "care_plan", "goal", "clinical_note")


@dataclass(frozen=True, slots=True)
class CareFacts:
    """What the rules need of an `episode` / `care_plan` / `goal` / `clinical_note` row, as stored."""

    table: str
    resource_type: str
    resource_id: str
    patient_ref: str
    discipline: str
    #: The row's day: the episode's or plan's start, the goal's start, the note's date (else last update).
    on: date | None
    referral_ref: str | None
    referral_link: str | None
    #: `Encounter/<id>` the plan or note was written at.
    encounter_ref: str | None = None
    #: The goals a plan lists (`Goal/<id>`).
    goal_refs: tuple[str, ...] = ()
    #: An episode's end day (open when None).
    until: date | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.table, self.resource_id


def _matches(a: str, b: str) -> bool:
    return a == b or "other" in (a, b)


def _latest_referral(referrals: Sequence[ReferralFacts], row: CareFacts) -> str | None:
    if row.on is None:
        return None
    earliest = row.on - timedelta(days=HORIZON_DAYS)
    found = [
        r
        for r in referrals
        if r.patient_ref == row.patient_ref
        and _matches(r.discipline, row.discipline)
        and earliest <= r.received_on <= row.on
    ]
    return max(found, key=lambda r: (r.received_on, r.ref)).ref if found else None


def link_care(
    referrals: Iterable[ReferralFacts], rows: Iterable[CareFacts], visit_referrals: Mapping[str, str]
) -> dict[tuple[str, str], tuple[str | None, str | None]]:
    """(referral_ref, referral_link) for every row; `visit_referrals` maps `Encounter/<id>` to the referral
    of its (linked) visit."""
    known = list(referrals)
    ordered = sorted(rows, key=lambda r: TABLES.index(r.table))
    decided: dict[tuple[str, str], tuple[str | None, str | None]] = {}
    goal_plans: dict[str, str] = {}  # Goal/<id> -> the referral of a linked plan listing it
    episodes: list[tuple[CareFacts, str]] = []
    for row in ordered:
        link: tuple[str | None, str | None]
        if row.referral_link == "reference" and row.referral_ref:
            link = (row.referral_ref, "reference")
        elif row.table == "goal" and f"Goal/{row.resource_id}" in goal_plans:
            link = (goal_plans[f"Goal/{row.resource_id}"], "care_plan")
        elif row.encounter_ref and row.encounter_ref in visit_referrals:
            link = (visit_referrals[row.encounter_ref], "encounter")
        elif row.table != "episode" and (within := _episode_of(episodes, row)):
            link = (within, "episode")
        else:
            inferred = _latest_referral(known, row)
            link = (inferred, "inferred" if inferred else None)
        decided[row.key] = link
        if link[0] and row.table == "care_plan":
            for goal in row.goal_refs:
                goal_plans.setdefault(goal, link[0])
        if link[0] and row.table == "episode":
            episodes.append((row, link[0]))
    return decided


def _episode_of(episodes: Sequence[tuple[CareFacts, str]], row: CareFacts) -> str | None:
    if row.on is None:
        return None
    for episode, referral in episodes:
        if (
            episode.patient_ref == row.patient_ref
            and _matches(episode.discipline, row.discipline)
            and episode.on is not None
            and episode.on <= row.on
            and (episode.until is None or row.on <= episode.until)
        ):
            return referral
    return None
