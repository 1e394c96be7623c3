"""Which outbox items a page of mapped rows implies (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date
from typing import Any

from connector.config import EndpointSettings
from connector.warehouse.outbox import EVALUATION_SCHEDULED, TASK_CREATE, TASK_UPDATE


def intents(
    endpoint: EndpointSettings, mapped: Mapping[str, Sequence[Mapping[str, Any]]]
) -> list[dict[str, str]]:
    """Outbox rows implied by one page's mapped rows (pure): new active referrals to acknowledge, and
    acknowledged referrals whose first evaluation got booked."""
    if not endpoint.push_acknowledgments:
        return []
    since = date.fromisoformat(endpoint.acknowledge_since) if endpoint.acknowledge_since else None
    out: list[dict[str, str]] = []
    for row in mapped.get("referral", ()):
        if row.get("status") != "active":
            continue
        authored = row.get("authored_on")
        if since is not None and (authored is None or authored.astimezone(UTC).date() < since):
            continue
        out.append(
            {
                "endpoint": endpoint.name,
                "kind": TASK_CREATE,
                "item_key": f"ServiceRequest/{row['resource_id']}",
            }
        )
    for row in mapped.get("visit", ()):
        ref = row.get("referral_ref")
        if ref and row.get("kind") == "evaluation" and row.get("status") in ("booked", "fulfilled"):
            out.append(
                {"endpoint": endpoint.name, "kind": TASK_UPDATE, "item_key": f"{ref}{EVALUATION_SCHEDULED}"}
            )
    return out
