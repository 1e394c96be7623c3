"""A busy host: many `connector sync` runs started at once beside a CPU hog, and the fixed cost of a run.

    .venv/bin/python -m bench.busy_host                 # 8 syncs at once, 2 CPU hogs, 2,000 resources each
    .venv/bin/python -m bench.busy_host --syncs 4 --hogs 0 --n 500

1. **Side by side** (issue 23's "done when"): N endpoints (`practice-1` ... `practice-N`, one SQLite
   warehouse each) on the benchmark FHIR server, synced by N `connector sync` processes started at the same
   instant with a fresh `PREFECT_HOME` (so they race to start the shared local Prefect server) while `--hogs`
   processes spin on the CPU. Each must exit 0 with every resource loaded: fetched = loaded = n.
2. **Start-up**: `import connector.cli, flows.sync` and loading a config, in a fresh interpreter (median of
   `--repeat`), the work every CLI run does before its first request: spawn to a "ready" line (the
   interpreter's teardown at exit, about 0.25 s of freeing Prefect's modules, comes after a run, not before).
3. **No-op incremental sync** of one endpoint (nothing changed on the server), wall time of the whole
   command, median of `--repeat`: first with the hogs running (busy), then without (quiet).

Prints the figures; exits 1 if any sync failed or loaded less than the server holds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import connector_run
from bench.prefect_api import child_env
from bench.server import start_server


def _hog() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _config(workdir: Path, base_url: str, i: int) -> Path:
    text = connector_run.config_text(
        warehouse_url=f"sqlite:///{workdir / f'wh-{i}.db'}",
        base_url=base_url,
        page_size=500,
        validation="strict",
    ).replace(f'name = "{connector_run.ENDPOINT}"', f'name = "practice-{i}"')
    path = workdir / f"practice-{i}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    return time.monotonic() - started, done


def side_by_side(configs: list[Path], env: dict[str, str], n: int) -> bool:
    started = time.monotonic()
    runs = [
        subprocess.Popen(  # noqa: S603 - the venv's connector, fixed arguments
            connector_run.sync_command(config),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for config in configs
    ]
    ok = True
    for config, run in zip(configs, runs, strict=True):
        stdout, stderr = run.communicate()
        wall = time.monotonic() - started
        try:
            summary = connector_run.parse_summary(stdout)
            counts = f"fetched {summary.fetched}, loaded {summary.loaded}, rejected {summary.rejected}"
            complete = summary.status == "succeeded" and summary.loaded == n
        except ValueError:
            counts, complete = "no summary", False
        last = stderr.strip().splitlines()[-1:] or [""]
        good = run.returncode == 0 and complete
        ok = ok and good
        print(
            f"  {config.stem:<12} rc {run.returncode}  {counts}  done after {wall:5.1f} s"
            + ("" if good else f"  FAILED: {last[0][:200]}")
        )
    return ok


def _until_ready(command: list[str], env: dict[str, str]) -> float:
    """Seconds from starting `command` to its first line on stdout (its own exit is not start-up)."""
    started = time.monotonic()
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)  # noqa: S603
    assert child.stdout is not None
    line = child.stdout.readline()
    ready = time.monotonic() - started
    child.wait()
    if line.strip() != "ready" or child.returncode != 0:
        raise RuntimeError(f"the start-up probe failed (rc {child.returncode}): {line!r}")
    return ready


def startup_seconds(config: Path, env: dict[str, str], repeat: int) -> float:
    """Spawn to ready: the interpreter, the CLI's and the flows' imports (Prefect's with them) and the config,
    everything before a run's first request. The interpreter's teardown after it is not counted."""
    code = (
        "import connector.cli, flows.sync; from connector.config import load_settings; "
        f"load_settings({str(config)!r}); print('ready', flush=True)"
    )
    times = [_until_ready([sys.executable, "-c", code], env) for _ in range(repeat)]
    return statistics.median(times)


def noop_seconds(config: Path, env: dict[str, str], repeat: int) -> tuple[float, float]:
    """(median wall of the command, median of the flow's own `seconds`) over `repeat` no-op syncs."""
    walls, flows = [], []
    for _ in range(repeat):
        wall, done = _timed(connector_run.sync_command(config), env)
        summary = connector_run.parse_summary(done.stdout)
        if done.returncode != 0 or summary.loaded != 0:
            raise RuntimeError(
                f"a no-op sync failed or loaded rows (rc {done.returncode}): {done.stderr[-300:]}"
            )
        walls.append(wall)
        flows.append(summary.seconds or 0.0)
    return statistics.median(walls), statistics.median(flows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.busy_host", description=__doc__.splitlines()[0])
    parser.add_argument("--syncs", type=int, default=8, help="connector sync runs started at once")
    parser.add_argument("--hogs", type=int, default=2, help="CPU-spinning processes beside them")
    parser.add_argument("--n", type=int, default=2000, help="resources per endpoint")
    parser.add_argument("--repeat", type=int, default=3, help="runs per start-up / no-op figure")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="connector-busy-") as tmp, start_server(args.n) as server:
        workdir = Path(tmp)
        env = child_env(PREFECT_HOME=str(workdir / "prefect"))
        env.pop("PREFECT_API_URL", None)
        configs = [_config(workdir, server.base(args.n), i) for i in range(1, args.syncs + 1)]
        hogs = [_hog() for _ in range(args.hogs)]
        try:
            print(f"{args.syncs} syncs of {args.n} resources each at once, {args.hogs} CPU hogs running:")
            ok = side_by_side(configs, env, args.n)
            busy_start = startup_seconds(configs[0], env, args.repeat)
            busy_wall, busy_flow = noop_seconds(configs[0], env, args.repeat)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
        quiet_start = startup_seconds(configs[0], env, args.repeat)
        quiet_wall, quiet_flow = noop_seconds(configs[0], env, args.repeat)
        print(
            f"start-up (imports + config), median of {args.repeat}: "
            f"busy {busy_start:.2f} s, quiet {quiet_start:.2f} s"
        )
        print(
            f"no-op incremental sync, median of {args.repeat}: "
            f"busy {busy_wall:.2f} s wall ({busy_flow:.2f} s in the flow), "
            f"quiet {quiet_wall:.2f} s wall ({quiet_flow:.2f} s in the flow)"
        )
        from connector.prefect_api import stop_shared_server

        stop_shared_server(workdir / "prefect")
    print("all syncs complete" if ok else "SOME SYNCS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
