"""The connector end to end against sekmet-fhir, a FHIR R4 server none of us wrote.

respx proves our side of the protocol as we understand it; this proves it as someone else implemented it.
The connector is driven the way users drive it: a connector.toml and `python -m connector ...` in a
subprocess. Server behaviour that differs from the spec, and how it is handled, is in docs/integration.md.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa

from connector.config import DEFAULT_RESOURCES, DIRECTORY_RESOURCES, EndpointSettings
from connector.fhir.client import FhirClient
from connector.fhir.page import Entries
from connector.fhir.paging import entries_of
from mappings.registry import TARGET_TABLES
from tests.integration.practice import Practice, post_entry, post_transaction

pytestmark = pytest.mark.integration

ENDPOINT = "sekmet"
#: Default types sekmet-fhir's CapabilityStatement does not list: a sync skips them, `check` notes them.
UNOFFERED = {"Goal"}
#: Tables the connector writes for bookkeeping: not mapped facts.
BOOKKEEPING = {"raw_resource", "sync_state", "sync_run", "dead_letter", "alembic_version"}


# ---------------------------------------------------------------------------------------------- helpers


def write_config(folder: Path, base_url: str, warehouse_url: str) -> Path:
    config = folder / "connector.toml"
    config.write_text(
        f'[warehouse]\nurl = "{warehouse_url}"\n\n'
        f'[[endpoints]]\nname = "{ENDPOINT}"\nbase_url = "{base_url}"\n'
        '[endpoints.auth]\ntype = "none"\n',
        encoding="utf-8",
    )
    return config


def connector(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "connector", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def sync(config: Path) -> dict[str, Any]:
    """`connector sync --json`; fails the test with the CLI's own words when the sync failed."""
    done = connector("sync", "--config", str(config), "--json", cwd=config.parent)
    assert done.returncode == 0, f"sync failed: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    report: dict[str, Any] = orjson.loads(done.stdout)
    assert report["status"] == "succeeded", report["error"]
    return report


def last_attempts(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The summary row of each stream's final attempt (a retried stream has several `sync_run` rows)."""
    return {row["resource_type"]: row for row in report["streams"]}


def query(url: str, sql: str, **params: Any) -> list[Any]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))
    finally:
        engine.dispose()


def raw_versions(url: str) -> dict[tuple[str, str], str | None]:
    rows = query(
        url,
        "select resource_type, resource_id, version_id from raw_resource where endpoint = :e and not deleted",
        e=ENDPOINT,
    )
    return {(r.resource_type, r.resource_id): r.version_id for r in rows}


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def as_utc(value: datetime | str) -> datetime:
    """A timestamp read back from SQLite (text or naive) or PostgreSQL (aware), in UTC."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def newest_on_server(fhir: httpx.Client, resource_type: str) -> str | None:
    """The server's newest meta.lastUpdated of a type: what the watermark must end at."""
    bundle = fhir.get(resource_type, params={"_sort": "-_lastUpdated", "_count": "1"}).json()
    entries = bundle.get("entry") or []
    return entries[0]["resource"]["meta"]["lastUpdated"] if entries else None


def check_warehouse(url: str, practice: Practice, fhir: httpx.Client) -> None:
    """The warehouse holds exactly the practice: counts per type, referral fields, watermarks."""
    counts = Counter(rt for rt, _ in raw_versions(url))
    for rt in DEFAULT_RESOURCES:
        assert counts[rt] == len(practice.of(rt)), f"raw_resource {rt}"
    # Directory resources come only through `_include=ServiceRequest:requester`: every direct requester
    # is there, and nothing that is not in the practice.
    stored = {key for key in raw_versions(url) if key[0] in DIRECTORY_RESOURCES}
    requesters = {tuple(r.split("/", 1)) for r in practice.requesters}
    assert requesters <= stored
    assert all(rid in practice.of(rt) for rt, rid in stored)
    assert query(url, "select count(*) from dead_letter")[0][0] == 0

    check_referrals(url, practice, random.Random(11).sample(sorted(practice.of("ServiceRequest")), 60))
    check_mapped_tables(url, practice)

    states = {
        r.resource_type: r
        for r in query(
            url, "select resource_type, watermark, mode from sync_state where endpoint = :e", e=ENDPOINT
        )
    }
    for rt in DEFAULT_RESOURCES:
        newest = None if rt in UNOFFERED else newest_on_server(fhir, rt)
        if newest is None:
            continue  # an empty stream has nothing to resume from
        if states[rt].mode == "bulk":
            # sekmet offers $export, so a first load goes through it (bulk = "auto"); the next search
            # continues after the manifest's transactionTime, the server's clock when the export began.
            assert utc(states[rt].watermark) >= utc(newest), rt
        else:
            # The watermark is the server's own lastUpdated text, not this machine's clock.
            assert states[rt].watermark == newest, rt
            assert states[rt].mode == "last-updated"


def check_referrals(url: str, practice: Practice, sample: list[str]) -> None:
    rows = {
        r.resource_id: r
        for r in query(
            url,
            "select resource_id, status, intent, priority, authored_on, patient_ref, requester_ref,"
            " service_system, service_code, reason_codes, coverage_ref, version_id from referral"
            " where endpoint = :e",
            e=ENDPOINT,
        )
    }
    assert set(rows) == set(practice.of("ServiceRequest"))
    for rid in sample:
        sr, row = practice.of("ServiceRequest")[rid], rows[rid]
        assert row.status == sr["status"], rid
        assert row.intent == sr["intent"]
        assert row.priority == sr["priority"]
        assert as_utc(row.authored_on) == utc(sr["authoredOn"])
        assert row.patient_ref == sr["subject"]["reference"]
        assert row.requester_ref == sr["requester"]["reference"]
        assert (row.service_system, row.service_code) == (
            sr["code"]["coding"][0]["system"],
            sr["code"]["coding"][0]["code"],
        )
        reason = sr["reasonCode"][0]["coding"][0]
        codes = row.reason_codes if isinstance(row.reason_codes, list) else orjson.loads(row.reason_codes)
        assert codes == [f"{reason['system']}|{reason['code']}"]
        assert row.coverage_ref == sr["insurance"][0]["reference"]
        if "meta" in sr:  # resources we changed carry the server's version
            assert row.version_id == sr["meta"]["versionId"]


def check_mapped_tables(url: str, practice: Practice) -> None:
    """Every mapped table that exists holds only resources of the practice, and each mapped type fed some.

    Only the key columns every row carries (architecture contract) are read: the fact tables' other
    columns are still being designed.
    """
    tables = set(sa.inspect(sa.create_engine(url, poolclass=sa.pool.NullPool)).get_table_names())
    for rt, targets in TARGET_TABLES.items():
        present = [t for t in targets if t in tables and t not in BOOKKEEPING]
        synced = rt in DEFAULT_RESOURCES or rt in DIRECTORY_RESOURCES  # Patient only when listed
        if not present or not practice.of(rt) or not synced:
            continue
        ids: set[str] = set()
        for table in present:
            rows = query(
                url,
                f"select resource_id from {table} where endpoint = :e and resource_type = :t",
                e=ENDPOINT,
                t=rt,
            )
            ids |= {r.resource_id.split("#", 1)[0] for r in rows}
        assert ids, f"no {', '.join(present)} rows from {rt}"
        assert ids <= set(practice.of(rt)), f"{rt} rows in {present} that the practice does not have"


# --------------------------------------------------------------------------------------------- fixtures


@dataclass
class SyncedWarehouse:
    url: str
    config: Path
    report: dict[str, Any]
    #: The practice's counts when the sync ran (later tests change the server).
    counts: Counter[str]


@pytest.fixture(scope="module")
def full_sync(
    sekmet_base_url: str, practice: Practice, tmp_path_factory: pytest.TempPathFactory
) -> SyncedWarehouse:
    """One full sync of the practice into a SQLite warehouse, shared by the tests of this module."""
    folder = tmp_path_factory.mktemp("full-sync")
    url = f"sqlite:///{folder / 'warehouse.db'}"
    config = write_config(folder, sekmet_base_url, url)
    return SyncedWarehouse(url, config, sync(config), practice.counts())


def search_all(
    endpoint: EndpointSettings, resource_type: str, params: list[tuple[str, str]]
) -> list[Entries]:
    """Every page of a search, its entries parsed."""

    async def go() -> list[Entries]:
        async with FhirClient(endpoint) as client:
            return [entries_of(page) async for page in client.search(resource_type, params)]

    return asyncio.run(go())


def endpoint_for(base_url: str, **overrides: Any) -> EndpointSettings:
    return EndpointSettings(name=ENDPOINT, base_url=base_url, **overrides)


# ------------------------------------------------------------------------------------------------ tests


def test_check_reports_the_servers_capabilities(
    sekmet_base_url: str, practice: Practice, tmp_path: Path
) -> None:
    config = write_config(tmp_path, sekmet_base_url, f"sqlite:///{tmp_path / 'wh.db'}")
    done = connector("check", "--config", str(config), "--json", cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    (report,) = orjson.loads(done.stdout)
    assert report["ok"] is True
    assert report["problems"] == []
    assert report["fhir_version"] == "4.0.1"
    assert report["auth"] == "ok (no auth configured)"
    streams = {s["resource_type"]: s for s in report["streams"]}
    assert list(streams) == list(DEFAULT_RESOURCES)
    assert {rt for rt, s in streams.items() if not s["supported"]} == UNOFFERED
    assert "the server does not offer Goal: not synced (a default type)" in report["notes"]
    for rt, stream in streams.items():
        if rt in UNOFFERED:
            continue
        assert stream["supported"] is True, rt
        assert stream["last_updated"] is True, rt
        # sekmet offers $export and nothing is synced yet: the first sync loads every stream by export
        # (bulk = "auto"), and check says so instead of the search mode a later sync uses.
        assert stream["mode"] == "bulk", rt
        assert stream["reason"].startswith("first load"), rt
    assert "system" in report["bulk_levels"]

    # The same server under a wrong base path: a clear problem and exit 1, not a crash.
    wrong = write_config(tmp_path, sekmet_base_url.removesuffix("/fhir") + "/r4", "sqlite:///wh.db")
    failed = connector("check", "--config", str(wrong), "--json", cwd=tmp_path, timeout=120)
    assert failed.returncode == 1
    (bad,) = orjson.loads(failed.stdout)
    assert bad["ok"] is False
    assert any("404" in p for p in bad["problems"]), bad["problems"]


def test_paging_follows_next_links_past_the_servers_page_cap(
    sekmet_base_url: str, practice: Practice
) -> None:
    # We ask for 5000 a page; sekmet serves at most 1000 and says so in its next links.
    pages = search_all(endpoint_for(sekmet_base_url, page_size=5000), "ServiceRequest", [])
    ids = [r["id"] for page in pages for r in page.resources]
    expected_pages = -(-len(practice.of("ServiceRequest")) // 1000)  # ceil: other tests may add referrals
    assert len(pages) == expected_pages >= 2
    assert max(len(page.resources) for page in pages) == 1000
    assert sorted(ids) == sorted(practice.of("ServiceRequest"))  # every one, none twice


def test_unknown_parameters_come_back_as_outcome_entries_not_resources(
    sekmet_base_url: str, practice: Practice
) -> None:
    pages = search_all(
        endpoint_for(sekmet_base_url, page_size=1000), "ServiceRequest", [("no-such-param", "x")]
    )
    resources = [r for page in pages for r in page.resources]
    # The parameter was ignored (not an error): every referral matches, and the warning is kept apart.
    assert len(resources) == len(practice.of("ServiceRequest"))
    assert {r["resourceType"] for r in resources} == {"ServiceRequest"}
    outcomes = [o for page in pages for o in page.outcomes]
    assert outcomes
    assert {o["resourceType"] for o in outcomes} == {"OperationOutcome"}


def test_last_updated_compares_at_milliseconds_and_offsets_survive_the_url(
    sekmet_base_url: str, practice: Practice, fhir: httpx.Client
) -> None:
    rid = sorted(practice.of("Coverage"))[0]
    stamp = fhir.get(f"Coverage/{rid}").json()["meta"]["lastUpdated"]
    endpoint = endpoint_for(sekmet_base_url)

    def ids(prefix: str, value: str) -> set[str]:
        params = [("_id", rid), ("_lastUpdated", f"{prefix}{value}")]
        return {r["id"] for page in search_all(endpoint, "Coverage", params) for r in page.resources}

    assert ids("ge", stamp) == {rid}
    assert ids("gt", stamp) == set()  # the same millisecond is not "greater"
    # The same instant written with a +02:00 offset: httpx sends '+' as %2B, so the server reads it.
    moment = utc(stamp)
    shifted = moment.astimezone(datetime.strptime("+0200", "%z").tzinfo).isoformat(timespec="milliseconds")
    assert "+02:00" in shifted
    assert ids("ge", shifted) == {rid}
    assert ids("gt", shifted) == set()


def test_full_sync_loads_the_practice(
    full_sync: SyncedWarehouse, practice: Practice, fhir: httpx.Client
) -> None:
    streams = last_attempts(full_sync.report)
    # Streams run in parallel (order not fixed); a first sync by $export also exports the referrers.
    assert set(DEFAULT_RESOURCES) <= set(streams)
    for rt, row in streams.items():
        assert row["status"] == ("skipped" if rt in UNOFFERED else "succeeded"), rt
        assert row["fetched"] == full_sync.counts[rt], rt
        assert row["loaded"] == full_sync.counts[rt], rt
        assert row["rejected"] == 0, rt
    if practice.counts() == full_sync.counts:  # the warehouse matches the server until a test changes it
        check_warehouse(full_sync.url, practice, fhir)
    else:
        counts = Counter(rt for rt, _ in raw_versions(full_sync.url))
        assert all(counts[rt] == full_sync.counts[rt] for rt in DEFAULT_RESOURCES)


@pytest.mark.postgres
@pytest.mark.parametrize("warehouse_url", ["postgresql"], indirect=True)
def test_full_sync_into_postgresql(
    warehouse_url: str, sekmet_base_url: str, practice: Practice, fhir: httpx.Client, tmp_path: Path
) -> None:
    config = write_config(tmp_path, sekmet_base_url, warehouse_url)
    # PostgreSQL is migrated explicitly (a shared database may be owned by a DBA), as the README says.
    migrated = connector("migrate", "--config", str(config), cwd=tmp_path, timeout=120)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    report = sync(config)
    assert sum(row["rejected"] for row in report["streams"]) == 0
    check_warehouse(warehouse_url, practice, fhir)


@dataclass
class Changes:
    touched: set[tuple[str, str]]
    per_type: Counter[str]


def change_and_add(fhir: httpx.Client, practice: Practice) -> Changes:
    """Change 50 resources one PUT each and add 100 in one transaction of POSTs (server-assigned ids)."""
    rng = random.Random(23)
    touched: set[tuple[str, str]] = set()
    plan = {"ServiceRequest": 20, "Coverage": 10, "Appointment": 10, "Claim": 5, "ClaimResponse": 5}
    for rt, n in plan.items():
        for rid in rng.sample(sorted(practice.of(rt)), n):
            resource = {k: v for k, v in practice.of(rt)[rid].items() if k != "meta"}
            if rt == "ServiceRequest":
                resource["status"] = "completed" if resource["status"] != "completed" else "active"
                resource["priority"] = "urgent" if resource["priority"] == "routine" else "routine"
            elif rt == "Coverage":
                resource["period"] = {**resource["period"], "end": "2026-12-31"}
            elif rt == "Appointment":
                resource["status"] = "cancelled" if resource["status"] != "cancelled" else "booked"
            elif rt == "Claim":
                resource["status"] = "cancelled"
            else:
                resource["disposition"] = "Reprocessed"
            response = fhir.put(
                f"{rt}/{rid}", json=resource, headers={"Content-Type": "application/fhir+json"}
            )
            assert response.status_code == 200, response.text
            practice.add(response.json())
            touched.add((rt, rid))

    templates = [
        *(("ServiceRequest", rid) for rid in rng.sample(sorted(practice.of("ServiceRequest")), 60)),
        *(("Appointment", rid) for rid in rng.sample(sorted(practice.of("Appointment")), 20)),
        *(
            ("CoverageEligibilityResponse", rid)
            for rid in rng.sample(sorted(practice.of("CoverageEligibilityResponse")), 20)
        ),
    ]
    entries = []
    for rt, rid in templates:
        resource = {k: v for k, v in practice.of(rt)[rid].items() if k != "meta"}
        resource["id"] = f"{rid}-new"  # dropped by post_entry: the server assigns the id
        entries.append(post_entry(resource))
    for entry in post_transaction(fhir, entries):
        created = entry["resource"]
        assert created["id"] not in practice.of(created["resourceType"])
        practice.add(created)
        if created["resourceType"] == "ServiceRequest":
            practice.requesters.append(created["requester"]["reference"])
        touched.add((created["resourceType"], created["id"]))
    assert len(touched) == 150
    return Changes(touched, Counter(rt for rt, _ in touched))


def test_incremental_sync_loads_exactly_what_changed(
    full_sync: SyncedWarehouse, practice: Practice, fhir: httpx.Client
) -> None:
    before = raw_versions(full_sync.url)
    changes = change_and_add(fhir, practice)

    report = sync(full_sync.config)
    streams = last_attempts(report)
    for rt in DEFAULT_RESOURCES:
        # Overlapping windows re-read recent resources (fetched may exceed loaded); only changes load.
        assert streams[rt]["loaded"] == changes.per_type[rt], rt
        assert streams[rt]["fetched"] >= changes.per_type[rt], rt
        assert streams[rt]["rejected"] == 0, rt

    after = raw_versions(full_sync.url)
    differs = {key for key in after if before.get(key) != after[key]}
    assert differs == changes.touched
    assert set(before) <= set(after)
    check_warehouse(full_sync.url, practice, fhir)


def test_deleted_resources_are_marked_deleted_on_the_next_sync(
    full_sync: SyncedWarehouse, practice: Practice, fhir: httpx.Client
) -> None:
    # Runs after the incremental test (file order) on the same warehouse. A search never returns a
    # deleted resource; the connector reads the DELETEs from Coverage/_history (sekmet declares
    # history-type) since the stream's previous run.
    victims = sorted(practice.of("Coverage"))[:10]
    for rid in victims:
        assert fhir.delete(f"Coverage/{rid}").status_code in (200, 202, 204)
    sync(full_sync.config)
    rows = query(
        full_sync.url,
        "select resource_id, deleted, deleted_at from raw_resource where resource_type = 'Coverage'",
    )
    assert {r[0] for r in rows if r[1]} == set(victims)
    assert all(r[2] is not None for r in rows if r[1])
    eligibility = {r[0] for r in query(full_sync.url, "select resource_id from eligibility")}
    assert not eligibility & set(victims)
    assert len(eligibility) == len(practice.of("Coverage")) - len(victims)
    # A second sync changes nothing more: the deletions are not applied twice or undone.
    sync(full_sync.config)
    again = query(
        full_sync.url, "select count(*) from raw_resource where resource_type = 'Coverage' and deleted"
    )
    assert again[0][0] == len(victims)
