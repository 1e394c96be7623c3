"""Planner statistics during a load: PostgreSQL is told about a table as soon as a load has doubled it.

Every page looks its resources up by id (`resource_id = ANY(ids)`: lines to replace, tombstones, whether
the page is new). On a table PostgreSQL has not analyzed since it grew (a first load: autovacuum looks at
most once a minute), the planner believes `endpoint = .. AND resource_type = ..` finds one row, so it scans
all of that endpoint's rows of the type and filters them against the ids, on every page: a first load of
120,000 resources spent more time there than in everything else together. An `ANALYZE` each time a table
has doubled costs a few of them per table and keeps those lookups on the index.

Only the primary key's columns are analyzed: they are what those lookups filter on, and the rest (the raw
JSON above all, which ANALYZE would detoast and sort) cost most of the time. Autovacuum's own ANALYZE,
later, covers every column for the views.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

#: Smaller tables are left to autovacuum: any plan is fast on them.
MIN_BYTES = 1 << 20

#: The tables (of `names`) whose size on disk is more than twice what their statistics say, and 1 MB more,
#: each with its primary key's columns (NULL without one).
_GROWN = sa.text(
    "SELECT c.relname, (SELECT array_agg(a.attname ORDER BY a.attnum) FROM pg_index AS i "
    "JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
    "WHERE i.indrelid = c.oid AND i.indisprimary) AS key_columns "
    "FROM pg_class AS c "
    "WHERE c.oid IN (SELECT to_regclass(name) FROM unnest(CAST(:names AS text[])) AS name) "
    "AND pg_relation_size(c.oid) "
    "> :min_bytes + 2 * c.relpages::bigint * current_setting('block_size')::bigint "
    "ORDER BY c.relname"
)


def _grown(engine: Engine, names: Iterable[str]) -> list[tuple[str, list[str] | None]]:
    if engine.dialect.name != "postgresql":
        return []
    with engine.connect() as conn:
        found = conn.execute(_GROWN, {"names": sorted(set(names)), "min_bytes": MIN_BYTES}).all()
        conn.rollback()
    return [(name, columns) for name, columns in found]


def grown_tables(engine: Engine, names: Iterable[str]) -> list[str]:
    """The tables of `names` a load has doubled since PostgreSQL last analyzed them (none elsewhere)."""
    return [name for name, _columns in _grown(engine, names)]


def analyze_grown(engine: Engine, names: Iterable[str]) -> list[str]:
    """ANALYZE the tables of `names` that `grown_tables` names; returns them.

    Outside any page's transaction, and skipping a table another writer is analyzing just then. A failure
    is logged and otherwise ignored: statistics make the next pages faster, the pages are written already.
    """
    try:
        grown = _grown(engine, names)
        if grown:
            quote = engine.dialect.identifier_preparer.quote
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                for name, columns in grown:
                    keys = f" ({', '.join(quote(c) for c in columns)})" if columns else ""
                    conn.exec_driver_sql(f"ANALYZE (SKIP_LOCKED) {quote(name)}{keys}")
    except sa.exc.SQLAlchemyError as exc:
        log.warning("analyzing grown tables failed: %s", type(exc).__name__)
        return []
    return [name for name, _columns in grown]
