"""`python -m bench`: run floor, naive and connector against one server and database, print the figures.

Each run is a child process measured alone (wall seconds, peak RSS of its process tree), on a fresh
database: PostgreSQL `connector_bench` is dropped and created again before every run, SQLite is a new
file. Throughput is marginal, (large - small) / (t(large) - t(small)), so process and Prefect start-up
cancel out; start-up is t(small) - small / marginal. Peak RSS is compared at two other sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
import psycopg
import sqlalchemy as sa

from bench import connector_run, prefect_api, report
from bench.floor import libpq_dsn
from bench.measure import Measured, run_measured
from bench.result import RunResult
from bench.server import ServerHandle, start_server

ROOT = Path(__file__).resolve().parents[1]
RUNNERS: tuple[str, ...] = ("floor", "naive", "connector")
DATABASES: tuple[str, ...] = ("postgresql", "sqlite")
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/connector_bench"
FULL_SIZES = {"small": 20_000, "large": 120_000, "rss_small": 10_000, "rss_large": 100_000}
QUICK_SIZES = {"small": 2_000, "large": 6_000, "rss_small": 1_000, "rss_large": 3_000}
WARMUP_N = 300


@dataclass(frozen=True, slots=True)
class Combo:
    runner: str
    db: str
    level: str | None = None  # the connector's validation level

    @property
    def label(self) -> str:
        return " ".join(p for p in (self.runner, self.db, self.level) if p)


@dataclass(slots=True)
class RunRecord:
    runner: str
    db: str
    level: str | None
    n: int
    wall_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    #: The runner's own seconds: the floor/naive loop, or the connector's flow (CLI `seconds`) if reported.
    inner_seconds: float | None = None
    #: The connector's streams, first start to last end (CLI `streams_seconds`), if reported.
    streams_seconds: float | None = None
    fetched: int = 0
    loaded: int = 0
    rejected: int = 0
    ok: bool = False
    error: str | None = None
    #: 0 .. --repeat - 1
    repeat: int = 0


@dataclass(slots=True)
class Settings:
    small: int
    large: int
    rss_small: int
    rss_large: int
    page_size: int
    runners: list[str]
    dbs: list[str]
    levels: list[str]
    pg_url: str
    prefect: str
    repeat: int
    warmup: bool
    noop: bool
    json_path: Path | None = None
    sizes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sizes = sorted({self.small, self.large, self.rss_small, self.rss_large})


def _csv(allowed: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)} (comma-separated)")
        return list(dict.fromkeys(items))

    return parse


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the connector against a floor and a naive loader (issue 11).",
    )
    sizes = parser.add_argument_group("sizes (resources; defaults 20000 / 120000 / 10000 / 100000)")
    sizes.add_argument("--small", type=int, help="smaller size of the throughput pair")
    sizes.add_argument("--large", type=int, help="larger size of the throughput pair")
    sizes.add_argument("--rss-small", type=int, help="smaller size of the peak-RSS pair")
    sizes.add_argument(
        "--rss-large", "--n", dest="rss_large", type=int, help="larger size of the peak-RSS pair (N)"
    )
    sizes.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 2000 / 6000 / 1000 / 3000 (explicit sizes still win)",
    )
    parser.add_argument("--page-size", type=int, default=1000, help="_count per page, every runner")
    parser.add_argument("--runners", type=_csv(RUNNERS), default=list(RUNNERS), help="floor,naive,connector")
    parser.add_argument("--db", type=_csv(DATABASES), default=list(DATABASES), help="postgresql,sqlite")
    parser.add_argument(
        "--levels",
        type=_csv(connector_run.LEVELS),
        default=list(connector_run.LEVELS),
        help="connector validation levels: strict,mapped",
    )
    parser.add_argument(
        "--pg-url",
        default=DEFAULT_PG_URL,
        help="dropped and created for every run; its name must hold 'bench'",
    )
    parser.add_argument(
        "--prefect",
        choices=prefect_api.MODES,
        default="server",
        help="connector runs report to one Prefect server started for the benchmark (default), or each "
        "starts its own ephemeral one",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per size; the fastest counts (and the largest peak RSS), against a busy machine's noise",
    )
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed first run per runner")
    parser.add_argument("--no-noop", action="store_true", help="skip the no-op incremental connector run")
    parser.add_argument("--json", dest="json_path", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    chosen: dict[str, Any] = dict(QUICK_SIZES if args.quick else FULL_SIZES)
    for key in chosen:
        if getattr(args, key) is not None:
            chosen[key] = getattr(args, key)
    if any(v < 1 for v in chosen.values()):
        parser.error("sizes must be positive")
    if chosen["small"] >= chosen["large"]:
        parser.error("--small must be less than --large")
    if chosen["rss_small"] >= chosen["rss_large"]:
        parser.error("--rss-small must be less than --rss-large")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return Settings(
        **chosen,
        page_size=args.page_size,
        runners=args.runners,
        dbs=args.db,
        levels=args.levels,
        pg_url=args.pg_url,
        prefect=args.prefect,
        repeat=args.repeat,
        warmup=not args.no_warmup,
        noop=not args.no_noop,
        json_path=args.json_path,
    )


def combos(settings: Settings) -> list[Combo]:
    out: list[Combo] = []
    for runner in settings.runners:
        for db in settings.dbs:
            if runner == "floor" and db != "postgresql":
                continue  # COPY is PostgreSQL's
            if runner == "connector":
                out.extend(Combo(runner, db, level) for level in settings.levels)
            else:
                out.append(Combo(runner, db))
    return out


# -- databases ---------------------------------------------------------------------------------------


def _admin_dsn(pg_url: str) -> tuple[str, str]:
    url = sa.make_url(pg_url)
    if not url.database or "bench" not in url.database:
        # Every run drops this database: never let a typo point it at a real warehouse.
        raise SystemExit(f"--pg-url must name a database with 'bench' in its name: {_masked(pg_url)}")
    return libpq_dsn(url.set(database="postgres").render_as_string(hide_password=False)), url.database


def reset_pg(pg_url: str) -> None:
    """DROP DATABASE .. WITH (FORCE) and CREATE DATABASE again (autocommit, from the `postgres` db)."""
    dsn, name = _admin_dsn(pg_url)
    quoted = '"' + name.replace('"', '""') + '"'
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {quoted}")


def pg_version(pg_url: str) -> str:
    dsn, _ = _admin_dsn(pg_url)
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def machine_info(settings: Settings) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        # Other work on the machine skews the figures: the 1/5/15-minute load before and after.
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    for package in ("prefect", "fhir.resources", "sqlalchemy", "psycopg", "httpx", "orjson"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = None
    if "postgresql" in settings.dbs:
        try:
            info["postgresql"] = pg_version(settings.pg_url)
        except psycopg.Error as exc:
            raise SystemExit(f"PostgreSQL unreachable at {_masked(settings.pg_url)}: {exc}") from None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 - git from PATH, fixed arguments
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],  # noqa: S607
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        info["commit"] = commit + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        info["commit"] = None
    return info


def _masked(url: str) -> str:
    return sa.make_url(url).render_as_string(hide_password=True)


# -- runs --------------------------------------------------------------------------------------------


class Bench:
    def __init__(
        self, settings: Settings, server: ServerHandle, workdir: Path, prefect: prefect_api.PrefectApi | None
    ) -> None:
        self.settings = settings
        self.server = server
        self.workdir = workdir
        self.prefect = prefect

    def warehouse_url(self, combo: Combo, n: int) -> str:
        if combo.db == "postgresql":
            reset_pg(self.settings.pg_url)
            return self.settings.pg_url
        path = self.workdir / f"{combo.runner}-{combo.level or 'na'}-{n}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return f"sqlite:///{path}"

    def run(self, combo: Combo, n: int) -> tuple[RunRecord, Path | None]:
        """One timed run on a fresh database; returns the record and the connector config (if any)."""
        record = RunRecord(combo.runner, combo.db, combo.level, n)
        url = self.warehouse_url(combo, n)
        base = self.server.base(n)
        config = None
        if combo.runner == "connector":
            config = connector_run.write_config(
                self.workdir,
                warehouse_url=url,
                base_url=base,
                page_size=self.settings.page_size,
                validation=combo.level or "strict",
            )
            if combo.db == "postgresql":
                done = subprocess.run(  # noqa: S603 - our own CLI, fixed arguments
                    connector_run.migrate_command(config),
                    capture_output=True,
                    text=True,
                    check=False,
                    env=self.env,
                )
                if done.returncode != 0:
                    record.error = "connector migrate failed: " + _tail(done.stdout + done.stderr)
                    return record, config
            command = connector_run.sync_command(config)
        else:
            module = f"bench.{combo.runner}"
            command = [sys.executable, "-m", module, "--base", base, "--url", url]
            command += ["--page-size", str(self.settings.page_size)]
        env = self.env if combo.runner == "connector" else None
        measured = run_measured(command, cwd=ROOT, env=env)
        self._read(record, measured)
        return record, config

    @property
    def env(self) -> dict[str, str] | None:
        return self.prefect.env if self.prefect is not None else None

    def noop(self, config: Path, combo: Combo, n: int) -> RunRecord:
        """`connector sync` again on the warehouse the previous run filled: nothing new on the server."""
        record = RunRecord(combo.runner, combo.db, combo.level, n)
        measured = run_measured(connector_run.sync_command(config), cwd=ROOT, env=self.env)
        self._read(record, measured, check_count=False)
        return record

    def _read(self, record: RunRecord, measured: Measured, *, check_count: bool = True) -> None:
        record.wall_seconds = measured.wall_seconds
        record.peak_rss_mb = round(measured.peak_rss_mb, 1)
        try:
            if record.runner == "connector":
                summary = connector_run.parse_summary(measured.stdout)
                record.fetched, record.loaded = summary.fetched, summary.loaded
                record.rejected, record.inner_seconds = summary.rejected, summary.seconds
                record.streams_seconds = summary.streams_seconds
                failure = summary.error if summary.status != "succeeded" else None
            else:
                result = RunResult.from_json(measured.stdout.strip().splitlines()[-1])
                record.fetched, record.loaded = result.fetched, result.loaded
                record.rejected, record.inner_seconds = result.invalid, result.seconds
                failure = None
        except (ValueError, IndexError, TypeError) as exc:
            failure = f"no result ({type(exc).__name__}: {exc})"
        if failure is None and measured.returncode != 0:
            failure = f"exit code {measured.returncode}"
        if failure is None and check_count and (record.loaded != record.n or record.rejected):
            failure = f"loaded {record.loaded} of {record.n} resources ({record.rejected} rejected)"
        output = measured.stdout + measured.stderr
        if (
            failure is not None
            and record.level == "mapped"
            and "validation" in output
            and "unknown key" in output
        ):
            failure = 'this connector does not know `validation = "mapped"` yet (use --levels strict)'
        if failure is not None:
            record.error = f"{failure} | {_tail(measured.stderr or measured.stdout)}"
        record.ok = failure is None


def _tail(text: str, lines: int = 6) -> str:
    return " / ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def run_all(settings: Settings) -> dict[str, Any]:
    machine = machine_info(settings)
    plan = combos(settings)
    largest = max(settings.sizes)
    _say(f"bench: starting the FHIR server with {largest} resources (built once, takes a moment)")
    records: list[RunRecord] = []
    noop: RunRecord | None = None
    noop_done = not settings.noop
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        server = stack.enter_context(start_server(max(largest, WARMUP_N)))
        _say(f"bench: FHIR server at {server.root}; {len(plan)} combination(s), sizes {settings.sizes}")
        prefect = None
        if "connector" in settings.runners:
            if settings.prefect == "server":
                _say("bench: starting a Prefect server for the connector runs")
            prefect = stack.enter_context(prefect_api.start(settings.prefect, tmp / "prefect"))
        bench = Bench(settings, server, tmp, prefect)
        warmed: set[str] = set()
        for combo in plan:
            if settings.warmup and combo.runner not in warmed:
                # The first start of a runner pays for cold file caches (and Prefect's first-run set-up);
                # one untimed run keeps that out of the first timed one.
                warmed.add(combo.runner)
                record, _ = bench.run(combo, WARMUP_N)
                _say(f"  warm-up {combo.label}: {record.wall_seconds:.1f} s" + _err(record))
            for n in settings.sizes:
                for repeat in range(settings.repeat):
                    record, config = bench.run(combo, n)
                    record.repeat = repeat
                    records.append(record)
                    _say(
                        f"  {combo.label} n={n}{f' #{repeat + 1}' if settings.repeat > 1 else ''}: "
                        f"{record.wall_seconds:.2f} s wall, {record.peak_rss_mb:.0f} MB peak, "
                        f"loaded {record.loaded}" + _err(record)
                    )
                    if not record.ok:
                        break
                if not record.ok:
                    break
                if not noop_done and combo.runner == "connector" and n == settings.rss_large and config:
                    noop_done = True
                    noop = bench.noop(config, combo, n)
                    _say(
                        f"  {combo.label} n={n} no-op incremental: {noop.wall_seconds:.2f} s wall, "
                        f"flow {noop.inner_seconds} s, streams {noop.streams_seconds} s" + _err(noop)
                    )
    machine["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    summaries = [report.summarize(combo, records, settings) for combo in plan]
    return {
        "machine": machine,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
        "runs": [asdict(r) for r in records],
        "summaries": [asdict(s) for s in summaries],
        "noop": asdict(noop) if noop else None,
        "goals": [asdict(g) for g in report.goals(summaries, noop)],
    }


def _err(record: RunRecord) -> str:
    return "" if record.ok else f"  FAILED: {record.error}"


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    figures = run_all(settings)
    report.render(figures)
    if settings.json_path is not None:
        settings.json_path.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2) + b"\n")
        _say(f"bench: figures written to {settings.json_path}")
    failed = [r for r in figures["runs"] if not r["ok"]]
    if figures["noop"] and not figures["noop"]["ok"]:
        failed.append(figures["noop"])
    return 1 if failed else 0
