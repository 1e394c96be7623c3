"""Push-back: acknowledgment Tasks and metrics, exactly once in effect, against a respx FHIR server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import respx
import sqlalchemy as sa
from fhir.resources.R4B.measure import Measure
from fhir.resources.R4B.measurereport import MeasureReport
from fhir.resources.R4B.task import Task
from sqlalchemy.engine import Engine

from connector.config import Settings, parse_settings
from connector.pushback import deliver
from connector.pushback.intents import intents
from connector.pushback.resources import (
    METRICS,
    AckPolicy,
    MetricValue,
    build_composite_measure,
    build_measure,
    build_measure_report,
    build_task,
    measure_id,
    measure_url,
    report_id,
)
from connector.pushback.run import push_round
from connector.warehouse import outbox
from connector.warehouse.models import Base
from connector.warehouse.writer import upsert_rows

BASE = "https://emr.test/fhir"
SYSTEM = "urn:test:ack"
NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
POLICY = AckPolicy(identifier_system=SYSTEM, owner="Organization/practice", offered_disciplines=("PT", "OT"))


def referral_row(rid: str, **kw: Any) -> dict[str, Any]:
    row = {
        "endpoint": "emr",
        "resource_type": "ServiceRequest",
        "resource_id": rid,
        "version_id": "1",
        "last_updated": NOW - timedelta(days=1),
        "content_hash": f"h-{rid}",
        "status": "active",
        "intent": "order",
        "authored_on": NOW - timedelta(hours=30),
        "patient_ref": "Patient/p1",
        "requester_ref": "Practitioner/dr1",
        "requester_display": "Dr. Ref",
        "reason_codes": [],
        "coverage_refs": [],
        "discipline": "PT",
        "intake_missing": ["payer"],
        "intake_complete": False,
        "loaded_at": NOW,
    }
    return row | kw


def settings(**endpoint: Any) -> Settings:
    retry = {"max_attempts": 2, "initial_backoff_seconds": 0, "max_backoff_seconds": 0}
    data = {
        "warehouse": {"url": "sqlite:///unused.db"},
        "endpoints": [
            {
                "name": "emr",
                "base_url": BASE,
                "push_acknowledgments": True,
                "owner": "Organization/practice",
                "identifier_system": SYSTEM,
                "retry": retry,
            }
            | endpoint
        ],
    }
    return parse_settings(data)


def capability(conditional: bool = True, identifier_search: bool = True) -> dict[str, Any]:
    params = [{"name": "identifier", "type": "token"}] if identifier_search else []
    return {
        "resourceType": "CapabilityStatement",
        "fhirVersion": "4.0.1",
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {
                        "type": t,
                        "conditionalCreate": conditional,
                        "conditionalUpdate": conditional,
                        "searchParam": [*params, {"name": "url", "type": "uri"}],
                    }
                    for t in ("Task", "Measure", "MeasureReport")
                ],
            }
        ],
    }


def load(engine: Engine, *rows: dict[str, Any], s: Settings | None = None) -> None:
    endpoint = (s or settings()).endpoints[0]
    with engine.begin() as conn:
        upsert_rows(conn, Base.metadata.tables["referral"], list(rows))
        outbox.enqueue(conn, intents(endpoint, {"referral": list(rows)}), NOW)


def push(engine: Engine, s: Settings, *, dry_run: bool = False) -> deliver.PushSummary:
    return asyncio.run(push_round(s, s.endpoints[0], engine, dry_run=dry_run, now=NOW))


def outbox_rows(engine: Engine) -> list[dict[str, Any]]:
    table = Base.metadata.tables["outbox"]
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(table).order_by(table.c.id)).mappings()]


# ---------------------------------------------------------------- pure builders


def test_task_is_valid_r4_with_focus_owner_and_intake_note() -> None:
    task = build_task(referral_row("sr1"), endpoint="emr", policy=POLICY, authored_on=NOW)
    Task.model_validate(task)
    assert task["status"] == "received"
    assert task["focus"] == {"reference": "ServiceRequest/sr1"}
    assert "basedOn" not in task
    assert task["for"] == {"reference": "Patient/p1"}
    assert task["requester"] == {"reference": "Practitioner/dr1"}
    assert task["owner"] == {"reference": "Organization/practice"}
    assert task["identifier"] == [{"system": SYSTEM, "value": "emr/ServiceRequest/sr1"}]
    assert task["businessStatus"] == {"text": "intake incomplete"}
    assert task["note"] == [{"text": "Missing intake items: payer"}]
    assert task["authoredOn"] == "2026-11-20T15:00:00.000Z"


def test_task_rules_reject_unoffered_discipline_and_accept_complete_intake() -> None:
    rejected = build_task(
        referral_row("sr1", discipline="SLP"), endpoint="emr", policy=POLICY, authored_on=NOW
    )
    assert rejected["status"] == "rejected"
    assert rejected["statusReason"] == {"text": "discipline SLP is not offered by this practice"}
    accepting = AckPolicy(SYSTEM, "Organization/practice", accept_complete_intake=True)
    complete = referral_row("sr2", intake_missing=[], intake_complete=True)
    task = build_task(complete, endpoint="emr", policy=accepting, authored_on=NOW)
    assert (task["status"], task["businessStatus"]["text"], "note" in task) == (
        "accepted",
        "intake complete",
        False,
    )


def test_task_for_another_server_uses_absolute_references_and_evaluation_update() -> None:
    task = build_task(
        referral_row("sr1"),
        endpoint="emr",
        policy=POLICY,
        authored_on=NOW,
        reference_base="https://source.test/fhir",
        state=("accepted", "evaluation scheduled", None),
    )
    Task.model_validate(task)
    assert task["focus"] == {"reference": "https://source.test/fhir/ServiceRequest/sr1"}
    assert task["for"] == {"reference": "https://source.test/fhir/Patient/p1"}
    assert (task["status"], task["businessStatus"]["text"]) == ("accepted", "evaluation scheduled")
    assert "note" not in task  # the missing intake items belong to the first acknowledgment


def test_measures_and_report_are_valid_r4() -> None:
    base = "https://metrics.test/Measure"
    for metric in METRICS:
        Measure.model_validate(build_measure(metric, base))
    composite = build_composite_measure(base)
    Measure.model_validate(composite)
    assert len(composite["relatedArtifact"]) == len(METRICS)
    values = [
        MetricValue("new-referrals", denominator=12, score=12.0),
        MetricValue("intake-complete-rate", numerator=3, denominator=12, score=25.0),
        MetricValue("median-hours-to-acknowledge", denominator=0, score=None),
    ]
    report = build_measure_report(
        endpoint="emr",
        period_start=NOW,
        period_end=NOW + timedelta(days=7),
        values=values,
        owner="Organization/practice",
        identifier_system=SYSTEM,
        measure_base=base,
        created=NOW,
    )
    MeasureReport.model_validate(report)
    assert report["measure"] == "https://metrics.test/Measure/practice-metrics"
    groups = {g["code"]["coding"][0]["code"]: g for g in report["group"]}
    assert groups["intake-complete-rate"]["measureScore"] == {"value": 25.0, "unit": "%"}
    counts = {
        p["code"]["coding"][0]["code"]: p["count"] for p in groups["intake-complete-rate"]["population"]
    }
    assert counts == {"denominator": 12, "numerator": 3}
    assert "measureScore" not in groups["median-hours-to-acknowledge"]


def test_intents_only_for_active_recent_referrals_and_booked_evaluations() -> None:
    endpoint = settings(acknowledge_since="2026-11-15").endpoints[0]
    rows: dict[str, Any] = {
        "referral": [
            referral_row("new"),
            referral_row("old", authored_on=NOW - timedelta(days=30)),
            referral_row("done", status="completed"),
        ],
        "visit": [
            {"referral_ref": "ServiceRequest/new", "kind": "evaluation", "status": "booked"},
            {"referral_ref": "ServiceRequest/new", "kind": "treatment", "status": "booked"},
            {"referral_ref": None, "kind": "evaluation", "status": "booked"},
        ],
    }
    assert intents(endpoint, rows) == [
        {"endpoint": "emr", "kind": "task-create", "item_key": "ServiceRequest/new"},
        {"endpoint": "emr", "kind": "task-update", "item_key": "ServiceRequest/new#evaluation-scheduled"},
    ]
    assert intents(settings(push_acknowledgments=False, push_metrics=True).endpoints[0], rows) == []


# ---------------------------------------------------------------- delivery


def task_created(request: httpx.Request) -> httpx.Response:
    body = orjson.loads(request.content)
    return httpx.Response(
        201,
        json=body | {"id": "task-1", "meta": {"versionId": "1"}},
        headers={"Location": f"{BASE}/Task/task-1/_history/1"},
    )


def test_conditional_create_sends_if_none_exist_and_records_the_ack(engine: Engine) -> None:
    s = settings()
    load(engine, referral_row("sr1"))
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/metadata").respond(json=capability())
        post = mock.post("/Task").mock(side_effect=task_created)
        summary = push(engine, s)
    assert summary.sent == {"task-create": 1}
    request = post.calls.last.request
    assert request.headers["If-None-Exist"] == f"identifier={SYSTEM}|emr/ServiceRequest/sr1"
    (row,) = outbox_rows(engine)
    assert (row["status"], row["server_id"], row["server_version"], row["attempts"]) == (
        "sent",
        "task-1",
        "1",
        1,
    )
    ack = outbox.acknowledgment(engine, "emr", "sr1")
    assert ack is not None
    assert (ack["task_id"], ack["task_status"], ack["business_status"]) == (
        "task-1",
        "received",
        "intake incomplete",
    )
    assert ack["response_hours"] == pytest.approx(30.0)
    # Nothing left to send: a second push talks to nobody.
    assert push(engine, s).sent == {}


def test_retry_after_timeout_repeats_the_conditional_create(engine: Engine) -> None:
    s = settings()
    load(engine, referral_row("sr1"))
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/metadata").respond(json=capability())
        # The first POST reached the server but the answer was lost; the retry finds the Task (200).
        post = mock.post("/Task").mock(
            side_effect=[
                httpx.ReadTimeout("timed out"),
                httpx.Response(
                    200, json={"resourceType": "Task", "id": "task-1", "meta": {"versionId": "1"}}
                ),
            ]
        )
        summary = push(engine, s)
    assert summary.sent == {"task-create": 1}
    assert post.call_count == 2
    tokens = {c.request.headers["If-None-Exist"] for c in post.calls}
    assert tokens == {f"identifier={SYSTEM}|emr/ServiceRequest/sr1"}
    assert [r["server_id"] for r in outbox_rows(engine)] == ["task-1"]


def test_crash_between_push_and_status_update_is_safe(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = settings()
    load(engine, referral_row("sr1"))

    def crash(*_: Any, **__: Any) -> None:
        raise SystemExit("killed after the server answered")

    with respx.mock(base_url=BASE) as mock:
        mock.get("/metadata").respond(json=capability())
        post = mock.post("/Task").mock(
            side_effect=[
                httpx.Response(
                    201, json={"resourceType": "Task", "id": "task-1", "meta": {"versionId": "1"}}
                ),
                httpx.Response(
                    200, json={"resourceType": "Task", "id": "task-1", "meta": {"versionId": "1"}}
                ),
            ]
        )
        monkeypatch.setattr(outbox, "mark_sent", crash)
        with pytest.raises(SystemExit):
            push(engine, s)
        assert outbox_rows(engine)[0]["status"] == "pending"
        monkeypatch.undo()
        summary = push(engine, s)
    assert summary.sent == {"task-create": 1}
    # Both sends were conditional on the same identifier, so the server kept one Task.
    assert [c.request.headers["If-None-Exist"] for c in post.calls] == [
        f"identifier={SYSTEM}|emr/ServiceRequest/sr1"
    ] * 2
    assert outbox_rows(engine)[0]["status"] == "sent"


def test_4xx_marks_failed_with_the_outcome_and_is_not_retried(engine: Engine) -> None:
    s = settings()
    load(engine, referral_row("sr1"))
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": "Task.owner must be local"}],
    }
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/metadata").respond(json=capability())
        post = mock.post("/Task").respond(422, json=outcome)
        summary = push(engine, s)
    assert post.call_count == 1
    assert summary.failed == {"task-create": 1}
    (row,) = outbox_rows(engine)
    assert row["status"] == "failed"
    assert "Task.owner must be local" in row["last_error"]
    assert outbox.acknowledgment(engine, "emr", "sr1") is None


def test_transient_failures_stay_pending_until_max_attempts(engine: Engine) -> None:
    s = settings(push_max_attempts=2)
    load(engine, referral_row("sr1"))
    with respx.mock(base_url=BASE) as mock:
        mock.get("/metadata").respond(json=capability())
        mock.post("/Task").respond(503)
        first = push(engine, s)
        assert (first.waiting, outbox_rows(engine)[0]["status"]) == ({"task-create": 1}, "pending")
        second = push(engine, s)
    assert second.failed == {"task-create": 1}
    assert outbox_rows(engine)[0]["status"] == "failed"


def test_server_without_conditional_create_is_searched_first(engine: Engine) -> None:
    s = settings()
    load(engine, referral_row("sr1"), referral_row("sr2"))
    found = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "resource": {"resourceType": "Task", "id": "existing", "meta": {"versionId": "3"}},
                "search": {"mode": "match"},
            }
        ],
    }
    empty = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/metadata").respond(json=capability(conditional=False))
        mock.get("/Task", params={"identifier": f"{SYSTEM}|emr/ServiceRequest/sr1"}).respond(json=found)
        mock.get("/Task", params={"identifier": f"{SYSTEM}|emr/ServiceRequest/sr2"}).respond(json=empty)
        post = mock.post("/Task").mock(side_effect=task_created)
        summary = push(engine, s)
    assert summary.sent == {"task-create": 2}
    assert post.call_count == 1  # only sr2 was missing
    assert "If-None-Exist" not in post.calls.last.request.headers
    assert {r["item_key"]: r["server_id"] for r in outbox_rows(engine)} == {
        "ServiceRequest/sr1": "existing",
        "ServiceRequest/sr2": "task-1",
    }


def test_dry_run_builds_but_sends_nothing(engine: Engine) -> None:
    s = settings()
    load(engine, referral_row("sr1"))
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        summary = push(engine, s, dry_run=True)
        assert not mock.calls
    assert [(k, key) for k, key, _ in summary.previews] == [("task-create", "ServiceRequest/sr1")]
    Task.model_validate(summary.previews[0][2])
    assert outbox_rows(engine)[0]["status"] == "pending"


def test_metrics_report_is_a_conditional_update_and_reuses_its_identity(engine: Engine) -> None:
    s = settings(push_acknowledgments=False, push_metrics=True)
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        mock.get("/metadata").respond(json=capability())
        measures = mock.post("/Measure").mock(
            side_effect=lambda r: httpx.Response(201, json=orjson.loads(r.content) | {"id": "m"})
        )
        reports = mock.put("/MeasureReport").mock(
            side_effect=lambda r: httpx.Response(
                200, json=orjson.loads(r.content) | {"id": "mr", "meta": {"versionId": "1"}}
            )
        )
        summary = push(engine, s)
        again = push(engine, s)
    assert summary.sent == {"measure": len(METRICS) + 1, "measure-report": 2}
    assert again.sent == {"measure-report": 2}  # the Measures exist; the reports are refreshed
    assert measures.call_count == len(METRICS) + 1
    assert {c.request.headers["If-None-Exist"].split("=", 1)[0] for c in measures.calls} == {"url"}
    identifiers = [c.request.url.params["identifier"] for c in reports.calls]
    assert identifiers[:2] == identifiers[2:]  # the same two periods, updated in place
    assert identifiers[1] == f"{SYSTEM}|emr/metrics/2026-11-16"
    MeasureReport.model_validate(orjson.loads(reports.calls.last.request.content))


def test_metrics_report_without_identifier_search_uses_a_deterministic_id(engine: Engine) -> None:
    s = settings(push_acknowledgments=False, push_metrics=True)
    with respx.mock(base_url=BASE) as mock:
        mock.get("/metadata").respond(json=capability(conditional=False, identifier_search=False))
        mock.get("/Measure").respond(json={"resourceType": "Bundle", "type": "searchset"})
        mock.post("/Measure").respond(201, json={"resourceType": "Measure", "id": "m"})
        put = mock.put(url__regex=r".*/MeasureReport/[^/?]+$").mock(
            side_effect=lambda r: httpx.Response(200, json=orjson.loads(r.content))
        )
        push(engine, s)
    paths = sorted(c.request.url.path for c in put.calls)
    assert paths == sorted(f"/fhir/MeasureReport/{report_id('emr', p)}" for p in ("2026-11-09", "2026-11-16"))


def test_measures_on_a_server_that_cannot_search_them_get_deterministic_ids(engine: Engine) -> None:
    # sekmet-fhir: Measure is not in the CapabilityStatement and `Measure?url=...` ignores the unknown
    # parameter, answering with every Measure. Searching there took the first Measure found for all eight.
    s = settings(push_acknowledgments=False, push_metrics=True)
    cap = capability()
    cap["rest"][0]["resource"] = [r for r in cap["rest"][0]["resource"] if r["type"] == "Task"]
    other = {"resourceType": "Measure", "id": "someone-elses", "url": "https://x.test/Measure/other"}
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/metadata").respond(json=cap)
        search = mock.get("/Measure").respond(
            json={"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": other}]}
        )
        created = mock.post("/Measure").respond(201, json=other)
        put = mock.put(url__regex=r".*/Measure/[^/?]+$").mock(
            side_effect=lambda r: httpx.Response(
                201, json=orjson.loads(r.content) | {"meta": {"versionId": "1"}}
            )
        )
        mock.put(url__regex=r".*/MeasureReport/[^/?]+$").mock(
            side_effect=lambda r: httpx.Response(200, json=orjson.loads(r.content))
        )
        summary = push(engine, s)
    assert summary.sent == {"measure": len(METRICS) + 1, "measure-report": 2}
    assert not search.called
    assert not created.called
    urls = [
        measure_url(s.endpoints[0].measure_base, c) for c in ("practice-metrics", *(m.code for m in METRICS))
    ]
    assert sorted(c.request.url.path for c in put.calls) == sorted(
        f"/fhir/Measure/{measure_id(u)}" for u in urls
    )
    assert sorted(orjson.loads(c.request.content)["url"] for c in put.calls) == sorted(urls)
    ids = [r["server_id"] for r in outbox_rows(engine) if r["kind"] == "measure"]
    assert len(set(ids)) == len(METRICS) + 1


def test_task_on_a_server_without_identifier_search_fails_instead_of_guessing(engine: Engine) -> None:
    s = settings()
    load(engine, referral_row("sr1"))
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/metadata").respond(json=capability(identifier_search=False))
        search = mock.get("/Task").respond(json={"resourceType": "Bundle", "type": "searchset"})
        post = mock.post("/Task").mock(side_effect=task_created)
        summary = push(engine, s)
    assert summary.failed == {"task-create": 1}
    assert not search.called
    assert not post.called
    assert "cannot search by identifier" in outbox_rows(engine)[0]["last_error"]


def test_update_for_a_referral_never_acknowledged_is_skipped_not_left_waiting(engine: Engine) -> None:
    s = settings()
    load(engine, referral_row("old", status="completed"))  # completed: no acknowledgment Task
    load(engine, referral_row("sr1"))
    with engine.begin() as conn:
        outbox.enqueue(
            conn,
            [
                {
                    "endpoint": "emr",
                    "kind": "task-update",
                    "item_key": "ServiceRequest/old#evaluation-scheduled",
                },
                {
                    "endpoint": "emr",
                    "kind": "task-update",
                    "item_key": "ServiceRequest/sr1#evaluation-scheduled",
                },
            ],
            NOW,
        )
    summary = push(engine, s, dry_run=True)
    assert summary.waiting == {"task-create": 1, "task-update": 2}
    with respx.mock(base_url=BASE) as mock:
        mock.get("/metadata").respond(json=capability())
        mock.post("/Task").respond(422, json={"resourceType": "OperationOutcome", "issue": []})
        summary = push(engine, s)
    # sr1's Task failed, so its update can never be delivered either; old never had a Task.
    assert summary.skipped == {"task-update": 2}
    statuses = {r["item_key"]: r["status"] for r in outbox_rows(engine)}
    assert statuses == {
        "ServiceRequest/sr1": "failed",
        "ServiceRequest/old#evaluation-scheduled": "skipped",
        "ServiceRequest/sr1#evaluation-scheduled": "skipped",
    }
