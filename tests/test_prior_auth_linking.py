"""Requests and decisions link in the `prior_authorization` view whatever order they arrive in."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.test_payer_builders import load, preauth_claim, preauth_response


def as_utc(value: object) -> datetime:
    """A view timestamp: timestamptz on PostgreSQL, naive UTC text on SQLite."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        result = conn.execute(sa.text("SELECT * FROM prior_authorization ORDER BY claim_id, response_id"))
        return [dict(row._mapping) for row in result]


CLAIM = preauth_claim("pa-1", "2026-09-01T00:00:00Z")
RESPONSE = preauth_response(
    "resp-1", "2026-09-03T12:00:00Z", request="Claim/pa-1", actions={2: "A1"}, end="2026-12-01"
)


@pytest.mark.parametrize("order", ["request first", "response first"])
def test_request_and_response_link_in_either_order(engine: Engine, order: str) -> None:
    first, second = (CLAIM, RESPONSE) if order == "request first" else (RESPONSE, CLAIM)
    load(engine, first)
    before = rows(engine)
    assert len(before) == 1
    if order == "request first":
        # Pending until a response arrives.
        assert (before[0]["claim_id"], before[0]["response_id"], before[0]["decision"]) == (
            "pa-1",
            None,
            "pending",
        )
        assert before[0]["decided_at"] is None
    else:
        # The response is visible as an orphan until its request arrives.
        assert (before[0]["claim_id"], before[0]["response_id"], before[0]["decision"]) == (
            None,
            "resp-1",
            "approved",
        )
        assert before[0]["turnaround_days"] is None
    load(engine, second)
    (row,) = rows(engine)
    assert (row["claim_id"], row["response_id"], row["decision"]) == ("pa-1", "resp-1", "approved")
    assert row["payer_key"] == "Organization/pA"
    assert row["turnaround_days"] == pytest.approx(2.5)
    assert row["pre_auth_ref"] == "AUTH-resp-1"
    # Item 2 approved (12 units requested); item 1 not adjudicated by the payer.
    assert (row["items_requested"], row["units_requested"]) == (2, 13.0)
    assert (row["items_approved"], row["units_approved"]) == (1, 12.0)


def test_pended_response_stays_pending_until_the_final_one(engine: Engine) -> None:
    pended = preauth_response(
        "resp-p", "2026-09-02T00:00:00Z", request="Claim/pa-1", actions={1: "A4", 2: "A4"}
    )
    load(engine, CLAIM, pended)
    (row,) = rows(engine)
    assert (row["response_id"], row["decision"], row["decided_at"], row["turnaround_days"]) == (
        "resp-p",
        "pending",
        None,
        None,
    )
    final = preauth_response(
        "resp-f", "2026-09-05T00:00:00Z", request="Claim/pa-1", actions={1: "A1", 2: "A3"}
    )
    load(engine, final)
    (row,) = rows(engine)
    assert (row["response_id"], row["decision"]) == ("resp-f", "partial")
    assert row["decided_at"] == datetime(2026, 9, 5, tzinfo=UTC) or str(row["decided_at"]).startswith(
        "2026-09-05"
    )
    assert row["turnaround_days"] == pytest.approx(4.0)
    assert (row["items_approved"], row["units_approved"]) == (1, 1.0)


def test_a_newer_claim_version_replaces_its_items(engine: Engine) -> None:
    load(engine, CLAIM, RESPONSE)
    newer = preauth_claim("pa-1", "2026-09-01T00:00:00Z", quantities=(1, 20), version=2)
    newer["meta"]["lastUpdated"] = "2026-09-02T00:00:00Z"
    load(engine, newer)
    (row,) = rows(engine)
    assert (row["units_requested"], row["units_approved"]) == (21.0, 20.0)
    # An older version arriving late changes nothing.
    load(engine, CLAIM)
    (row,) = rows(engine)
    assert row["units_requested"] == 21.0


def test_denial_counts_zero_units_and_claim_use_is_ignored(engine: Engine) -> None:
    denied = preauth_response(
        "resp-d", "2026-09-04T00:00:00Z", request="Claim/pa-1", actions={1: "A3", 2: "A3"}
    )
    claim_use = preauth_claim("c-9", "2026-09-01T00:00:00Z")
    claim_use["use"] = "claim"
    load(engine, CLAIM, denied, claim_use)
    (row,) = rows(engine)  # the use = claim Claim is no prior authorization
    assert (row["decision"], row["items_approved"], row["units_approved"]) == ("denied", 0, 0)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM prior_auth_request")).scalar_one() == 1
