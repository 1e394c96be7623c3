"""Every referral source and payer has a name people recognise, or one "unknown (<Type>/…)" bucket (issue 25
§2), on SQLite and PostgreSQL: FHIR resources -> map -> write -> `v_source_names` / referral views / report /
the demo's tables."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Engine

from connector.report.data import Period, collect
from connector.warehouse.engine import _alembic_config, make_engine, migrate
from connector.warehouse.names import is_reference, unknown_name, unknown_name_sql
from connector.warehouse.summary import demo_metrics
from tests.test_views_referrals import load, referral

NOW = datetime.now(UTC)


def _days_ago(days: int) -> str:
    return (NOW - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def practitioner(pid: str, family: str, *, version: str = "1") -> dict[str, Any]:
    return {
        "resourceType": "Practitioner",
        "id": pid,
        "meta": {"versionId": version, "lastUpdated": f"2026-10-0{version}T00:00:00Z"},
        "name": [{"family": family, "given": ["Jo"], "prefix": ["Dr."]}],
    }


def organization(oid: str, name: str) -> dict[str, Any]:
    return {"resourceType": "Organization", "id": oid, "name": name}


def role(rid: str, practitioner_ref: dict[str, Any] | None, organization_ref: dict[str, Any] | None) -> dict:
    resource: dict[str, Any] = {"resourceType": "PractitionerRole", "id": rid}
    if practitioner_ref is not None:
        resource["practitioner"] = practitioner_ref
    if organization_ref is not None:
        resource["organization"] = organization_ref
    return resource


def requested_by(ref: str) -> dict[str, Any]:
    return {"reference": ref}


@pytest.fixture
def practice(engine: Engine) -> Engine:
    """Referrals of the last 90 days, each from a PractitionerRole (the way Epic and athena write them).

    - sr1, sr2 from PractitionerRole/r1 -> Practitioner/p1 (Dr. Jo Lee), Organization/o1 (Valley Ortho):
      "Dr. Jo Lee (Valley Ortho)";
    - sr3 from r2, which has displays only ("Dr. Kim", "Hill Clinic"): "Dr. Kim (Hill Clinic)";
    - sr4 from r3 -> Practitioner/p1 and an unsynced organization displayed "Annex": "Dr. Jo Lee (Annex)";
    - sr5 from r4 -> Practitioner/p404 (not synced, no display), sr6 and sr7 from roles x9 and x8 (nothing
      synced): one bucket "unknown (PractitionerRole/…)";
    - sr8 from Practitioner/p404 (not synced): "unknown (Practitioner/…)".
    """
    resources = [
        practitioner("p1", "Lee"),
        organization("o1", "Valley Ortho"),
        role("r1", requested_by("Practitioner/p1"), requested_by("Organization/o1")),
        role("r2", {"display": "Dr. Kim"}, {"display": "Hill Clinic"}),
        role("r3", requested_by("Practitioner/p1"), {"reference": "Organization/o2", "display": "Annex"}),
        role("r4", requested_by("Practitioner/p404"), None),
        referral("sr1", _days_ago(5), requester=requested_by("PractitionerRole/r1")),
        referral("sr2", _days_ago(6), requester=requested_by("PractitionerRole/r1")),
        referral("sr3", _days_ago(7), requester=requested_by("PractitionerRole/r2")),
        referral("sr4", _days_ago(8), requester=requested_by("PractitionerRole/r3")),
        referral("sr5", _days_ago(9), requester=requested_by("PractitionerRole/r4")),
        referral("sr6", _days_ago(10), requester=requested_by("PractitionerRole/x9")),
        referral("sr7", _days_ago(11), requester=requested_by("PractitionerRole/x8")),
        referral("sr8", _days_ago(12), requester=requested_by("Practitioner/p404")),
    ]
    load(engine, "clinic", resources)
    return engine


def _sources(engine: Engine) -> dict[str, tuple[Any, str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT source, source_ref, source_type, referrals_last_90_days FROM v_referral_sources")
        ).all()
    names = [r[0] for r in rows]
    assert len(names) == len(set(names)), f"a source name appears twice: {names}"
    return {r[0]: (r[1], r[2], int(r[3])) for r in rows}


def test_roles_are_named_from_their_practitioner_and_organization(practice: Engine) -> None:
    assert _sources(practice) == {
        "Dr. Jo Lee (Valley Ortho)": ("PractitionerRole/r1", "physician", 2),
        "Dr. Kim (Hill Clinic)": ("PractitionerRole/r2", "physician", 1),
        "Dr. Jo Lee (Annex)": ("PractitionerRole/r3", "physician", 1),
        # sr5, sr6, sr7: one bucket, whether or not the role itself was synced.
        "unknown (PractitionerRole/…)": (None, "unknown", 3),
        "unknown (Practitioner/…)": (None, "unknown", 1),
    }


def test_names_follow_the_practitioner_when_it_changes(practice: Engine) -> None:
    load(practice, "clinic", [practitioner("p1", "Lee-Park", version="2")])
    names = set(_sources(practice))
    assert {"Dr. Jo Lee-Park (Valley Ortho)", "Dr. Jo Lee-Park (Annex)"} <= names
    assert not any("Dr. Jo Lee (" in n for n in names)
    with practice.connect() as conn:
        weekly = {r[0] for r in conn.execute(sa.text("SELECT source FROM v_referrals_weekly"))}
    assert "Dr. Jo Lee-Park (Valley Ortho)" in weekly


def test_no_raw_reference_reaches_the_report_or_the_cli(practice: Engine) -> None:
    # Payers: one named by its synced Organization (which wins over the display the Coverage carries),
    # one the warehouse knows nothing about.
    coverages = [
        {
            "resourceType": "Coverage",
            "id": cid,
            "status": "active",
            "beneficiary": {"reference": f"Patient/{cid}-pt"},
            "payor": [payor],
        }
        for cid, payor in (
            ("c1", {"reference": "Organization/o1", "display": "Old Display"}),
            ("c2", {"reference": "Organization/payer-404"}),
        )
    ]
    load(practice, "clinic", coverages)
    today = NOW.date()
    data = collect(practice, Period(start=today - timedelta(days=60), end=today, label="60 days"))
    payers = {p["payer"] for p in data["payer_mix"]}
    assert payers == {"Valley Ortho", "unknown (Organization/…)"}
    shown = [s["source"] for s in data["sources"]] + data["referrals_weekly"]["sources"]
    assert "Dr. Jo Lee (Valley Ortho)" in shown
    assert not [s for s in shown if is_reference(s)]
    cells = [c for section in demo_metrics(practice)["sections"] for row in section["rows"] for c in row]
    assert "Dr. Jo Lee (Valley Ortho)" in cells
    assert not [c for c in cells if is_reference(c)]


def test_the_sql_and_python_buckets_agree(engine: Engine) -> None:
    refs = [
        "PractitionerRole/r1",
        "Practitioner/p1",
        "Organization/o1",
        "https://emr.example.org/fhir/R4/Practitioner/p1/_history/3",
        "Device/d1",
    ]
    with engine.connect() as conn:
        for ref in refs:
            got = conn.execute(
                sa.text(f"SELECT {unknown_name_sql('CAST(:ref AS TEXT)')}"), {"ref": ref}
            ).scalar_one()
            assert got == unknown_name(ref), ref
        assert conn.execute(sa.text(f"SELECT {unknown_name_sql('NULL')}")).scalar_one() is None
    assert unknown_name("PractitionerRole/r1") == "unknown (PractitionerRole/…)"
    assert (
        unknown_name("https://emr.example.org/fhir/R4/Practitioner/p1/_history/3")
        == "unknown (Practitioner/…)"
    )
    assert unknown_name("Device/d1") == "unknown"
    # Identifiers and displays are keys too (a payer without a reference), and are shown as they are.
    assert not is_reference("http://hl7.org/fhir/sid/us-npi|1234567893")
    assert not is_reference("Blue Cross/Blue Shield")


def test_migration_fills_the_displays_of_stored_roles(tmp_path: Any) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'wh.db'}")
    payload = '{"resourceType": "PractitionerRole", "id": "r2", "practitioner": {"display": " Dr. Kim "}}'
    try:
        with engine.begin() as conn:
            command.upgrade(_alembic_config(conn), "0013")
            conn.execute(
                sa.text(
                    "INSERT INTO raw_resource (endpoint, resource_type, resource_id, content_hash, payload, "
                    "fetched_at, deleted) VALUES ('emr', 'PractitionerRole', 'r2', 'h', :p, :t, 0)"
                ),
                {"p": payload, "t": date(2026, 12, 1).isoformat()},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO referral_source (endpoint, resource_type, resource_id, content_hash, "
                    "source_ref, name, source_type, type_codes, loaded_at) VALUES ('emr', "
                    "'PractitionerRole', 'r2', 'h', 'PractitionerRole/r2', NULL, 'physician', '[]', :t)"
                ),
                {"t": date(2026, 12, 1).isoformat()},
            )
        migrate(engine)
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT practitioner_display, name FROM referral_source")).one()
            named = conn.execute(sa.text("SELECT name FROM v_source_names")).scalar_one()
        assert (tuple(row), named) == (("Dr. Kim", None), "Dr. Kim")
    finally:
        engine.dispose()
