"""The case summary to the referring clinician (issue 26): a pure builder with golden files, sent once per
milestone (after the evaluation, at each progress report, at discharge), only to the EMR it came from, and
never shown or stored in words outside it."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import respx
from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.documentreference import DocumentReference
from sqlalchemy.engine import Engine

from connector.config import parse_settings
from connector.pushback.run import push_round
from connector.pushback.summary import MASK, CaseFacts, GoalFact, build_case_summary, summary_text
from tests.fhir_capability import capability_statement
from tests.test_pushback import BASE, NOW, SYSTEM, load, outbox_rows, referral_row, settings
from tests.test_task_lifecycle import TaskServer, evaluation, note, write

GOLDEN = Path(__file__).parent / "data" / "golden"
ACHIEVEMENT = "http://terminology.hl7.org/CodeSystem/goal-achievement"
SENT = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
FACTS = CaseFacts(
    endpoint="emr",
    identifier_system=SYSTEM,
    referral_id="sr1",
    milestone="evaluation",
    key="summary:evaluation",
    discipline="PT",
    owner="Organization/practice",
    task_id="t1",
    patient_ref="Patient/p1",
    requester_ref="Practitioner/dr1",
    requester_display="Dr. Ref",
    goals=(
        GoalFact("Climb one flight of stairs with a rail", "in-progress"),
        GoalFact("Walk 500 ft without a device", "improving"),
    ),
    visits_per_week=2.0,
    plan_weeks=6.0,
    attended=1,
    cancelled=1,
    upcoming=3,
)
CASES = {
    "evaluation-communication": (FACTS, "communication"),
    # A progress report with no plan of care and no goals yet, from an OT referral named by display only.
    "progress-communication": (
        replace(
            FACTS,
            milestone="progress",
            key="summary:progress:n7",
            discipline="OT",
            goals=(),
            visits_per_week=None,
            plan_weeks=None,
            requester_ref=None,
            attended=5,
            no_shows=2,
            upcoming=0,
        ),
        "communication",
    ),
    "discharge-document-reference": (
        replace(
            FACTS,
            milestone="discharge",
            key="summary:discharge",
            discipline="SLP",
            attended=12,
            goals=(
                GoalFact("Swallow thin liquids safely", "achieved"),
                GoalFact("Name 20 objects", "achieved"),
            ),
            cancelled=0,
            upcoming=0,
        ),
        "document-reference",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_builder_matches_its_golden_file(case: str) -> None:
    facts, form = CASES[case]
    built = build_case_summary(facts, form=form, sent=SENT)
    golden = json.loads((GOLDEN / f"case-summary-{case}.json").read_text())
    assert built == golden
    (Communication if form == "communication" else DocumentReference).model_validate(built)


def test_the_text_holds_the_five_facts_and_nothing_else() -> None:
    lines = summary_text(FACTS).splitlines()
    assert [line.split(":", 1)[0] for line in lines] == [
        "Physical therapy update",
        "Functional goals",
        "Recommended frequency",
        "Patient response",
        "Next step",
    ]
    assert lines[2] == "Recommended frequency: 2 visits a week for 6 weeks"
    assert lines[3] == (
        "Patient response: goals 1 improving, 1 in progress; "
        "1 of 1 scheduled visit attended (1 cancelled, 3 booked)"
    )
    doc = build_case_summary(FACTS, form="document-reference", sent=SENT)
    attachment = doc["content"][0]["attachment"]  # type: ignore[index]
    assert base64.b64decode(attachment["data"]).decode() == summary_text(FACTS)


# -- sent from the warehouse ------------------------------------------------------------------------------


def capability() -> dict[str, Any]:
    params = [{"name": "identifier", "type": "token"}, {"name": "url", "type": "uri"}]
    types = ("Task", "Communication", "DocumentReference", "Measure", "MeasureReport")
    return capability_statement(
        *(
            {"type": t, "conditionalCreate": True, "conditionalUpdate": True, "searchParam": params}
            for t in types
        )
    )


class Server(TaskServer):
    """Tasks, plus Communications and DocumentReferences created once by identifier."""

    def __init__(self) -> None:
        super().__init__()
        self.created: dict[str, dict[str, Any]] = {}

    def create_other(self, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        token = request.headers["If-None-Exist"].removeprefix("identifier=")
        if token not in self.created:
            self.created[token] = body | {"id": f"c{len(self.created) + 1}", "meta": {"versionId": "1"}}
        return httpx.Response(201, json=self.created[token])


def push(
    engine: Engine, server: Server, *, dry_run: bool = False, show_phi: bool = False, **endpoint: Any
) -> Any:
    s = settings(**endpoint)
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/metadata").respond(json=capability())
        mock.post("/Task").mock(side_effect=server.create)
        mock.put("/Task").mock(side_effect=server.update)
        mock.post("/Communication").mock(side_effect=server.create_other)
        mock.post("/DocumentReference").mock(side_effect=server.create_other)
        summary = asyncio.run(
            push_round(s, s.endpoints[0], engine, now=NOW, dry_run=dry_run, show_phi=show_phi)
        )
    assert summary.errors == []
    return summary


def plan_and_goals(referral: str) -> list[dict[str, Any]]:
    meta = {"versionId": "1", "lastUpdated": "2026-11-19T12:00:00Z"}
    goal = {
        "resourceType": "Goal", "id": "g1", "meta": meta, "lifecycleStatus": "active",
        "achievementStatus": {"coding": [{"system": ACHIEVEMENT, "code": "improving"}]},
        "description": {"text": "Climb one flight of stairs with a rail"},
        "subject": {"reference": "Patient/p1"},
        "addresses": [{"reference": f"ServiceRequest/{referral}"}],
    }  # fmt: skip
    plan = {
        "resourceType": "CarePlan", "id": "cp1", "meta": meta, "status": "active", "intent": "plan",
        "subject": {"reference": "Patient/p1"}, "goal": [{"reference": "Goal/g1"}],
        "activity": [{"reference": {"reference": f"ServiceRequest/{referral}"}, "detail": {
            "status": "scheduled",
            "scheduledTiming": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "wk",
                                           "boundsDuration": {"value": 6, "unit": "wk", "code": "wk"}}},
        }}],
    }  # fmt: skip
    return [goal, plan]


def test_one_summary_per_milestone_sent_once_and_stored_masked(engine: Engine) -> None:
    server = Server()
    load(engine, referral_row("sr1"))
    write(engine, evaluation("a1", "sr1", "fulfilled"), *plan_and_goals("sr1"))
    sent = push(engine, server).sent
    assert sent == {"task-create": 1, "task-update": 2, "case-summary": 1}
    ((token, communication),) = server.created.items()
    assert token == f"{SYSTEM}|emr/ServiceRequest/sr1/summary:evaluation"
    Communication.model_validate(communication)
    text = communication["payload"][0]["contentString"]
    assert text.splitlines()[1:4] == [
        "Functional goals: Climb one flight of stairs with a rail (improving)",
        "Recommended frequency: 2 visits a week for 6 weeks",
        "Patient response: goals 1 improving; 1 of 1 scheduled visit attended",
    ]
    assert communication["about"] == [{"reference": "Task/t1"}]
    assert communication["recipient"] == [{"reference": "Practitioner/dr1"}]
    assert communication["basedOn"] == [{"reference": "ServiceRequest/sr1"}]
    # Two progress notes and the discharge summary: one summary each, then nothing more on re-runs.
    write(engine, note("n1", "sr1", "11506-3"), note("n2", "sr1", "11506-3"), note("d1", "sr1", "18842-5"))
    assert push(engine, server).sent == {"task-update": 1, "case-summary": 3}
    assert push(engine, server).sent == {}
    keys = sorted(t.split("/summary:", 1)[1] for t in server.created)
    assert keys == ["discharge", "evaluation", "progress:n1", "progress:n2"]
    # The warehouse keeps the structure of what was sent, never its words.
    stored = [r for r in outbox_rows(engine) if r["kind"] == "case-summary"]
    assert {r["status"] for r in stored} == {"sent"}
    assert all(r["payload"]["payload"] == [{"contentString": MASK}] for r in stored)
    assert "stairs" not in json.dumps([r["payload"] for r in outbox_rows(engine)])


def test_a_dry_run_masks_the_words_unless_asked(engine: Engine) -> None:
    load(engine, referral_row("sr1"))
    write(engine, evaluation("a1", "sr1", "fulfilled"), *plan_and_goals("sr1"))
    server = Server()
    push(engine, server)  # the Task exists, so the summary can be built
    write(engine, note("n1", "sr1", "11506-3"))
    masked = push(engine, server, dry_run=True)
    ((_kind, key, resource),) = [p for p in masked.previews if p[0] == "case-summary"]
    assert key == "ServiceRequest/sr1#summary:progress:n1"
    assert resource["payload"] == [{"contentString": MASK}]
    assert resource["recipient"] == [{"reference": "Practitioner/dr1"}]  # the structure is shown
    shown = push(engine, server, dry_run=True, show_phi=True)
    ((_kind, _key, resource),) = [p for p in shown.previews if p[0] == "case-summary"]
    assert "Climb one flight of stairs" in resource["payload"][0]["contentString"]


def test_the_document_reference_form_and_the_off_switch(engine: Engine) -> None:
    load(engine, referral_row("sr1"), referral_row("sr2", requester_ref=None, requester_display=None))
    write(engine, evaluation("a1", "sr1", "fulfilled"), evaluation("a2", "sr2", "fulfilled"))
    off = Server()
    assert "case-summary" not in push(engine, off, case_summary="off").sent
    server = Server()
    summary = push(engine, server, case_summary="document-reference")
    assert summary.sent["case-summary"] == 1
    # sr2 names no referrer: nobody to send its summary to.
    assert summary.skipped == {"case-summary": 1}
    ((token, doc),) = server.created.items()
    assert token.endswith("sr1/summary:evaluation")
    DocumentReference.model_validate(doc)
    assert doc["context"]["related"][0] == {"reference": "ServiceRequest/sr1"}


def test_summaries_go_only_to_the_emr_they_came_from() -> None:
    data = {
        "warehouse": {"url": "sqlite:///unused.db"},
        "endpoints": [
            {"name": "a", "base_url": BASE, "push_acknowledgments": True, "owner": "Organization/p",
             "push_endpoint": "b"},
            {"name": "b", "base_url": "https://other.test/fhir"},
        ],
    }  # fmt: skip
    settings_ = parse_settings(data)
    assert settings_.endpoints[0].sends_summaries is False  # the Tasks go to b, the summaries nowhere
    data["endpoints"][0]["case_summary"] = "communication"  # type: ignore[index]
    with pytest.raises(Exception, match="only to the EMR the referral came from"):
        parse_settings(data)
