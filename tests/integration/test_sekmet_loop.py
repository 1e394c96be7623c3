"""Closing the loop end to end against sekmet-fhir (issue 26): the Task follows the referral's life and the
referrer gets a case summary per milestone, on a server of this module's own.

A PT referral with its evaluation attended, a plan of care (2 visits a week for 6 weeks) and a progress note
is synced (`connector sync`, push-back on): the Task goes received -> accepted (evaluation scheduled) ->
in-progress, and two Communications are created (evaluation, progress). Then the discharge summary and the
finished episode are added: a second sync completes the Task and sends the discharge summary; a third sends
nothing. (sekmet has no Goal: the summaries say so.)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.communication import Communication

from connector.config import DEFAULT_IDENTIFIER_SYSTEM, load_settings
from connector.pushback import build
from connector.warehouse.engine import make_engine
from connector.warehouse.outbox import CASE_SUMMARY, Item
from tests.integration.practice import post_transaction, put_entry
from tests.integration.test_sekmet import ENDPOINT, query, sync, utc
from tests.integration.test_sekmet_pushback import everything

pytestmark = pytest.mark.integration

CPT = "http://www.ama-assn.org/go/cpt"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
NOW = datetime.now(UTC).replace(microsecond=0)
TWICE_A_WEEK_FOR_6 = {
    "status": "scheduled",
    "scheduledTiming": {
        "repeat": {
            "frequency": 2,
            "period": 1,
            "periodUnit": "wk",
            "boundsDuration": {"value": 6, "unit": "wk", "system": "http://unitsofmeasure.org", "code": "wk"},
        }
    },
}
KEYS = ("summary:evaluation", "summary:progress:lp-note-1", "summary:discharge")


def _at(days_ago: float) -> str:
    return (NOW - timedelta(days=days_ago)).isoformat().replace("+00:00", "Z")


def first_resources() -> list[dict[str, Any]]:
    patient = {"reference": "Patient/lp-pat"}
    referral = {"reference": "ServiceRequest/lp-sr-1"}
    return [
        {"resourceType": "Organization", "id": "lp-practice", "name": "Loop Therapy (test)"},
        {"resourceType": "Patient", "id": "lp-pat", "gender": "female"},
        {"resourceType": "Practitioner", "id": "lp-dr", "name": [{"family": "Referrer", "given": ["Rae"]}]},
        {
            "resourceType": "ServiceRequest", "id": "lp-sr-1", "status": "active", "intent": "order",
            "code": {"coding": [{"system": SNOMED, "code": "91251008"}]}, "subject": patient,
            "authoredOn": _at(10), "requester": {"reference": "Practitioner/lp-dr"},
        },
        {
            "resourceType": "Appointment", "id": "lp-eval", "status": "fulfilled",
            "serviceType": [{"coding": [{"system": CPT, "code": "97161"}]}], "basedOn": [referral],
            "start": _at(5), "end": _at(4.95), "participant": [{"actor": patient, "status": "accepted"}],
        },
        {
            "resourceType": "CarePlan", "id": "lp-cp", "status": "active", "intent": "plan",
            "subject": patient, "activity": [{"reference": referral, "detail": TWICE_A_WEEK_FOR_6}],
        },
        _note("lp-note-1", "11506-3", 1),
    ]  # fmt: skip


def _note(rid: str, loinc: str, days_ago: float) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference", "id": rid, "status": "current",
        "type": {"coding": [{"system": LOINC, "code": loinc}]}, "subject": {"reference": "Patient/lp-pat"},
        "date": _at(days_ago), "context": {"related": [{"reference": "ServiceRequest/lp-sr-1"}]},
        "content": [{"attachment": {"contentType": "text/plain", "data": "bm90ZSB0ZXh0"}}],
    }  # fmt: skip


def later_resources() -> list[dict[str, Any]]:
    episode = {
        "resourceType": "EpisodeOfCare", "id": "lp-ep", "status": "finished",
        "patient": {"reference": "Patient/lp-pat"}, "period": {"start": _at(9), "end": _at(0.1)},
        "referralRequest": [{"reference": "ServiceRequest/lp-sr-1"}],
    }  # fmt: skip
    return [_note("lp-discharge", "18842-5", 0.1), episode]


@dataclass
class LoopRun:
    fhir: httpx.Client
    config: Path
    url: str
    tasks: list[list[dict[str, Any]]]
    summaries: list[list[dict[str, Any]]]


def _state(fhir: httpx.Client) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return everything(fhir, "Task"), everything(fhir, "Communication")


@pytest.fixture(scope="module")
def run(own_sekmet_base_url: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("loop")
    url = f"sqlite:///{folder / 'warehouse.db'}"
    config = folder / "connector.toml"
    config.write_text(
        f'[warehouse]\nurl = "{url}"\n\n[[endpoints]]\nname = "{ENDPOINT}"\n'
        f'base_url = "{own_sekmet_base_url}"\n'
        'push_acknowledgments = true\nowner = "Organization/lp-practice"\ncase_summary = "communication"\n'
        '[endpoints.auth]\ntype = "none"\n',
        encoding="utf-8",
    )
    with httpx.Client(base_url=own_sekmet_base_url, timeout=120) as fhir:
        post_transaction(fhir, [put_entry(r) for r in first_resources()])
        tasks, summaries = [], []
        sync(config)
        for step in (later_resources(), []):
            t, s = _state(fhir)
            tasks.append(t)
            summaries.append(s)
            if step:
                post_transaction(fhir, [put_entry(r) for r in step])
            sync(config)
        t, s = _state(fhir)
        tasks.append(t)
        summaries.append(s)
        yield LoopRun(fhir, config, url, tasks, summaries)


def _history(fhir: httpx.Client, task_id: str) -> list[tuple[str, str]]:
    bundle = fhir.get(f"Task/{task_id}/_history").raise_for_status().json()
    entries = sorted(bundle["entry"], key=lambda e: int(e["resource"]["meta"]["versionId"]))
    return [(e["resource"]["status"], e["resource"]["businessStatus"]["text"]) for e in entries]


def test_the_task_follows_the_referral_to_discharge(run: LoopRun) -> None:
    (task,) = run.tasks[-1]
    assert [len(t) for t in run.tasks] == [1, 1, 1]  # one Task, ever
    assert _history(run.fhir, task["id"]) == [
        ("received", "intake incomplete"),
        ("accepted", "evaluation scheduled"),
        ("in-progress", "evaluation done, in treatment"),
        ("completed", "discharged"),
    ]
    assert task["statusReason"] == {"text": "discharge summary written"}
    # After the first sync it was in treatment; after the third, nothing moved it again.
    (first,) = run.tasks[0]
    assert (first["status"], first["meta"]["versionId"]) == ("in-progress", "3")
    assert (task["meta"]["versionId"], run.tasks[1][0]["meta"]["versionId"]) == ("4", "4")


def test_each_summary_is_on_the_server_once_as_the_builder_made_it(run: LoopRun) -> None:
    def keys(found: list[dict[str, Any]]) -> list[str]:
        return sorted(c["identifier"][0]["value"].rsplit("/", 1)[1] for c in found)

    assert keys(run.summaries[0]) == sorted(KEYS[:2])
    assert keys(run.summaries[1]) == keys(run.summaries[2]) == sorted(KEYS)
    settings = load_settings(run.config)
    endpoint = settings.endpoint(ENDPOINT)
    engine = make_engine(run.url)
    try:
        for stored in run.summaries[-1]:
            Communication.model_validate(stored)
            key = stored["identifier"][0]["value"].rsplit("/", 1)[1]
            item = Item(0, ENDPOINT, CASE_SUMMARY, f"ServiceRequest/lp-sr-1#{key}", 0, None)
            expected = build.resource_for(
                engine, endpoint, item, now=utc(stored["sent"]), reference_base=None
            )
            assert expected is not None
            # The server may write the instant in its own precision; it is the one the builder was given.
            assert {k: v for k, v in stored.items() if k not in ("id", "meta", "sent")} == {
                k: v for k, v in expected.items() if k != "sent"
            }, key
            assert stored["identifier"][0]["system"] == DEFAULT_IDENTIFIER_SYSTEM
    finally:
        engine.dispose()
    text = next(c for c in run.summaries[-1] if c["identifier"][0]["value"].endswith("discharge"))
    lines = text["payload"][0]["contentString"].splitlines()
    assert lines == [
        "Physical therapy update: discharged",
        "Functional goals: none recorded yet",
        "Recommended frequency: 2 visits a week for 6 weeks",
        "Patient response: 1 of 1 scheduled visit attended",
        "Next step: care is complete; no further visits are planned",
    ]


def test_the_loop_view_counts_what_reached_the_server(run: LoopRun) -> None:
    ((sent_updates, sent_summaries, within),) = query(
        run.url,
        "select task_updates_sent, summaries_sent, updated_within_7_days from v_referral_loop "
        "where referral_id = 'lp-sr-1'",
    )
    assert (sent_updates, sent_summaries, within) == (3, 3, 1)
    # The warehouse keeps what was sent without its words.
    stored = query(run.url, "select payload from outbox where kind = 'case-summary'")
    assert len(stored) == 3
    assert all("visits a week" not in str(row[0]) for row in stored)
