"""The floor: page fetch (httpx) + orjson + the flat mapping + PostgreSQL COPY, one COPY and commit per page.

The least work that still lands every resource in a table with a primary key: the limit this machine
allows for the job, which the connector's `mapped` level is compared with.

    .venv/bin/python -m bench.floor --base http://127.0.0.1:PORT/n20000 --url postgresql+psycopg://...
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import httpx
import orjson
import psycopg
import sqlalchemy as sa

from bench.data import TYPES
from bench.flat import COLUMNS, flat_row, pages
from bench.result import RunResult, runner_main

TABLE = "bench_floor"
DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    endpoint text NOT NULL,
    resource_type text NOT NULL,
    resource_id text NOT NULL,
    version_id text,
    last_updated timestamptz,
    status text,
    subject text,
    code text,
    payload jsonb NOT NULL,
    PRIMARY KEY (endpoint, resource_type, resource_id)
)
"""
_COPY = f"COPY {TABLE} ({', '.join(COLUMNS)}) FROM STDIN"


def libpq_dsn(url: str) -> str:
    """A SQLAlchemy URL (postgresql+psycopg://...) as the libpq URL psycopg connects with."""
    parsed = sa.make_url(url)
    if not parsed.drivername.startswith("postgresql"):
        raise ValueError(f"the floor runner needs PostgreSQL, not {parsed.drivername}")
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def run(base: str, url: str, *, page_size: int = 1000, resource_types: Sequence[str] = TYPES) -> RunResult:
    started = time.perf_counter()
    result = RunResult(runner="floor")
    with (
        psycopg.connect(libpq_dsn(url)) as conn,
        httpx.Client(timeout=httpx.Timeout(60.0), headers={"Accept": "application/fhir+json"}) as client,
    ):
        conn.execute(DDL)
        conn.commit()
        for rtype in resource_types:
            for resources in pages(client, base, rtype, page_size):
                result.fetched += len(resources)
                result.pages += 1
                with conn.cursor() as cur, cur.copy(_COPY) as copy:
                    for resource in resources:
                        row = flat_row(resource)
                        row["payload"] = orjson.dumps(resource).decode()
                        copy.write_row(tuple(row[c] for c in COLUMNS))
                conn.commit()
                result.loaded += len(resources)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def main(argv: list[str] | None = None) -> None:
    runner_main(
        "python -m bench.floor",
        __doc__.splitlines()[0],
        "PostgreSQL URL (postgresql+psycopg://...)",
        run,
        argv,
    )


if __name__ == "__main__":
    main()
