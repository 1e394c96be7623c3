"""Push-back (acknowledgment Tasks, metrics MeasureReports) end to end against sekmet-fhir.

One module fixture drives the connector the way users do: `connector sync` with push-back on, then an
evaluation is booked on the server, then a second `connector sync` and a `connector push`. The tests read
what landed on the server and compare it with the practice and with the warehouse views.

The practice is generated around a fixed date, so this module adds a few referrals, a patient, an
eligibility response and claims in the current month (from the clock) itself, and books the evaluation.
They are added to `practice` too, so the other modules' counts stay right whatever the order.
Server behaviour that differs from the spec is in docs/integration.md.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fhir.resources.R4B.measurereport import MeasureReport
from fhir.resources.R4B.task import Task

from connector.config import DEFAULT_IDENTIFIER_SYSTEM
from connector.pushback.metrics import period_bounds, period_start, recent_periods
from connector.pushback.resources import COMPOSITE, METRICS, measure_id, measure_url, report_id
from tests.integration.practice import (
    ADJUDICATION,
    CARC,
    CLAIM_TYPE,
    ICD10,
    MRN,
    PRACTICE_NOW,
    PROCESS_PRIORITY,
    SERVICES,
    SNOMED,
    Practice,
    concept,
    post_transaction,
    put_entry,
    ref,
)
from tests.integration.test_sekmet import ENDPOINT, as_utc, connector, query, sync, utc

pytestmark = pytest.mark.integration

OWNER = "Organization/practice"
#: Older referrals are not acknowledged. Fixed relative to the generated practice (~90 active referrals).
SINCE = (PRACTICE_NOW - timedelta(days=30)).date()
CPT = "http://www.ama-assn.org/go/cpt"
MEASURE_BASE = "https://therapy-fhir-connector.org/fhir/Measure"
SERVICE = {discipline: (code, display) for code, display, discipline in SERVICES}


# ---------------------------------------------------------------------------------------------- helpers


def write_config(folder: Path, base_url: str) -> Path:
    config = folder / "connector.toml"
    config.write_text(
        f'[warehouse]\nurl = "sqlite:///{folder / "warehouse.db"}"\n\n'
        f'[[endpoints]]\nname = "{ENDPOINT}"\nbase_url = "{base_url}"\n'
        "push_acknowledgments = true\npush_metrics = true\n"
        f'owner = "{OWNER}"\nacknowledge_since = "{SINCE.isoformat()}"\n'
        # Monthly, so a MeasureReport's period is a row of the monthly views.
        'metrics_period = "month"\n'
        # SLP referrals are acknowledged as rejected (Task.statusReason).
        'offered_disciplines = ["PT", "OT"]\n'
        # Tasks move only for the coded evaluation this module books. With inference (the default) each
        # generated referral's first uncoded appointment would be its evaluation and move its Task on the
        # first sync: that rule has its own tests (tests/test_visit_inference.py).
        "[endpoints.visits]\ninfer_evaluations = false\n"
        '[endpoints.auth]\ntype = "none"\n',
        encoding="utf-8",
    )
    return config


def everything(fhir: httpx.Client, resource_type: str) -> list[dict[str, Any]]:
    """Every resource of a type on the server (following next links), matches only."""
    out: list[dict[str, Any]] = []
    url: str | None = resource_type
    params: dict[str, str] | None = {"_count": "1000"}
    while url:
        bundle = fhir.get(url, params=params).raise_for_status().json()
        out += [e["resource"] for e in bundle.get("entry") or [] if e["search"]["mode"] == "match"]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        params = None
    return out


def instant(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def this_period(practice: Practice, start: datetime, now: datetime) -> dict[str, dict[str, Any]]:
    """Resources dated between the start of the current month and now (spread over that span)."""

    def at(fraction: float) -> str:
        return instant(start + (now - start) * fraction)

    patient = {
        "resourceType": "Patient",
        "id": "pb-pat-1",
        "identifier": [{"system": MRN, "value": "MRN-PB-1"}],
        "gender": "female",
        "birthDate": "1961-04-02",
    }
    coverage = {
        "resourceType": "Coverage",
        "id": "pb-cov-1",
        "status": "active",
        "beneficiary": ref("Patient", "pb-pat-1"),
        "period": {"start": "2024-01-01"},
        "payor": [ref("Organization", "payer-aetna")],
    }

    def referral(rid: str, discipline: str, status: str, *, diagnosis: bool = True) -> dict[str, Any]:
        code, display = SERVICE[discipline]
        sr: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "id": rid,
            "status": status,
            "intent": "order",
            "priority": "routine",
            "code": concept(SNOMED, code, display),
            "subject": ref("Patient", "pb-pat-1"),
            "authoredOn": at(0.2),
            "occurrenceDateTime": at(0.5),
            "requester": ref("Practitioner", "prac-00"),
            "insurance": [ref("Coverage", "pb-cov-1")],
        }
        if diagnosis:
            sr["reasonCode"] = [concept(ICD10, "M54.50", "Low back pain, unspecified")]
        return sr

    eligibility = {
        "resourceType": "CoverageEligibilityResponse",
        "id": "pb-cer-1",
        "status": "active",
        "purpose": ["validation"],
        "patient": ref("Patient", "pb-pat-1"),
        "created": at(0.3),
        "request": {"identifier": {"system": MRN, "value": "REQ-pb-cer-1"}},
        "outcome": "complete",
        "insurer": ref("Organization", "payer-aetna"),
        "insurance": [{"coverage": ref("Coverage", "pb-cov-1"), "inforce": True}],
    }

    def claim_pair(rid: str, use: str, denied: bool) -> list[dict[str, Any]]:
        claim = {
            "resourceType": "Claim",
            "id": rid,
            "status": "active",
            "type": concept(CLAIM_TYPE, "professional"),
            "use": use,
            "patient": ref("Patient", "pb-pat-1"),
            "created": at(0.3),
            "insurer": ref("Organization", "payer-aetna"),
            "provider": ref("Organization", "practice"),
            "priority": concept(PROCESS_PRIORITY, "normal"),
            "referral": ref("ServiceRequest", "pb-sr-1"),
            "insurance": [{"sequence": 1, "focal": True, "coverage": ref("Coverage", "pb-cov-1")}],
            "item": [{"sequence": 1, "productOrService": concept(CPT, "97110"), "quantity": {"value": 8}}],
        }
        amount = {"value": 880.0, "currency": "USD"}
        verdict: dict[str, Any] = {"category": concept(ADJUDICATION, "benefit"), "amount": amount}
        if denied:
            verdict |= {"category": concept(ADJUDICATION, "denied"), "reason": concept(CARC, "197")}
        response: dict[str, Any] = {
            "resourceType": "ClaimResponse",
            "id": f"{rid}-resp",
            "status": "active",
            "type": claim["type"],
            "use": use,
            "patient": claim["patient"],
            "created": at(0.4),
            "insurer": claim["insurer"],
            "request": ref("Claim", rid),
            "outcome": "complete",
            "disposition": "Denied" if denied else "Approved",
            "item": [
                {
                    "itemSequence": 1,
                    "adjudication": [
                        {"category": concept(ADJUDICATION, "submitted"), "amount": amount},
                        verdict,
                    ],
                }
            ],
        }
        if use == "preauthorization" and not denied:
            response["preAuthRef"] = "PA-PB-1"
        return [claim, response]

    resources: list[dict[str, Any]] = [
        patient,
        coverage,
        referral("pb-sr-1", "PT", "active"),  # its evaluation is booked after the first sync
        referral("pb-sr-2", "OT", "active", diagnosis=False),  # intake incomplete
        referral("pb-sr-3", "SLP", "active"),  # not offered: rejected
        referral("pb-sr-4", "PT", "completed"),  # not active: no Task
        eligibility,
        *claim_pair("pb-cl-1", "claim", denied=True),
        *claim_pair("pb-pa-1", "preauthorization", denied=False),
    ]
    practice.requesters += [r["requester"]["reference"] for r in resources if "requester" in r]
    return {r["id"]: practice.add(r) for r in resources}


def evaluation(sr: dict[str, Any], now: datetime) -> dict[str, Any]:
    """An evaluation (CPT 97161) booked for a referral, starting between its authoredOn and now."""
    authored = utc(sr["authoredOn"])
    return {
        "resourceType": "Appointment",
        "id": "pb-appt-1",
        "status": "booked",
        "serviceType": [concept(CPT, "97161", "Physical therapy evaluation, low complexity")],
        "created": instant(now),
        "start": instant(authored + (now - authored) / 2),
        "end": instant(authored + (now - authored) / 2 + timedelta(minutes=45)),
        "basedOn": [ref("ServiceRequest", sr["id"])],
        "participant": [{"actor": sr["subject"], "status": "accepted"}],
    }


def by_focus(tasks: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for task in tasks:
        out.setdefault(task["focus"]["reference"].removeprefix("ServiceRequest/"), []).append(task)
    return out


# --------------------------------------------------------------------------------------------- fixtures


@dataclass
class PushedBack:
    url: str
    fhir: httpx.Client
    #: Active referrals authored on or after SINCE when the first sync ran: the ones to acknowledge.
    to_acknowledge: dict[str, dict[str, Any]]
    #: Active referrals authored before SINCE: not acknowledged.
    too_old: list[str]
    #: The periods the first sync and the final push reported (previous and current month).
    periods_first: list[date]
    periods_final: list[date]
    tasks_first: list[dict[str, Any]]
    acks_first: dict[str, dict[str, Any]]
    outbox_first: Counter[tuple[str, str]]
    second: dict[str, Any]
    push: dict[str, Any]
    tasks_final: list[dict[str, Any]]


def outbox_counts(url: str) -> Counter[tuple[str, str]]:
    rows = query(url, "select kind, status from outbox where endpoint = :e", e=ENDPOINT)
    return Counter((r.kind, r.status) for r in rows)


def acknowledgments(url: str) -> dict[str, dict[str, Any]]:
    rows = query(url, "select * from acknowledgment where endpoint = :e", e=ENDPOINT)
    return {r.referral_id: dict(r._mapping) for r in rows}


@pytest.fixture(scope="module")
def pushed(
    sekmet_base_url: str, practice: Practice, fhir: httpx.Client, tmp_path_factory: pytest.TempPathFactory
) -> PushedBack:
    """sync (Tasks, Measures, MeasureReports) → an evaluation is booked → sync → push."""
    now = datetime.now(UTC)
    start, _ = period_bounds(period_start(now, "month"), "month")
    added = this_period(practice, start, now)
    post_transaction(fhir, [put_entry(r) for r in added.values()])
    active = {rid: sr for rid, sr in practice.of("ServiceRequest").items() if sr["status"] == "active"}
    to_acknowledge = {rid: sr for rid, sr in active.items() if utc(sr["authoredOn"]).date() >= SINCE}
    config = write_config(tmp_path_factory.mktemp("pushback"), sekmet_base_url)
    url = f"sqlite:///{config.parent / 'warehouse.db'}"

    periods_first = recent_periods(datetime.now(UTC), "month")
    sync(config)
    tasks_first = everything(fhir, "Task")
    acks_first = acknowledgments(url)
    outbox_first = outbox_counts(url)

    booked = practice.add(evaluation(added["pb-sr-1"], datetime.now(UTC)))
    created = fhir.put(
        f"Appointment/{booked['id']}", json=booked, headers={"Content-Type": "application/fhir+json"}
    )
    assert created.status_code == 201, created.text
    second = sync(config)
    periods_final = recent_periods(datetime.now(UTC), "month")
    done = connector("push", "--config", str(config), "--json", cwd=config.parent, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (push,) = orjson.loads(done.stdout)
    return PushedBack(
        url=url,
        fhir=fhir,
        to_acknowledge=to_acknowledge,
        too_old=sorted(set(active) - set(to_acknowledge)),
        periods_first=periods_first,
        periods_final=periods_final,
        tasks_first=tasks_first,
        acks_first=acks_first,
        outbox_first=outbox_first,
        second=second,
        push=push,
        tasks_final=everything(fhir, "Task"),
    )


def tasks_for(fhir: httpx.Client, referral_id: str) -> list[dict[str, Any]]:
    """`Task?focus=ServiceRequest/<id>`: the search a user runs to find a referral's acknowledgment."""
    bundle = fhir.get("Task", params={"focus": f"ServiceRequest/{referral_id}"}).raise_for_status().json()
    assert not [e for e in bundle.get("entry") or [] if e["search"]["mode"] == "outcome"]
    return [e["resource"] for e in bundle.get("entry") or [] if e["search"]["mode"] == "match"]


def discipline_of(sr: dict[str, Any]) -> str:
    code = sr["code"]["coding"][0]["code"]
    return next(d for c, _, d in SERVICES if c == code)


# ------------------------------------------------------------------------------------------------ tests


def test_every_referral_to_acknowledge_got_exactly_one_task(pushed: PushedBack) -> None:
    focus = by_focus(pushed.tasks_first)
    assert len(pushed.to_acknowledge) > 50
    assert {"pb-sr-1", "pb-sr-2", "pb-sr-3"} <= set(pushed.to_acknowledge)
    # Exactly the active referrals since SINCE: none older, none completed (pb-sr-4), none twice.
    assert set(focus) == set(pushed.to_acknowledge)
    assert {rid: len(tasks) for rid, tasks in focus.items() if len(tasks) != 1} == {}
    assert pushed.outbox_first == Counter(
        {
            ("task-create", "sent"): len(pushed.to_acknowledge),
            ("measure", "sent"): len(METRICS) + 1,
            ("measure-report", "sent"): 2,
        }
    )
    # The server finds each by its focus.
    for rid in ["pb-sr-1", "pb-sr-2", "pb-sr-3", *sorted(pushed.to_acknowledge)[:6]]:
        assert [t["id"] for t in tasks_for(pushed.fhir, rid)] == [focus[rid][0]["id"]], rid
    for rid in ["pb-sr-4", *pushed.too_old[:3]]:
        assert tasks_for(pushed.fhir, rid) == [], rid

    # One acknowledgment row per Task, naming it; the Task's authoredOn is the acknowledgment time.
    assert set(pushed.acks_first) == set(focus)
    for rid, (task,) in focus.items():
        ack = pushed.acks_first[rid]
        assert ack["task_id"] == task["id"]
        assert ack["task_version"] == task["meta"]["versionId"] == "1"
        assert ack["task_identifier"] == f"{ENDPOINT}/ServiceRequest/{rid}"
        assert (ack["task_status"], ack["business_status"]) == (
            task["status"],
            task["businessStatus"]["text"],
        )
        # (the Task says it in milliseconds)
        assert abs(as_utc(ack["acknowledged_at"]) - utc(task["authoredOn"])) < timedelta(milliseconds=1)
        hours = (
            utc(task["authoredOn"]) - utc(pushed.to_acknowledge[rid]["authoredOn"])
        ).total_seconds() / 3600
        assert ack["response_hours"] == pytest.approx(hours, abs=1e-3)


def test_tasks_acknowledge_with_the_practices_rules(pushed: PushedBack) -> None:
    for task in pushed.tasks_first:
        Task.model_validate(task)
        rid = task["focus"]["reference"].removeprefix("ServiceRequest/")
        sr = pushed.to_acknowledge[rid]
        assert task["identifier"] == [
            {"system": DEFAULT_IDENTIFIER_SYSTEM, "value": f"{ENDPOINT}/ServiceRequest/{rid}"}
        ]
        assert (task["intent"], task["code"]["coding"][0]["code"]) == ("order", "fulfill")
        assert task["focus"] == {"reference": f"ServiceRequest/{rid}"}
        assert task["for"] == sr["subject"]
        assert task["requester"] == sr["requester"]
        assert task["owner"] == {"reference": OWNER}
        if discipline_of(sr) == "SLP":  # offered_disciplines = PT, OT
            assert task["status"] == "rejected", rid
            assert task["statusReason"] == {"text": "discipline SLP is not offered by this practice"}
        else:
            assert task["status"] == "received", rid
            assert "statusReason" not in task
        if rid == "pb-sr-2":  # no reasonCode
            assert task["businessStatus"] == {"text": "intake incomplete"}
            assert task["note"] == [{"text": "Missing intake items: diagnosis"}]
        else:
            assert task["businessStatus"] == {"text": "intake complete"}, rid
            assert "note" not in task
    statuses = Counter(t["status"] for t in pushed.tasks_first)
    assert statuses["received"] > 0
    assert statuses["rejected"] > 0


def test_a_second_sync_and_push_create_no_task(pushed: PushedBack) -> None:
    streams = {row["resource_type"]: row for row in pushed.second["streams"]}
    # The second sync re-read the newest referrals (overlap window), so it recomputed their acknowledgments...
    assert streams["ServiceRequest"]["loaded"] == 0
    assert streams["ServiceRequest"]["fetched"] >= 4
    assert streams["Appointment"]["loaded"] == 1  # the booked evaluation
    # ...and neither it nor the push created a Task.
    assert sorted(t["id"] for t in pushed.tasks_final) == sorted(t["id"] for t in pushed.tasks_first)
    assert pushed.push["sent"] == {"measure-report": 2}
    assert (pushed.push["failed"], pushed.push["waiting"], pushed.push["errors"]) == ({}, {}, [])
    final = outbox_counts(pushed.url)
    assert final == pushed.outbox_first + Counter({("task-update", "sent"): 1})
    assert len(acknowledgments(pushed.url)) == len(pushed.tasks_final)


def test_a_booked_evaluation_moves_the_same_task_to_accepted(pushed: PushedBack) -> None:
    (before,) = by_focus(pushed.tasks_first)["pb-sr-1"]
    (after,) = by_focus(pushed.tasks_final)["pb-sr-1"]
    assert after["id"] == before["id"]
    assert (before["status"], before["businessStatus"]["text"]) == ("received", "intake complete")
    assert (after["status"], after["businessStatus"]["text"]) == ("accepted", "evaluation scheduled")
    assert after["meta"]["versionId"] == "2"
    assert after["authoredOn"] == before["authoredOn"]
    Task.model_validate(after)
    history = pushed.fhir.get(f"Task/{after['id']}/_history").raise_for_status().json()
    assert sorted(e["resource"]["status"] for e in history["entry"]) == ["accepted", "received"]
    # Every other Task is untouched.
    others = [t for t in pushed.tasks_final if t["id"] != after["id"]]
    assert {t["meta"]["versionId"] for t in others} == {"1"}

    ack = acknowledgments(pushed.url)["pb-sr-1"]
    assert (ack["task_id"], ack["task_version"]) == (after["id"], "2")
    assert (ack["task_status"], ack["business_status"]) == ("accepted", "evaluation scheduled")
    # The first acknowledgment time is kept.
    assert ack["acknowledged_at"] == pushed.acks_first["pb-sr-1"]["acknowledged_at"]
    assert ack["response_hours"] == pushed.acks_first["pb-sr-1"]["response_hours"]


def test_each_measure_exists_once(pushed: PushedBack) -> None:
    measures = everything(pushed.fhir, "Measure")
    urls = [measure_url(MEASURE_BASE, code) for code in (COMPOSITE, *(m.code for m in METRICS))]
    assert sorted(m["url"] for m in measures) == sorted(urls)
    # sekmet cannot search Measure by url: each is written to its deterministic id (update as create).
    assert {m["url"]: m["id"] for m in measures} == {u: measure_id(u) for u in urls}
    servers = query(
        pushed.url, "select server_id from outbox where kind = 'measure' and endpoint = :e", e=ENDPOINT
    )
    assert sorted(r.server_id for r in servers) == sorted(measure_id(u) for u in urls)


def expected_metrics(pushed: PushedBack, month: date) -> dict[str, tuple[dict[str, int], float | None]]:
    """Each metric of a monthly report from the warehouse views (or the server's Tasks), as
    (population counts, score). Compared 1:1 with a view row where one has the number; otherwise with a
    query over the view (or table) rows of the month, named below."""
    e, m = ENDPOINT, month.isoformat()

    def pct(numerator: int, denominator: int) -> float | None:
        return round(100 * numerator / denominator, 4) if denominator else None

    def med(values: list[float]) -> float | None:
        return round(statistics.median(values), 4) if values else None

    # v_referral_funnel, the month's row. The report counts referrals by authoredOn and evaluations booked
    # or fulfilled; the view also falls back to lastUpdated, drops entered-in-error and counts no-shows as
    # scheduled. The practice has none of those, so the numbers must agree.
    funnel = query(
        pushed.url,
        "select received, acknowledged, evaluation_scheduled from v_referral_funnel"
        " where endpoint = :e and month = :m",
        e=e,
        m=m,
    )
    received, acknowledged, scheduled = funnel[0] if funnel else (0, 0, 0)
    # Intake: no monthly view has it (v_referrals_weekly is by ISO week): the referral rows of the month.
    total, complete = query(
        pushed.url,
        "select count(*), coalesce(sum(case when intake_complete then 1 else 0 end), 0) from referral"
        " where endpoint = :e and date(authored_on, 'start of month') = :m",
        e=e,
        m=m,
    )[0]
    assert total == received
    # Hours to acknowledge: the view has whole days only. From the server: Task.authoredOn minus the
    # referral's authoredOn, for the month's referrals; their number is the view's `acknowledged`.
    hours = [
        (utc(t["authoredOn"]) - utc(sr["authoredOn"])).total_seconds() / 3600
        for t in pushed.tasks_final
        if (sr := pushed.to_acknowledge[t["focus"]["reference"].removeprefix("ServiceRequest/")])
        and utc(sr["authoredOn"]).date().replace(day=1) == month
    ]
    assert len(hours) == acknowledged
    # v_eligibility_before_first_visit, the month's row (rate is 0-1; the report says %).
    eligibility = query(
        pushed.url,
        "select patients_with_first_visit, verified_before_visit from v_eligibility_before_first_visit"
        " where endpoint = :e and month = :m",
        e=e,
        m=m,
    )
    patients, verified = eligibility[0] if eligibility else (0, 0)
    # v_denials_by_reason: denied lines summed over the month's rows; adjudicated_lines is per payer and
    # repeated on each of its rows, and a payer without a denial that month has no row, so the denominator
    # is complete only when every payer with decisions that month had a denial (checked).
    denials = query(
        pushed.url,
        "select payer, sum(denied_lines) as denied, max(adjudicated_lines) as lines from v_denials_by_reason"
        " where endpoint = :e and month = :m group by payer",
        e=e,
        m=m,
    )
    decided_payers = query(
        pushed.url,
        "select distinct coalesce(payer_key, 'unknown') from claim_adjudication where endpoint = :e"
        " and date(created, 'start of month') = :m and outcome in ('complete', 'partial', 'error')",
        e=e,
        m=m,
    )
    assert {r.payer for r in denials} == {r[0] for r in decided_payers}
    denied, lines = sum(r.denied for r in denials), sum(r.lines for r in denials)
    # Prior-authorization turnaround: v_authorization_turnaround groups by the month of the *request*; the
    # report takes decisions in the period, so: the prior_authorization view's rows decided in the month.
    turnaround = [
        float(r.turnaround_days)
        for r in query(
            pushed.url,
            "select turnaround_days from prior_authorization where endpoint = :e"
            " and date(decided_at, 'start of month') = :m and turnaround_days is not null",
            e=e,
            m=m,
        )
    ]
    return {
        "new-referrals": ({"initial-population": received}, float(received)),
        "intake-complete-rate": ({"denominator": total, "numerator": complete}, pct(complete, total)),
        "median-hours-to-acknowledge": ({"initial-population": len(hours)}, med(hours)),
        "referral-to-evaluation": (
            {"denominator": received, "numerator": scheduled},
            pct(scheduled, received),
        ),
        "eligibility-before-first-visit": (
            {"denominator": patients, "numerator": verified},
            pct(verified, patients),
        ),
        "denial-rate": ({"denominator": lines, "numerator": denied}, pct(denied, lines)),
        "prior-auth-median-turnaround": ({"initial-population": len(turnaround)}, med(turnaround)),
    }


def reported(report: dict[str, Any]) -> dict[str, tuple[dict[str, int], float | None]]:
    out = {}
    for group in report["group"]:
        populations = {p["code"]["coding"][0]["code"]: p["count"] for p in group.get("population", [])}
        out[group["code"]["coding"][0]["code"]] = (
            populations,
            (group.get("measureScore") or {}).get("value"),
        )
    return out


def test_one_measure_report_per_period_with_the_views_numbers(pushed: PushedBack) -> None:
    reports = everything(pushed.fhir, "MeasureReport")
    queued = [
        r.item_key for r in query(pushed.url, "select item_key from outbox where kind = 'measure-report'")
    ]
    # Exactly one per period reported (sekmet cannot search MeasureReport by identifier, so the connector
    # PUTs to a deterministic id), updated in place by each of the three rounds.
    assert sorted(r["id"] for r in reports) == sorted(report_id(ENDPOINT, p) for p in queued)
    assert {p.isoformat() for p in pushed.periods_final} <= set(queued)
    by_period = {r["period"]["start"][:10]: r for r in reports}
    for month in pushed.periods_final:
        report = by_period[month.isoformat()]
        MeasureReport.model_validate(report)
        if month in pushed.periods_first:
            assert report["meta"]["versionId"] == "3"
        _, end = period_bounds(month, "month")
        assert report["period"] == {
            "start": f"{month.isoformat()}T00:00:00.000Z",
            "end": (end - timedelta(milliseconds=1))
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
        }
        assert report["identifier"] == [
            {"system": DEFAULT_IDENTIFIER_SYSTEM, "value": f"{ENDPOINT}/metrics/{month.isoformat()}"}
        ]
        assert (report["status"], report["type"], report["reporter"]) == (
            "complete",
            "summary",
            {"reference": OWNER},
        )
        assert report["measure"] == measure_url(MEASURE_BASE, COMPOSITE)

        expected = expected_metrics(pushed, month)
        got = reported(report)
        assert list(got) == [m.code for m in METRICS]
        for code, (populations, score) in expected.items():
            assert got[code][0] == populations, (month, code)
            assert got[code][1] == (pytest.approx(score, abs=1e-3) if score is not None else None), (
                month,
                code,
            )

    # This month's additions make every metric of the current report non-trivial.
    current = reported(by_period[pushed.periods_final[-1].isoformat()])
    assert current["intake-complete-rate"][0]["numerator"] < current["intake-complete-rate"][0]["denominator"]
    assert current["referral-to-evaluation"][0]["numerator"] >= 1
    assert current["median-hours-to-acknowledge"][0]["initial-population"] >= 3
    assert current["eligibility-before-first-visit"][0]["numerator"] >= 1
    assert current["denial-rate"][0]["numerator"] >= 1
    assert current["prior-auth-median-turnaround"][0]["initial-population"] >= 1
