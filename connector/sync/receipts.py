"""A receipt for every run: per stream, what the server says it holds against what the warehouse holds.

After the streams (and the deletion sweep) the server is asked for each type's count (`_summary=count`,
one small request per stream, at once) and the warehouse counts the type's resources: those stored and
not deleted, and those held as open dead letters (each id once). Both go into the stream's last `sync_run`
row of the run; a difference is shown by `connector sync` and listed by `connector status`. A server that
cannot count (`_summary` is optional) leaves the receipt empty. NDJSON folders get none: the folder is read
whole on every run, so `fetched` already says what it holds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.config import EndpointSettings
from connector.fhir.client import FhirClient
from connector.sync.pipeline import StreamResult
from connector.sync.windows import server_count
from connector.warehouse.engine import begin_write
from connector.warehouse.models import DeadLetter, RawResource, SyncRun

log = logging.getLogger(__name__)

_RAW: sa.Table = RawResource.__table__  # type: ignore[assignment]
_DEAD: sa.Table = DeadLetter.__table__  # type: ignore[assignment]
_RUN: sa.Table = SyncRun.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Receipt:
    resource_type: str
    source_count: int | None
    warehouse_count: int

    @property
    def agrees(self) -> bool:
        return self.source_count is None or self.source_count == self.warehouse_count


def warehouse_count(engine: Engine, endpoint: str, resource_type: str) -> int:
    """Resources of the type the warehouse holds for the endpoint: stored and not deleted, or open dead
    letters (an id in both counts once)."""
    stored = sa.select(_RAW.c.resource_id).where(
        _RAW.c.endpoint == endpoint, _RAW.c.resource_type == resource_type, _RAW.c.deleted_at.is_(None)
    )
    dead = sa.select(_DEAD.c.resource_id).where(
        _DEAD.c.endpoint == endpoint,
        _DEAD.c.resource_type == resource_type,
        _DEAD.c.resolved_at.is_(None),
        _DEAD.c.resource_id.is_not(None),
    )
    ids = sa.union(stored, dead).subquery()
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(ids)).scalar_one())


def record(engine: Engine, run_id: str, endpoint: str, receipts: Sequence[Receipt]) -> None:
    """Store each receipt on the stream's last sync_run row of the run."""
    with begin_write(engine) as conn:
        for receipt in receipts:
            last = (
                sa.select(sa.func.max(_RUN.c.id))
                .where(
                    _RUN.c.run_id == run_id,
                    _RUN.c.endpoint == endpoint,
                    _RUN.c.resource_type == receipt.resource_type,
                )
                .scalar_subquery()
            )
            conn.execute(
                sa.update(_RUN)
                .where(_RUN.c.id == last)
                .values(source_count=receipt.source_count, warehouse_count=receipt.warehouse_count)
            )


async def take_receipts(
    client: FhirClient,
    engine: Engine,
    settings: EndpointSettings,
    run_id: str,
    results: Sequence[StreamResult],
) -> list[Receipt]:
    """Count each complete stream's type on the server and in the warehouse, and store the receipts.

    None for a stream that failed (a window of it, say), nor for a type the server searches only per
    patient (it cannot be counted type-wide)."""
    endpoint = settings.name
    failed = {r.resource_type for r in results if r.status == "failed"}
    complete = {r.resource_type for r in results if r.status == "succeeded"} - failed
    resource_types = sorted(rt for rt in complete if not settings.crawls_per_patient(rt))
    totals = await asyncio.gather(*(server_count(client, rt) for rt in resource_types))
    try:
        receipts = [
            Receipt(rt, total, await asyncio.to_thread(warehouse_count, engine, endpoint, rt))
            for rt, total in zip(resource_types, totals, strict=True)
        ]
        await asyncio.to_thread(record, engine, run_id, endpoint, receipts)
    except sa.exc.SQLAlchemyError as exc:
        # The run's rows stand; only its receipt is missing.
        log.warning("%s: the run's receipt could not be written (%s)", endpoint, type(exc).__name__)
        return []
    return receipts


__all__ = ["Receipt", "record", "take_receipts", "warehouse_count"]
