"""After a sync: link the therapy episode's rows (episodes, plans, goals, notes) to referrals where the
resources do not say.

The rules are `mappings.episode_links`; like `visit_links` (which runs first, so notes can follow their
visits), this reads the patients a run touched a chunk at a time and writes back the rows whose link changed.
"""

from __future__ import annotations

import logging
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.warehouse.engine import begin_write
from connector.warehouse.models.episode import CarePlan, ClinicalNote, Episode, Goal
from connector.warehouse.models.referrals import Visit
from connector.warehouse.visit_links import patient_chunks, referral_facts
from mappings.episode_links import CareFacts, link_care
from mappings.specs import SPECS

log = logging.getLogger(__name__)

_TABLES: dict[str, Any] = {
    "episode": Episode.__table__,
    "care_plan": CarePlan.__table__,
    "goal": Goal.__table__,
    "clinical_note": ClinicalNote.__table__,
}
_visit: Any = Visit.__table__
#: The row's day (first present) and, for episodes, its end.
_DAYS = {
    "episode": ("period_start",),
    "care_plan": ("period_start", "created_at"),
    "goal": ("start_date", "status_date"),
    "clinical_note": ("note_date",),
}
#: Types whose rows the linking reads: a run that loaded none of them changes nothing.
INPUT_TYPES = frozenset(s.resource_type for s in SPECS if {"referral", "visit", *_TABLES} & set(s.tables))


def _day(row: Any, table: str) -> date | None:
    for name in (*_DAYS[table], "last_updated"):
        value = getattr(row, name, None)
        if isinstance(value, datetime):
            return value.date()
    return None


def _rows(conn: sa.Connection, endpoint: str, patients: list[str]) -> list[CareFacts]:
    out: list[CareFacts] = []
    for name, table in _TABLES.items():
        for row in conn.execute(
            sa.select(table).where(table.c.endpoint == endpoint, table.c.patient_ref.in_(patients))
        ):
            out.append(
                CareFacts(
                    table=name,
                    resource_type=row.resource_type,
                    resource_id=row.resource_id,
                    patient_ref=row.patient_ref,
                    discipline=row.discipline or "other",
                    on=_day(row, name),
                    referral_ref=row.referral_ref,
                    referral_link=row.referral_link,
                    encounter_ref=getattr(row, "encounter_ref", None),
                    goal_refs=tuple(getattr(row, "goal_refs", None) or ()),
                    until=row.period_end.date() if name == "episode" and row.period_end else None,
                )
            )
    return out


def _visit_referrals(conn: sa.Connection, endpoint: str, patients: list[str]) -> dict[str, str]:
    """`Encounter/<id>` -> its visit's referral (an Encounter of an Appointment takes the Appointment's)."""
    rows = conn.execute(
        sa.select(
            _visit.c.resource_type, _visit.c.resource_id, _visit.c.referral_ref, _visit.c.appointment_ref
        ).where(_visit.c.endpoint == endpoint, _visit.c.patient_ref.in_(patients))
    ).all()
    appointments = {
        f"Appointment/{r.resource_id}": r.referral_ref for r in rows if r.resource_type == "Appointment"
    }
    out: dict[str, str] = {}
    for r in rows:
        if r.resource_type == "Encounter":
            ref = r.referral_ref or appointments.get(r.appointment_ref or "")
            if ref:
                out[f"Encounter/{r.resource_id}"] = ref
    return out


def derive_episode_links(engine: Engine | sa.Connection, endpoint: str, since: datetime | None = None) -> int:
    """Re-link the episode rows of the patients touched since `since` (every patient when None); returns how
    many rows changed."""
    if isinstance(engine, sa.Connection):
        return _derive(engine, endpoint, since)
    with begin_write(engine) as conn:
        changed = _derive(conn, endpoint, since)
    if changed:
        log.info("%s: %d episode, plan, goal or note row(s) linked to referrals", endpoint, changed)
    return changed


def _update(table: Any, endpoint: str) -> Any:
    """One statement per table, run with every changed row as parameters (executemany)."""
    return (
        table.update()
        .where(
            table.c.endpoint == endpoint,
            table.c.resource_type == sa.bindparam("b_type"),
            table.c.resource_id == sa.bindparam("b_id"),
        )
        .values(referral_ref=sa.bindparam("b_ref"), referral_link=sa.bindparam("b_link"))
    )


def _derive(conn: sa.Connection, endpoint: str, since: datetime | None) -> int:
    changed = 0
    for patients in patient_chunks(conn, endpoint, since, _TABLES.values()):
        rows = _rows(conn, endpoint, patients)
        if not rows:
            continue
        decided = link_care(
            referral_facts(conn, endpoint, patients), rows, _visit_referrals(conn, endpoint, patients)
        )
        per_table: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            ref, link = decided[row.key]
            if (ref, link) != (row.referral_ref, row.referral_link):
                per_table.setdefault(row.table, []).append(
                    {"b_type": row.resource_type, "b_id": row.resource_id, "b_ref": ref, "b_link": link}
                )
        for name, params in per_table.items():
            conn.execute(_update(_TABLES[name], endpoint), params)
            changed += len(params)
    return changed
