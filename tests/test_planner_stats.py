"""PostgreSQL learns about tables a load has doubled, so lookups by id stay on the index."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.warehouse.planner_stats import MIN_BYTES, analyze_grown, grown_tables
from connector.warehouse.writer import PageWrite, write_page

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


def raw_rows(count: int, start: int = 0) -> list[dict]:
    filler = "x" * 1500  # about the size of a real resource
    return [
        {
            "resource_id": f"sr-{n}",
            "version_id": "1",
            "last_updated": T0,
            "payload": {"resourceType": "ServiceRequest", "id": f"sr-{n}", "note": [{"text": filler}]},
        }
        for n in range(start, start + count)
    ]


def analyzed(engine: Engine, table: str) -> datetime | None:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = :t"), {"t": table}
        ).scalar_one()


def analyzed_columns(engine: Engine, table: str) -> list[str]:
    with engine.connect() as conn:
        return sorted(
            conn.execute(
                sa.text("SELECT attname FROM pg_stats WHERE schemaname = 'public' AND tablename = :t"),
                {"t": table},
            ).scalars()
        )


def create_past_min_bytes(engine: Engine, table: str, key: str) -> None:
    """A table of (`key`, filler text) rows twice `MIN_BYTES` big, never analyzed."""
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {table} ({key}, filler text)")
        conn.exec_driver_sql(
            f"INSERT INTO {table} SELECT g, repeat('x', 1000) FROM generate_series(1, {MIN_BYTES // 500}) g"
        )


def estimated_rows(engine: Engine) -> int:
    """How many of the endpoint's ServiceRequests PostgreSQL expects (what decides how it finds ids)."""
    with engine.connect() as conn:
        query = (
            "EXPLAIN SELECT 1 FROM raw_resource WHERE endpoint = 'emr' AND resource_type = 'ServiceRequest'"
        )
        plan = conn.exec_driver_sql(query).scalars().first()
    found = re.search(r"rows=(\d+)", str(plan))
    assert found is not None, plan
    return int(found.group(1))


@pytest.mark.parametrize(
    "warehouse_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_a_page_that_doubles_a_table_gets_it_analyzed(engine: Engine) -> None:
    write_page(engine, PageWrite("emr", "ServiceRequest", raw=raw_rows(10)))
    assert analyzed(engine, "raw_resource") is None  # small: left to autovacuum

    write_page(engine, PageWrite("emr", "ServiceRequest", raw=raw_rows(1200, start=10)))
    assert analyzed(engine, "raw_resource") is not None
    assert grown_tables(engine, ["raw_resource"]) == []
    # Without statistics the planner takes the endpoint and type for a handful of rows, and then filters
    # a whole type's rows against a page's ids instead of looking each id up.
    assert estimated_rows(engine) > 1000
    # Only the key the lookups filter on: the payloads are left for autovacuum (the cost of a full ANALYZE).
    assert analyzed_columns(engine, "raw_resource") == ["endpoint", "resource_id", "resource_type"]


@pytest.mark.parametrize(
    "warehouse_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_only_tables_grown_past_twice_their_statistics_are_named(engine: Engine) -> None:
    create_past_min_bytes(engine, "grows", "id int PRIMARY KEY")
    assert grown_tables(engine, ["grows", "raw_resource", "no_such_table"]) == ["grows"]
    assert analyze_grown(engine, ["grows"]) == ["grows"]
    assert grown_tables(engine, ["grows"]) == []
    assert analyzed_columns(engine, "grows") == ["id"]
    with engine.begin() as conn:  # grown by half: not yet
        conn.exec_driver_sql("INSERT INTO grows SELECT g, repeat('x', 1000) FROM generate_series(-1000, 0) g")
    assert grown_tables(engine, ["grows"]) == []


@pytest.mark.parametrize(
    "warehouse_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_a_table_without_a_key_is_analyzed_whole(engine: Engine) -> None:
    create_past_min_bytes(engine, "heap_only", "n int")
    assert analyze_grown(engine, ["heap_only"]) == ["heap_only"]
    assert analyzed_columns(engine, "heap_only") == ["filler", "n"]


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_sqlite_needs_nothing(engine: Engine) -> None:
    write_page(engine, PageWrite("emr", "ServiceRequest", raw=raw_rows(1200)))
    assert grown_tables(engine, ["raw_resource"]) == []
    assert analyze_grown(engine, ["raw_resource"]) == []
