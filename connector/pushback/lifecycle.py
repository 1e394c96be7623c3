"""The acknowledgment Task follows the referral's life (pure): which milestones a referral has reached, and
the Task state each one means.

    received -> accepted (intake complete) -> accepted, evaluation scheduled -> in-progress (evaluation
    attended) -> completed (episode finished, plan of care completed or discharge summary written)
    or, at any point, rejected (declined by the practice) / cancelled (withdrawn by the referrer)

Each milestone is one outbox item (`ServiceRequest/<id>#<milestone>`), so it is sent once; a milestone at
or below the Task's current state is never sent (no state goes backwards), and nothing follows a final one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from connector.pushback.resources import AckPolicy, acknowledgment_status


@dataclass(frozen=True, slots=True)
class Milestone:
    name: str
    #: The Task's status at this milestone.
    status: str
    #: `businessStatus.text`: what a front desk calls it.
    business: str
    #: Order along the life; final milestones share the highest.
    rank: int


MILESTONES: Mapping[str, Milestone] = {
    m.name: m
    for m in (
        Milestone("accepted", "accepted", "intake complete", 1),
        Milestone("evaluation-scheduled", "accepted", "evaluation scheduled", 2),
        Milestone("in-progress", "in-progress", "evaluation done, in treatment", 3),
        Milestone("completed", "completed", "discharged", 4),
        Milestone("rejected", "rejected", "referral declined", 4),
        Milestone("cancelled", "cancelled", "referral withdrawn", 4),
    )
}
FINAL = 4
_TASK_RANK = {"received": 0, "accepted": 1, "in-progress": 3, "completed": 4, "rejected": 4, "cancelled": 4}


def task_rank(status: str | None, business: str | None) -> int:
    """Where a sent Task stands along the life (an accepted Task with its evaluation booked is further on)."""
    if status == "accepted" and business == MILESTONES["evaluation-scheduled"].business:
        return MILESTONES["evaluation-scheduled"].rank
    return _TASK_RANK.get(status or "", 0)


def item_key(referral_ref: str, milestone: str) -> str:
    return f"{referral_ref}#{milestone}"


def split_key(key: str) -> tuple[str, str | None]:
    """(`ServiceRequest/<id>`, milestone name or None) of an outbox item key."""
    ref, _, milestone = key.partition("#")
    return ref, milestone or None


@dataclass(slots=True)
class ReferralLife:
    """What the warehouse knows of one referral's life."""

    ref: str
    status: str | None = None
    discipline: str | None = None
    intake_complete: bool | None = None
    evaluation_booked: bool = False
    evaluation_attended: bool = False
    #: Statuses of its episodes, plans of care and the kinds of its notes.
    episode_statuses: set[str] = field(default_factory=set)
    plan_statuses: set[str] = field(default_factory=set)
    note_kinds: set[str] = field(default_factory=set)
    #: Ids of its progress notes (DocumentReference): one case summary each.
    progress_notes: set[str] = field(default_factory=set)


def lives(
    referrals: Iterable[Mapping[str, Any]],
    visits: Iterable[Mapping[str, Any]] = (),
    episodes: Iterable[Mapping[str, Any]] = (),
    plans: Iterable[Mapping[str, Any]] = (),
    notes: Iterable[Mapping[str, Any]] = (),
) -> dict[str, ReferralLife]:
    """`ServiceRequest/<id>` -> its life, from rows of `referral`, `visit`, `episode`, `care_plan` and
    `clinical_note` (rows naming a referral not among `referrals` get a life of their own, statusless)."""
    out: dict[str, ReferralLife] = {}
    for r in referrals:
        ref = f"ServiceRequest/{r['resource_id']}"
        out[ref] = ReferralLife(ref, r.get("status"), r.get("discipline"), r.get("intake_complete"))

    def life(ref: Any) -> ReferralLife | None:
        if not isinstance(ref, str) or not ref.startswith("ServiceRequest/"):
            return None
        return out.setdefault(ref, ReferralLife(ref))

    for v in visits:
        found = life(v.get("referral_ref"))
        if found and v.get("kind") == "evaluation":
            found.evaluation_booked |= v.get("status") in ("booked", "fulfilled")
            found.evaluation_attended |= v.get("status") == "fulfilled"
    for rows, target in ((episodes, "episode_statuses"), (plans, "plan_statuses")):
        for row in rows:
            found = life(row.get("referral_ref"))
            if found and row.get("status"):
                getattr(found, target).add(row["status"])
    for note in notes:
        found = life(note.get("referral_ref"))
        if found and note.get("status") != "entered-in-error":
            found.note_kinds.add(note.get("note_kind") or "other")
            if note.get("note_kind") == "progress" and note.get("resource_id"):
                found.progress_notes.add(str(note["resource_id"]))
    return out


def milestones(life: ReferralLife, policy: AckPolicy | None) -> list[tuple[str, str | None]]:
    """The milestones the referral has reached, in order, each with its `statusReason` (or None)."""
    if life.status in ("revoked", "entered-in-error"):
        why = (
            "the referral was withdrawn" if life.status == "revoked" else "the referral was entered in error"
        )
        return [("cancelled", why)]
    if policy is not None and life.discipline:
        status, reason = acknowledgment_status({"discipline": life.discipline}, policy)
        if status == "rejected":
            return [("rejected", reason)]
    if "cancelled" in life.episode_statuses and not life.evaluation_attended:
        return [("rejected", "the practice cancelled the episode before the evaluation")]
    reached: list[tuple[str, str | None]] = []
    if life.intake_complete and policy is not None and policy.accept_complete_intake:
        reached.append(("accepted", None))
    if life.evaluation_booked or life.evaluation_attended:
        reached.append(("evaluation-scheduled", None))
    if life.evaluation_attended:
        reached.append(("in-progress", None))
    if (
        life.status == "completed"
        or "finished" in life.episode_statuses
        or "completed" in life.plan_statuses
        or "discharge" in life.note_kinds
    ):
        reached.append(("completed", completion_reason(life)))
    return reached


def completion_reason(life: ReferralLife) -> str | None:
    """Why the referral's care is complete, in a front desk's words."""
    if "discharge" in life.note_kinds:
        return "discharge summary written"
    if "finished" in life.episode_statuses:
        return "episode of care finished"
    if "completed" in life.plan_statuses:
        return "plan of care completed"
    if life.status == "completed":
        return "referral completed"
    return None


#: Case summary milestones (`pushback.summary`), as outbox key suffixes.
SUMMARY_EVALUATION = "summary:evaluation"
SUMMARY_PROGRESS = "summary:progress:"
SUMMARY_DISCHARGE = "summary:discharge"


def summaries(life: ReferralLife, policy: AckPolicy | None) -> list[str]:
    """The case summaries the referral's life calls for: after the evaluation, one per progress note, at
    discharge; none for a declined or withdrawn referral."""
    reached = [name for name, _ in milestones(life, policy)]
    if not reached or reached[0] in ("rejected", "cancelled"):
        return []
    out = [SUMMARY_EVALUATION] if "in-progress" in reached else []
    out += [f"{SUMMARY_PROGRESS}{note}" for note in sorted(life.progress_notes)]
    out += [SUMMARY_DISCHARGE] if "completed" in reached else []
    return out


def summary_milestone(key: str) -> str:
    """evaluation / progress / discharge of a summary key suffix."""
    if key == SUMMARY_EVALUATION:
        return "evaluation"
    if key.startswith(SUMMARY_PROGRESS):
        return "progress"
    if key == SUMMARY_DISCHARGE:
        return "discharge"
    raise ValueError(f"unknown case summary {key!r}")
