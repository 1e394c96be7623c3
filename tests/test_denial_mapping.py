"""ClaimResponse / ExplanationOfBenefit -> claim_adjudication + denial: golden rows from the official HL7
examples, IG and demo data, the reason code table, and every example maps or is rejected with a reason."""

from __future__ import annotations

import copy
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connector.errors import MappingError
from mappings.adjudication import categories, map_adjudication, reason_table
from mappings.registry import MAPPERS, TARGET_TABLES, map_resource
from mappings.types import MapContext
from tests.test_denial_builders import eob, response

DATA = Path(__file__).parent / "data" / "fhir"
CTX = MapContext(endpoint="clinic-emr", synced_at=datetime(2026, 11, 1, 6, 0, tzinfo=UTC))
AUG16 = datetime(2014, 8, 16, tzinfo=UTC)


def _lines(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line]


OFFICIAL = _lines("ClaimResponse-claim.ndjson") + _lines("ExplanationOfBenefit.ndjson")
BY_ID = {r["id"]: r for r in OFFICIAL + _lines("ExplanationOfBenefit-ig.ndjson")}
DEMO = {r["id"]: r for r in _lines("ClaimResponse-claim-demo.ndjson")}


def _map(resource: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    records = map_adjudication(copy.deepcopy(resource), CTX)
    assert set(records) == {"claim_adjudication", "denial"}
    assert len(records["claim_adjudication"]) == 1
    return records["claim_adjudication"][0], records["denial"]


def test_registered_for_both_resource_types() -> None:
    assert map_adjudication in MAPPERS["ClaimResponse"]
    assert map_adjudication in MAPPERS["ExplanationOfBenefit"]
    assert {"claim_adjudication", "denial"} <= set(TARGET_TABLES["ClaimResponse"])
    assert {"claim_adjudication", "denial"} <= set(TARGET_TABLES["ExplanationOfBenefit"])


# -- every official example maps or is rejected --------------------------------------------------


def test_every_official_example_maps_or_is_rejected_with_a_reason() -> None:
    results: Counter[str] = Counter()
    reasons: list[tuple[str, str]] = []
    for resource in OFFICIAL:
        try:
            records = map_resource(copy.deepcopy(resource), CTX)
        except MappingError as exc:
            reasons.append((f"{resource['resourceType']}/{resource['id']}: ", str(exc)))
            results["rejected"] += 1
            continue
        if resource["use"] == "claim":
            assert len(records["claim_adjudication"]) == 1, resource["id"]
            results["mapped"] += 1
        else:  # the pre-authorization response belongs to the payer subject
            assert "claim_adjudication" not in records
            assert "denial" not in records
            results["other use"] += 1
    assert all(message.startswith(label) for label, message in reasons)
    # 5 ClaimResponses (one a pre-authorization) and 2 EOBs, all valid: nothing rejected.
    assert results == {"mapped": 6, "other use": 1}


@pytest.mark.parametrize("name", ["ExplanationOfBenefit-ig.ndjson", "ExplanationOfBenefit-synthea.ndjson"])
def test_broad_regression_ig_and_synthea(name: str) -> None:
    outcomes: Counter[str] = Counter()
    for resource in _lines(name):
        try:
            records = map_resource(copy.deepcopy(resource), CTX)
        except MappingError:
            outcomes["rejected"] += 1
            continue
        for row in records.get("claim_adjudication", []):
            assert row["denied_line_count"] == len(records["denial"])
            assert row["denied_line_count"] <= row["line_count"]
            outcomes["mapped"] += 1
        for denial in records.get("denial", []):
            assert denial["category"] in categories()
            outcomes[f"denial:{denial['category']}"] += 1
        if "claim_adjudication" not in records:
            outcomes["other use"] += 1
    if name == "ExplanationOfBenefit-ig.ndjson":
        # 20 CARIN EOBs + 3 Da Vinci (2 predeterminations, 1 pre-authorization); one non-covered line.
        assert outcomes == {"mapped": 20, "other use": 3, "denial:non_covered": 1}
    else:
        # Synthea EOBs pay every line (Blue Button amounts): no denials, nothing rejected.
        assert outcomes == {"mapped": 53}


# -- golden rows from official examples -----------------------------------------------------------


def test_golden_r3500_plan_limit_reduces_the_line() -> None:
    header, denials = _map(BY_ID["R3500"])
    assert header["outcome"] == "complete"  # processing finished; the line is still reduced
    assert header["paid_in_full"] is False
    assert header["claim_ref"] is None  # request is a URL that does not end in Claim/id
    assert header["claim_key"] == "ClaimResponse/R3500"
    assert header["payer_key"] == "http://www.jurisdiction.org/insurers|555123"  # identifier-only insurer
    assert (header["submitted_amount"], header["benefit_amount"], header["payment_amount"]) == (
        135.57,
        90.47,
        100.47,
    )
    assert header["payment_date"] == datetime(2014, 8, 31, tzinfo=UTC)
    assert (header["line_count"], header["denied_line_count"], header["denied_amount"]) == (1, 1, 35.1)
    (row,) = denials
    assert {k: row[k] for k in row if k not in {"content_hash"}} == {
        "endpoint": "clinic-emr",
        "resource_type": "ClaimResponse",
        "resource_id": "R3500",
        "version_id": None,
        "last_updated": None,
        "line_key": "item-1",
        "item_sequence": 1,
        "product_code": None,
        "claim_ref": None,
        "claim_identifier": None,
        "claim_key": "ClaimResponse/R3500",
        "payer_key": "http://www.jurisdiction.org/insurers|555123",
        "outcome": "complete",
        "disposition": "Claim settled as per contract.",
        "line_outcome": "reduced",
        "submitted_amount": None,
        "eligible_amount": 135.57,
        "benefit_amount": 90.47,
        # eligible 135.57 - benefit 90.47 - copay 10.00
        "denied_amount": 35.1,
        "reason_system": "hl7-adjudication-reason",
        "reason_code": "ar002",
        "group_code": None,
        "reason_known": True,
        "reason_codes": ["ar002"],
        "remark_codes": [],
        "category": "benefit_maximum",
        "next_action": categories()["benefit_maximum"].next_action,
        "decided_at": AUG16,
    }


def test_golden_r3501_error_on_one_line_is_a_missing_info_denial() -> None:
    header, denials = _map(BY_ID["R3501"])
    assert header["outcome"] == "error"
    assert header["claim_ref"] == "Claim/100156"
    assert header["paid_in_full"] is False
    assert header["denied_amount"] is None  # no amounts given anywhere
    (row,) = denials
    assert (row["line_key"], row["item_sequence"], row["line_outcome"]) == ("item-3", 3, "denied")
    assert (row["reason_system"], row["reason_code"], row["category"]) == (
        "hl7-adjudication-error",
        "a002",
        "missing_info",
    )
    assert row["next_action"] == "attach documentation and resubmit"


def test_golden_r3502_paid_in_full_with_identifier_reference() -> None:
    header, denials = _map(BY_ID["R3502"])
    assert denials == []
    assert header["paid_in_full"] is True
    assert header["claim_identifier"] == "http://happysight.com/claim|6612346"
    assert header["claim_key"] == "Claim?identifier=http://happysight.com/claim|6612346"
    assert header["line_count"] == 1


def test_golden_r3503_recoded_item_is_not_a_denial() -> None:
    header, denials = _map(BY_ID["R3503"])
    # Item 1 paid 0 without a reason and was replaced by two added items: re-coded, not denied.
    # Lines: items 2 and 3, added items 1-3.
    assert header["line_count"] == 5
    (row,) = denials
    assert row["line_key"] == "addItem-1"
    assert row["item_sequence"] == 1
    assert row["product_code"] == "1101"
    assert (row["eligible_amount"], row["benefit_amount"], row["denied_amount"]) == (100.0, 72.0, 18.0)
    assert row["category"] == "benefit_maximum"


def test_golden_eb3500_paid_eob_names_its_claim_and_claim_response() -> None:
    header, denials = _map(BY_ID["EB3500"])
    assert denials == []
    assert header["resource_type"] == "ExplanationOfBenefit"
    assert header["claim_ref"] == "Claim/100150"
    assert header["claim_response_ref"] == "ClaimResponse/R3500"
    assert header["provider_ref"] == "Practitioner/1"
    assert (header["line_count"], header["paid_in_full"]) == (2, True)


def test_golden_eb3501_error_without_items_is_a_header_denial() -> None:
    header, denials = _map(BY_ID["EB3501"])
    (row,) = denials
    assert row["line_key"] == "claim"
    assert row["item_sequence"] is None
    assert row["line_outcome"] == "denied"
    assert row["denied_amount"] == 2478.57  # total submitted
    assert (row["category"], row["reason_code"], row["reason_known"]) == ("other", None, False)
    assert header["line_count"] == 1


def test_preauthorization_response_is_left_to_the_payer_subject() -> None:
    assert map_adjudication(copy.deepcopy(BY_ID["UR3503"]), CTX) == {}


def test_golden_carin_non_covered_line_without_reason_code() -> None:
    header, denials = _map(BY_ID["EOBProfessional2"])
    assert header["line_count"] == 6
    (row,) = denials
    assert row["line_key"] == "item-4"
    assert row["product_code"] is not None
    assert (row["submitted_amount"], row["benefit_amount"], row["denied_amount"]) == (751.2, 0.0, 224.11)
    assert row["category"] == "non_covered"


def test_carin_nonfinancial_eob_is_not_a_clean_claim() -> None:
    header, denials = _map(BY_ID["BB-EOBProfessional1-nonfinancial"])
    assert denials == []
    assert header["line_count"] == 0
    assert header["paid_in_full"] is False


def test_golden_demo_timely_filing_carc() -> None:
    header, denials = _map(DEMO["demo-claim-resp-12"])
    assert header["claim_ref"] == "Claim/demo-claim-12"
    assert header["created"] == datetime(2026, 10, 8, 14, 0, tzinfo=UTC)
    assert (header["line_count"], header["denied_line_count"]) == (2, 1)
    (row,) = denials
    assert (row["line_key"], row["reason_system"], row["reason_code"], row["category"]) == (
        "item-1",
        "carc",
        "29",
        "timely_filing",
    )
    assert (row["submitted_amount"], row["benefit_amount"], row["denied_amount"]) == (165.0, 0.0, 165.0)
    assert row["payer_key"] == "Organization/demo-payer-1"


def test_demo_paid_response_has_no_denials() -> None:
    header, denials = _map(DEMO["demo-claim-resp-01"])
    assert denials == []
    assert header["paid_in_full"] is True


# -- reason codes ---------------------------------------------------------------------------------


def _one_denial(resource: dict[str, Any]) -> dict[str, Any]:
    _header, denials = _map(resource)
    assert len(denials) == 1
    return denials[0]


def test_group_code_in_the_carc_and_rarc_remarks() -> None:
    row = _one_denial(response("r", "c", "2026-09-02T00:00:00Z", [(1, 100.0, 0.0, "CO-197", "N54")]))
    assert (row["group_code"], row["reason_code"], row["category"]) == ("CO", "197", "authorization")
    assert row["reason_codes"] == ["CO-197"]
    assert row["remark_codes"] == ["N54"]
    assert row["next_action"].startswith("request authorization")


def test_group_code_as_its_own_coding() -> None:
    resource = response("r", "c", "2026-09-02T00:00:00Z", [(1, 100.0, 0.0, "50")])
    reason = resource["item"][0]["adjudication"][1]["reason"]
    reason["coding"].append({"system": "https://x12.org/codes/claim-adjustment-group-codes", "code": "PR"})
    row = _one_denial(resource)
    assert (row["group_code"], row["reason_code"], row["category"]) == ("PR", "50", "medical_necessity")


def test_unknown_carc_is_counted_as_other_with_its_code() -> None:
    row = _one_denial(response("r", "c", "2026-09-02T00:00:00Z", [(1, 100.0, 0.0, "P99")]))
    assert (row["reason_code"], row["category"], row["reason_known"]) == ("P99", "other", False)
    assert row["denied_amount"] == 100.0


def test_patient_share_only_is_not_a_denial() -> None:
    # Whole charge to the deductible (PR-1): paid 0 but adjudicated as payable.
    header, denials = _map(response("r", "c", "2026-09-02T00:00:00Z", [(1, 100.0, 0.0, "PR-1")]))
    assert denials == []
    assert header["paid_in_full"] is True


def test_partial_payment_with_denial_reason_is_reduced() -> None:
    row = _one_denial(response("r", "c", "2026-09-02T00:00:00Z", [(1, 100.0, 60.0, "CO-151")]))
    assert row["line_outcome"] == "reduced"
    assert row["category"] == "benefit_maximum"


def test_contractual_reduction_is_not_a_denial() -> None:
    header, denials = _map(response("r", "c", "2026-09-02T00:00:00Z", [(1, 100.0, 60.0, "CO-45")]))
    assert denials == []
    assert header["paid_in_full"] is True


def test_denied_category_amount() -> None:
    resource = response("r", "c", "2026-09-02T00:00:00Z", [(1, 100.0, 70.0, "96")])
    resource["item"][0]["adjudication"].append(
        {"category": {"coding": [{"code": "denied"}]}, "amount": {"value": 30.0, "currency": "USD"}}
    )
    row = _one_denial(resource)
    assert (row["line_outcome"], row["denied_amount"], row["category"]) == ("reduced", 30.0, "non_covered")


def test_carin_payment_type_denied_denies_every_line_with_header_reasons() -> None:
    resource = eob("e", "c", "2026-09-02T00:00:00Z", [(1, 100.0, 100.0, None), (2, 50.0, 50.0, None)])
    resource["payment"] = {
        "type": {
            "coding": [
                {
                    "system": "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBPayerAdjudicationStatus",
                    "code": "denied",
                }
            ]
        }
    }
    resource["adjudication"] = [
        {
            "category": {
                "coding": [
                    {
                        "system": "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBAdjudicationDiscriminator",
                        "code": "adjustmentreason",
                    }
                ]
            },
            "reason": {
                "coding": [{"system": "https://x12.org/codes/claim-adjustment-reason-codes", "code": "27"}]
            },
        }
    ]
    header, denials = _map(resource)
    assert [d["line_key"] for d in denials] == ["item-1", "item-2"]
    assert {d["category"] for d in denials} == {"eligibility"}
    assert header["payment_type"] == "denied"
    assert header["paid_in_full"] is False


def test_carin_benefit_payment_status_denied_on_a_line() -> None:
    resource = eob("e", "c", "2026-09-02T00:00:00Z", [(1, 100.0, 100.0, None)])
    resource["item"][0]["adjudication"].append(
        {
            "category": {
                "coding": [
                    {
                        "system": "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBAdjudicationDiscriminator",
                        "code": "benefitpaymentstatus",
                    }
                ]
            },
            "reason": {
                "coding": [
                    {
                        "system": "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBPayerAdjudicationStatus",
                        "code": "denied",
                    }
                ]
            },
        }
    )
    row = _one_denial(resource)
    assert row["line_outcome"] == "denied"
    assert row["reason_codes"] == []  # the payment status is not an adjustment reason


@pytest.mark.parametrize(
    ("code", "category"),
    [
        ("16", "missing_info"),
        ("252", "missing_info"),
        ("50", "medical_necessity"),
        ("197", "authorization"),
        ("15", "authorization"),
        ("62", "authorization"),
        ("27", "eligibility"),
        ("26", "eligibility"),
        ("31", "eligibility"),
        ("119", "benefit_maximum"),
        ("151", "benefit_maximum"),
        ("96", "non_covered"),
        ("204", "non_covered"),
        ("4", "coding"),
        ("11", "coding"),
        ("181", "coding"),
        ("29", "timely_filing"),
        ("18", "duplicate"),
    ],
)
def test_code_table_covers_the_common_carcs(code: str, category: str) -> None:
    assert reason_table()[("carc", code)] == category
    row = _one_denial(response("r", "c", "2026-09-02T00:00:00Z", [(1, 100.0, 0.0, code)]))
    assert row["category"] == category
    assert row["next_action"] == categories()[category].next_action


def test_every_denial_category_has_a_next_action() -> None:
    assert all(cat.next_action for cat in categories().values())
    assert not categories()["contractual"].is_denial
    assert not categories()["patient_responsibility"].is_denial
    assert categories()["other"].is_denial


# -- rejections -----------------------------------------------------------------------------------


def test_request_that_is_not_a_claim_is_rejected() -> None:
    resource = response("r", "c", "2026-09-02T00:00:00Z", [(1, 100.0, 0.0, "16")])
    resource["request"] = {"reference": "ServiceRequest/sr-1"}
    with pytest.raises(MappingError, match=r"^ClaimResponse/r: request: does not reference a Claim$"):
        map_resource(resource, CTX)


def test_invalid_created_is_rejected_without_echoing_it() -> None:
    resource = eob("e", "c", "2026-09-02T00:00:00Z", [(1, 100.0, 0.0, "16")])
    resource["created"] = "2026-02-30T00:00:00Z"
    with pytest.raises(MappingError) as info:
        map_resource(resource, CTX)
    assert "2026-02-30" not in str(info.value)
    assert str(info.value).startswith("ExplanationOfBenefit/e: ")


def test_disposition_is_capped_and_no_patient_data_is_stored() -> None:
    resource = copy.deepcopy(BY_ID["R3500"])
    resource["disposition"] = "x" * 500
    header, denials = _map(resource)
    assert len(header["disposition"]) == 200
    flat = json.dumps([header, *denials], default=str)
    assert "Patient/1" in flat  # the reference is kept
    assert "processNote" not in flat


def test_mapper_is_pure() -> None:
    resource = copy.deepcopy(BY_ID["R3503"])
    before = copy.deepcopy(resource)
    assert map_adjudication(resource, CTX) == map_adjudication(resource, CTX)
    assert resource == before
