"""Dead letters: resources that failed validation or mapping, kept with the error until a replay works.

The same payload rejected again updates its row (attempts + 1, last error) instead of adding one, so a
resource that fails on every sync shows up once with a growing attempt count.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from connector.warehouse.engine import insert_for
from connector.warehouse.models import DeadLetter
from mappings.canonical import content_hash

if TYPE_CHECKING:
    from connector.warehouse.writer import Reject

_TABLE: sa.Table = DeadLetter.__table__  # type: ignore[assignment]
#: Rows per statement and per streamed chunk: bounded memory however many dead letters there are.
CHUNK = 500


def record_rejects(conn: Connection, rejects: Sequence[Reject], now: datetime) -> int:
    """Upsert rejects on (endpoint, resource_type, payload_hash); returns how many rejects were recorded.

    A payload seen again gets attempts + 1, the latest error and last_seen_at, and is reopened if it had
    been resolved (the fix did not hold).
    """
    if not rejects:
        return 0
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    for reject in rejects:
        digest = content_hash(reject.payload)
        key = (reject.endpoint, reject.resource_type, digest)
        row = merged.get(key)
        if row is None:
            merged[key] = {
                "endpoint": reject.endpoint,
                "resource_type": reject.resource_type,
                "resource_id": reject.resource_id,
                "payload_hash": digest,
                "error": reject.error,
                "payload": reject.payload,
                "attempts": 1,
                "first_seen_at": now,
                "last_seen_at": now,
                "resolved_at": None,
            }
        else:
            # The same payload twice in one page: one row (PostgreSQL updates a row once per statement).
            row["attempts"] += 1
            row["error"] = reject.error
    # Page order, so dead letter ids follow the order the resources came in.
    rows = list(merged.values())
    for start in range(0, len(rows), CHUNK):
        stmt = insert_for(conn, _TABLE).values(rows[start : start + CHUNK])
        excluded = stmt.excluded
        stmt = stmt.on_conflict_do_update(
            index_elements=["endpoint", "resource_type", "payload_hash"],
            set_={
                "attempts": _TABLE.c.attempts + excluded.attempts,
                "error": excluded.error,
                "resource_id": excluded.resource_id,
                "last_seen_at": excluded.last_seen_at,
                "resolved_at": None,
            },
        )
        conn.execute(stmt)
    return len(rejects)


def list_dead_letters(
    engine: Engine, *, endpoint: str | None = None, include_resolved: bool = False, limit: int = 100
) -> list[dict[str, Any]]:
    """Dead letters, oldest first, without their payloads (those hold PHI and can be large)."""
    t = _TABLE
    query = sa.select(
        t.c.id,
        t.c.endpoint,
        t.c.resource_type,
        t.c.resource_id,
        t.c.error,
        t.c.attempts,
        t.c.first_seen_at,
        t.c.last_seen_at,
        t.c.resolved_at,
    ).order_by(t.c.id)
    if endpoint is not None:
        query = query.where(t.c.endpoint == endpoint)
    if not include_resolved:
        query = query.where(t.c.resolved_at.is_(None))
    query = query.limit(limit)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def open_dead_letters(
    engine: Engine, *, endpoint: str | None = None, ids: Sequence[int] | None = None
) -> Iterator[tuple[int, str, str, dict[str, Any]]]:
    """(id, endpoint, resource_type, payload) of unresolved dead letters, in id order, read in chunks.

    Each chunk is read in its own short transaction (keyset paging on id), so the caller may replay and
    `mark_resolved` between chunks without holding a read transaction open.
    """
    t = _TABLE
    base = sa.select(t.c.id, t.c.endpoint, t.c.resource_type, t.c.payload).where(t.c.resolved_at.is_(None))
    if endpoint is not None:
        base = base.where(t.c.endpoint == endpoint)
    if ids is not None:
        wanted = sorted(set(ids))
        for start in range(0, len(wanted), CHUNK):
            query = base.where(t.c.id.in_(wanted[start : start + CHUNK])).order_by(t.c.id)
            yield from _read(engine, query)
        return
    last_id = 0
    while True:
        rows = _read(engine, base.where(t.c.id > last_id).order_by(t.c.id).limit(CHUNK))
        yield from rows
        if len(rows) < CHUNK:
            return
        last_id = rows[-1][0]


def _read(engine: Engine, query: sa.Select[Any]) -> list[tuple[int, str, str, dict[str, Any]]]:
    with engine.connect() as conn:
        return [(row.id, row.endpoint, row.resource_type, row.payload) for row in conn.execute(query)]


def mark_resolved(conn: Connection, ids: Sequence[int], now: datetime) -> None:
    """Close dead letters whose replay succeeded (call in the transaction that wrote the replayed rows)."""
    wanted = sorted(set(ids))
    for start in range(0, len(wanted), CHUNK):
        conn.execute(
            sa.update(_TABLE)
            .where(_TABLE.c.id.in_(wanted[start : start + CHUNK]), _TABLE.c.resolved_at.is_(None))
            .values(resolved_at=now)
        )
