"""The naive loader: fhir.resources validation of each resource + a SQLAlchemy executemany upsert per page.

What a first version of a connector usually looks like: the same fetch, parse and flat mapping as the
floor, then `fhir.resources.R4B.<type>.<Type>.model_validate` on every resource (invalid ones counted
and skipped) and `insert(...).on_conflict_do_update(...)` executed with a list of dicts, one transaction
per page. The connector's `strict` level is compared with it. Runs on PostgreSQL and SQLite.

    .venv/bin/python -m bench.naive --base http://127.0.0.1:PORT/n20000 --url sqlite:////tmp/naive.db
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence
from typing import Any

import httpx
import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.dialects import postgresql, sqlite

from bench.data import TYPES
from bench.flat import flat_row, pages
from bench.result import RunResult, runner_main

metadata = sa.MetaData()
table = sa.Table(
    "bench_naive",
    metadata,
    sa.Column("endpoint", sa.Text, primary_key=True),
    sa.Column("resource_type", sa.Text, primary_key=True),
    sa.Column("resource_id", sa.Text, primary_key=True),
    sa.Column("version_id", sa.Text),
    sa.Column("last_updated", sa.Text),
    sa.Column("status", sa.Text),
    sa.Column("subject", sa.Text),
    sa.Column("code", sa.Text),
    sa.Column("payload", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
)
_KEY = ("endpoint", "resource_type", "resource_id")


def model_for(resource_type: str) -> Any:
    """The fhir.resources R4B model class of a resource type (R4 content validates against R4B)."""
    module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
    return getattr(module, resource_type)


def upsert_statement(dialect: str) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(table)
    return stmt.on_conflict_do_update(
        index_elements=list(_KEY),
        set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in _KEY},
    )


def run(base: str, url: str, *, page_size: int = 1000, resource_types: Sequence[str] = TYPES) -> RunResult:
    started = time.perf_counter()
    result = RunResult(runner="naive")
    engine = sa.create_engine(url)
    try:
        metadata.create_all(engine)
        stmt = upsert_statement(engine.dialect.name)
        with httpx.Client(timeout=httpx.Timeout(60.0), headers={"Accept": "application/fhir+json"}) as client:
            for rtype in resource_types:
                model = model_for(rtype)
                for resources in pages(client, base, rtype, page_size):
                    result.fetched += len(resources)
                    result.pages += 1
                    rows = []
                    for resource in resources:
                        try:
                            model.model_validate(resource)
                        except (ValidationError, ValueError):
                            result.invalid += 1
                            continue
                        rows.append(flat_row(resource))
                    if rows:
                        with engine.begin() as conn:
                            conn.execute(stmt, rows)
                    result.loaded += len(rows)
    finally:
        engine.dispose()
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def main(argv: list[str] | None = None) -> None:
    runner_main(
        "python -m bench.naive",
        __doc__.splitlines()[0],
        "SQLAlchemy URL (postgresql+psycopg://... or sqlite:///...)",
        run,
        argv,
    )


if __name__ == "__main__":
    main()
