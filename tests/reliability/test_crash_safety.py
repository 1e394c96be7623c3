"""SIGKILL at seeded random points (fetch, mid-batch, before the watermark, between pages, during push),
then a re-run: the warehouse equals a clean run's, and the server holds one Task per acknowledged referral.

Most kills hit `sync_runner.py` (the real pipeline without Prefect, ~1 s a start); one goes through the
full `connector sync` CLI and the push kills through `connector push`.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from connector.sync.pipeline import map_resources
from connector.warehouse.engine import ensure_schema, make_engine
from connector.warehouse.writer import PageWrite, write_page
from tests.reliability.conftest import (
    ACKNOWLEDGEABLE,
    IDENTIFIER_SYSTEM,
    PAGE_SIZE,
    RESOURCES,
    TOTAL,
    FaultServer,
    Snapshot,
    snapshot,
    write_config,
)
from tests.reliability.sync_runner import sync_once

RUNNER = str(Path(__file__).with_name("sync_runner.py"))
ROOT = Path(__file__).resolve().parents[2]
PAGES = TOTAL // PAGE_SIZE
SEED = 20261001
SYNC_KILLS = 22
PUSH_KILLS = 6
SUMMARY_KILLS = 4
#: Filled in by the tests, written by the last one to tests/reliability/.results (for docs/reliability.md).
TALLY: Counter[str] = Counter()


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    fake = FaultServer()
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty warehouse file: copied per kill point instead of migrating each time."""
    path = tmp_path_factory.mktemp("template") / "empty.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        ensure_schema(engine)
    finally:
        engine.dispose()
    return path


def fresh_url(empty_db: Path, path: Path) -> str:
    shutil.copyfile(empty_db, path)
    return f"sqlite:///{path}"


@pytest.fixture(scope="module")
def clean(server: FaultServer, tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    """The warehouse of an uninterrupted run."""
    url = f"sqlite:///{tmp_path_factory.mktemp('clean') / 'wh.db'}"
    config = write_config(tmp_path_factory.mktemp("cfg") / "c.toml", url, server.base)
    assert asyncio.run(sync_once(str(config))).status == "succeeded"
    snap = snapshot(url)
    assert len(snap["raw"]) == len(snap["referral"]) > 0
    return snap


def kill_points() -> list[tuple[str, int]]:
    rng = random.Random(SEED)
    # `_upsert` runs twice per page (raw_resource, referral; each in batches of 20), 6 pages.
    phases: dict[str, Callable[[], int]] = {
        "fetch": lambda: rng.randrange(PAGES),
        "upsert": lambda: rng.randint(1, 2 * PAGES),
        "watermark": lambda: 1,
        "committed": lambda: rng.randint(1, PAGES),
    }
    names = sorted(phases)
    points = [(name, phases[name]()) for name in names]  # every phase at least once
    points += [(name, phases[name]()) for name in (rng.choice(names) for _ in range(SYNC_KILLS - len(names)))]
    return points


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        # Its own process group, killed whole: the CLI's temporary Prefect server (a child process) dies
        # with it, as in a container or a systemd unit, instead of outliving the test run.
        start_new_session=True,
    )


def kill(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL


def kill_when_blocked(proc: subprocess.Popen[str], server: FaultServer) -> None:
    """The server holds the request: kill the client while it waits for the answer."""
    try:
        assert server.blocked.wait(60), "the blocked request never arrived"
        kill(proc)
    finally:
        server.release.set()


def kill_at_stop(proc: subprocess.Popen[str], label: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the runner prints STOPPED and waits for us
    assert line.startswith("STOPPED"), f"{label}: runner ended before its stop point: {line!r}"
    kill(proc)


def committed_rows_are_covered(url: str) -> None:
    """After a kill: a stored watermark never lies past a resource that is not loaded."""
    snap = snapshot(url)
    if snap["watermark"] is not None:
        # The watermark is only written with the last page, so then everything is in.
        assert len(snap["raw"]) + len(snap["dead_letter"]) == TOTAL


def compare(clean: Snapshot, url: str) -> None:
    after = snapshot(url)
    TALLY["loaded"] += len(after["referral"])
    TALLY["duplicated"] += len(after["raw"]) - len({r[0] for r in after["raw"]})
    TALLY["lost"] += len(set(clean["raw"]) - set(after["raw"]))
    assert after == clean


@pytest.mark.reliability
def test_sigkill_at_random_points_then_rerun_equals_a_clean_run(
    server: FaultServer, clean: Snapshot, empty_db: Path, tmp_path: Path
) -> None:
    points = kill_points()
    assert len(points) >= 20
    for i, (phase, n) in enumerate(points):
        label = f"kill {i} at {phase}:{n}"
        server.reset_faults()
        url = fresh_url(empty_db, tmp_path / f"wh{i}.db")
        config = write_config(tmp_path / f"c{i}.toml", url, server.base)
        if phase == "fetch":
            server.block_page = n
            kill_when_blocked(spawn(RUNNER, str(config)), server)
        else:
            kill_at_stop(spawn(RUNNER, str(config), "--stop-at", f"{phase}:{n}"), label)
        server.reset_faults()
        committed_rows_are_covered(url)
        rerun = asyncio.run(sync_once(str(config)))
        assert rerun.status == "succeeded", f"{label}: {rerun.error}"
        compare(clean, url)
        TALLY[f"sync:{phase}"] += 1
    _write_tally()


def push_again(config: Path) -> None:
    """`connector push` after a kill: it completes the round."""
    rerun = subprocess.run(
        [sys.executable, "-m", "connector", "push", "--config", str(config)],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]


def task_ids(url: str) -> list[tuple[str, str]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [
                tuple(r)
                for r in conn.execute(
                    sa.text(
                        "select item_key, server_id from outbox "
                        "where kind = 'task-create' and status = 'sent' "
                        "order by item_key"
                    )
                )
            ]
    finally:
        engine.dispose()


@pytest.mark.reliability
def test_sigkill_during_push_never_creates_a_task_twice(
    server: FaultServer, clean: Snapshot, empty_db: Path, tmp_path: Path
) -> None:
    rng = random.Random(SEED + 1)
    for i in range(PUSH_KILLS):
        server.reset_faults()
        server.forget_pushes()
        url = fresh_url(empty_db, tmp_path / f"push{i}.db")
        config = write_config(tmp_path / f"p{i}.toml", url, server.base)
        assert asyncio.run(sync_once(str(config))).status == "succeeded"
        # Killed while the server holds the n-th POST: before it made the Task, or after (answer lost).
        server.block_post = rng.randint(1, ACKNOWLEDGEABLE)
        server.block_post_after_create = rng.random() < 0.5
        kill_when_blocked(spawn("-m", "connector", "push", "--config", str(config)), server)
        before = len(server.tasks)
        assert before == server.block_post - (0 if server.block_post_after_create else 1)
        server.reset_faults()
        push_again(config)
        sent = task_ids(url)
        assert len(sent) == ACKNOWLEDGEABLE
        assert len(server.tasks) == ACKNOWLEDGEABLE  # one per referral: never more
        assert sorted(server.tasks) == sorted(f"{IDENTIFIER_SYSTEM}|clinic/{key}" for key, _ in sent)
        by_key = {f"{IDENTIFIER_SYSTEM}|clinic/{key}": tid for key, tid in sent}
        assert all(server.tasks[k]["id"] == by_key[k] for k in by_key)
        TALLY["push"] += 1
        TALLY["push:tasks"] += len(server.tasks)
        TALLY["push:posts"] += server.task_posts
    _write_tally()


def _attend_evaluations(url: str) -> list[str]:
    """Every acknowledgeable referral's evaluation attended (written as the sync would); their ids."""
    active = [r for r in RESOURCES if "subject" in r and r["status"] == "active"]
    appointments = [
        {
            "resourceType": "Appointment",
            "id": f"eval-{r['id']}",
            "meta": {"versionId": "1", "lastUpdated": "2026-10-02T00:00:00Z"},
            "status": "fulfilled",
            "serviceType": [{"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "97161"}]}],
            "basedOn": [{"reference": f"ServiceRequest/{r['id']}"}],
            "start": "2026-09-10T15:00:00Z",
            "participant": [{"actor": r["subject"], "status": "accepted"}],
        }
        for r in active
    ]
    mapped = map_resources("clinic", "Appointment", appointments, datetime(2026, 10, 2, tzinfo=UTC))
    assert not mapped.rejects
    engine = make_engine(url)
    try:
        write_page(engine, PageWrite("clinic", "Appointment", raw=mapped.raw, mapped=mapped.mapped))
    finally:
        engine.dispose()
    return [r["id"] for r in active]


@pytest.mark.reliability
def test_sigkill_during_case_summaries_never_sends_one_twice(
    server: FaultServer, clean: Snapshot, empty_db: Path, tmp_path: Path
) -> None:
    """Killed while the server holds a Communication's POST (made or not): the re-run completes the round,
    one summary per referral and each Task moved once per milestone, in order."""
    rng = random.Random(SEED + 2)
    for i in range(SUMMARY_KILLS):
        server.reset_faults()
        server.forget_pushes()
        url = fresh_url(empty_db, tmp_path / f"summary{i}.db")
        config = write_config(tmp_path / f"s{i}.toml", url, server.base)
        assert asyncio.run(sync_once(str(config))).status == "succeeded"
        evaluated = _attend_evaluations(url)
        # The Tasks are POSTed first (delivery order), then their two milestones PUT, then the summaries.
        server.block_post = ACKNOWLEDGEABLE + rng.randint(1, ACKNOWLEDGEABLE)
        server.block_post_after_create = rng.random() < 0.5
        kill_when_blocked(spawn("-m", "connector", "push", "--config", str(config)), server)
        server.reset_faults()
        push_again(config)
        assert len(server.tasks) == ACKNOWLEDGEABLE
        assert sorted(server.communications) == sorted(
            f"{IDENTIFIER_SYSTEM}|clinic/ServiceRequest/{rid}/summary:evaluation" for rid in evaluated
        )
        moves: dict[str, list[str]] = {}
        for key, status in server.task_puts:
            moves.setdefault(key, []).append(status)
        # Each Task moved once per milestone: to accepted (evaluation scheduled), then in-progress.
        assert len(moves) == ACKNOWLEDGEABLE
        assert all(m == ["accepted", "in-progress"] for m in moves.values()), moves
        TALLY["summary"] += 1
        TALLY["summary:communications"] += len(server.communications)
    _write_tally()


@pytest.mark.reliability
def test_sigkill_of_connector_sync_cli_then_rerun_through_faults(
    server: FaultServer, clean: Snapshot, tmp_path: Path
) -> None:
    server.reset_faults()
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    config = write_config(tmp_path / "cli.toml", url, server.base, read_timeout=0.5)
    cli = ["-m", "connector", "sync", "--config", str(config)]
    server.block_page = 3
    kill_when_blocked(spawn(*cli), server)
    server.reset_faults()
    committed_rows_are_covered(url)
    # The re-run meets a 503 burst, a reset, truncated JSON and an HTML page on the way, and completes.
    server.faults = {0: ["503", "503", "503"], 1: ["reset"], 2: ["truncated"], 4: ["html"], 5: ["429"]}
    rerun = subprocess.run([sys.executable, *cli], cwd=ROOT, env=env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert all(not script for script in server.faults.values())
    compare(clean, url)
    TALLY["sync:cli"] += 1
    _write_tally()


def _write_tally() -> None:
    out = Path(__file__).with_name(".results")
    out.write_text("".join(f"{k} {v}\n" for k, v in sorted(TALLY.items())))
