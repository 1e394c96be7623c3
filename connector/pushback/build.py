"""Build each outbox item's resource from the warehouse as it is at push time."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.config import EndpointSettings
from connector.errors import ConnectorError
from connector.pushback import lifecycle, metrics, summary
from connector.pushback.resources import (
    COMPOSITE,
    METRICS_BY_CODE,
    AckPolicy,
    build_composite_measure,
    build_measure,
    build_measure_report,
    build_task,
)
from connector.warehouse import outbox
from connector.warehouse.models import Base
from connector.warehouse.outbox import (
    CASE_SUMMARY,
    MEASURE,
    MEASURE_REPORT,
    TASK_CREATE,
    TASK_UPDATE,
    Item,
)
from mappings.episode import visits_per_week


def policy(endpoint: EndpointSettings) -> AckPolicy:
    if endpoint.owner is None:
        raise ConnectorError(f"{endpoint.name}: pushing needs `owner` in the endpoint's config")
    return AckPolicy(
        identifier_system=endpoint.identifier_system,
        owner=endpoint.owner,
        offered_disciplines=tuple(endpoint.offered_disciplines),
        accept_complete_intake=endpoint.accept_complete_intake,
    )


def referral_id_of(item: Item) -> str:
    return lifecycle.split_key(item.item_key)[0].removeprefix("ServiceRequest/")


def milestone_of(item: Item) -> lifecycle.Milestone | None:
    """The milestone a Task update moves the Task to (None for the first acknowledgment)."""
    name = lifecycle.split_key(item.item_key)[1]
    if name is None or item.kind != TASK_UPDATE:
        return None
    if name not in lifecycle.MILESTONES:
        raise ConnectorError(f"unknown Task milestone {name!r}")
    return lifecycle.MILESTONES[name]


def _rows_of(conn: sa.Connection, table: str, endpoint: str, column: str, value: str) -> list[dict[str, Any]]:
    t = Base.metadata.tables[table]
    query = sa.select(t).where(t.c.endpoint == endpoint, t.c[column] == value)
    return [dict(r) for r in conn.execute(query).mappings()]


def referral_life(engine: Engine, endpoint: str, referral: Mapping[str, Any]) -> lifecycle.ReferralLife:
    """One referral's life as the warehouse knows it now."""
    ref = f"ServiceRequest/{referral['resource_id']}"
    with engine.connect() as conn:
        linked = {
            table: _rows_of(conn, table, endpoint, "referral_ref", ref)
            for table in ("visit", "episode", "care_plan", "clinical_note")
        }
    return lifecycle.lives(
        [referral], linked["visit"], linked["episode"], linked["care_plan"], linked["clinical_note"]
    )[ref]


def superseded(engine: Engine, endpoint: str, item: Item) -> str | None:
    """Why an item must never be sent, else None: a Task update at or below the Task's state, a case
    summary for a referral that names no referrer."""
    if item.kind == CASE_SUMMARY:
        referral = _referral(engine, endpoint, referral_id_of(item)) or {}
        if not _recipient_of(referral):
            return "the referral names no referrer to send a case summary to"
        return None
    milestone = milestone_of(item) if item.kind == TASK_UPDATE else None
    if milestone is None:
        return None
    ack = outbox.acknowledgment(engine, endpoint, referral_id_of(item))
    if ack is None:
        return None
    if lifecycle.task_rank(ack["task_status"], ack["business_status"]) >= milestone.rank:
        return f"the Task is already {ack['task_status']} ({ack['business_status']}): never sent backwards"
    return None


def _referral(engine: Engine, endpoint: str, referral_id: str) -> dict[str, Any] | None:
    table = Base.metadata.tables["referral"]
    with engine.connect() as conn:
        row = (
            conn.execute(
                sa.select(table).where(
                    table.c.endpoint == endpoint,
                    table.c.resource_type == "ServiceRequest",
                    table.c.resource_id == referral_id,
                )
            )
            .mappings()
            .first()
        )
    return dict(row) if row else None


def resource_for(
    engine: Engine, endpoint: EndpointSettings, item: Item, *, now: datetime, reference_base: str | None
) -> dict[str, Any] | None:
    """The resource to send for an item, or None when it must wait (an update before its Task)."""
    if item.kind in (TASK_CREATE, TASK_UPDATE):
        referral_id = referral_id_of(item)
        referral = _referral(engine, endpoint.name, referral_id)
        if referral is None:
            raise ConnectorError(f"referral ServiceRequest/{referral_id} is no longer in the warehouse")
        milestone = milestone_of(item) if item.kind == TASK_UPDATE else None
        ack = outbox.acknowledgment(engine, endpoint.name, referral_id)
        if item.kind == TASK_UPDATE and ack is None:
            return None
        state = None
        if milestone is not None:
            life = referral_life(engine, endpoint.name, referral)
            reasons = dict(lifecycle.milestones(life, policy(endpoint)))
            state = (milestone.status, milestone.business, reasons.get(milestone.name))
        # The Task keeps the time it was first authored; later updates only change its state.
        authored = ack["acknowledged_at"] if ack else now
        task = build_task(
            referral,
            endpoint=endpoint.name,
            policy=policy(endpoint),
            authored_on=authored,
            reference_base=reference_base,
            state=state,
        )
        task["lastModified"] = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return task
    if item.kind == CASE_SUMMARY:
        facts = case_facts(engine, endpoint, item)
        if facts is None:
            return None
        return summary.build_case_summary(facts, form=endpoint.case_summary, sent=now)
    if item.kind == MEASURE:
        if item.item_key == COMPOSITE:
            return build_composite_measure(endpoint.measure_base)
        return build_measure(METRICS_BY_CODE[item.item_key], endpoint.measure_base)
    if item.kind == MEASURE_REPORT:
        start = date.fromisoformat(item.item_key)
        period_start, period_end = metrics.period_bounds(start, endpoint.metrics_period)
        values = metrics.compute(engine, endpoint.name, period_start, period_end)
        return build_measure_report(
            endpoint=endpoint.name,
            period_start=period_start,
            period_end=period_end - timedelta(milliseconds=1),
            values=values,
            owner=policy(endpoint).owner,
            identifier_system=endpoint.identifier_system,
            measure_base=endpoint.measure_base,
            created=now,
        )
    raise ConnectorError(f"unknown outbox kind {item.kind!r}")


def _recipient_of(referral: Mapping[str, Any]) -> str | None:
    ref = referral.get("requester_ref")
    return ref if ref and not str(ref).startswith("#") else referral.get("requester_display")


def _counts(visits: list[dict[str, Any]]) -> dict[str, int]:
    # An Encounter of an Appointment is the same visit: counted once, as its Appointment.
    counted = [v for v in visits if not (v["resource_type"] == "Encounter" and v.get("appointment_ref"))]
    return {
        s: sum(1 for v in counted if v["status"] == s) for s in ("fulfilled", "noshow", "cancelled", "booked")
    }


def _referral_payload(engine: Engine, endpoint: str, referral_id: str) -> dict[str, Any]:
    raw = Base.metadata.tables["raw_resource"]
    query = sa.select(raw.c.payload).where(
        raw.c.endpoint == endpoint, raw.c.resource_type == "ServiceRequest", raw.c.resource_id == referral_id
    )
    with engine.connect() as conn:
        payload = conn.execute(query).scalar_one_or_none()
    if isinstance(payload, str):  # PostgreSQL `json` comes back parsed; be safe with text
        payload = orjson.loads(payload)
    return payload if isinstance(payload, dict) else {}


def case_facts(engine: Engine, endpoint: EndpointSettings, item: Item) -> summary.CaseFacts | None:
    """What a case summary says, read from the warehouse now; None while the referral has no Task."""
    referral_id = referral_id_of(item)
    referral = _referral(engine, endpoint.name, referral_id)
    if referral is None:
        raise ConnectorError(f"referral ServiceRequest/{referral_id} is no longer in the warehouse")
    ack = outbox.acknowledgment(engine, endpoint.name, referral_id)
    if ack is None:
        return None
    key = lifecycle.split_key(item.item_key)[1] or ""
    ref = f"ServiceRequest/{referral_id}"
    with engine.connect() as conn:
        goals = _rows_of(conn, "goal", endpoint.name, "referral_ref", ref)
        plans = _rows_of(conn, "care_plan", endpoint.name, "referral_ref", ref)
        visits = _rows_of(conn, "visit", endpoint.name, "referral_ref", ref)
    live_goals = [
        g for g in goals if g.get("lifecycle_status") not in ("cancelled", "entered-in-error", "rejected")
    ]
    # The newest plan with a schedule says how often; plans without one say nothing.
    scheduled = sorted(
        (p for p in plans if p.get("visits_per_week") is not None and p.get("status") != "entered-in-error"),
        key=lambda p: (
            p.get("period_start")
            or p.get("created_at")
            or p["last_updated"]
            or datetime.min.replace(tzinfo=UTC),
            p["resource_id"],
        ),
    )
    plan = scheduled[-1] if scheduled else {}
    per_week, weeks = plan.get("visits_per_week"), plan.get("plan_weeks")
    if per_week is None:  # no plan of care says how often: the referral's own occurrenceTiming may
        per_week, weeks = visits_per_week(
            _referral_payload(engine, endpoint.name, referral_id).get("occurrenceTiming")
        )
    counts = _counts(visits)
    return summary.CaseFacts(
        endpoint=endpoint.name,
        identifier_system=endpoint.identifier_system,
        referral_id=referral_id,
        milestone=lifecycle.summary_milestone(key),
        key=key,
        discipline=referral.get("discipline"),
        owner=policy(endpoint).owner,
        task_id=ack.get("task_id"),
        patient_ref=referral.get("patient_ref"),
        requester_ref=referral.get("requester_ref"),
        requester_display=referral.get("requester_display"),
        goals=tuple(
            summary.GoalFact(g["description"], g.get("achievement_status") or g.get("lifecycle_status"))
            for g in sorted(
                live_goals, key=lambda g: (g.get("start_date") is None, g.get("start_date"), g["resource_id"])
            )
            if g.get("description")
        ),
        visits_per_week=per_week,
        plan_weeks=weeks,
        attended=counts["fulfilled"],
        no_shows=counts["noshow"],
        cancelled=counts["cancelled"],
        upcoming=counts["booked"],
    )


def acknowledgment_row(
    engine: Engine,
    endpoint: EndpointSettings,
    item: Item,
    task: dict[str, Any],
    task_id: str | None,
    task_version: str | None,
    now: datetime,
) -> dict[str, Any]:
    referral_id = referral_id_of(item)
    referral = _referral(engine, endpoint.name, referral_id) or {}
    authored = referral.get("authored_on")
    hours = (now - authored).total_seconds() / 3600 if isinstance(authored, datetime) else None
    return {
        "endpoint": endpoint.name,
        "referral_id": referral_id,
        "task_identifier": task["identifier"][0]["value"],
        "task_id": task_id,
        "task_version": task_version,
        "task_status": task["status"],
        "business_status": (task.get("businessStatus") or {}).get("text"),
        "acknowledged_at": now,
        "response_hours": round(hours, 3) if hours is not None else None,
    }
