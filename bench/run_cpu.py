"""`python -m bench.run_cpu [--n N] [--repeat R] [--py-spy]`: one first sync's wall time and, with py-spy, its
CPU per process (main, mapping workers, the fork server) and what it went to.

Starts the benchmark FHIR server with N resources, runs `connector sync` of one endpoint into a fresh SQLite
warehouse R times (after an untimed run that starts the shared Prefect server) and prints the wall times.
With `--py-spy` (installed separately: `pip install py-spy`) one more run is recorded with `--subprocesses`
and its active samples are summed per process and per kind of work (docs/performance.md has a table of it).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from bench import connector_run
from bench.prefect_api import child_env
from bench.server import start_server

RATE = 200  # py-spy samples per second


def _kind(frames: list[str]) -> str:
    text = ";".join(frames)
    if "_find_and_load" in text or "warm_up" in text:
        return "imports and validators"
    if "prefect" in text and "connector/" not in text and "flows/" not in text:
        return "Prefect"
    if "fhir/resources" in text or "pydantic" in text or "mappings/validate" in text:
        return "validation"
    if "mappings/" in text:
        return "mapping"
    if "sqlalchemy" in text or "sqlite3" in text or "connector/warehouse" in text:
        return "warehouse writes"
    if "httpx" in text or "httpcore" in text:
        return "HTTP"
    return "other"


def summarize(raw: Path) -> None:
    """Active seconds per process and kind of work, from a py-spy `--format raw` file."""
    per: Counter[str] = Counter()
    kinds: defaultdict[str, Counter[str]] = defaultdict(Counter)
    stacks = [line.rpartition(" ") for line in raw.read_text().splitlines()]
    parsed = [(stack.split(";"), int(count)) for stack, _, count in stacks if stack]
    # A process with processes under it in some stack is the fork server (its workers fork from it).
    parents = {
        f.split(":", 1)[0]
        for frames, _ in parsed
        for f in [f for f in frames if f.startswith("process ")][1:-1]
    }
    for frames, count in parsed:
        at = max(i for i, f in enumerate(frames) if f.startswith("process "))
        pid = frames[at].split(":", 1)[0]
        role = "main" if at == 0 else ("fork server" if pid in parents else "worker")
        name = f"{pid} ({role})"
        per[name] += count
        kinds[name][_kind(frames[at + 1 :])] += count
    print(f"all processes: {sum(per.values()) / RATE:.2f} s active")
    for name, samples in per.most_common():
        detail = ", ".join(f"{k} {v / RATE:.2f} s" for k, v in kinds[name].most_common())
        print(f"  {samples / RATE:6.2f} s  {name}: {detail}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=20_000, help="resources (three types)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs")
    parser.add_argument("--py-spy", action="store_true", help="record one more run with py-spy")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="connector-cpu-") as tmp, start_server(args.n) as server:
        work = Path(tmp)
        env = child_env(PREFECT_HOME=str(work / "prefect"))
        env.pop("PREFECT_API_URL", None)

        def config(i: int) -> Path:
            path = work / f"c{i}.toml"
            path.write_text(
                connector_run.config_text(
                    warehouse_url=f"sqlite:///{work / f'w{i}.db'}",
                    base_url=server.base(args.n),
                    page_size=1000,
                    validation="strict",
                )
            )
            return path

        walls = []
        for i in range(args.repeat + 1):
            started = time.monotonic()
            sync = connector_run.sync_command(config(i))
            done = subprocess.run(sync, env=env, capture_output=True, check=False)  # noqa: S603
            if done.returncode != 0:
                raise SystemExit(f"the sync failed (rc {done.returncode})")
            if i:  # the first run starts the shared Prefect server: untimed
                walls.append(time.monotonic() - started)
        shown = [round(w, 2) for w in walls]
        print(f"first sync of {args.n:,} resources: wall {shown} s, median {statistics.median(walls):.2f} s")
        if args.py_spy:
            spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            raw = work / "profile.txt"
            command = [
                spy,
                "record",
                "--subprocesses",
                "--rate",
                str(RATE),
                "--format",
                "raw",
                "-o",
                str(raw),
                "--",
            ]
            command += connector_run.sync_command(config(args.repeat + 1))
            subprocess.run(command, env=env, capture_output=True, check=True)  # noqa: S603
            summarize(raw)


if __name__ == "__main__":
    main()
