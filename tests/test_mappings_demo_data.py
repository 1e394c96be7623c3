"""The bundled demo data: present, small, valid R4 except the deliberate dead letters, reproducible."""

from __future__ import annotations

import gzip
import importlib.util
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connector.errors import MappingError
from mappings.registry import map_resource
from mappings.types import MapContext
from mappings.validate import validate

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "connector" / "demo" / "data"
TYPES = (
    "ServiceRequest",
    "Coverage",
    "Claim",
    "ClaimResponse",
    "ExplanationOfBenefit",
    "Appointment",
    "Encounter",
    "CoverageEligibilityResponse",
    "Practitioner",
    "Organization",
    "EpisodeOfCare",
    "CarePlan",
    "Goal",
    "DocumentReference",
)
NOW = datetime(2026, 11, 1, tzinfo=UTC)


def _read(rtype: str) -> list[dict[str, Any]]:
    with gzip.open(DEMO / f"{rtype}.ndjson.gz", "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_files_exist_and_are_small() -> None:
    total = sum((DEMO / f"{t}.ndjson.gz").stat().st_size for t in TYPES)
    assert total < 200 * 1024


@pytest.mark.parametrize("rtype", TYPES)
def test_every_resource_validates_except_the_deliberate_ones(rtype: str) -> None:
    rows = _read(rtype)
    assert rows
    for resource in rows:
        assert resource["resourceType"] == rtype
        if resource["id"].startswith("demo-sr-invalid-"):
            with pytest.raises(MappingError):
                validate(resource)
        else:
            validate(resource)


def test_referrals_map_and_look_like_a_therapy_practice() -> None:
    ctx = MapContext(endpoint="demo", synced_at=NOW)
    rows, rejected = [], 0
    for resource in _read("ServiceRequest"):
        try:
            rows.extend(map_resource(resource, ctx)["referral"])
        except MappingError:
            rejected += 1
    assert rejected == 5
    demo = [r for r in rows if r["resource_id"].startswith("demo-sr-")]
    assert len(demo) == 200
    assert {r["service_code"] for r in demo} >= {"91251008", "84478008", "5154007"}
    assert all(datetime(2026, 7, 12, tzinfo=UTC) <= r["authored_on"] < NOW for r in demo)
    assert all(r["last_updated"] <= NOW and r["version_id"] for r in demo)
    assert sum(r["coverage_ref"] is not None for r in demo) > 150
    assert all(r["patient_ref"].startswith("Patient/demo-") for r in demo)


def test_no_patient_resources_or_names() -> None:
    assert not (DEMO / "Patient.ndjson.gz").exists()
    # Generated resources name patients only by reference (the HL7 examples carry fictional names).
    for rtype in TYPES:
        for resource in _read(rtype):
            if resource["id"].startswith("demo-"):
                assert "display" not in resource.get("subject", {})
                assert "display" not in resource.get("patient", {})
                assert "display" not in resource.get("beneficiary", {})


def test_generator_is_deterministic() -> None:
    spec = importlib.util.spec_from_file_location("make_demo_data", ROOT / "scripts" / "make_demo_data.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    first, second = module.DemoBuilder().build(), module.DemoBuilder().build()
    assert first == second
    shipped = {r["id"] for r in _read("ServiceRequest")}
    assert {r["id"] for r in first["ServiceRequest"]} <= shipped


#: The date of each fact the demo's report counts (received, billed, decided, verified, requested, booked).
EVENT_COLUMNS = {
    "referral": ("authored_on", "last_updated"),
    "claim": ("created",),
    "claim_adjudication": ("created",),
    "denial": ("decided_at",),
    "eligibility_check": ("verified_at",),
    "prior_auth_request": ("requested_at",),
    "prior_auth_response": ("responded_at",),
    "visit": ("booked_at",),
}


def test_every_fact_of_the_demo_falls_in_its_sixteen_weeks() -> None:
    """The HL7 examples (2011-2018) are re-dated too, so the demo shows no denial thousands of days old."""
    ctx = MapContext(endpoint="demo", synced_at=NOW)
    start = datetime(2026, 7, 12, tzinfo=UTC)  # NOW - 16 weeks
    seen: dict[tuple[str, str, bool], int] = {}
    for rtype in TYPES:
        for resource in _read(rtype):
            try:
                mapped = map_resource(resource, ctx)
            except MappingError:
                continue  # the deliberate dead letters
            sample = not resource["id"].startswith("demo-")
            for table, columns in EVENT_COLUMNS.items():
                for row in mapped.get(table, ()):
                    for column in columns:
                        if row.get(column) is not None:
                            assert start <= row[column] <= NOW, (rtype, resource["id"], column, row[column])
                            seen[(table, column, sample)] = seen.get((table, column, sample), 0) + 1
    # Both the samples and the generated data were checked, for every kind of fact.
    assert {(t, c) for t, c, sample in seen if sample} >= {
        ("referral", "authored_on"), ("claim", "created"), ("denial", "decided_at"),
        ("eligibility_check", "verified_at"), ("prior_auth_response", "responded_at"), ("visit", "booked_at"),
    }  # fmt: skip
    assert {(t, c) for t, c, sample in seen if not sample} == {
        (t, c) for t, columns in EVENT_COLUMNS.items() for c in columns
    }
