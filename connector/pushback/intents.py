"""Which outbox items mapped rows imply (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date
from typing import Any

from connector.config import EndpointSettings
from connector.pushback import lifecycle
from connector.pushback.resources import AckPolicy, acknowledgment_status
from connector.warehouse.outbox import CASE_SUMMARY, EVALUATION_SCHEDULED, TASK_CREATE, TASK_UPDATE


def _policy(endpoint: EndpointSettings) -> AckPolicy:
    # Only the rules matter here; the owner is checked when something is built to be sent.
    return AckPolicy(
        identifier_system=endpoint.identifier_system,
        owner=endpoint.owner or "",
        offered_disciplines=tuple(endpoint.offered_disciplines),
        accept_complete_intake=endpoint.accept_complete_intake,
    )


def intents(
    endpoint: EndpointSettings,
    mapped: Mapping[str, Sequence[Mapping[str, Any]]],
    ranks: Mapping[str, int] | None = None,
) -> list[dict[str, str]]:
    """Outbox rows implied by mapped rows (pure): new active referrals to acknowledge, and acknowledged
    referrals whose first evaluation got booked.

    With `ranks` (`ServiceRequest/<id>` -> where its sent Task stands, `lifecycle.task_rank`), `mapped` is
    the whole warehouse of the endpoint and every milestone of `pushback.lifecycle` beyond a referral's
    Task is asked for too, for the referrals that have or get a Task, with their case summaries.
    """
    if not endpoint.push_acknowledgments:
        return []
    since = date.fromisoformat(endpoint.acknowledge_since) if endpoint.acknowledge_since else None
    out: list[dict[str, str]] = []
    created: dict[str, int] = {}
    policy = _policy(endpoint)
    for row in mapped.get("referral", ()):
        if row.get("status") != "active":
            continue
        authored = row.get("authored_on")
        if since is not None and (authored is None or authored.astimezone(UTC).date() < since):
            continue
        ref = f"ServiceRequest/{row['resource_id']}"
        out.append({"endpoint": endpoint.name, "kind": TASK_CREATE, "item_key": ref})
        status, _ = acknowledgment_status(row, policy)
        created[ref] = lifecycle.task_rank(status, None)
    for row in mapped.get("visit", ()):
        visit_ref = row.get("referral_ref")
        if visit_ref and row.get("kind") == "evaluation" and row.get("status") in ("booked", "fulfilled"):
            out.append(
                {
                    "endpoint": endpoint.name,
                    "kind": TASK_UPDATE,
                    "item_key": f"{visit_ref}{EVALUATION_SCHEDULED}",
                }
            )
    if ranks is None:
        return out
    lives = lifecycle.lives(
        mapped.get("referral", ()),
        mapped.get("visit", ()),
        mapped.get("episode", ()),
        mapped.get("care_plan", ()),
        mapped.get("clinical_note", ()),
    )
    for ref, life in lives.items():
        # A referral that has no Task and gets none has no life to follow.
        current = ranks[ref] if ref in ranks else created.get(ref)
        if current is None:
            continue
        for name, _reason in lifecycle.milestones(life, policy):
            if lifecycle.MILESTONES[name].rank > current:
                key = lifecycle.item_key(ref, name)
                out.append({"endpoint": endpoint.name, "kind": TASK_UPDATE, "item_key": key})
        if endpoint.sends_summaries:
            for summary in lifecycle.summaries(life, policy):
                key = lifecycle.item_key(ref, summary)
                out.append({"endpoint": endpoint.name, "kind": CASE_SUMMARY, "item_key": key})
    return out
