"""`python -m bench.cpu`: where a connector sync's CPU goes, in µs per resource and per process.

Runs `connector sync` at two sizes against the benchmark's FHIR server and Prefect server (as `python -m
bench` does) and reads the CPU seconds of each process: the CLI's own process (fetching, the event loops),
its children (the mapping workers, which also write), PostgreSQL (every server process, exited backends
included through the postmaster's children times), the FHIR server and the Prefect server. The difference
between the sizes, divided by the difference in resources, is the marginal CPU per resource: start-up
cancels out as it does for throughput. Run it on a quiet machine; PostgreSQL's figure counts whatever else
uses that server meanwhile.

    .venv/bin/python -m bench.cpu --level mapped --db postgresql --small 20000 --large 120000
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench import connector_run, prefect_api
from bench.harness import DEFAULT_PG_URL, reset_pg
from bench.server import ServerHandle, start_server

#: The groups a sync's CPU is split into, in the order they are printed.
GROUPS: tuple[str, ...] = ("stream process", "workers", "postgresql", "fhir server", "prefect server")


@dataclass(slots=True)
class CpuSample:
    """CPU seconds per group for one sync of `n` resources, and its wall time."""

    n: int
    wall_seconds: float
    seconds: dict[str, float] = field(default_factory=dict)


def marginal_us(small: CpuSample, large: CpuSample) -> dict[str, float]:
    """µs of CPU per resource of each group between two sizes, and their total (`total`)."""
    resources = large.n - small.n
    if resources <= 0:
        raise ValueError("the large size must hold more resources than the small one")
    out = {g: 1e6 * (large.seconds.get(g, 0.0) - small.seconds.get(g, 0.0)) / resources for g in GROUPS}
    out["total"] = sum(out[g] for g in GROUPS)
    return out


def _cpu(process: psutil.Process, *, children: bool) -> float:
    times = process.cpu_times()
    total = times.user + times.system
    if children:  # processes it waited for: PostgreSQL's exited backends
        total += times.children_user + times.children_system
    return total


def _group_cpu(processes: Sequence[psutil.Process], *, children: bool = False) -> float:
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):  # exited meanwhile
            total += _cpu(process, children=children)
    return total


def _postgres() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("postgres")]


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def sync_cpu(
    n: int, server: ServerHandle, prefect: prefect_api.PrefectApi, workdir: Path, *, level: str, db: str
) -> CpuSample:
    """One `connector sync` of `n` resources on a fresh warehouse, its CPU split by group."""
    if db == "postgresql":
        reset_pg(DEFAULT_PG_URL)
        url = DEFAULT_PG_URL
    else:
        path = workdir / f"cpu-{n}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        url = f"sqlite:///{path}"
    config = connector_run.write_config(
        workdir, warehouse_url=url, base_url=server.base(n), page_size=1000, validation=level
    )
    if db == "postgresql":
        migrate = connector_run.migrate_command(config)
        subprocess.run(migrate, check=True, env=prefect.env, capture_output=True)  # noqa: S603 - our own CLI
    assert prefect.process is not None
    before = {
        "postgresql": _group_cpu(_postgres(), children=True),
        "fhir server": _group_cpu([psutil.Process(server.process.pid)]),
        "prefect server": _group_cpu(_tree(prefect.process.pid)),
    }
    started = time.perf_counter()
    sync = psutil.Popen(
        connector_run.sync_command(config),
        env=prefect.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # A process's CPU can only be read while it lives: keep the last reading of each.
    last: dict[int, tuple[bool, float]] = {}
    while sync.poll() is None:
        try:
            members = [sync, *sync.children(recursive=True)]
        except psutil.Error:
            members = []
        for member in members:
            with contextlib.suppress(psutil.Error):
                last[member.pid] = (member.pid == sync.pid, _cpu(member, children=False))
        time.sleep(0.05)
    wall = time.perf_counter() - started
    if sync.returncode != 0:
        raise RuntimeError(f"connector sync of {n} resources exited with {sync.returncode}")
    return CpuSample(
        n,
        wall,
        {
            "stream process": sum(cpu for own, cpu in last.values() if own),
            "workers": sum(cpu for own, cpu in last.values() if not own),
            "postgresql": _group_cpu(_postgres(), children=True) - before["postgresql"],
            "fhir server": _group_cpu([psutil.Process(server.process.pid)]) - before["fhir server"],
            "prefect server": _group_cpu(_tree(prefect.process.pid)) - before["prefect server"],
        },
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--level", choices=connector_run.LEVELS, default="mapped")
    parser.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--small", type=int, default=20_000)
    parser.add_argument("--large", type=int, default=120_000)
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp,
        start_server(args.large) as server,
        prefect_api.start("server", Path(tmp) / "prefect") as prefect,
    ):
        workdir = Path(tmp)
        sync_cpu(1000, server, prefect, workdir, level=args.level, db=args.db)  # warm-up
        small = sync_cpu(args.small, server, prefect, workdir, level=args.level, db=args.db)
        large = sync_cpu(args.large, server, prefect, workdir, level=args.level, db=args.db)
    per_resource = marginal_us(small, large)
    rate = (large.n - small.n) / (large.wall_seconds - small.wall_seconds)
    print(f"connector {args.db} {args.level}, {small.n} -> {large.n}: {rate:,.0f} res/s marginal")
    for group in (*GROUPS, "total"):
        print(f"  {group:15s} {per_resource[group]:7.1f} µs CPU per resource")


if __name__ == "__main__":
    main()
