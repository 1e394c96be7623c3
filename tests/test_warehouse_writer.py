"""Upserts that keep the newest version, and the all-or-nothing page write, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from connector.errors import WarehouseError
from connector.warehouse.deadletter import list_dead_letters
from connector.warehouse.engine import make_engine, migrate
from connector.warehouse.models import Base
from connector.warehouse.state import get_watermark, reset_watermark, watermarks
from connector.warehouse.upsert import batch_sizes
from connector.warehouse.writer import PageWrite, Reject, content_hash, upsert_rows, write_page

RAW = Base.metadata.tables["raw_resource"]
T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
NOW = datetime(2024, 6, 1, tzinfo=UTC)


def resource(rid: str, version: int, *, when: datetime | None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"versionId": str(version)}
    if when is not None:
        meta["lastUpdated"] = when.isoformat()
    return {"resourceType": "ServiceRequest", "id": rid, "meta": meta, "status": "active", **extra}


def raw_row(
    rid: str, version: int, *, when: datetime | None, endpoint: str = "emr", **extra: Any
) -> dict[str, Any]:
    payload = resource(rid, version, when=when, **extra)
    return {
        "endpoint": endpoint,
        "resource_type": "ServiceRequest",
        "resource_id": rid,
        "version_id": str(version),
        "last_updated": when,
        "content_hash": content_hash(payload),
        "payload": payload,
        "deleted": False,
        "fetched_at": NOW,
    }


def referral_row(rid: str, version: int, *, when: datetime | None, endpoint: str = "emr") -> dict[str, Any]:
    return {
        "endpoint": endpoint,
        "resource_type": "ServiceRequest",
        "resource_id": rid,
        "version_id": str(version),
        "last_updated": when,
        "content_hash": content_hash(resource(rid, version, when=when)),
        "status": "active",
        "intent": "order",
        "authored_on": T0,
        "requester_ref": "Practitioner/p1",
        "reason_codes": ["http://snomed.info/sct|22298006"],
        "coverage_ref": "Coverage/c1",
        "coverage_refs": ["Coverage/c1", "Coverage/c2"],
    }


def upsert(engine: Engine, rows: list[dict[str, Any]], *, batch_size: int = 500) -> int:
    with engine.begin() as conn:
        return upsert_rows(conn, RAW, rows, batch_size=batch_size)


def stored(engine: Engine, rid: str, endpoint: str = "emr") -> dict[str, Any] | None:
    query = sa.select(RAW).where(RAW.c.endpoint == endpoint, RAW.c.resource_id == rid)
    with engine.connect() as conn:
        row = conn.execute(query).first()
    return dict(row._mapping) if row else None


def count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(Base.metadata.tables[table])).scalar_one()


# --- content_hash ---------------------------------------------------------------------------------


def test_content_hash_ignores_key_order_and_sees_values() -> None:
    a = {"resourceType": "Claim", "id": "1", "meta": {"versionId": "1", "lastUpdated": "x"}}
    b = {"meta": {"lastUpdated": "x", "versionId": "1"}, "id": "1", "resourceType": "Claim"}
    assert content_hash(a) == content_hash(b)
    assert len(content_hash(a)) == 64
    assert content_hash(a) != content_hash({**a, "id": "2"})


# --- upsert_rows ----------------------------------------------------------------------------------


def test_insert_then_identical_rows_load_nothing(engine: Engine) -> None:
    rows = [raw_row(f"r{i}", 1, when=T0) for i in range(5)]
    assert upsert(engine, rows) == 5
    assert upsert(engine, rows) == 0
    assert count(engine, "raw_resource") == 5


def test_newer_version_overwrites_and_older_never_does(engine: Engine) -> None:
    assert upsert(engine, [raw_row("r1", 2, when=T0 + timedelta(hours=1))]) == 1
    assert upsert(engine, [raw_row("r1", 1, when=T0)]) == 0
    row = stored(engine, "r1")
    assert row is not None
    assert row["version_id"] == "2"
    assert row["payload"]["meta"]["versionId"] == "2"
    assert row["last_updated"] == T0 + timedelta(hours=1)

    assert upsert(engine, [raw_row("r1", 3, when=T0 + timedelta(hours=2))]) == 1
    row = stored(engine, "r1")
    assert row is not None
    assert (row["version_id"], row["last_updated"]) == ("3", T0 + timedelta(hours=2))


def test_newer_is_decided_in_utc_not_by_local_clock_text(engine: Engine) -> None:
    # 11:30+02:00 is 09:30Z: older than the stored 10:00Z although its local text is larger.
    assert upsert(engine, [raw_row("r1", 2, when=datetime(2024, 5, 1, 10, 0, tzinfo=UTC))]) == 1
    older = datetime(2024, 5, 1, 11, 30, tzinfo=timezone(timedelta(hours=2)))
    assert upsert(engine, [raw_row("r1", 1, when=older)]) == 0
    row = stored(engine, "r1")
    assert row is not None
    assert row["version_id"] == "2"


def test_same_last_updated_with_other_content_overwrites(engine: Engine) -> None:
    assert upsert(engine, [raw_row("r1", 1, when=T0)]) == 1
    changed = raw_row("r1", 1, when=T0, note="corrected in place")
    assert upsert(engine, [changed]) == 1
    row = stored(engine, "r1")
    assert row is not None
    assert row["payload"]["note"] == "corrected in place"
    assert row["content_hash"] == changed["content_hash"]
    assert upsert(engine, [changed]) == 0


def test_null_last_updated(engine: Engine) -> None:
    # A version without lastUpdated is replaced by one that has it ...
    assert upsert(engine, [raw_row("r1", 1, when=None)]) == 1
    assert upsert(engine, [raw_row("r1", 1, when=None)]) == 0
    assert upsert(engine, [raw_row("r1", 1, when=None, note="other")]) == 1  # both NULL, new content
    assert upsert(engine, [raw_row("r1", 2, when=T0)]) == 1
    # ... and never replaces one that has it.
    assert upsert(engine, [raw_row("r1", 3, when=None)]) == 0
    row = stored(engine, "r1")
    assert row is not None
    assert (row["version_id"], row["last_updated"]) == ("2", T0)


def test_duplicate_keys_in_one_batch_keep_the_newest(engine: Engine) -> None:
    rows = [
        raw_row("r1", 1, when=T0),
        raw_row("r1", 3, when=T0 + timedelta(hours=3)),
        raw_row("r1", 2, when=T0 + timedelta(hours=2)),
        raw_row("r2", 1, when=T0),
        raw_row("r2", 1, when=T0, note="same time, given last"),
    ]
    assert upsert(engine, rows) == 2
    r1, r2 = stored(engine, "r1"), stored(engine, "r2")
    assert r1 is not None
    assert r2 is not None
    assert r1["version_id"] == "3"
    assert r2["payload"]["note"] == "same time, given last"


def test_more_rows_than_batch_size(engine: Engine) -> None:
    rows = [raw_row(f"r{i:04d}", 1, when=T0 + timedelta(seconds=i)) for i in range(1234)]
    assert upsert(engine, rows, batch_size=100) == 1234
    assert count(engine, "raw_resource") == 1234
    assert upsert(engine, rows, batch_size=100) == 0
    newer = [raw_row(f"r{i:04d}", 2, when=T0 + timedelta(days=1)) for i in range(0, 1234, 2)]
    assert upsert(engine, newer, batch_size=7) == 617


def test_endpoint_is_part_of_the_key(engine: Engine) -> None:
    assert (
        upsert(engine, [raw_row("r1", 1, when=T0, endpoint="a"), raw_row("r1", 1, when=T0, endpoint="b")])
        == 2
    )


def test_unknown_column_is_an_error(engine: Engine) -> None:
    with pytest.raises(ValueError, match="no column colour"), engine.begin() as conn:
        upsert_rows(conn, RAW, [{**raw_row("r1", 1, when=T0), "colour": "red"}])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    order=st.permutations(list(range(6))),
    batch_split=st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=6),
)
def test_any_order_of_versions_leaves_the_newest(
    engine: Engine, order: list[int], batch_split: list[int]
) -> None:
    rid = uuid.uuid4().hex  # each example gets its own resource in the shared database
    versions = [raw_row(rid, v + 1, when=T0 + timedelta(minutes=v)) for v in order]
    # Apply the versions in the given order, grouped into batches of varying size.
    start, sizes = 0, iter(batch_split * 6)
    while start < len(versions):
        size = next(sizes)
        upsert(engine, versions[start : start + size], batch_size=2)
        start += size
    row = stored(engine, rid)
    assert row is not None
    assert row["version_id"] == "6"
    assert row["last_updated"] == T0 + timedelta(minutes=5)


# --- write_page -----------------------------------------------------------------------------------


def page(**kwargs: Any) -> PageWrite:
    return PageWrite(endpoint="emr", resource_type="ServiceRequest", **kwargs)


def test_write_page_loads_raw_mapped_rejects_and_watermark(engine: Engine) -> None:
    bad = resource("bad", 1, when=T0)
    result = write_page(
        engine,
        page(
            raw=[
                # endpoint, resource_type, content_hash and fetched_at are filled in by write_page.
                {
                    "resource_id": "r1",
                    "version_id": "1",
                    "last_updated": T0,
                    "payload": resource("r1", 1, when=T0),
                },
                {
                    "resource_id": "r2",
                    "version_id": "1",
                    "last_updated": T0,
                    "payload": resource("r2", 1, when=T0),
                },
            ],
            mapped={"referral": [referral_row("r1", 1, when=T0)]},
            rejects=[Reject("emr", "ServiceRequest", "bad", "status: field required", bad)],
            watermark="2024-05-01T08:00:00Z",
            watermark_at=T0,
            mode="last-updated",
        ),
    )
    assert (result.raw_loaded, result.loaded, result.rejected) == (2, 2, 1)
    r1 = stored(engine, "r1")
    assert r1 is not None
    assert r1["content_hash"] == content_hash(resource("r1", 1, when=T0))
    assert r1["deleted"] is False
    assert r1["fetched_at"].tzinfo is UTC
    with engine.connect() as conn:
        referral = conn.execute(sa.select(Base.metadata.tables["referral"])).one()._mapping
    assert referral["coverage_refs"] == ["Coverage/c1", "Coverage/c2"]
    assert referral["loaded_at"].tzinfo is UTC
    assert get_watermark(engine, "emr", "ServiceRequest") == ("2024-05-01T08:00:00Z", T0)
    assert [d["resource_id"] for d in list_dead_letters(engine)] == ["bad"]

    # The same page again changes nothing.
    again = write_page(
        engine,
        page(
            raw=[
                {
                    "resource_id": "r1",
                    "version_id": "1",
                    "last_updated": T0,
                    "payload": resource("r1", 1, when=T0),
                }
            ],
            mapped={"referral": [referral_row("r1", 1, when=T0)]},
        ),
    )
    assert (again.raw_loaded, again.loaded, again.rejected) == (0, 0, 0)


def test_loaded_counts_a_resource_whose_mapped_row_is_new(engine: Engine) -> None:
    # A replay after a mapping fix: the raw row is unchanged, the referral row appears.
    write_page(engine, page(raw=[raw_row("r1", 1, when=T0)]))
    result = write_page(
        engine, page(raw=[raw_row("r1", 1, when=T0)], mapped={"referral": [referral_row("r1", 1, when=T0)]})
    )
    assert (result.raw_loaded, result.loaded) == (0, 1)


def test_write_page_is_all_or_nothing(engine: Engine) -> None:
    write_page(
        engine,
        page(
            raw=[raw_row("r1", 1, when=T0)],
            watermark="2024-05-01T08:00:00Z",
            watermark_at=T0,
            mode="last-updated",
        ),
    )
    before_raw = stored(engine, "r1")
    broken = referral_row("r2", 1, when=T0)
    # NOT NULL: fails after the raw rows were already written in the transaction.
    broken["content_hash"] = None
    later = T0 + timedelta(hours=5)
    with pytest.raises(WarehouseError, match=r"writing a ServiceRequest page of emr failed: .*content_hash"):
        write_page(
            engine,
            page(
                raw=[raw_row("r1", 2, when=later), raw_row("r2", 1, when=later, note="Jane Roe, 1970-01-01")],
                mapped={"referral": [referral_row("r1", 2, when=later), broken]},
                rejects=[Reject("emr", "ServiceRequest", "x", "bad", {"id": "x"})],
                watermark="2024-05-01T13:00:00Z",
                watermark_at=later,
            ),
        )
    assert stored(engine, "r1") == before_raw
    assert stored(engine, "r2") is None
    assert count(engine, "referral") == 0
    assert count(engine, "dead_letter") == 0
    assert get_watermark(engine, "emr", "ServiceRequest") == ("2024-05-01T08:00:00Z", T0)


def test_write_page_error_holds_no_resource_values(engine: Engine) -> None:
    broken = referral_row("r1", 1, when=T0)
    broken["content_hash"] = None
    broken["requester_display"] = "Dr. Secret Name"
    with pytest.raises(WarehouseError) as info:
        write_page(engine, page(mapped={"referral": [broken]}))
    assert "Secret" not in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.__cause__ is None


@pytest.mark.postgres
def test_a_row_postgresql_copy_refuses_is_a_clear_error_without_its_values(pg_url: str) -> None:
    """COPY's error names the row in a CONTEXT line (with its values): the page fails like any other
    database error, one line, nothing chained, and writes nothing."""
    eng = make_engine(pg_url)
    migrate(eng)
    row = raw_row("r1", 1, when=T0)
    row["resource_id"] = "Jane\x00Roe"  # PostgreSQL text cannot hold NUL: COPY refuses the row
    try:
        with pytest.raises(WarehouseError, match=r"writing a ServiceRequest page of emr failed: \w+") as info:
            write_page(eng, page(raw=[raw_row("r0", 1, when=T0), row]))
        assert count(eng, "raw_resource") == 0
    finally:
        eng.dispose()
    assert "Jane" not in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.__cause__ is None


def _versions(eng: Engine) -> dict[str, str]:
    with eng.connect() as conn:
        rows = conn.execute(sa.select(RAW.c.resource_id, RAW.c.version_id)).all()
    return {rid: version for rid, version in rows}


#: The `engine` fixture on PostgreSQL only (the direct COPY is PostgreSQL's).
on_postgresql = pytest.mark.parametrize(
    "warehouse_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


@on_postgresql
def test_rows_new_to_a_postgresql_table_are_copied_straight_in_and_known_ones_upserted(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connector.warehouse import upsert as upsert_module

    direct: list[str] = []
    real = upsert_module._copy_new

    def spy(conn: Any, table: sa.Table, *args: Any) -> Any:
        direct.append(table.name)
        return real(conn, table, *args)

    monkeypatch.setattr(upsert_module, "_copy_new", spy)
    raw = [raw_row("r1", 1, when=T0), raw_row("r2", 1, when=T0)]
    mapped = {"referral": [referral_row("r1", 1, when=T0), referral_row("r2", 1, when=T0)]}
    first = write_page(engine, page(raw=raw, mapped=mapped))
    assert (first.raw_loaded, first.loaded_by_type) == (2, {"ServiceRequest": 2})
    assert direct == ["raw_resource", "referral"]
    assert _versions(engine) == {"r1": "1", "r2": "1"}
    assert count(engine, "referral") == 2
    with engine.connect() as conn:  # the JSON text became jsonb, as the upsert path casts it
        stored = conn.execute(sa.select(RAW.c.payload).where(RAW.c.resource_id == "r1")).scalar_one()
    assert stored == resource("r1", 1, when=T0)

    # r1 is stored: the page takes the upsert path, so the newer r1 replaces it and the older r2 does not.
    later, earlier = T0 + timedelta(hours=1), T0 - timedelta(hours=1)
    rows = [raw_row("r1", 2, when=later), raw_row("r2", 0, when=earlier), raw_row("r3", 1, when=T0)]
    second = write_page(engine, page(raw=rows, mapped={"referral": [referral_row("r1", 2, when=later)]}))
    assert direct == ["raw_resource", "referral"]
    assert (second.raw_loaded, second.loaded) == (2, 2)
    assert _versions(engine) == {"r1": "2", "r2": "1", "r3": "1"}


@on_postgresql
def test_a_row_another_writer_added_after_the_probe_sends_the_page_down_the_upsert_path(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connector.warehouse import writer as writer_module

    write_page(engine, page(raw=[raw_row("r1", 1, when=T0), raw_row("r2", 1, when=T0)]))
    # As if both rows were added between the probe and the COPY: the key refuses the COPY.
    monkeypatch.setattr(writer_module, "holds_none_of", lambda *args: True)
    rows = [raw_row("r1", 2, when=T0 + timedelta(hours=1)), raw_row("r2", 0, when=T0 - timedelta(hours=1))]
    rows.append(raw_row("r3", 1, when=T0))
    result = write_page(engine, page(raw=rows, watermark="2024-05-01T08:00:00Z", watermark_at=T0))
    assert result.raw_loaded == 2
    assert _versions(engine) == {"r1": "2", "r2": "1", "r3": "1"}
    assert get_watermark(engine, "emr", "ServiceRequest") == ("2024-05-01T08:00:00Z", T0)


def test_the_probe_sees_any_stored_row_of_the_resources(engine: Engine) -> None:
    from connector.warehouse.writer import holds_none_of

    write_page(engine, page(raw=[raw_row("r2", 1, when=T0)]))
    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        assert holds_none_of(conn, RAW, [("emr", "ServiceRequest", ["r1"])]) is postgres
        assert not holds_none_of(conn, RAW, [("emr", "ServiceRequest", ["r1", "r2"])])
        assert not holds_none_of(conn, RAW, [("emr", "Coverage", ["r1"]), ("emr", "ServiceRequest", ["r2"])])
        assert holds_none_of(conn, RAW, [("other", "ServiceRequest", ["r2"])]) is postgres
        assert holds_none_of(conn, RAW, [("emr", "Coverage", ["r2"])]) is postgres


def test_write_page_unknown_table_writes_nothing(engine: Engine) -> None:
    with pytest.raises(WarehouseError, match="no warehouse table named 'nope'"):
        write_page(engine, page(raw=[raw_row("r1", 1, when=T0)], mapped={"nope": [{"x": 1}]}))
    assert count(engine, "raw_resource") == 0


def test_write_page_refuses_naive_timestamps(engine: Engine) -> None:
    row = raw_row("r1", 1, when=T0)
    row["last_updated"] = datetime(2024, 5, 1, 8, 0)
    with pytest.raises(WarehouseError, match="naive datetime"):
        write_page(engine, page(raw=[row]))


def test_timestamps_are_stored_as_utcdatetime_stores_them_and_read_back_as_written(engine: Engine) -> None:
    # The page write formats SQLite's timestamp text itself; it must be what UTCDateTime's binding stores.
    eastern = timezone(timedelta(hours=-5))
    written = datetime(2024, 5, 1, 9, 30, 0, 123456, tzinfo=eastern)
    write_page(engine, page(raw=[raw_row("r1", 1, when=written)]))
    with engine.begin() as conn:
        conn.execute(RAW.insert().values(**raw_row("r2", 1, when=written)))  # SQLAlchemy's own binding
        stored: dict[Any, Any] = dict(
            conn.execute(sa.text("SELECT resource_id, CAST(last_updated AS TEXT) FROM raw_resource")).all()
        )
        read = conn.execute(sa.select(RAW.c.last_updated).where(RAW.c.resource_id == "r1")).scalar_one()
    assert stored["r1"] == stored["r2"]
    assert read == written
    assert read.tzinfo is not None
    if engine.dialect.name == "sqlite":
        assert stored["r1"] == "2024-05-01 14:30:00.123456"


# --- watermarks -----------------------------------------------------------------------------------


def test_watermark_never_moves_backwards(engine: Engine) -> None:
    t2 = T0 + timedelta(hours=2)
    write_page(engine, page(watermark="2024-05-01T10:00:00Z", watermark_at=t2, mode="last-updated"))
    write_page(engine, page(watermark="2024-05-01T08:00:00Z", watermark_at=T0, mode="date-param"))
    assert get_watermark(engine, "emr", "ServiceRequest") == ("2024-05-01T10:00:00Z", t2)
    assert watermarks(engine)[0]["mode"] == "last-updated"

    # No watermark on the page: the stored one is left alone.
    write_page(engine, page(raw=[raw_row("r1", 1, when=T0)]))
    assert get_watermark(engine, "emr", "ServiceRequest") == ("2024-05-01T10:00:00Z", t2)

    # Forward works, and a page without a mode keeps the stored mode.
    t3 = T0 + timedelta(hours=3)
    write_page(engine, page(watermark="2024-05-01T11:00:00Z", watermark_at=t3))
    assert get_watermark(engine, "emr", "ServiceRequest") == ("2024-05-01T11:00:00Z", t3)
    assert watermarks(engine)[0]["mode"] == "last-updated"


def test_watermark_text_is_parsed_when_no_instant_is_given(engine: Engine) -> None:
    write_page(engine, page(watermark="2024-05-01T10:00:00.123+02:00"))
    text, at = get_watermark(engine, "emr", "ServiceRequest")
    assert text == "2024-05-01T10:00:00.123+02:00"  # kept verbatim for the next search
    assert at == datetime(2024, 5, 1, 8, 0, 0, 123000, tzinfo=UTC)
    assert at is not None
    assert at.tzinfo is UTC
    with pytest.raises(WarehouseError, match="not an ISO 8601 instant"):
        write_page(engine, page(watermark="yesterday"))


def test_watermarks_are_per_endpoint_and_type(engine: Engine) -> None:
    write_page(engine, page(watermark="a", watermark_at=T0))
    write_page(engine, PageWrite(endpoint="emr", resource_type="Claim", watermark="b", watermark_at=T0))
    write_page(engine, PageWrite(endpoint="other", resource_type="Claim", watermark="c", watermark_at=T0))
    assert [(w["endpoint"], w["resource_type"], w["watermark"]) for w in watermarks(engine)] == [
        ("emr", "Claim", "b"),
        ("emr", "ServiceRequest", "a"),
        ("other", "Claim", "c"),
    ]
    assert get_watermark(engine, "nobody", "Claim") == (None, None)


def test_reset_watermark_allows_starting_over(engine: Engine) -> None:
    t2 = T0 + timedelta(hours=2)
    write_page(engine, page(watermark="late", watermark_at=t2, mode="last-updated"))
    write_page(engine, PageWrite(endpoint="emr", resource_type="Claim", watermark="claim", watermark_at=t2))
    reset_watermark(engine, "emr", "ServiceRequest")
    assert get_watermark(engine, "emr", "ServiceRequest") == (None, None)
    assert get_watermark(engine, "emr", "Claim") == ("claim", t2)  # other streams untouched
    # After a reset an earlier watermark is accepted again.
    write_page(engine, page(watermark="early", watermark_at=T0))
    assert get_watermark(engine, "emr", "ServiceRequest") == ("early", T0)


def test_concurrent_writers_of_overlapping_pages(engine: Engine) -> None:
    # Parallel windows of one stream write the same resources at once: no "database is locked", no
    # deadlock, and the newest version and watermark win whatever the interleaving.
    ids = [f"r{i:02d}" for i in range(40)]

    def writer(worker: int) -> None:
        for step in range(5):
            version = worker * 5 + step + 1
            when = T0 + timedelta(minutes=version)
            # Odd workers list the resources in reverse: the writer must order its locks itself.
            order = reversed(ids) if worker % 2 else ids
            rows = [raw_row(rid, version, when=when) for rid in order]
            write_page(engine, page(raw=rows, watermark=when.isoformat(), watermark_at=when), batch_size=7)

    with ThreadPoolExecutor(max_workers=4) as pool:
        for future in [pool.submit(writer, worker) for worker in range(4)]:
            future.result()

    newest = T0 + timedelta(minutes=20)
    assert get_watermark(engine, "emr", "ServiceRequest") == (newest.isoformat(), newest)
    for rid in ids:
        row = stored(engine, rid)
        assert row is not None
        assert (row["version_id"], row["last_updated"]) == ("20", newest)


def test_loaded_by_type_splits_included_resources(engine: Engine) -> None:
    practitioner = {"resourceType": "Practitioner", "id": "p1"}
    result = write_page(
        engine,
        page(
            raw=[
                raw_row("r1", 1, when=T0),
                raw_row("r2", 1, when=T0),
                {"resource_type": "Practitioner", "resource_id": "p1", "payload": practitioner},
            ]
        ),
    )
    assert result.loaded == 3
    assert result.loaded_by_type == {"ServiceRequest": 2, "Practitioner": 1}


def test_write_page_joins_the_callers_transaction(engine: Engine) -> None:
    # Committed with the caller's other work ...
    with engine.begin() as conn:
        result = write_page(engine, page(raw=[raw_row("r1", 1, when=T0)]), conn=conn)
        assert result.loaded == 1
        assert stored(engine, "r1") is None  # not visible to other connections before the commit
    assert stored(engine, "r1") is not None

    # ... rolled back with it ...
    with engine.connect() as conn:
        transaction = conn.begin()
        write_page(engine, page(raw=[raw_row("r2", 1, when=T0)]), conn=conn)
        transaction.rollback()
    assert stored(engine, "r2") is None

    # ... and a failing page leaves nothing behind while the caller's transaction stays usable.
    broken = referral_row("r3", 1, when=T0)
    broken["content_hash"] = None
    with engine.begin() as conn:
        with pytest.raises(WarehouseError):
            write_page(
                engine, page(raw=[raw_row("r3", 1, when=T0)], mapped={"referral": [broken]}), conn=conn
            )
        write_page(engine, page(raw=[raw_row("r4", 1, when=T0)]), conn=conn)
    assert stored(engine, "r3") is None
    assert stored(engine, "r4") is not None


@pytest.mark.parametrize("batch_size", [1, 7, 100, 500])
def test_batch_sizes_cover_the_rows_with_few_distinct_sizes(batch_size: int) -> None:
    seen: set[int] = set()
    for total in range(0, 3 * batch_size + 2):
        sizes = batch_sizes(total, batch_size)
        assert sum(sizes) == total
        assert all(0 < size <= batch_size for size in sizes)
        assert len(sizes) - total // batch_size <= batch_size.bit_length()
        seen.update(sizes)
    # A statement per distinct size: full batches and at most one per power of two below them.
    assert seen <= {batch_size} | {1 << k for k in range(batch_size.bit_length())}


def test_sqlite_prepares_a_bounded_set_of_statements(sqlite_url: str) -> None:
    """sqlite3 caches prepared statements per connection: one per row count would grow memory with the
    data (each page's remainder its own multi-row statement)."""
    eng = make_engine(sqlite_url)
    migrate(eng)
    statements: set[str] = set()

    @sa.event.listens_for(eng, "before_cursor_execute")
    def _seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("INSERT INTO raw_resource"):
            statements.add(statement)

    try:
        for count in range(1, 120):
            rows = [raw_row(f"sr-{count}-{i}", 1, when=T0) for i in range(count)]
            assert upsert(eng, rows, batch_size=50) == count
    finally:
        eng.dispose()
    assert 0 < len(statements) <= 7  # 50 and 32, 16, 8, 4, 2, 1: not one per count


@on_postgresql
def test_copy_in_binary_format_stores_what_text_format_stores(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every table the mappers fill, from every demo resource: written once in COPY's binary format and
    once in text format (under another endpoint), the rows are the same."""
    import gzip
    from importlib import resources as package_files

    import orjson

    from connector.sync.pipeline import map_resources
    from connector.warehouse import upsert as upsert_module

    folder = package_files.files("connector") / "demo" / "data"
    formats: list[str] = []
    real = upsert_module._binary_types

    def recording(*args: Any, **kwargs: Any) -> Any:
        types = real(*args, **kwargs)
        formats.append("binary" if types else "text")
        return types

    monkeypatch.setattr(upsert_module, "_binary_types", recording)
    for endpoint in ("binary", "text"):
        if endpoint == "text":
            monkeypatch.setattr(upsert_module, "_binary_types", lambda *args, **kwargs: None)
        for path in sorted(folder.iterdir(), key=lambda p: p.name):
            lines = gzip.decompress(path.read_bytes()).splitlines()
            resources = [orjson.loads(line) for line in lines]
            rtype = path.name.split(".")[0]
            mapped = map_resources(endpoint, rtype, resources, NOW)
            write_page(engine, PageWrite(endpoint, rtype, raw=mapped.raw, mapped=mapped.mapped))
    assert formats
    assert set(formats) == {"binary"}  # the demo's rows all go in binary format

    tables = [t for t in Base.metadata.sorted_tables if "endpoint" in t.c and "resource_id" in t.c]
    compared = 0
    with engine.connect() as conn:
        for table in tables:
            columns = [c for c in table.c if c.name not in ("endpoint", "fetched_at", "loaded_at")]
            rows = {
                endpoint: sorted(
                    (
                        tuple(row)
                        for row in conn.execute(sa.select(*columns).where(table.c.endpoint == endpoint))
                    ),
                    key=repr,
                )
                for endpoint in ("binary", "text")
            }
            assert rows["binary"] == rows["text"], table.name
            compared += len(rows["binary"])
    assert compared > 1000
