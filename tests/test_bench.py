"""The benchmark harness (bench/): its data, its server, the floor and naive runners, the figures.

The data must be what the issue asks for (valid, realistic, 0.7-1.5 KB, a prefix of the larger sets) and
the server must page the way the connector expects, or the benchmark measures the wrong thing.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import psutil
import pytest
import sqlalchemy as sa

from bench import connector_run, floor, naive, report
from bench.data import TYPES, generate, instant, iter_resources, resource_id
from bench.harness import Combo, RunRecord, combos, parse_args
from bench.measure import run_measured, tree_rss
from bench.server import ServerHandle, start_server
from connector.config import EndpointSettings, parse_settings
from connector.fhir import capabilities
from connector.fhir.client import FhirClient
from connector.fhir.paging import entries_of
from connector.streams import plan_stream, stream_for
from mappings.registry import map_resource
from mappings.types import MapContext

SERVER_N = 900


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    with start_server(SERVER_N, timeout=120) as handle:
        yield handle


def _entries(client: httpx.Client, url: str) -> tuple[list[dict], int]:
    resources: list[dict] = []
    pages = 0
    next_url: str | None = url
    while next_url:
        response = client.get(next_url)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/fhir+json"
        bundle = response.json()
        assert bundle["type"] == "searchset"
        resources += [e["resource"] for e in bundle.get("entry", [])]
        next_url = next((ln["url"] for ln in bundle["link"] if ln["relation"] == "next"), None)
        pages += 1
    return resources, pages


# -- data ----------------------------------------------------------------------------------------------


def test_data_is_deterministic_and_a_prefix_of_larger_sets() -> None:
    first = generate(600)
    assert orjson.dumps(first) == orjson.dumps(generate(600))
    assert generate(200) == first[:200]
    assert [r["id"] for r in generate(5, seed=1)] == [r["id"] for r in first[:5]]
    assert generate(5, seed=1) != first[:5]  # the seed drives the content


def test_data_is_round_robin_with_unique_ids_and_strictly_increasing_meta() -> None:
    data = generate(3000)
    assert [r["resourceType"] for r in data[:6]] == [*TYPES, *TYPES]
    assert [r["id"] for r in data] == [resource_id(i) for i in range(len(data))]
    assert len({(r["resourceType"], r["id"]) for r in data}) == len(data)
    versions = [int(r["meta"]["versionId"]) for r in data]
    stamps = [r["meta"]["lastUpdated"] for r in data]
    assert all(a < b for a, b in itertools.pairwise(versions))
    assert all(a < b for a, b in itertools.pairwise(stamps))
    assert stamps[0] == "2026-01-01T00:00:00.000Z"
    assert stamps[1] == "2026-01-01T00:00:00.037Z"
    assert instant(2999) == stamps[-1]


def test_every_resource_is_between_700_and_1500_bytes() -> None:
    sizes = [len(orjson.dumps(r)) for r in iter_resources(6000)]
    assert min(sizes) >= 700
    assert max(sizes) <= 1500
    assert 1000 <= sum(sizes) / len(sizes) <= 1300


def test_a_sample_is_valid_r4_and_maps_in_the_connector() -> None:
    from bench.naive import model_for

    sample = generate(3000)[::50]
    assert len(sample) == 60
    assert {r["resourceType"] for r in sample} == set(TYPES)
    ctx = MapContext(endpoint="bench", synced_at=datetime(2026, 1, 2, tzinfo=UTC))
    for resource in sample:
        model_for(resource["resourceType"]).model_validate(resource)
        map_resource(resource, ctx)  # raises MappingError if the connector would dead-letter it


def test_references_agree_with_the_coverage_they_name() -> None:
    data = generate(1500)
    beneficiary = {r["id"]: r["beneficiary"]["reference"] for r in data if r["resourceType"] == "Coverage"}
    seen_uses = set()
    for resource in data:
        if resource["resourceType"] == "ServiceRequest" and "insurance" in resource:
            cov = resource["insurance"][0]["reference"].removeprefix("Coverage/")
            assert beneficiary[cov] == resource["subject"]["reference"]
        if resource["resourceType"] == "Claim":
            cov = resource["insurance"][0]["coverage"]["reference"].removeprefix("Coverage/")
            assert beneficiary[cov] == resource["patient"]["reference"]
            seen_uses.add(resource["use"])
            assert 1 <= len(resource["item"]) <= 3
    assert seen_uses == {"claim", "preauthorization"}


# -- server --------------------------------------------------------------------------------------------


def test_next_links_yield_exactly_the_first_k_of_a_type_in_order(server: ServerHandle) -> None:
    expected = [r for r in generate(300) if r["resourceType"] == "Coverage"]
    with httpx.Client() as client:
        got, pages = _entries(client, f"{server.base(300)}/Coverage?_count=30&_sort=_lastUpdated")
    assert got == expected
    assert pages == 4  # 100 resources, 30 a page


def test_last_updated_filters_count_and_descending_sort(server: ServerHandle) -> None:
    data = [r for r in generate(SERVER_N) if r["resourceType"] == "Claim"]
    cut = data[100]["meta"]["lastUpdated"]
    with httpx.Client() as client:
        after, _ = _entries(client, f"{server.base(SERVER_N)}/Claim?_count=50&_lastUpdated=gt{cut}")
        assert after == data[101:]
        window, _ = _entries(
            client,
            f"{server.base(SERVER_N)}/Claim?_lastUpdated=ge{cut}"
            f"&_lastUpdated=lt{data[150]['meta']['lastUpdated'].replace('Z', '%2B00:00')}&_include=x",
        )
        assert window == data[100:150]
        counted = client.get(f"{server.base(SERVER_N)}/Claim?_summary=count").json()
        assert counted["total"] == len(data)
        assert "entry" not in counted
        newest = client.get(f"{server.base(SERVER_N)}/Claim?_sort=-_lastUpdated&_count=1").json()
        assert newest["entry"][0]["resource"] == data[-1]
        assert newest["entry"][0]["fullUrl"] == f"{server.base(SERVER_N)}/Claim/{data[-1]['id']}"
        # The Bundle's time is the server's "now": the newest resource of the data set it serves.
        assert newest["meta"]["lastUpdated"] == instant(SERVER_N - 1)
        assert client.get(f"{server.root}/n{SERVER_N + 1}/Claim").status_code == 404
        assert client.get(f"{server.base(10)}/Patient").status_code == 404
        assert client.post(f"{server.base(10)}/Claim").status_code == 405


def test_the_connector_reads_the_server_in_last_updated_mode(server: ServerHandle) -> None:
    endpoint = EndpointSettings(name="bench", base_url=server.base(300), page_size=40)

    async def read() -> tuple[dict, list[dict]]:
        async with FhirClient(endpoint) as client:
            cap = await client.capabilities()
            found = []
            async for page in client.search("ServiceRequest", [("_sort", "_lastUpdated")]):
                found += entries_of(page).resources
            return cap, found

    cap, found = asyncio.run(read())
    assert capabilities.is_r4(cap)
    for rtype in TYPES:
        assert plan_stream(endpoint, stream_for(rtype), cap).mode == "last-updated"
    assert [r["id"] for r in found] == [f"sr-{i:06d}" for i in range(100)]


# -- runners -------------------------------------------------------------------------------------------


def _drop(url: str, table: str) -> None:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
    finally:
        engine.dispose()


def _count(url: str, table: str) -> tuple[int, int]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(f"SELECT count(*), count(DISTINCT resource_type) FROM {table}").one()
    finally:
        engine.dispose()
    return int(rows[0]), int(rows[1])


@pytest.mark.postgres
def test_floor_copies_exactly_n_rows_into_postgresql(server: ServerHandle, pg_url: str) -> None:
    _drop(pg_url, floor.TABLE)
    result = floor.run(server.base(300), pg_url, page_size=40)
    assert (result.fetched, result.loaded, result.invalid) == (300, 300, 0)
    assert result.pages == 3 * 3  # 100 resources per type, 40 a page
    assert _count(pg_url, floor.TABLE) == (300, 3)


@pytest.mark.postgres
def test_naive_upserts_exactly_n_rows_into_postgresql(server: ServerHandle, pg_url: str) -> None:
    _drop(pg_url, "bench_naive")
    result = naive.run(server.base(300), pg_url, page_size=70)
    assert (result.loaded, result.invalid) == (300, 0)
    # Upserts: a second run over the same resources adds nothing.
    naive.run(server.base(300), pg_url, page_size=70)
    assert _count(pg_url, "bench_naive") == (300, 3)


def test_naive_runs_on_sqlite(server: ServerHandle, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'naive.db'}"
    assert naive.run(server.base(90), url, page_size=25).loaded == 90
    assert _count(url, "bench_naive") == (90, 3)


def test_floor_refuses_sqlite() -> None:
    with pytest.raises(ValueError, match="PostgreSQL"):
        floor.libpq_dsn("sqlite:///x.db")


# -- connector runner, measurement, figures ------------------------------------------------------------


@pytest.mark.parametrize("level", ["strict", "mapped"])
def test_connector_config_is_one_valid_endpoint(tmp_path: Path, level: str) -> None:
    import tomllib

    path = connector_run.write_config(
        tmp_path,
        warehouse_url="sqlite:////tmp/bench.db",
        base_url="http://127.0.0.1:8080/n20000",
        page_size=1000,
        validation=level,
    )
    data = tomllib.loads(path.read_text())
    assert data["endpoints"][0].get("validation") == (None if level == "strict" else "mapped")
    if level == "mapped" and "validation" not in EndpointSettings.model_fields:
        pytest.skip("this connector has no per-endpoint `validation` key yet")
    settings = parse_settings(data, source=path)
    endpoint = settings.endpoint("bench")
    assert endpoint.base_url == "http://127.0.0.1:8080/n20000"
    assert endpoint.resources == list(TYPES)
    assert (endpoint.page_size, endpoint.bulk) == (1000, "never")
    assert settings.warehouse.url == "sqlite:////tmp/bench.db"
    assert connector_run.sync_command(path)[1:] == ["sync", "--config", str(path), "--json"]
    assert Path(connector_run.sync_command(path)[0]).parent == Path(sys.executable).parent


def test_connector_summary_sums_streams_and_reads_the_flow_seconds() -> None:
    rows = [
        {"resource_type": "Claim", "fetched": 10, "loaded": 9, "rejected": 1},
        {"resource_type": "Coverage", "fetched": 5, "loaded": 5, "rejected": 0},
    ]
    text = "note\n" + orjson.dumps({"streams": rows, "status": "succeeded", "error": None}).decode()
    summary = connector_run.parse_summary(text)
    assert (summary.fetched, summary.loaded, summary.rejected, summary.seconds) == (15, 14, 1, None)
    with_seconds = orjson.dumps({"streams": rows, "status": "succeeded", "seconds": 12.5}).decode()
    assert connector_run.parse_summary(with_seconds).seconds == 12.5


def test_tree_rss_sees_the_memory_of_a_child_process() -> None:
    # The child says when its 80 MB are resident and holds them until told to go: no timing involved.
    code = (
        "import sys; b = bytearray(80_000_000); b[::4096] = b'x' * len(b[::4096]); "
        "print('ready', flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        assert tree_rss(psutil.Process(child.pid)) > 80_000_000
    finally:
        child.communicate(b"")
    assert child.returncode == 0


def test_run_measured_reports_the_childs_exit_output_and_time() -> None:
    measured = run_measured([sys.executable, "-c", "print('out'); raise SystemExit(3)"], interval=0.02)
    assert measured.returncode == 3
    assert measured.stdout == "out\n"
    assert measured.wall_seconds > 0
    assert measured.peak_rss_bytes > 0


def test_marginal_throughput_startup_and_goals() -> None:
    settings = parse_args(["--quick"])
    assert (settings.small, settings.large, settings.rss_small, settings.rss_large) == (
        2000,
        6000,
        1000,
        3000,
    )
    assert parse_args(["--quick", "--n", "4000"]).rss_large == 4000

    def records(runner: str, level: str | None, times: dict[int, float], rss: float) -> list[RunRecord]:
        return [
            RunRecord(
                runner, "postgresql", level, n, wall_seconds=t, peak_rss_mb=rss * (1 + n / 30000), ok=True
            )
            for n, t in times.items()
        ]

    # naive: 4000 more resources in 4 s = 1000/s; connector: 4000 in 2 s = 2000/s, 10 s start-up.
    runs = records("naive", None, {1000: 1.0, 2000: 3.0, 3000: 4.0, 6000: 7.0}, 100)
    runs += records("connector", "strict", {1000: 12.0, 2000: 11.0, 3000: 13.0, 6000: 13.0}, 200)
    # A repeat slowed down by other work does not count: the fastest run of a size does.
    runs.append(
        RunRecord("naive", "postgresql", None, 2000, wall_seconds=9.0, peak_rss_mb=90, ok=True, repeat=1)
    )
    naive_s = report.summarize(Combo("naive", "postgresql"), runs, settings)
    conn_s = report.summarize(Combo("connector", "postgresql", "strict"), runs, settings)
    assert (naive_s.marginal, naive_s.startup_seconds) == (1000.0, 1.0)
    assert (conn_s.marginal, conn_s.startup_seconds) == (2000.0, 10.0)
    assert conn_s.rss_ratio == round((1 + 3000 / 30000) / (1 + 1000 / 30000), 2)
    noop = RunRecord("connector", "postgresql", "strict", 3000, wall_seconds=1.5, inner_seconds=0.4, ok=True)
    found = {g.goal: g for g in report.goals([naive_s, conn_s], noop)}
    assert found["strict vs naive (postgresql)"].met is True
    assert found["strict vs naive (postgresql)"].measured == "2.0x"
    assert found["peak RSS 3000 / 1000 (postgresql, strict)"].met is True
    assert found["no-op incremental, 3000 synced (postgresql, strict)"].met is True


def test_combinations_and_a_short_count_fails_loudly() -> None:
    from bench.harness import Bench
    from bench.measure import Measured

    settings = parse_args(["--quick", "--db", "postgresql,sqlite", "--levels", "strict,mapped"])
    labels = [c.label for c in combos(settings)]
    assert labels == [
        "floor postgresql",  # COPY: PostgreSQL only
        "naive postgresql",
        "naive sqlite",
        "connector postgresql strict",
        "connector postgresql mapped",
        "connector sqlite strict",
        "connector sqlite mapped",
    ]
    bench = Bench(settings, server=None, workdir=Path("."), prefect=None)  # type: ignore[arg-type]
    short = RunRecord("floor", "postgresql", None, 1000)
    result = '{"runner":"floor","fetched":990,"loaded":990,"invalid":0,"pages":1,"seconds":1.0}'
    bench._read(short, Measured(["x"], 0, 1.5, 50_000_000, result + "\n", ""))
    assert not short.ok
    assert "loaded 990 of 1000" in (short.error or "")
    good = RunRecord("floor", "postgresql", None, 990)
    bench._read(good, Measured(["x"], 0, 1.5, 50_000_000, result + "\n", ""))
    assert good.ok
    assert (good.wall_seconds, good.peak_rss_mb, good.inner_seconds) == (1.5, 50.0, 1.0)


def test_the_database_dropped_before_each_run_must_be_a_bench_database() -> None:
    from bench.harness import reset_pg

    with pytest.raises(SystemExit, match="'bench'"):
        reset_pg("postgresql+psycopg://postgres:secret@127.0.0.1:5432/warehouse")


def test_cpu_per_resource_is_the_marginal_difference_per_group() -> None:
    from bench.cpu import GROUPS, CpuSample, marginal_us

    small = CpuSample(20_000, 3.0, {"stream process": 2.0, "workers": 4.0, "postgresql": 1.5})
    large = CpuSample(120_000, 13.0, {"stream process": 3.5, "workers": 14.0, "postgresql": 7.5})
    per_resource = marginal_us(small, large)
    assert per_resource["stream process"] == pytest.approx(15.0)
    assert per_resource["workers"] == pytest.approx(100.0)
    assert per_resource["postgresql"] == pytest.approx(60.0)
    assert per_resource["prefect server"] == 0.0  # a group not read counts nothing
    assert per_resource["total"] == pytest.approx(sum(per_resource[g] for g in GROUPS))
    with pytest.raises(ValueError, match="more resources"):
        marginal_us(large, small)
