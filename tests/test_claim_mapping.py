"""Claim (use = claim) -> claim + claim_item: golden rows and every example maps or is rejected."""

from __future__ import annotations

import copy
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connector.errors import MappingError
from mappings.claim import map_claim
from mappings.registry import MAPPERS, TARGET_TABLES, map_resource
from mappings.types import MapContext

DATA = Path(__file__).parent / "data" / "fhir"
CTX = MapContext(endpoint="clinic-emr", synced_at=datetime(2026, 11, 1, 6, 0, tzinfo=UTC))
CPT = "http://www.ama-assn.org/go/cpt"


def _lines(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line]


OFFICIAL = _lines("Claim-claim.ndjson")
BY_ID = {r["id"]: r for r in OFFICIAL + _lines("ClaimResponse-claim-demo.ndjson")}


def _map(resource: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    records = map_claim(copy.deepcopy(resource), CTX)
    assert set(records) == {"claim", "claim_item"}
    (row,) = records["claim"]
    return row, records["claim_item"]


def test_registered() -> None:
    assert map_claim in MAPPERS["Claim"]
    assert {"claim", "claim_item"} <= set(TARGET_TABLES["Claim"])


def test_every_official_claim_maps_or_is_rejected() -> None:
    results: Counter[str] = Counter()
    for resource in OFFICIAL:
        try:
            records = map_resource(copy.deepcopy(resource), CTX)
        except MappingError:
            results["rejected"] += 1
            continue
        if resource["use"] == "claim":
            assert len(records["claim"]) == 1
            assert len(records["claim_item"]) == len(resource.get("item", []))
            results["mapped"] += 1
        else:
            assert "claim" not in records
            results["other use"] += 1
    assert results == {"mapped": 16, "other use": 1}  # 100153 is a pre-authorization


@pytest.mark.parametrize("name", ["Claim-claim-ig.ndjson", "Claim-claim-synthea.ndjson"])
def test_ig_and_synthea_claims_map(name: str) -> None:
    results: Counter[str] = Counter()
    for resource in _lines(name):
        if resource["id"] == "PASClaimInquiryExample":
            with pytest.raises(MappingError, match="claim inquiry"):
                map_resource(copy.deepcopy(resource), CTX)
            results["inquiry"] += 1
            continue
        records = map_resource(copy.deepcopy(resource), CTX)
        results["mapped" if "claim" in records else "other use"] += 1
    # The PAS claim inquiry is a dead letter of its own (tests/test_pas_examples.py).
    expected = {"other use": 17, "inquiry": 1} if name == "Claim-claim-ig.ndjson" else {"mapped": 32}
    assert results == expected


def test_golden_demo_claim_with_cpt_items_and_referral() -> None:
    resource = BY_ID["demo-claim-12"]
    row, items = _map(resource)
    assert row["resource_id"] == "demo-claim-12"
    assert row["claim_type"] == "professional"
    assert row["patient_ref"].startswith("Patient/demo-")
    assert row["provider_ref"] == "Organization/demo-practice"
    assert row["insurer_ref"] == row["payer_key"] == "Organization/demo-payer-1"
    assert row["coverage_ref"].startswith("Coverage/demo-cov-")
    assert row["service_request_ref"] == resource["referral"]["reference"]
    assert row["item_count"] == len(items) == 2
    assert row["service_codes"][0] == f"{CPT}|97161"
    assert row["total_amount"] == float(resource["total"]["value"])
    assert row["currency"] == "USD"
    first = items[0]
    assert (first["item_sequence"], first["product_system"], first["product_code"]) == (1, CPT, "97161")
    assert first["net_amount"] == 165.0
    assert first["quantity"] == 1.0


def test_golden_100156_related_claim_and_total() -> None:
    row, items = _map(BY_ID["100156"])
    assert row["related_claim_ref"] == "Claim/100151"
    assert row["related_relationship"] == "associated"
    assert row["total_amount"] == 2255.0
    assert row["identifier"] == "http://happyvalley.com/claim|123466"
    assert row["created"] == datetime(2014, 8, 16, tzinfo=UTC)
    assert [i["item_sequence"] for i in items] == [1, 2, 3]


def test_golden_med_00050_cpt_and_identifier_only_insurer() -> None:
    row, items = _map(BY_ID["MED-00050"])
    assert row["insurer_ref"] is None
    assert row["payer_key"] == "http://www.bindb.com/bin|123456"
    assert row["coverage_ref"] == "#coverage-1"  # contained
    assert row["service_codes"] == [f"{CPT}|62264"]
    assert items[0]["product_code"] == "62264"


def test_golden_960151_billable_period() -> None:
    row, _items = _map(BY_ID["960151"])
    assert row["billable_start"] == datetime(2014, 8, 15, tzinfo=UTC)
    assert row["billable_end"] == datetime(2014, 8, 16, tzinfo=UTC)


def test_hcpcs_preferred_over_other_codings_and_modifiers_kept() -> None:
    resource = copy.deepcopy(BY_ID["demo-claim-12"])
    resource["item"][0]["productOrService"] = {
        "coding": [
            {"system": "http://example.org/local", "code": "X1"},
            {"system": "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets", "code": "G0283"},
        ]
    }
    resource["item"][0]["modifier"] = [{"coding": [{"code": "GP"}]}, {"coding": [{"code": "59"}]}]
    _row, items = _map(resource)
    assert items[0]["product_code"] == "G0283"
    assert items[0]["modifiers"] == ["GP", "59"]


def test_service_request_from_an_item_extension() -> None:
    resource = copy.deepcopy(BY_ID["demo-claim-12"])
    del resource["referral"]
    resource["item"][1]["extension"] = [
        {"url": "http://example.org/order", "valueReference": {"reference": "ServiceRequest/sr-9"}}
    ]
    row, _items = _map(resource)
    assert row["service_request_ref"] == "ServiceRequest/sr-9"


def test_prior_relationship_wins_over_associated() -> None:
    resource = copy.deepcopy(BY_ID["demo-claim-12"])
    resource["related"] = [
        {"claim": {"reference": "Claim/a"}, "relationship": {"coding": [{"code": "associated"}]}},
        {"claim": {"reference": "Claim/b"}, "relationship": {"coding": [{"code": "prior"}]}},
    ]
    row, _items = _map(resource)
    assert (row["related_claim_ref"], row["related_relationship"]) == ("Claim/b", "prior")


def test_preauthorization_claim_gives_nothing_here() -> None:
    assert map_claim(copy.deepcopy(BY_ID["100153"]), CTX) == {}


def test_repeated_item_sequence_is_rejected() -> None:
    resource = copy.deepcopy(BY_ID["demo-claim-12"])
    resource["item"][1]["sequence"] = 1
    with pytest.raises(MappingError, match=r"^Claim/demo-claim-12: item.sequence: repeated$"):
        map_claim(resource, CTX)


def test_no_patient_names_or_free_text_are_stored() -> None:
    resource = copy.deepcopy(BY_ID["100152"])  # contained Patient with a name
    row, items = _map(resource)
    flat = json.dumps([row, *items], default=str)
    for contained in resource.get("contained", []):
        for name in contained.get("name", []) if isinstance(contained.get("name"), list) else []:
            assert name.get("family", "~") not in flat
