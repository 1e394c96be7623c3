"""After a sync: link visits to referrals and infer evaluations where the resources do not say.

The rules are `mappings.visit_links`; this reads the patients a run touched (a visit or referral written
since the run began), a chunk of patients at a time so memory stays flat, and writes back the visits whose
link or kind changed. A full refresh (and migration 0013) derive every patient of the endpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.warehouse.engine import begin_write
from connector.warehouse.models.referrals import Referral, Visit
from mappings.specs import SPECS
from mappings.visit_links import DEFAULT_WINDOW_DAYS, ReferralFacts, VisitFacts, link_visits

log = logging.getLogger(__name__)

_CHUNK = 500
_referral: Any = Referral.__table__
_visit: Any = Visit.__table__
#: The resource types whose rows the inference reads: a run that loaded none of them changes nothing.
INPUT_TYPES = frozenset(s.resource_type for s in SPECS if {"referral", "visit"} & set(s.tables))


def _touched(table: Any, endpoint: str, since: datetime | None) -> sa.Select[Any]:
    query = sa.select(table.c.patient_ref).where(
        table.c.endpoint == endpoint, table.c.patient_ref.is_not(None)
    )
    return query.where(table.c.loaded_at >= since) if since is not None else query


def patient_chunks(
    conn: sa.Connection, endpoint: str, since: datetime | None, tables: Iterable[Any] = ()
) -> Iterator[list[str]]:
    """The patients with a row written since `since` in the visits, referrals or `tables`, in order,
    `_CHUNK` at a time (keyset paging: nothing is held but one chunk)."""
    touched = sa.union(*(_touched(t, endpoint, since) for t in (_visit, _referral, *tables))).subquery()
    last = ""
    while True:
        chunk = list(
            conn.scalars(
                sa.select(touched.c.patient_ref)
                .where(touched.c.patient_ref > last)
                .order_by(touched.c.patient_ref)
                .limit(_CHUNK)
            )
        )
        if not chunk:
            return
        yield chunk
        last = chunk[-1]


def referral_facts(conn: sa.Connection, endpoint: str, patients: list[str]) -> list[ReferralFacts]:
    """The patients' referrals (not entered in error) as the linking rules read them."""
    return [
        ReferralFacts(
            f"ServiceRequest/{row.resource_id}",
            row.patient_ref,
            row.discipline or "other",
            (row.authored_on or row.last_updated).date(),
        )
        for row in conn.execute(
            sa.select(
                _referral.c.resource_id,
                _referral.c.patient_ref,
                _referral.c.discipline,
                _referral.c.authored_on,
                _referral.c.last_updated,
            ).where(
                _referral.c.endpoint == endpoint,
                _referral.c.patient_ref.in_(patients),
                sa.or_(_referral.c.status.is_(None), _referral.c.status != "entered-in-error"),
            )
        )
        if row.authored_on is not None or row.last_updated is not None
    ]


def _facts(
    conn: sa.Connection, endpoint: str, patients: list[str]
) -> tuple[list[ReferralFacts], list[VisitFacts]]:
    referrals = referral_facts(conn, endpoint, patients)
    columns = [_visit.c[name] for name in VisitFacts.__slots__]
    visits = [
        VisitFacts(**row._asdict())
        for row in conn.execute(
            sa.select(*columns).where(_visit.c.endpoint == endpoint, _visit.c.patient_ref.in_(patients))
        )
    ]
    return referrals, visits


def derive_visit_links(
    engine: Engine | sa.Connection,
    endpoint: str,
    since: datetime | None = None,
    window_days: int = DEFAULT_WINDOW_DAYS,
) -> int:
    """Re-derive the visits of the patients touched since `since` (every patient when None); returns how
    many visit rows changed."""
    if isinstance(engine, sa.Connection):
        return _derive(engine, endpoint, since, window_days)
    with begin_write(engine) as conn:
        changed = _derive(conn, endpoint, since, window_days)
    if changed:
        log.info("%s: %d visit(s) linked or classified by inference", endpoint, changed)
    return changed


def _derive(conn: sa.Connection, endpoint: str, since: datetime | None, window_days: int) -> int:
    update = (
        _visit.update()
        .where(
            _visit.c.endpoint == endpoint,
            _visit.c.resource_type == sa.bindparam("b_type"),
            _visit.c.resource_id == sa.bindparam("b_id"),
        )
        .values(
            referral_ref=sa.bindparam("b_ref"),
            referral_link=sa.bindparam("b_link"),
            kind=sa.bindparam("b_kind"),
            kind_source=sa.bindparam("b_source"),
        )
    )
    changed = 0
    for patients in patient_chunks(conn, endpoint, since):
        referrals, visits = _facts(conn, endpoint, patients)
        decided = link_visits(referrals, visits, window_days)
        rows = [
            {
                "b_type": v.resource_type,
                "b_id": v.resource_id,
                "b_ref": new.referral_ref,
                "b_link": new.referral_link,
                "b_kind": new.kind,
                "b_source": new.kind_source,
            }
            for v in visits
            if (new := decided[v.key]) != v.stored
        ]
        if rows:
            conn.execute(update, rows)
            changed += len(rows)
    return changed
