"""Tables with several rows per resource (claim lines, denial lines) follow their resource's version."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.warehouse.models import Base, UTCDateTime
from connector.warehouse.writer import PageWrite, content_hash, write_page


@pytest.fixture
def lines(engine: Engine) -> Iterator[sa.Table]:
    table = sa.Table(
        "test_resource_line",
        Base.metadata,
        sa.Column("endpoint", sa.String, primary_key=True),
        sa.Column("resource_type", sa.String, primary_key=True),
        sa.Column("resource_id", sa.String, primary_key=True),
        sa.Column("line", sa.Integer, primary_key=True),
        sa.Column("last_updated", UTCDateTime()),
        sa.Column("content_hash", sa.String),
        sa.Column("amount", sa.Float),
    )
    table.create(engine)
    try:
        yield table
    finally:
        Base.metadata.remove(table)


def page(version: int, amounts: list[float], rid: str = "c1") -> PageWrite:
    resource = {"resourceType": "Claim", "id": rid, "meta": {"versionId": str(version)}, "amounts": amounts}
    updated = datetime(2026, 11, version, tzinfo=UTC)
    key = {"endpoint": "e", "resource_type": "Claim", "resource_id": rid}
    base = {**key, "last_updated": updated, "content_hash": content_hash(resource)}
    raw = {**key, "version_id": str(version), "last_updated": updated, "payload": resource}
    rows = [{**base, "line": n, "amount": a} for n, a in enumerate(amounts, start=1)]
    return PageWrite(endpoint="e", resource_type="Claim", raw=[raw], mapped={"test_resource_line": rows})


def stored(engine: Engine, table: sa.Table) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(table.c.resource_id, table.c.line, table.c.amount))]


def test_newer_version_replaces_all_lines_and_older_writes_none(engine: Engine, lines: sa.Table) -> None:
    assert write_page(engine, page(2, [10.0, 20.0, 30.0])).loaded == 1
    assert sorted(stored(engine, lines)) == [("c1", 1, 10.0), ("c1", 2, 20.0), ("c1", 3, 30.0)]
    # Version 3 has one line fewer: the third must not linger.
    assert write_page(engine, page(3, [11.0, 21.0])).loaded == 1
    assert sorted(stored(engine, lines)) == [("c1", 1, 11.0), ("c1", 2, 21.0)]
    # A late, older version changes nothing; the same version again neither.
    assert write_page(engine, page(1, [99.0])).loaded == 0
    assert write_page(engine, page(3, [11.0, 21.0])).loaded == 0
    assert sorted(stored(engine, lines)) == [("c1", 1, 11.0), ("c1", 2, 21.0)]


def test_lines_are_added_for_resources_stored_before_the_table_had_rows(
    engine: Engine, lines: sa.Table
) -> None:
    first = page(2, [5.0])
    first.mapped = {}
    write_page(engine, first)  # raw row only, as if synced before the line table existed
    assert stored(engine, lines) == []
    assert write_page(engine, page(2, [5.0])).loaded == 1
    assert stored(engine, lines) == [("c1", 1, 5.0)]
