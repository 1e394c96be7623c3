"""Practitioner / PractitionerRole / Organization -> referral_source: names, types, NPI, every example."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connector.errors import MappingError
from mappings.referral import content_hash, map_referral_source
from mappings.referral_source import SOURCE_TYPES, source_type_of
from mappings.registry import map_resource
from mappings.types import MapContext

DATA = Path(__file__).parent / "data" / "fhir"
CTX = MapContext(endpoint="clinic-emr", synced_at=datetime(2026, 11, 1, 6, 0, tzinfo=UTC))
NPI = "http://hl7.org/fhir/sid/us-npi"
FILES = (
    "Practitioner.ndjson",
    "PractitionerRole.ndjson",
    "Organization.ndjson",
    "Practitioner-demo.ndjson",
    "Organization-demo.ndjson",
)


def _lines(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line]


ALL = [(name, r) for name in FILES for r in _lines(name)]
BY_ID = {(name, r["id"]): r for name, r in ALL}


def _source(rid: str, name: str) -> dict[str, Any]:
    records = map_resource(copy.deepcopy(BY_ID[(name, rid)]), CTX)
    assert list(records) == ["referral_source"]
    (row,) = records["referral_source"]
    return row


def test_golden_demo_referring_physician() -> None:
    resource = BY_ID[("Practitioner-demo.ndjson", "demo-referrer-1")]
    assert _source("demo-referrer-1", "Practitioner-demo.ndjson") == {
        "endpoint": "clinic-emr",
        "resource_type": "Practitioner",
        "resource_id": "demo-referrer-1",
        "version_id": "1",
        "last_updated": datetime(2026, 7, 12, tzinfo=UTC),
        "content_hash": content_hash(resource),
        "source_ref": "Practitioner/demo-referrer-1",
        "name": "Dr. Alicia Moreno",
        "source_type": "physician",  # a Practitioner without a role code
        "npi": "9999000001",
        "practitioner_ref": None,
        "organization_ref": None,
        "practitioner_display": None,
        "organization_display": None,
        "type_codes": [],
        "active": True,
    }


def test_demo_referring_organization_and_payer() -> None:
    clinic = _source("demo-referrer-org-1", "Organization-demo.ndjson")
    assert (clinic["name"], clinic["source_type"], clinic["npi"]) == ("Riverside Orthopedics", "clinic", None)
    payer = _source("demo-payer-1", "Organization-demo.ndjson")
    assert (payer["name"], payer["source_type"]) == ("Acme Health Plan", "other")


def test_official_practitioner_names() -> None:
    assert _source("example", "Practitioner.ndjson")["name"] == "Dr Adam Careful"
    assert _source("f001", "Practitioner.ndjson")["name"] == "Eric van den broek, MD"
    assert _source("f201", "Practitioner.ndjson")["name"] == "Dokter Bronsig"  # HumanName.text wins
    assert _source("f204", "Practitioner.ndjson")["name"] == "Carla Espinosa"  # only a usual name
    assert _source("f001", "Practitioner.ndjson")["npi"] is None  # Dutch identifiers are no NPI


def test_official_practitioner_role() -> None:
    row = _source("example", "PractitionerRole.ndjson")
    assert row["practitioner_ref"] == "Practitioner/example"
    assert row["organization_ref"] == "Organization/f001"
    assert row["name"] == "Dr Adam Careful"
    # The Organization reference has no display: the view pairs the display with the synced name.
    assert (row["practitioner_display"], row["organization_display"]) == ("Dr Adam Careful", None)
    assert row["source_type"] == "physician"  # v2-0286 RP: referring provider
    assert row["type_codes"] == [
        "http://terminology.hl7.org/CodeSystem/v2-0286|RP",
        "http://snomed.info/sct|408443003",
    ]


@pytest.mark.parametrize(
    ("rid", "source_type"),
    [
        ("f001", "clinic"),  # organization-type prov (after a Dutch code the map does not know)
        ("f002", "hospital"),  # organization-type dept: Hospital Department
        ("f201", "hospital"),  # SNOMED 405608006 Academic medical center comes first
        ("hl7", "other"),  # no type
    ],
)
def test_official_organization_types(rid: str, source_type: str) -> None:
    assert _source(rid, "Organization.ndjson")["source_type"] == source_type


def test_organization_part_of() -> None:
    resource = copy.deepcopy(BY_ID[("Organization.ndjson", "f002")])
    assert resource["partOf"]["reference"] == "Organization/f001"
    assert map_referral_source(resource, CTX)["referral_source"][0]["organization_ref"] == "Organization/f001"


@pytest.mark.parametrize(
    ("code", "source_type"),
    [
        (("http://nucc.org/provider-taxonomy", "207Q00000X"), "physician"),  # a branch of group 20
        (("http://nucc.org/provider-taxonomy", "171M00000X"), "case_manager"),
        (("http://nucc.org/provider-taxonomy", "282N00000X"), "hospital"),
        (("http://nucc.org/provider-taxonomy", "261QR0400X"), "clinic"),
        (("http://terminology.hl7.org/CodeSystem/practitioner-role", "teacher"), "school"),
        (("http://terminology.hl7.org/CodeSystem/practitioner-role", "nurse"), "other"),
        (("http://example.org/roles", "doctor"), "physician"),  # unknown system: the default
    ],
)
def test_practitioner_role_type_from_code(code: tuple[str, str], source_type: str) -> None:
    resource = copy.deepcopy(BY_ID[("PractitionerRole.ndjson", "example")])
    resource["code"] = [{"coding": [{"system": code[0], "code": code[1]}]}]
    del resource["specialty"]
    assert map_resource(resource, CTX)["referral_source"][0]["source_type"] == source_type


def test_role_of_an_organization_only_is_a_clinic_and_school_organizations() -> None:
    role = copy.deepcopy(BY_ID[("PractitionerRole.ndjson", "example")])
    del role["practitioner"], role["code"], role["specialty"]
    assert map_resource(role, CTX)["referral_source"][0]["source_type"] == "clinic"
    school = copy.deepcopy(BY_ID[("Organization.ndjson", "hl7")])
    school["type"] = [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "edu"}]}
    ]
    assert map_resource(school, CTX)["referral_source"][0]["source_type"] == "school"


def test_practitioner_qualification_decides_the_type() -> None:
    resource = copy.deepcopy(BY_ID[("Practitioner.ndjson", "example")])
    resource["qualification"] = [
        {"code": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0360", "code": "RN"}]}}
    ]
    resource["identifier"].append({"system": NPI, "value": "1234567893"})
    row = map_resource(resource, CTX)["referral_source"][0]
    assert (row["source_type"], row["npi"]) == ("other", "1234567893")


def test_prefix_rules_stay_within_their_system() -> None:
    assert source_type_of(["http://nucc.org/provider-taxonomy|2080P0006X"]) == "physician"
    assert source_type_of(["http://example.org/x|2080P0006X"]) is None
    assert source_type_of([]) is None


def test_no_address_or_phone_is_stored() -> None:
    rows = [map_resource(copy.deepcopy(r), CTX)["referral_source"][0] for _, r in ALL]
    flat = json.dumps(rows, default=str)
    for text in ("Erewhon", "0205568263", "E.M.vandenbroek@bmc.nl", "5555 6473"):
        assert text not in flat


def test_wrong_type() -> None:
    with pytest.raises(MappingError, match="expected a Practitioner or PractitionerRole or Organization"):
        map_referral_source({"resourceType": "Patient", "id": "p"}, CTX)


@pytest.mark.parametrize(("name", "resource"), ALL, ids=[f"{n}:{r['id']}" for n, r in ALL])
def test_every_example_maps(name: str, resource: dict[str, Any]) -> None:
    (row,) = map_resource(copy.deepcopy(resource), CTX)["referral_source"]
    assert row["source_ref"] == f"{resource['resourceType']}/{resource['id']}"
    assert row["source_type"] in SOURCE_TYPES
    assert row["source_type"] not in ("self", "unknown")  # those come from the referral only
    assert row["name"] is None or row["name"].strip() == row["name"] != ""
