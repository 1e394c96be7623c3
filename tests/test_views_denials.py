"""v_denial_status, v_denial_queue, v_denials_by_reason and v_clean_claim_rate with hand-computed numbers,
on SQLite and PostgreSQL, written through the real mapper and writer."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.sync.pipeline import map_resources
from connector.warehouse.writer import PageWrite, write_page
from mappings.types import MapContext
from tests.test_denial_builders import claim, eob, response

EP = "clinic"
CTX = MapContext(endpoint=EP, synced_at=datetime(2026, 11, 1, tzinfo=UTC))
A, B = "Organization/payer-a", "Organization/payer-b"


def _scenario() -> list[dict[str, Any]]:
    """Claims and decisions; comments give what the views must say."""
    return [
        # c1: item 1 denied CO-197 on 09-11, paid by the re-adjudication r1b on 10-05 -> resolved.
        claim("c1", "2026-09-01T00:00:00Z", [(1, "97110", 100.0), (2, "97530", 50.0)]),
        response("r1", "c1", "2026-09-11T00:00:00Z", [(1, 100.0, 0.0, "CO-197"), (2, 50.0, 40.0, None)]),
        response("r1b", "c1", "2026-10-05T00:00:00Z", [(1, 100.0, 80.0, None), (2, 50.0, 40.0, None)]),
        # c2: denied for medical necessity on 09-20 (17 days after the claim) -> open; the EOB names the
        # ClaimResponse and must not be counted twice.
        claim("c2", "2026-09-03T00:00:00Z", [(1, "97165", 150.0)]),
        response("r2", "c2", "2026-09-20T00:00:00Z", [(1, 150.0, 0.0, "50", "N115")]),
        eob("e2", "c2", "2026-09-20T00:00:00Z", [(1, 150.0, 0.0, "50")], claim_response="r2"),
        # c3 (payer B): item 1 denied with an unknown code; c4 corrects it (related prior) -> appealed.
        claim("c3", "2026-09-05T00:00:00Z", [(1, "92507", 120.0), (2, "97110", 60.0)], payer=B),
        response(
            "r3", "c3", "2026-09-25T00:00:00Z", [(1, 120.0, 0.0, "P99"), (2, 60.0, 48.0, "PR-2")], payer=B
        ),
        claim("c4", "2026-10-01T00:00:00Z", [(1, "92507", 120.0)], payer=B, related="c3"),
        # c5 / c7: paid in full on first adjudication (October / September, payer A).
        claim("c5", "2026-10-02T00:00:00Z", [(1, "97530", 50.0)]),
        response("r5", "c5", "2026-10-10T00:00:00Z", [(1, 50.0, 40.0, None)]),
        claim("c7", "2026-09-02T00:00:00Z", [(1, "97110", 100.0)]),
        response("r7", "c7", "2026-09-12T00:00:00Z", [(1, 100.0, 80.0, None)]),
        # c6 (payer B): timely filing on 09-15, denied again on 10-15 -> the first is superseded.
        claim("c6", "2026-09-10T00:00:00Z", [(1, "97110", 100.0)], payer=B),
        response("r6", "c6", "2026-09-15T00:00:00Z", [(1, 100.0, 0.0, "29")], payer=B),
        response("r6b", "c6", "2026-10-15T00:00:00Z", [(1, 100.0, 0.0, "29")], payer=B),
    ]


def _load(engine: Engine, resources: list[dict[str, Any]]) -> None:
    """One page per resource, in the given order, mapped and written as the pipeline does."""
    for resource in resources:
        page = map_resources(EP, resource["resourceType"], [resource], CTX.synced_at)
        assert not page.rejects, page.rejects
        write_page(
            engine,
            PageWrite(endpoint=EP, resource_type=resource["resourceType"], raw=page.raw, mapped=page.mapped),
        )


def _rows(engine: Engine, sql: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(sa.text(sql))]


def _day(value: Any) -> str:
    return str(value)[:10]


@pytest.fixture(params=["in order", "reversed"])
def loaded(engine: Engine, request: pytest.FixtureRequest) -> Engine:
    resources = _scenario()
    # The views must not depend on the order resources arrive in.
    _load(engine, resources if request.param == "in order" else resources[::-1])
    return engine


def test_denial_status(loaded: Engine) -> None:
    rows = _rows(
        loaded,
        "SELECT resource_id, line_key, status, category, reason_code, group_code, days_to_decision, "
        "product_code, payer, denied_amount, age_days, decided_at FROM v_denial_status ORDER BY resource_id",
    )
    got = {
        r["resource_id"]: (r["line_key"], r["status"], r["category"], r["reason_code"], r["days_to_decision"])
        for r in rows
    }
    assert got == {
        "r1": ("item-1", "resolved", "authorization", "197", 10),
        "r2": ("item-1", "open", "medical_necessity", "50", 17),
        "r3": ("item-1", "appealed", "other", "P99", 20),
        "r6": ("item-1", "superseded", "timely_filing", "29", 5),
        "r6b": ("item-1", "open", "timely_filing", "29", 35),
    }
    by_id = {r["resource_id"]: r for r in rows}
    assert by_id["r1"]["group_code"] == "CO"
    assert by_id["r1"]["product_code"] == "97110"  # from the claim's item 1
    assert by_id["r3"]["product_code"] == "92507"
    assert by_id["r3"]["payer"] == B
    assert float(by_id["r2"]["denied_amount"]) == 150.0
    now = datetime.now(UTC)
    expected_age = math.floor((now - datetime(2026, 9, 20, tzinfo=UTC)).total_seconds() / 86400)
    assert by_id["r2"]["age_days"] in (expected_age, expected_age - 1)


def test_denial_queue_oldest_first_without_resolved_or_superseded(loaded: Engine) -> None:
    rows = _rows(loaded, "SELECT * FROM v_denial_queue")
    assert [(r["resource_id"], r["status"]) for r in rows] == [
        ("r2", "open"),
        ("r3", "appealed"),
        ("r6b", "open"),
    ]
    assert rows[0]["next_action"].startswith("appeal with medical records")
    assert rows[0]["claim_key"] == "Claim/c2"
    assert [_day(r["decided_at"]) for r in rows] == ["2026-09-20", "2026-09-25", "2026-10-15"]


def test_denials_by_reason(loaded: Engine) -> None:
    rows = _rows(loaded, "SELECT * FROM v_denials_by_reason")
    got = {
        (_day(r["month"]), r["payer"], r["category"], r["reason_code"]): (
            r["denied_lines"],
            float(r["denied_amount"]),
            r["adjudicated_lines"],
            round(float(r["denial_rate"]), 4),
        )
        for r in rows
    }
    # September, payer A: r1 (2 lines), r2 (1; its EOB e2 not counted again), r7 (1) = 4 lines.
    # September, payer B: r3 (2) + r6 (1) = 3 lines. October, payer B: r6b (1). October A: no denials.
    assert got == {
        ("2026-09-01", A, "authorization", "197"): (1, 100.0, 4, 0.25),
        ("2026-09-01", A, "medical_necessity", "50"): (1, 150.0, 4, 0.25),
        ("2026-09-01", B, "other", "P99"): (1, 120.0, 3, round(1 / 3, 4)),
        ("2026-09-01", B, "timely_filing", "29"): (1, 100.0, 3, round(1 / 3, 4)),
        ("2026-10-01", B, "timely_filing", "29"): (1, 100.0, 1, 1.0),
    }


def test_clean_claim_rate(loaded: Engine) -> None:
    rows = _rows(loaded, "SELECT * FROM v_clean_claim_rate")
    got = {
        (_day(r["month"]), r["payer"]): (
            r["adjudicated_claims"],
            r["clean_claims"],
            float(r["clean_claim_rate"]),
        )
        for r in rows
    }
    # First decisions: c1 r1 (denied), c2 r2 (denied), c7 r7 (clean) in September for A; c3 r3 and c6 r6
    # (denied) in September for B; c5 r5 (clean) in October for A. Re-adjudications do not count.
    assert got == {
        ("2026-09-01", A): (3, 1, pytest.approx(1 / 3)),
        ("2026-09-01", B): (2, 0, 0.0),
        ("2026-10-01", A): (1, 1, 1.0),
    }


def test_newer_version_with_fewer_denied_lines_leaves_no_stale_denial(engine: Engine) -> None:
    first = response(
        "r9",
        "c9",
        "2026-09-11T00:00:00Z",
        [(1, 100.0, 0.0, "16"), (2, 50.0, 0.0, "16")],
        updated="2026-09-11T00:00:00Z",
    )
    second = response(
        "r9",
        "c9",
        "2026-09-11T00:00:00Z",
        [(1, 100.0, 0.0, "16"), (2, 50.0, 40.0, None)],
        updated="2026-09-12T00:00:00Z",
    )
    _load(engine, [claim("c9", "2026-09-01T00:00:00Z", [(1, "97110", 100.0), (2, "97530", 50.0)]), first])
    assert {r["line_key"] for r in _rows(engine, "SELECT line_key FROM v_denial_status")} == {
        "item-1",
        "item-2",
    }
    _load(engine, [second])
    # The writer replaces a resource's lines with its newer version's.
    assert _rows(engine, "SELECT count(*) AS n FROM denial")[0]["n"] == 1
    assert [r["line_key"] for r in _rows(engine, "SELECT line_key FROM v_denial_status")] == ["item-1"]
    by_reason = _rows(engine, "SELECT denied_lines, adjudicated_lines FROM v_denials_by_reason")
    assert [(r["denied_lines"], r["adjudicated_lines"]) for r in by_reason] == [(1, 2)]
    # An older version arriving late does not bring the line back.
    _load(engine, [first])
    assert [r["line_key"] for r in _rows(engine, "SELECT line_key FROM v_denial_status")] == ["item-1"]
    # A version that pays everything leaves no denial at all.
    third = response(
        "r9",
        "c9",
        "2026-09-11T00:00:00Z",
        [(1, 100.0, 80.0, None), (2, 50.0, 40.0, None)],
        updated="2026-09-13T00:00:00Z",
    )
    _load(engine, [third])
    assert _rows(engine, "SELECT count(*) AS n FROM denial")[0]["n"] == 0
    assert _rows(engine, "SELECT paid_in_full FROM claim_adjudication")[0]["paid_in_full"] in (True, 1)


def test_eob_without_its_claim_response_counts(engine: Engine) -> None:
    # When only the EOB is synced (no ClaimResponse on the server), it is the decision.
    _load(engine, [eob("e8", "c8", "2026-09-20T00:00:00Z", [(1, 150.0, 0.0, "50")], claim_response="r8")])
    rows = _rows(engine, "SELECT resource_type, status, days_to_decision FROM v_denial_status")
    assert rows == [{"resource_type": "ExplanationOfBenefit", "status": "open", "days_to_decision": None}]


def test_decision_entered_in_error_is_not_counted(engine: Engine) -> None:
    wrong = response("r10", "c10", "2026-09-20T00:00:00Z", [(1, 150.0, 0.0, "50")])
    wrong["status"] = "entered-in-error"
    _load(engine, [wrong])
    assert _rows(engine, "SELECT * FROM v_denial_status") == []
    assert _rows(engine, "SELECT * FROM v_denials_by_reason") == []
    assert _rows(engine, "SELECT * FROM v_clean_claim_rate") == []


def test_counted_decisions_are_the_rule_the_views_were_created_with() -> None:
    # claim_decisions spells out migration 0004's SQL (a migration is frozen history and is not imported
    # at run time); the metrics and the report count what the views count only while the two agree.
    import importlib

    from connector.warehouse import claim_decisions

    revision = importlib.import_module("connector.warehouse.migrations.versions.0004_claim_facts")
    assert claim_decisions.COUNTED_DECISIONS == revision._EFFECTIVE
    assert claim_decisions.ADJUDICATED_OUTCOMES == revision._ADJUDICATED
