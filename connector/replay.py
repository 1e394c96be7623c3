"""`connector deadletters replay`: re-run validation and mapping on dead letters after a fix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from itertools import islice

from sqlalchemy.engine import Engine

from connector.sync.pipeline import map_resources
from connector.warehouse import deadletter
from connector.warehouse.writer import PageWrite, write_page
from mappings.types import MappingOptions


def replay_dead_letters(
    engine: Engine,
    *,
    endpoint: str | None = None,
    ids: Sequence[int] | None = None,
    batch_size: int = 500,
    now: datetime | None = None,
    options: Mapping[str, MappingOptions] | None = None,
) -> dict[str, int]:
    """Map each open dead letter again; those that now pass are loaded and marked resolved.

    The ones that still fail stay open with their new error and one more attempt. Watermarks are not
    touched: a replay loads resources the sync already walked past.
    """
    synced_at = now or datetime.now(UTC)
    counts = {"replayed": 0, "resolved": 0, "still_failing": 0}
    letters = deadletter.open_dead_letters(engine, endpoint=endpoint, ids=ids)
    while chunk := list(islice(letters, batch_size)):
        for letter_id, ep, resource_type, payload in chunk:
            counts["replayed"] += 1
            mapped = map_resources(ep, resource_type, [payload], synced_at, options=(options or {}).get(ep))
            write = PageWrite(
                endpoint=ep,
                resource_type=resource_type,
                raw=mapped.raw,
                mapped=mapped.mapped,
                rejects=mapped.rejects,
                deletions=mapped.deletions,
                watermark=None,
                watermark_at=None,
                mode=None,
            )
            with engine.begin() as conn:
                write_page(engine, write, batch_size=batch_size, conn=conn)
                if not mapped.rejects:
                    deadletter.mark_resolved(conn, [letter_id], synced_at)
            counts["resolved" if not mapped.rejects else "still_failing"] += 1
    return counts
