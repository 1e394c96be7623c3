"""The run log and dead letters, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import Engine

from connector.warehouse import deadletter
from connector.warehouse.deadletter import list_dead_letters, mark_resolved, open_dead_letters, record_rejects
from connector.warehouse.engine import begin_write
from connector.warehouse.state import dead_letter_counts, finish_run, recent_runs, runs_for, start_run
from connector.warehouse.writer import PageWrite, Reject, write_page

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


def reject(
    rid: str, *, endpoint: str = "emr", error: str = "status: field required", **extra: object
) -> Reject:
    payload = {"resourceType": "ServiceRequest", "id": rid, **extra}
    return Reject(endpoint, "ServiceRequest", rid, error, payload)


def record(engine: Engine, rejects: list[Reject], now: datetime = T0) -> int:
    with begin_write(engine) as conn:
        return record_rejects(conn, rejects, now)


# --- runs -----------------------------------------------------------------------------------------


def test_run_log(engine: Engine) -> None:
    run_id = str(uuid.uuid4())
    first = start_run(engine, run_id, "emr", "ServiceRequest")
    second = start_run(engine, run_id, "emr", "Claim")
    assert first != second

    runs = recent_runs(engine)
    assert [r["id"] for r in runs] == [second, first]  # newest first
    assert runs[1]["status"] == "running"
    assert runs[1]["finished_at"] is None
    assert (runs[1]["fetched"], runs[1]["loaded"], runs[1]["rejected"]) == (0, 0, 0)
    assert runs[1]["started_at"].tzinfo is UTC

    finish_run(engine, first, Counts("succeeded", 12, 8, 2, unchanged=2, included=3))
    finish_run(
        engine,
        second,
        Counts(
            "failed",
            3,
            0,
            0,
            error="\n  FatalFhirError: 404 Not Found " + "x" * 1000 + "\nTraceback line two",
        ),
    )
    by_id = {r["id"]: r for r in recent_runs(engine)}
    ok, failed = by_id[first], by_id[second]
    assert (ok["status"], ok["fetched"], ok["loaded"], ok["rejected"], ok["error"]) == (
        "succeeded",
        12,
        8,
        2,
        None,
    )
    assert (ok["unchanged"], ok["included"]) == (2, 3)
    assert ok["finished_at"] >= ok["started_at"]
    assert failed["status"] == "failed"
    assert failed["error"].startswith("FatalFhirError: 404 Not Found xxx")
    assert len(failed["error"]) == 500
    assert "\n" not in failed["error"]
    assert {r["run_id"] for r in recent_runs(engine)} == {run_id}


@dataclass
class Counts:
    status: str
    fetched: int
    loaded: int
    rejected: int
    unchanged: int = 0
    included: int = 0
    error: str | None = None


def test_runs_for_one_run_in_start_order(engine: Engine) -> None:
    a = start_run(engine, "run-a", "emr", "ServiceRequest")
    start_run(engine, "run-b", "emr", "ServiceRequest")
    c = start_run(engine, "run-a", "emr", "Claim")
    assert [(r["id"], r["resource_type"]) for r in runs_for(engine, "run-a")] == [
        (a, "ServiceRequest"),
        (c, "Claim"),
    ]
    assert runs_for(engine, "nothing") == []


def test_recent_runs_limit(engine: Engine) -> None:
    ids = [start_run(engine, "run", "emr", f"Type{i}") for i in range(5)]
    assert [r["id"] for r in recent_runs(engine, limit=2)] == ids[::-1][:2]


# --- dead letters ---------------------------------------------------------------------------------


def test_same_reject_again_bumps_attempts_instead_of_adding_a_row(engine: Engine) -> None:
    assert record(engine, [reject("a")]) == 1
    record(engine, [reject("a", error="intent: field required")], now=T0 + timedelta(hours=1))
    # Twice in one batch counts twice (and must not trip PostgreSQL's one-update-per-row rule).
    record(engine, [reject("a"), reject("a")], now=T0 + timedelta(hours=2))
    letters = list_dead_letters(engine)
    assert len(letters) == 1
    letter = letters[0]
    assert letter["attempts"] == 4
    assert letter["error"] == "status: field required"
    assert letter["first_seen_at"] == T0
    assert letter["last_seen_at"] == T0 + timedelta(hours=2)
    assert "payload" not in letter


def test_other_payload_or_endpoint_is_another_dead_letter(engine: Engine) -> None:
    record(engine, [reject("a"), reject("a", note="edited"), reject("a", endpoint="other")])
    assert len(list_dead_letters(engine)) == 3
    assert [d["endpoint"] for d in list_dead_letters(engine, endpoint="other")] == ["other"]


def test_open_dead_letters_and_mark_resolved(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deadletter, "CHUNK", 3)  # force several chunks
    record(engine, [reject(f"r{i}") for i in range(7)] + [reject("o1", endpoint="other")])
    opened = list(open_dead_letters(engine))
    assert len(opened) == 8
    assert [o[0] for o in opened] == sorted(o[0] for o in opened)
    first_id, endpoint, resource_type, payload = opened[0]
    assert (endpoint, resource_type, payload["id"]) == ("emr", "ServiceRequest", "r0")
    assert [o[3]["id"] for o in open_dead_letters(engine, endpoint="other")] == ["o1"]
    picked = [opened[1][0], opened[5][0]]
    assert [o[0] for o in open_dead_letters(engine, ids=picked)] == picked

    # Resolving while streaming (each chunk is its own transaction).
    resolved_at = T0 + timedelta(days=1)
    for dead_id, *_ in open_dead_letters(engine, endpoint="emr"):
        if dead_id != first_id:
            with begin_write(engine) as conn:
                mark_resolved(conn, [dead_id], resolved_at)
    assert [o[0] for o in open_dead_letters(engine)] == [first_id, opened[-1][0]]
    assert list(open_dead_letters(engine, ids=picked)) == []
    assert len(list_dead_letters(engine)) == 2
    everything = list_dead_letters(engine, include_resolved=True)
    assert len(everything) == 8
    assert {d["resolved_at"] for d in everything if d["id"] in picked} == {resolved_at}
    assert list_dead_letters(engine, include_resolved=True, limit=3) == everything[:3]

    assert dead_letter_counts(engine) == [
        {"endpoint": "emr", "resource_type": "ServiceRequest", "open": 1, "total": 7},
        {"endpoint": "other", "resource_type": "ServiceRequest", "open": 1, "total": 1},
    ]


def test_a_resolved_dead_letter_rejected_again_reopens(engine: Engine) -> None:
    record(engine, [reject("a")])
    (dead_id,) = [d["id"] for d in list_dead_letters(engine)]
    with begin_write(engine) as conn:
        mark_resolved(conn, [dead_id], T0)
    assert list_dead_letters(engine) == []
    write_page(engine, PageWrite(endpoint="emr", resource_type="ServiceRequest", rejects=[reject("a")]))
    (letter,) = list_dead_letters(engine)
    assert (letter["id"], letter["attempts"], letter["resolved_at"]) == (dead_id, 2, None)


def test_dead_letter_counts_empty(engine: Engine) -> None:
    assert dead_letter_counts(engine) == []
