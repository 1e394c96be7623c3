"""Planner statistics during a load: PostgreSQL is told about a table as soon as a load has doubled it.

Every page looks its resources up by id (`resource_id = ANY(ids)`: lines to replace, tombstones, whether
the page is new). On a table PostgreSQL has not analyzed since it grew (a first load: autovacuum looks at
most once a minute), the planner believes `endpoint = .. AND resource_type = ..` finds one row, so it scans
all of that endpoint's rows of the type and filters them against the ids, on every page: a first load of
120,000 resources spent more time there than in everything else together. An `ANALYZE` each time a table
has doubled costs a few of them per table and keeps those lookups on the index.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

#: Smaller tables are left to autovacuum: any plan is fast on them.
MIN_BYTES = 1 << 20

#: The tables (of `names`) whose size on disk is more than twice what their statistics say, and 1 MB more.
_GROWN = sa.text(
    "SELECT c.relname FROM pg_class AS c "
    "WHERE c.oid IN (SELECT to_regclass(name) FROM unnest(CAST(:names AS text[])) AS name) "
    "AND pg_relation_size(c.oid) "
    "> :min_bytes + 2 * c.relpages::bigint * current_setting('block_size')::bigint"
)


def grown_tables(engine: Engine, names: Iterable[str]) -> list[str]:
    """The tables of `names` a load has doubled since PostgreSQL last analyzed them (none elsewhere)."""
    if engine.dialect.name != "postgresql":
        return []
    with engine.connect() as conn:
        found = conn.execute(_GROWN, {"names": sorted(set(names)), "min_bytes": MIN_BYTES}).scalars().all()
        conn.rollback()
    return sorted(found)


def analyze_grown(engine: Engine, names: Iterable[str]) -> list[str]:
    """ANALYZE the tables of `names` that `grown_tables` names; returns them.

    Outside any page's transaction, and skipping a table another writer is analyzing just then. A failure
    is logged and otherwise ignored: statistics make the next pages faster, the pages are written already.
    """
    try:
        grown = grown_tables(engine, names)
        if grown:
            quote = engine.dialect.identifier_preparer.quote
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                for name in grown:
                    conn.exec_driver_sql(f"ANALYZE (SKIP_LOCKED) {quote(name)}")
    except sa.exc.SQLAlchemyError as exc:
        log.warning("analyzing grown tables failed: %s", type(exc).__name__)
        return []
    return grown
