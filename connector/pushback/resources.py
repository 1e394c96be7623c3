"""Pure builders of what the connector writes back: the acknowledgment Task, the Measures, the MeasureReport.

No I/O, no clock: the caller passes rows from the warehouse and the time. The results validate with
`fhir.resources.R4B` (tests check).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

#: The connector's own code system for the metrics it reports (documented in docs/pushback.md).
METRICS_SYSTEM = "https://therapy-fhir-connector.org/fhir/CodeSystem/practice-metrics"
MEASURE_POPULATION = "http://terminology.hl7.org/CodeSystem/measure-population"
MEASURE_SCORING = "http://terminology.hl7.org/CodeSystem/measure-scoring"
TASK_CODE = "http://hl7.org/fhir/CodeSystem/task-code"
COMPOSITE = "practice-metrics"


@dataclass(frozen=True, slots=True)
class Metric:
    code: str
    title: str
    #: proportion (numerator / denominator), continuous-variable (a median) or cohort (a count)
    scoring: str
    unit: str
    description: str


METRICS: tuple[Metric, ...] = (
    Metric(
        "new-referrals",
        "New referrals",
        "cohort",
        "{referrals}",
        "Referrals (ServiceRequests) authored in the period.",
    ),
    Metric(
        "intake-complete-rate",
        "Intake complete rate",
        "proportion",
        "%",
        "Share of the period's referrals whose intake checklist is complete.",
    ),
    Metric(
        "median-hours-to-acknowledge",
        "Median hours to acknowledge",
        "continuous-variable",
        "h",
        "Median hours from a referral's authoredOn to the acknowledgment Task, for the period's referrals.",
    ),
    Metric(
        "referral-to-evaluation",
        "Referral-to-evaluation conversion",
        "proportion",
        "%",
        "Share of the period's referrals with an evaluation visit booked or attended.",
    ),
    Metric(
        "eligibility-before-first-visit",
        "Eligibility verified before first visit",
        "proportion",
        "%",
        "Share of patients with a first visit in the period whose eligibility was checked on or before it.",
    ),
    Metric(
        "denial-rate",
        "Denial rate",
        "proportion",
        "%",
        "Denied claim lines / adjudicated claim lines decided in the period.",
    ),
    Metric(
        "prior-auth-median-turnaround",
        "Prior-authorization median turnaround",
        "continuous-variable",
        "d",
        "Median days from a prior-authorization request to its decision, for decisions in the period.",
    ),
    Metric(
        "referrer-updated-within-7-days",
        "Referrers updated within 7 days of the evaluation",
        "proportion",
        "%",
        "Share of the evaluations attended in the period whose referrer got an update (a Task milestone or a"
        " case summary) within 7 days.",
    ),
)
METRICS_BY_CODE = {m.code: m for m in METRICS}


@dataclass(frozen=True, slots=True)
class MetricValue:
    """One metric for one period: counts and the score (None when there is nothing to measure)."""

    code: str
    numerator: int | None = None
    denominator: int | None = None
    score: float | None = None


@dataclass(frozen=True, slots=True)
class AckPolicy:
    """How referrals are acknowledged (from the endpoint's config)."""

    identifier_system: str
    owner: str
    offered_disciplines: tuple[str, ...] = ("PT", "OT", "SLP", "other")
    accept_complete_intake: bool = False


def instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def task_identifier(endpoint: str, referral_id: str) -> str:
    """The stable identifier value of a referral's acknowledgment Task (with the configured system)."""
    return f"{endpoint}/ServiceRequest/{referral_id}"


def report_identifier(endpoint: str, period_start: str) -> str:
    return f"{endpoint}/metrics/{period_start}"


def report_id(endpoint: str, period_start: str) -> str:
    """A deterministic server id for update-as-create on servers that cannot search by identifier."""
    digest = hashlib.sha256(report_identifier(endpoint, period_start).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9\-.]", "-", f"{endpoint}-{period_start}")[:40]
    return f"{slug}-{digest}"


def measure_id(url: str) -> str:
    """A deterministic server id for a Measure, for servers that cannot search Measure by `url`."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9\-.]", "-", url.rstrip("/").rsplit("/", 1)[-1])[:40]
    return f"{slug}-{digest}"


def _ref(reference: str | None, base: str | None) -> dict[str, str] | None:
    if not reference:
        return None
    if base and not reference.startswith(("#", "http://", "https://", "urn:")):
        return {"reference": f"{base.rstrip('/')}/{reference}"}
    return {"reference": reference}


def acknowledgment_status(referral: Mapping[str, Any], policy: AckPolicy) -> tuple[str, str | None]:
    """received, or accepted / rejected by the configured rules, with the reason for a rejection."""
    discipline = referral.get("discipline")
    if discipline and discipline not in policy.offered_disciplines:
        return "rejected", f"discipline {discipline} is not offered by this practice"
    if policy.accept_complete_intake and referral.get("intake_complete"):
        return "accepted", None
    return "received", None


def build_task(
    referral: Mapping[str, Any],
    *,
    endpoint: str,
    policy: AckPolicy,
    authored_on: datetime,
    reference_base: str | None = None,
    state: tuple[str, str, str | None] | None = None,
) -> dict[str, Any]:
    """The Task acknowledging one referral (a `referral` row). FHIR Workflow: `focus` is the referral.

    `state` is (status, businessStatus, statusReason) of a later milestone (`pushback.lifecycle`); without it
    the Task is the first acknowledgment. `reference_base` makes references absolute when the Task is
    written to another server than the one holding the ServiceRequest.
    """
    referral_id = str(referral["resource_id"])
    status, reason = acknowledgment_status(referral, policy)
    missing = list(referral.get("intake_missing") or [])
    complete = (
        bool(referral.get("intake_complete")) if referral.get("intake_complete") is not None else not missing
    )
    business = "intake complete" if complete else "intake incomplete"
    if state is not None:
        status, business, reason = state
    task: dict[str, Any] = {
        "resourceType": "Task",
        "identifier": [{"system": policy.identifier_system, "value": task_identifier(endpoint, referral_id)}],
        "status": status,
        "intent": "order",
        "code": {"coding": [{"system": TASK_CODE, "code": "fulfill"}]},
        "focus": _ref(f"ServiceRequest/{referral_id}", reference_base),
        "authoredOn": instant(authored_on),
        "lastModified": instant(authored_on),
        "owner": {"reference": policy.owner},
        "businessStatus": {"text": business},
    }
    patient = _ref(referral.get("patient_ref"), reference_base)
    if patient:
        task["for"] = patient
    requester = referral.get("requester_ref")
    if requester and not str(requester).startswith("#"):
        task["requester"] = _ref(requester, reference_base)
    elif referral.get("requester_display"):
        # A contained or display-only referrer cannot be referenced from another resource.
        task["requester"] = {"display": referral["requester_display"]}
    if reason:
        task["statusReason"] = {"text": reason}
    if missing and state is None:
        task["note"] = [{"text": "Missing intake items: " + ", ".join(missing)}]
    return task


def measure_url(base: str, code: str) -> str:
    return f"{base.rstrip('/')}/{code}"


def build_measure(metric: Metric, base: str) -> dict[str, Any]:
    """One published Measure per metric (MeasureReport.measure is required in R4)."""
    populations: Sequence[str] = {
        "proportion": ("initial-population", "denominator", "numerator"),
        "continuous-variable": ("initial-population", "measure-population"),
        "cohort": ("initial-population",),
    }[metric.scoring]
    return {
        "resourceType": "Measure",
        "url": measure_url(base, metric.code),
        "version": "1",
        "name": re.sub(r"[^A-Za-z0-9]", "", metric.title.title()),
        "title": metric.title,
        "status": "active",
        "description": metric.description,
        "scoring": {"coding": [{"system": MEASURE_SCORING, "code": metric.scoring}]},
        "group": [
            {
                "code": {
                    "coding": [{"system": METRICS_SYSTEM, "code": metric.code, "display": metric.title}]
                },
                # R4 requires a criteria expression; the connector computes these in SQL views.
                "population": [
                    {
                        "code": {"coding": [{"system": MEASURE_POPULATION, "code": p}]},
                        "criteria": {"language": "text/plain", "expression": f"{metric.code}: {p}"},
                    }
                    for p in populations
                ],
            }
        ],
    }


def build_composite_measure(base: str) -> dict[str, Any]:
    """The measure a practice's MeasureReport points to: composed of the per-metric Measures."""
    return {
        "resourceType": "Measure",
        "url": measure_url(base, COMPOSITE),
        "version": "1",
        "name": "TherapyPracticeMetrics",
        "title": "Therapy practice metrics",
        "status": "active",
        "description": "Referral, eligibility, authorization and denial metrics of a therapy practice.",
        "type": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/measure-type", "code": "composite"}
                ]
            }
        ],
        "compositeScoring": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/composite-measure-scoring",
                    "code": "component",
                }
            ]
        },
        "relatedArtifact": [
            {"type": "composed-of", "display": m.title, "resource": measure_url(base, m.code)}
            for m in METRICS
        ],
    }


def build_measure_report(
    *,
    endpoint: str,
    period_start: datetime,
    period_end: datetime,
    values: Sequence[MetricValue],
    owner: str,
    identifier_system: str,
    measure_base: str,
    created: datetime,
) -> dict[str, Any]:
    """One MeasureReport per endpoint and period: a group per metric with counts and a score."""
    groups = []
    for value in values:
        metric = METRICS_BY_CODE[value.code]
        group: dict[str, Any] = {
            "code": {"coding": [{"system": METRICS_SYSTEM, "code": metric.code, "display": metric.title}]},
        }
        populations = []
        if value.denominator is not None:
            code = "denominator" if metric.scoring == "proportion" else "initial-population"
            populations.append(
                {
                    "code": {"coding": [{"system": MEASURE_POPULATION, "code": code}]},
                    "count": value.denominator,
                }
            )
        if value.numerator is not None and metric.scoring == "proportion":
            populations.append(
                {
                    "code": {"coding": [{"system": MEASURE_POPULATION, "code": "numerator"}]},
                    "count": value.numerator,
                }
            )
        if populations:
            group["population"] = populations
        if value.score is not None:
            group["measureScore"] = {"value": round(value.score, 4), "unit": metric.unit}
        groups.append(group)
    start = period_start.astimezone(UTC).date().isoformat()
    return {
        "resourceType": "MeasureReport",
        "identifier": [{"system": identifier_system, "value": report_identifier(endpoint, start)}],
        "status": "complete",
        "type": "summary",
        "measure": measure_url(measure_base, COMPOSITE),
        "date": instant(created),
        "reporter": {"reference": owner},
        "period": {"start": instant(period_start), "end": instant(period_end)},
        "group": groups,
    }
