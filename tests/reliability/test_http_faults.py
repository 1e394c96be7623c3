"""HTTP faults from a real server on 127.0.0.1, through FhirClient and run_stream: every resource is loaded
exactly once, or the run fails with a clear reason and a watermark that covers only committed rows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from connector.sync.pipeline import StreamResult
from tests.reliability.conftest import (
    INVALID,
    PAGE_SIZE,
    TOTAL,
    FaultServer,
    expected_ids,
    snapshot,
    updated,
    write_config,
)
from tests.reliability.sync_runner import sync_once

VALID = TOTAL - INVALID


def run(config: Path) -> StreamResult:
    return asyncio.run(sync_once(str(config)))


def assert_complete(url: str, server: FaultServer) -> None:
    snap = snapshot(url)
    assert [r[0] for r in snap["referral"]] == expected_ids()
    assert [r[0] for r in snap["raw"]] == expected_ids()
    assert len(snap["dead_letter"]) == INVALID
    assert snap["watermark"] == updated(TOTAL - 1)
    # Every resource reached the client; the faulted answers carried none (retries refetch the page).
    assert set(server.served.values()) == {1}
    assert len(server.served) == TOTAL


# Each case: the faults scripted per page; all are retried and the run completes.
RECOVERABLE = {
    "429 with Retry-After": {1: ["429", "429"], 4: ["429"]},
    "503 burst": {0: ["503"] * 4, 3: ["503"] * 3},
    "slow past the read timeout": {2: ["slow"], 5: ["slow"]},
    "connection reset mid-body": {1: ["reset"], 2: ["reset", "reset"]},
    "truncated JSON": {3: ["truncated"], 4: ["truncated"]},
    "HTML error page with 200": {0: ["html"], 5: ["html", "html"]},
    "everything at once": {0: ["503", "429"], 1: ["reset"], 2: ["truncated"], 3: ["html"], 4: ["slow"]},
}


@pytest.mark.reliability
@pytest.mark.parametrize("case", list(RECOVERABLE))
def test_transient_faults_are_retried_and_everything_loads_once(
    case: str, tmp_path: Path, sqlite_url: str, fault_server: FaultServer
) -> None:
    fault_server.faults = {k: list(v) for k, v in RECOVERABLE[case].items()}
    injected = sum(len(v) for v in RECOVERABLE[case].values())
    config = write_config(tmp_path / "c.toml", sqlite_url, fault_server.base, read_timeout=0.3)
    result = run(config)
    assert result.status == "succeeded", result.error
    assert (result.fetched, result.loaded, result.rejected) == (TOTAL, VALID, INVALID)
    # Every page once plus every injected fault; on a loaded machine a healthy page can also miss the short
    # read timeout and be asked again, within the retry budget (6 attempts a page), so no exact count.
    requests = sum(fault_server.requests.values())
    assert TOTAL // PAGE_SIZE + injected <= requests <= (TOTAL // PAGE_SIZE + 1) * 6
    assert all(not script for script in fault_server.faults.values())  # every fault was served
    assert_complete(sqlite_url, fault_server)


@pytest.mark.reliability
@pytest.mark.parametrize("fault", ["503", "html", "truncated", "reset"])
def test_persistent_fault_fails_clearly_and_keeps_the_watermark(
    fault: str, tmp_path: Path, sqlite_url: str, fault_server: FaultServer
) -> None:
    # Page 3 keeps failing past the retry budget: pages 0-2 are committed, the watermark is not moved.
    fault_server.faults = {3: [fault] * 3}
    config = write_config(tmp_path / "c.toml", sqlite_url, fault_server.base, attempts=3)
    result = run(config)
    assert result.status == "failed"
    assert result.transient
    assert result.error is not None
    assert "\n" not in result.error
    assert "ServiceRequest" in result.error
    assert "3 attempt(s)" in result.error
    snap = snapshot(sqlite_url)
    committed = [r["id"] for r in fault_server_resources(0, 3 * PAGE_SIZE) if "subject" in r]
    assert [r[0] for r in snap["referral"]] == sorted(committed)
    assert snap["watermark"] is None  # a first run: nothing may be skipped by the next one
    # The next run, with the server fixed, completes and loads the rest exactly once.
    fault_server.served.clear()
    assert run(config).status == "succeeded"
    snap = snapshot(sqlite_url)
    assert [r[0] for r in snap["referral"]] == expected_ids()
    assert snap["watermark"] == updated(TOTAL - 1)


def fault_server_resources(start: int, end: int) -> list[dict]:
    from tests.reliability.conftest import RESOURCES

    return RESOURCES[start:end]


@pytest.mark.reliability
def test_persistent_fault_on_an_incremental_run_keeps_the_previous_watermark(
    tmp_path: Path, sqlite_url: str, fault_server: FaultServer
) -> None:
    config = write_config(tmp_path / "c.toml", sqlite_url, fault_server.base, attempts=2)
    assert run(config).status == "succeeded"
    before = snapshot(sqlite_url)
    fault_server.faults = {0: ["503", "503"]}
    result = run(config)
    assert result.status == "failed"
    assert snapshot(sqlite_url) == before


@pytest.mark.reliability
@pytest.mark.parametrize("mode", ["missing", "loop"])
def test_missing_or_looping_next_link_stops_with_a_watermark_over_what_was_read(
    mode: str, tmp_path: Path, sqlite_url: str, fault_server: FaultServer
) -> None:
    fault_server.links = {2: mode}
    config = write_config(tmp_path / "c.toml", sqlite_url, fault_server.base)
    result = run(config)
    assert result.status == "succeeded"
    assert result.fetched == 3 * PAGE_SIZE  # no page read twice, the loop is not followed
    snap = snapshot(sqlite_url)
    assert snap["watermark"] == updated(3 * PAGE_SIZE - 1)
    assert len(snap["referral"]) == sum(1 for r in fault_server_resources(0, 150) if "subject" in r)
    # The next incremental run starts after the watermark and picks up the rest: nothing lost.
    fault_server.links = {}
    result = run(config)
    assert result.status == "succeeded"
    assert result.fetched == TOTAL - 3 * PAGE_SIZE
    assert_complete_ids(sqlite_url)
    assert set(fault_server.served.values()) == {1}


def assert_complete_ids(url: str) -> None:
    snap = snapshot(url)
    assert [r[0] for r in snap["referral"]] == expected_ids()
    assert [r[0] for r in snap["raw"]] == expected_ids()
    assert len(snap["dead_letter"]) == INVALID
    assert snap["watermark"] == updated(TOTAL - 1)


@pytest.mark.reliability
def test_empty_page_in_the_middle_is_followed(
    tmp_path: Path, sqlite_url: str, fault_server: FaultServer
) -> None:
    fault_server.links = {1: "gap", 3: "gap"}
    config = write_config(tmp_path / "c.toml", sqlite_url, fault_server.base)
    result = run(config)
    assert result.status == "succeeded", result.error
    assert result.pages == TOTAL // PAGE_SIZE + 2
    assert_complete(sqlite_url, fault_server)
