"""The acknowledgment Task follows the referral's life (issue 26): each milestone once, in order, never
backwards, against a respx FHIR server that keeps the Task."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
import respx
from sqlalchemy.engine import Engine

from connector.pushback import lifecycle
from connector.pushback.resources import AckPolicy
from connector.pushback.run import push_round
from connector.sync.pipeline import map_resources
from connector.warehouse import outbox
from connector.warehouse.writer import PageWrite, write_page
from tests.test_pushback import BASE, NOW, SYSTEM, capability, load, outbox_rows, referral_row, settings

CPT = "http://www.ama-assn.org/go/cpt"
LOINC = "http://loinc.org"


class TaskServer:
    """A FHIR server holding Tasks by identifier: conditional create and conditional update."""

    def __init__(self) -> None:
        self.tasks: dict[str, dict[str, Any]] = {}
        #: (method, status, businessStatus, statusReason) of every write, in order.
        self.writes: list[tuple[str, str, str, str | None]] = []

    def _log(self, method: str, body: dict[str, Any]) -> None:
        reason = (body.get("statusReason") or {}).get("text")
        self.writes.append((method, body["status"], body["businessStatus"]["text"], reason))

    def create(self, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        token = request.headers["If-None-Exist"].removeprefix("identifier=")
        if token in self.tasks:
            return httpx.Response(200, json=self.tasks[token])
        self._log("POST", body)
        self.tasks[token] = body | {"id": f"t{len(self.tasks) + 1}", "meta": {"versionId": "1"}}
        return httpx.Response(201, json=self.tasks[token])

    def update(self, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        token = request.url.params["identifier"]
        old = self.tasks[token]
        self._log("PUT", body)
        version = str(int(old["meta"]["versionId"]) + 1)
        self.tasks[token] = body | {"id": old["id"], "meta": {"versionId": version}}
        return httpx.Response(200, json=self.tasks[token])


def push(engine: Engine, server: TaskServer, **endpoint: Any) -> dict[str, int]:
    # The Task alone here; tests/test_case_summary.py sends the case summaries.
    s = settings(**{"case_summary": "off", **endpoint})
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        mock.get("/metadata").respond(json=capability())
        mock.post("/Task").mock(side_effect=server.create)
        mock.put("/Task").mock(side_effect=server.update)
        summary = asyncio.run(push_round(s, s.endpoints[0], engine, now=NOW))
    assert summary.errors == []
    return summary.sent


def write(engine: Engine, *resources: dict[str, Any]) -> None:
    for resource in resources:
        mapped = map_resources("emr", resource["resourceType"], [resource], NOW)
        assert not mapped.rejects, mapped.rejects[0].error
        write_page(engine, PageWrite("emr", resource["resourceType"], raw=mapped.raw, mapped=mapped.mapped))


def _meta(days_ago: float) -> dict[str, str]:
    moment = NOW - timedelta(days=days_ago)
    return {"versionId": "1", "lastUpdated": moment.isoformat().replace("+00:00", "Z")}


def evaluation(rid: str, referral: str, status: str) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": rid,
        "meta": _meta(1),
        "status": status,
        "serviceType": [{"coding": [{"system": CPT, "code": "97161"}]}],
        "basedOn": [{"reference": f"ServiceRequest/{referral}"}],
        "start": (NOW - timedelta(hours=20)).isoformat(),
        "participant": [{"actor": {"reference": "Patient/p1"}, "status": "accepted"}],
    }


def note(rid: str, referral: str, loinc: str) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "id": rid,
        "meta": _meta(0.5),
        "status": "current",
        "type": {"coding": [{"system": LOINC, "code": loinc}]},
        "subject": {"reference": "Patient/p1"},
        "date": (NOW - timedelta(hours=12)).isoformat(),
        "context": {"related": [{"reference": f"ServiceRequest/{referral}"}]},
        "content": [{"attachment": {"contentType": "text/plain", "data": "bm90ZQ=="}}],
    }


def test_the_task_follows_the_referral_once_in_order_and_never_backwards(engine: Engine) -> None:
    server = TaskServer()
    load(engine, referral_row("sr1"))
    assert push(engine, server) == {"task-create": 1}
    # The evaluation was booked and attended and the discharge summary written before the next round.
    write(engine, evaluation("a1", "sr1", "fulfilled"), note("d1", "sr1", "18842-5"))
    assert push(engine, server) == {"task-update": 3}
    assert server.writes == [
        ("POST", "received", "intake incomplete", None),
        ("PUT", "accepted", "evaluation scheduled", None),
        ("PUT", "in-progress", "evaluation done, in treatment", None),
        ("PUT", "completed", "discharged", "discharge summary written"),
    ]
    (task,) = server.tasks.values()
    assert task["meta"]["versionId"] == "4"
    ack = outbox.acknowledgment(engine, "emr", "sr1")
    assert ack is not None
    assert (ack["task_status"], ack["business_status"]) == ("completed", "discharged")
    # Re-runs send nothing; a referral revoked after its care was completed does not reopen the Task.
    assert push(engine, server) == {}
    load(engine, referral_row("sr1", status="revoked", version_id="2", content_hash="h-sr1-2"))
    assert push(engine, server) == {}
    assert len(server.writes) == 4


def test_a_milestone_queued_after_a_later_one_is_skipped_not_sent(engine: Engine) -> None:
    server = TaskServer()
    load(engine, referral_row("sr1"))
    write(engine, evaluation("a1", "sr1", "fulfilled"))
    assert push(engine, server) == {"task-create": 1, "task-update": 2}
    # An older milestone arriving late (a replayed page) is closed, never sent backwards.
    with engine.begin() as conn:
        outbox.enqueue(
            conn, [{"endpoint": "emr", "kind": "task-update", "item_key": "ServiceRequest/sr1#accepted"}], NOW
        )
    assert push(engine, server) == {}
    skipped = [r for r in outbox_rows(engine) if r["status"] == "skipped"]
    assert [r["item_key"] for r in skipped] == ["ServiceRequest/sr1#accepted"]
    assert "never sent backwards" in skipped[0]["last_error"]
    assert [w[1] for w in server.writes] == ["received", "accepted", "in-progress"]


def test_a_referral_declined_after_acknowledgment_gets_rejected(engine: Engine) -> None:
    server = TaskServer()
    load(engine, referral_row("sr1", discipline="OT"), referral_row("sr2"))
    assert push(engine, server, offered_disciplines=["PT", "OT"]) == {"task-create": 2}
    # The practice stops taking OT referrals: the acknowledged OT referral is declined, with the reason.
    assert push(engine, server, offered_disciplines=["PT"]) == {"task-update": 1}
    assert server.writes[-1] == (
        "PUT",
        "rejected",
        "referral declined",
        "discipline OT is not offered by this practice",
    )
    # A PT referral whose episode the practice cancelled before any evaluation is declined too.
    episode = {
        "resourceType": "EpisodeOfCare",
        "id": "ep2",
        "meta": _meta(0.2),
        "status": "cancelled",
        "patient": {"reference": "Patient/p1"},
        "referralRequest": [{"reference": "ServiceRequest/sr2"}],
    }
    write(engine, episode)
    assert push(engine, server, offered_disciplines=["PT"]) == {"task-update": 1}
    assert server.writes[-1] == (
        "PUT",
        "rejected",
        "referral declined",
        "the practice cancelled the episode before the evaluation",
    )
    assert push(engine, server, offered_disciplines=["PT"]) == {}


def test_a_withdrawn_referral_is_cancelled(engine: Engine) -> None:
    server = TaskServer()
    load(engine, referral_row("sr1"))
    push(engine, server)
    load(engine, referral_row("sr1", status="revoked", version_id="2", content_hash="h-sr1-2"))
    assert push(engine, server) == {"task-update": 1}
    assert server.writes[-1] == ("PUT", "cancelled", "referral withdrawn", "the referral was withdrawn")


POLICY = AckPolicy(identifier_system=SYSTEM, owner="Organization/p", accept_complete_intake=True)


@pytest.mark.parametrize(
    ("life", "reached"),
    [
        (lifecycle.ReferralLife("r", "active"), []),
        (lifecycle.ReferralLife("r", "active", intake_complete=True), ["accepted"]),
        (lifecycle.ReferralLife("r", "active", evaluation_booked=True), ["evaluation-scheduled"]),
        (
            lifecycle.ReferralLife("r", "active", evaluation_attended=True, plan_statuses={"completed"}),
            ["evaluation-scheduled", "in-progress", "completed"],
        ),
        (lifecycle.ReferralLife("r", "completed"), ["completed"]),
        (lifecycle.ReferralLife("r", "active", episode_statuses={"finished"}), ["completed"]),
        # Cancelled after the evaluation was attended: the care happened, nothing is declined.
        (
            lifecycle.ReferralLife("r", "active", evaluation_attended=True, episode_statuses={"cancelled"}),
            ["evaluation-scheduled", "in-progress"],
        ),
        (lifecycle.ReferralLife("r", "entered-in-error", evaluation_attended=True), ["cancelled"]),
        (
            lifecycle.ReferralLife("r", "active", discipline="SLP", evaluation_booked=True),
            ["evaluation-scheduled"],
        ),
    ],
)
def test_milestones_of_a_life(life: lifecycle.ReferralLife, reached: list[str]) -> None:
    assert [name for name, _ in lifecycle.milestones(life, POLICY)] == reached


def test_task_ranks_order_the_states() -> None:
    ranks = [
        lifecycle.task_rank("received", "intake incomplete"),
        lifecycle.task_rank("accepted", "intake complete"),
        lifecycle.task_rank("accepted", "evaluation scheduled"),
        lifecycle.task_rank("in-progress", "evaluation done, in treatment"),
        lifecycle.task_rank("completed", "discharged"),
    ]
    assert ranks == sorted(ranks)
    assert len(set(ranks)) == len(ranks)
    assert lifecycle.split_key("ServiceRequest/a#completed") == ("ServiceRequest/a", "completed")
