"""Coverage / CoverageEligibilityResponse / pre-auth Claim and ClaimResponse: golden rows from real examples,
and every official example maps or is rejected with a reason."""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connector.errors import MappingError
from mappings.claim import map_claim
from mappings.eligibility import map_coverage, map_eligibility_response
from mappings.prior_auth import map_preauth_claim, map_preauth_response
from mappings.registry import MAPPERS, TARGET_TABLES, map_resource
from mappings.types import MapContext, MappingOptions

DATA = Path(__file__).parent / "data" / "fhir"
CTX = MapContext(endpoint="clinic-emr", synced_at=datetime(2026, 11, 1, 6, 0, tzinfo=UTC))
X12_306 = "https://codesystem.x12.org/005010/306"
X12_1365 = "https://codesystem.x12.org/005010/1365"
PAS = "http://hl7.org/fhir/us/davinci-pas/StructureDefinition"
OFFICIAL = (
    "Coverage.ndjson",
    "CoverageEligibilityRequest.ndjson",
    "CoverageEligibilityResponse.ndjson",
    "Claim-preauth-hl7.ndjson",
    "ClaimResponse-preauth-hl7.ndjson",
)


def _lines(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line]


def _example(name: str, resource_id: str) -> dict[str, Any]:
    return copy.deepcopy(next(r for r in _lines(name) if r["id"] == resource_id))


def _day(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def _one(records: dict[str, list[dict[str, Any]]], table: str) -> dict[str, Any]:
    assert len(records[table]) == 1
    return records[table][0]


def _without_key(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v for k, v in row.items() if k not in ("endpoint", "version_id", "last_updated", "content_hash")
    }


# -- registry ---------------------------------------------------------------------------------------


def test_payer_mappers_are_registered_next_to_the_denials_ones() -> None:
    assert MAPPERS["Coverage"] == (map_coverage,)
    assert MAPPERS["CoverageEligibilityResponse"] == (map_eligibility_response,)
    # A pre-authorization Claim is mapped before a claim: each mapper keeps only its own `use`.
    assert MAPPERS["Claim"] == (map_preauth_claim, map_claim)
    assert map_preauth_claim in MAPPERS["Claim"]
    assert map_preauth_response in MAPPERS["ClaimResponse"]
    assert set(TARGET_TABLES["Claim"]) >= {"prior_auth_request", "prior_auth_request_item"}
    assert set(TARGET_TABLES["ClaimResponse"]) >= {"prior_auth_response", "prior_auth_response_item"}
    assert "CoverageEligibilityRequest" not in MAPPERS  # validated and kept raw only


# -- every official example -------------------------------------------------------------------------


def test_every_official_example_maps_or_is_rejected_with_a_reason() -> None:
    outcomes: dict[str, list[str]] = {}
    for name in OFFICIAL:
        for resource in _lines(name):
            try:
                records = map_resource(resource, CTX)
            except MappingError as exc:  # pragma: no cover - none of them is rejected today
                message = str(exc)
                assert message.startswith(f"{resource['resourceType']}/{resource['id']}: ")
                assert "\n" not in message
                outcomes.setdefault("rejected", []).append(resource["id"])
                continue
            mine = {t: rows for t, rows in records.items() if t in _payer_tables()}
            outcomes.setdefault("mapped" if any(mine.values()) else "raw only", []).append(resource["id"])
    # All 32 official examples are valid; 4 + 4 + 1 + 1 give payer rows, the rest are claims (denials)
    # and eligibility requests (kept raw).
    assert "rejected" not in outcomes
    assert sorted(outcomes["mapped"]) == sorted(
        ["7546D", "7547E", "9876B1", "SP1234", "E2500", "E2501", "E2502", "E2503", "100153", "UR3503"]
    )
    assert len(outcomes["raw only"]) == 2 + 16 + 4


def _payer_tables() -> set[str]:
    payer_types = ("Coverage", "CoverageEligibilityResponse", "Claim", "ClaimResponse")
    return {t for rt in payer_types for t in TARGET_TABLES[rt] if not t.startswith(("claim", "denial"))}


# -- Coverage -> eligibility --------------------------------------------------------------------------


def test_golden_coverage_7546d_hashes_the_subscriber_id() -> None:
    row = _one(map_coverage(_example("Coverage.ndjson", "7546D"), CTX), "eligibility")
    assert _without_key(row) == {
        "resource_type": "Coverage",
        "resource_id": "7546D",
        "status": "active",
        "type_code": "EHCPOL",
        "patient_ref": "Patient/5",
        "subscriber_id_hash": hashlib.sha256(b"AB9876").hexdigest(),
        "subscriber_id": None,
        "relationship": "self",
        "payer_key": "Organization/2",
        "payor_ref": "Organization/2",
        "payor_type": "Organization",
        "payor_display": None,
        "payor_identifier": None,
        "payor_refs": ["Organization/2"],
        "plan_value": "BG4352",
        "plan_name": "Full Coverage: Medical, Dental, Pharmacy, Vision, EHC",
        "group_value": "WESTAIR",
        "group_name": "Western Airlines",
        "classes": ["group|WESTAIR", "plan|BG4352", "subplan|D15C9"],
        "network": "5",
        "coverage_order": 2,
        "period_start": _day(2011, 3, 17),
        "period_end": _day(2012, 3, 17),
    }
    assert "AB9876" not in json.dumps(row, default=str)


def test_subscriber_id_is_kept_in_clear_only_when_configured() -> None:
    ctx = MapContext("clinic-emr", CTX.synced_at, MappingOptions(keep_subscriber_id=True))
    row = _one(map_coverage(_example("Coverage.ndjson", "7546D"), ctx), "eligibility")
    assert row["subscriber_id"] == "AB9876"
    assert row["subscriber_id_hash"] == hashlib.sha256(b"AB9876").hexdigest()


def test_golden_coverage_7547e_payor_by_identifier_only() -> None:
    row = _one(map_coverage(_example("Coverage.ndjson", "7547E"), CTX), "eligibility")
    assert row["payor_ref"] is None
    assert row["payor_identifier"] == "http://ehic.com/insurer|123456789"
    assert row["payer_key"] == "http://ehic.com/insurer|123456789"
    assert row["payor_refs"] == []
    assert (row["period_start"], row["period_end"]) == (None, _day(2012, 3, 17))
    assert row["subscriber_id_hash"] is None
    assert row["plan_value"] is None


def test_golden_coverage_9876b1_first_class_of_each_type_wins() -> None:
    row = _one(map_coverage(_example("Coverage.ndjson", "9876B1"), CTX), "eligibility")
    assert (row["plan_value"], row["group_value"], row["group_name"]) == (
        "B37FC",
        "CB135",
        "Corporate Baker's Inc. Local #35",
    )
    assert row["patient_ref"] == "Patient/4"
    assert len(row["classes"]) == 12  # every class kept as type|value, duplicates included


def test_golden_coverage_sp1234_self_pay_has_no_display() -> None:
    resource = _example("Coverage.ndjson", "SP1234")
    resource["payor"][0]["display"] = "Jane Patient"  # a person's name must not be stored
    row = _one(map_coverage(resource, CTX), "eligibility")
    assert (row["payer_key"], row["payor_type"], row["payor_display"]) == ("self-pay", "Patient", None)
    assert row["type_code"] == "pay"


def test_contained_payor_lends_its_name_and_identifier() -> None:
    resource = _example("Coverage.ndjson", "7546D")
    resource["contained"] = [
        {
            "resourceType": "Organization",
            "id": "payer",
            "name": "Acme Health",
            "identifier": [{"system": "urn:payer", "value": "A1"}],
        }
    ]
    resource["payor"] = [{"reference": "#payer"}]
    row = _one(map_resource(resource, CTX), "eligibility")
    assert (row["payor_ref"], row["payor_display"], row["payer_key"]) == (
        "#payer",
        "Acme Health",
        "urn:payer|A1",
    )


# -- CoverageEligibilityResponse -> eligibility_check -------------------------------------------------


def test_golden_eligibility_response_e2500() -> None:
    row = _one(
        map_eligibility_response(_example("CoverageEligibilityResponse.ndjson", "E2500"), CTX),
        "eligibility_check",
    )
    assert _without_key(row) == {
        "resource_type": "CoverageEligibilityResponse",
        "resource_id": "E2500",
        "status": "active",
        "outcome": "complete",
        "purpose": ["validation"],
        "patient_ref": "Patient/pat1",
        "coverage_ref": "Coverage/9876B1",
        "coverage_refs": ["Coverage/9876B1"],
        # An absolute URL that does not end in Type/id (lower-case type) is no reference we can key on.
        "request_ref": None,
        "insurer_ref": "Organization/2",
        "insurer_display": None,
        "disposition": "Policy is currently in-force.",
        "inforce": True,
        "verified_at": _day(2014, 8, 16),
        "serviced_at": None,
        "pt_allowed_visits": None,
        "pt_used_visits": None,
        "ot_allowed_visits": None,
        "ot_used_visits": None,
        "st_allowed_visits": None,
        "st_used_visits": None,
        "authorization_required": None,
        "error_codes": [],
    }


def test_golden_eligibility_response_e2501_has_no_therapy_benefits() -> None:
    row = _one(
        map_resource(_example("CoverageEligibilityResponse.ndjson", "E2501"), CTX), "eligibility_check"
    )
    assert row["purpose"] == ["validation", "benefits"]
    assert row["serviced_at"] == _day(2014, 9, 17)
    # Maternity, dental, vision, room and board: none is PT / OT / speech therapy.
    assert [row[f"{d}_allowed_visits"] for d in ("pt", "ot", "st")] == [None, None, None]


def test_golden_eligibility_response_e2502_contained_coverage() -> None:
    row = _one(
        map_resource(_example("CoverageEligibilityResponse.ndjson", "E2502"), CTX), "eligibility_check"
    )
    assert (row["coverage_ref"], row["patient_ref"], row["verified_at"]) == (
        "#coverage-1",
        "Patient/f201",
        _day(2014, 9, 16),
    )


def test_golden_eligibility_response_e2503_error() -> None:
    row = _one(
        map_resource(_example("CoverageEligibilityResponse.ndjson", "E2503"), CTX), "eligibility_check"
    )
    assert (row["outcome"], row["inforce"], row["coverage_ref"]) == ("error", None, None)
    assert row["error_codes"] == ["http://terminology.hl7.org/CodeSystem/adjudication-error|a001"]


def _therapy_item(code: str, allowed: int | None, used: int | None, *, network: str = "in", **extra: Any):
    benefit: dict[str, Any] = {"type": {"coding": [{"code": "visit"}]}}
    if allowed is not None:
        benefit["allowedUnsignedInt"] = allowed
    if used is not None:
        benefit["usedUnsignedInt"] = used
    return {
        "category": {"coding": [{"system": X12_1365, "code": code}]},
        "network": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/benefit-network", "code": network}]
        },
        "benefit": [benefit],
        **extra,
    }


def test_therapy_benefits_visits_and_authorization_required() -> None:
    resource = _example("CoverageEligibilityResponse.ndjson", "E2501")
    resource["insurance"][0]["item"] = [
        _therapy_item("PT", 10, 99, network="out"),  # out of network: the in-network item wins
        _therapy_item("PT", 20, 4, authorizationRequired=True),
        _therapy_item("AD", 12, None, authorizationRequired=False),
        _therapy_item("AF", None, None, excluded=True),
        {"category": {"coding": [{"code": "30"}]}, "authorizationRequired": False},
    ]
    row = _one(map_resource(resource, CTX), "eligibility_check")
    assert (row["pt_allowed_visits"], row["pt_used_visits"]) == (20, 4)
    assert (row["ot_allowed_visits"], row["ot_used_visits"]) == (12, None)
    assert (row["st_allowed_visits"], row["st_used_visits"]) == (None, None)
    assert row["authorization_required"] is True  # one therapy item requires it


def test_authorization_required_falls_back_to_all_items_without_therapy_items() -> None:
    resource = _example("CoverageEligibilityResponse.ndjson", "E2501")
    resource["insurance"][0]["item"][0]["authorizationRequired"] = False
    assert _one(map_resource(resource, CTX), "eligibility_check")["authorization_required"] is False


# -- Claim (preauthorization) -> prior_auth_request ---------------------------------------------------


def test_claims_that_are_not_preauthorizations_give_nothing() -> None:
    for resource in _lines("Claim-preauth-hl7.ndjson"):
        if resource["use"] != "preauthorization":
            assert map_preauth_claim(resource, CTX) == {}
    for resource in _lines("ClaimResponse-preauth-hl7.ndjson"):
        if resource["use"] != "preauthorization":
            assert map_preauth_response(resource, CTX) == {}


def test_golden_preauth_claim_100153() -> None:
    records = map_preauth_claim(_example("Claim-preauth-hl7.ndjson", "100153"), CTX)
    assert _without_key(_one(records, "prior_auth_request")) == {
        "resource_type": "Claim",
        "resource_id": "100153",
        "status": "active",
        "priority": "normal",
        "patient_ref": "Patient/1",
        "coverage_ref": "Coverage/9876B1",
        "payer_key": "Organization/2",
        "insurer_ref": "Organization/2",
        "insurer_display": None,
        "insurer_identifier": None,
        "provider_ref": "Organization/1",
        "referral_ref": None,
        "requested_at": _day(2015, 3, 16),
        "items_requested": 3,
        "units_requested": 3.0,  # no item quantity: one unit each (detail quantities are not items)
        "service_codes": [
            "http://example.org/fhir/oralservicecodes|ORTHPLAN",
            "http://example.org/fhir/oralservicecodes|21211",
            "http://example.org/fhir/oralservicecodes|27211",
        ],
    }
    items = records["prior_auth_request_item"]
    assert [(i["sequence"], i["service_code"], i["units"]) for i in items] == [
        (1, "ORTHPLAN", 1.0),
        (2, "21211", 1.0),
        (3, "27211", 1.0),
    ]
    assert all(i["resource_id"] == "100153" and i["endpoint"] == "clinic-emr" for i in items)


def test_golden_pas_referral_authorization_request() -> None:
    records = map_resource(_example("Claim-preauth-pas.ndjson", "ReferralAuthorizationExample"), CTX)
    row = _one(records, "prior_auth_request")
    assert (row["requested_at"], row["payer_key"], row["coverage_ref"]) == (
        _day(2005, 5, 2, 6, 1),  # 11:01+05:00
        "Organization/InsurerExample",
        "Coverage/InsuranceExample",
    )
    assert row["service_codes"] == [f"{X12_1365}|3"]
    assert [(i["sequence"], i["units"]) for i in records["prior_auth_request_item"]] == [(1, 1.0)]


def test_golden_pas_homecare_update_request_and_claim_without_insurer() -> None:
    row = _one(
        map_resource(_example("Claim-preauth-pas.ndjson", "HomecareAuthorizationUpdateExample"), CTX),
        "prior_auth_request",
    )
    assert (row["items_requested"], row["units_requested"]) == (3, 3.0)
    no_insurer = _one(
        map_resource(_example("Claim-preauth-pas.ndjson", "minimal"), CTX), "prior_auth_request"
    )
    assert (no_insurer["payer_key"], no_insurer["status"], no_insurer["items_requested"]) == (
        None,
        "draft",
        0,
    )


def test_request_quantities_and_referral() -> None:
    resource = _example("Claim-preauth-hl7.ndjson", "100153")
    resource["referral"] = {"reference": "ServiceRequest/sr-1"}
    resource["item"][1]["quantity"] = {"value": 12}
    records = map_resource(resource, CTX)
    row = _one(records, "prior_auth_request")
    assert row["referral_ref"] == "ServiceRequest/sr-1"
    assert row["units_requested"] == 14.0
    # A version with no items still names the item table, so the writer clears the old items.
    resource["item"] = []
    assert map_resource(resource, CTX)["prior_auth_request_item"] == []


# -- ClaimResponse (preauthorization) -> prior_auth_response ------------------------------------------


def test_golden_preauth_response_ur3503() -> None:
    records = map_preauth_response(_example("ClaimResponse-preauth-hl7.ndjson", "UR3503"), CTX)
    assert _without_key(_one(records, "prior_auth_response")) == {
        "resource_type": "ClaimResponse",
        "resource_id": "UR3503",
        "status": "active",
        "outcome": "complete",
        "decision": "approved",  # both added items have a benefit amount > 0
        "review_actions": [],
        "request_ref": None,
        "patient_ref": "Patient/1",
        "coverage_ref": "Coverage/9876B1",
        "payer_key": "http://www.jurisdiction.org/insurers|444123",
        "insurer_ref": None,
        "insurer_display": None,
        "insurer_identifier": "http://www.jurisdiction.org/insurers|444123",
        "responded_at": _day(2014, 8, 16),
        "pre_auth_ref": "18SS12345",
        "pre_auth_start": None,
        "pre_auth_end": None,
        "disposition": (
            "The enclosed services are authorized for your provision within 30 days of this notice."
        ),
        "items_decided": 2,
        "items_approved": 2,
        "error_codes": [],
    }
    assert [
        (i["line"], i["item_sequence"], i["added"], i["service_code"], i["decision"], i["covered_amount"])
        for i in records["prior_auth_response_item"]
    ] == [(1, 1, True, "1101", "approved", 240.0), (2, 1, True, "2101", "approved", 800.0)]


@pytest.mark.parametrize(
    ("resource_id", "decision", "actions", "period", "units"),
    [
        (
            "PractitionerRequestorResponseExample",
            "approved",
            ["A1"],
            (_day(2005, 5, 2), _day(2005, 6, 2)),
            1.0,
        ),
        ("PractitionerRequestorPendingResponseExample", "pending", ["A4"], (None, None), None),
        ("RejectionResponseExample", "denied", ["A3"], (None, None), None),
        ("ErrorResponseExample", "error", [], (None, None), None),
        # HRex extension URLs and an addItem; authorized dates from itemAuthorizedDate.
        (
            "UnsolicitedReferralAuthorizationResponseExample",
            "approved",
            ["A1"],
            (_day(2005, 5, 2), _day(2005, 6, 2)),
            None,
        ),
        # PAS 1.x reference implementation: the review action on the ClaimResponse itself (valueString).
        ("451fe716-4701-4cdf-b5bb-a6eedbe43bbb", "denied", ["A3"], (None, None), None),
        ("68a03b6d-b792-4de3-95e6-abf36eacb9bc", "pending", ["A4"], (None, None), None),
        ("1", "approved", ["A1"], (None, None), None),  # valueCode
        ("minimal", "pending", [], (None, None), None),  # outcome queued
    ],
)
def test_golden_pas_responses_read_the_review_action(
    resource_id: str,
    decision: str,
    actions: list[str],
    period: tuple[datetime | None, datetime | None],
    units: float | None,
) -> None:
    records = map_resource(_example("ClaimResponse-preauth-pas.ndjson", resource_id), CTX)
    row = _one(records, "prior_auth_response")
    assert row["decision"] == decision
    assert row["review_actions"] == actions
    assert (row["pre_auth_start"], row["pre_auth_end"]) == period
    lines = records["prior_auth_response_item"]
    assert (lines[0]["units_authorized"] if lines else None) == units


def test_pas_response_links_to_its_request_and_error_codes() -> None:
    row = _one(
        map_resource(_example("ClaimResponse-preauth-pas.ndjson", "ErrorResponseExample"), CTX),
        "prior_auth_response",
    )
    assert row["request_ref"] == "Claim/ReferralAuthorizationExample"
    assert row["error_codes"] == [
        "https://codesystem.x12.org/005010/901|04",
        "https://codesystem.x12.org/005010/901|T4",
    ]
    conditional = _one(
        map_resource(
            _example("ClaimResponse-preauth-pas.ndjson", "8373b834-7369-4a11-a2bf-0b72614cf1e9"), CTX
        ),
        "prior_auth_response",
    )
    assert conditional["request_ref"] is None  # Claim?identifier=... cannot be linked


def _review(code: str) -> dict[str, Any]:
    return {
        "url": f"{PAS}/extension-reviewAction",
        "extension": [
            {
                "url": f"{PAS}/extension-reviewActionCode",
                "valueCodeableConcept": {"coding": [{"system": X12_306, "code": code}]},
            }
        ],
    }


@pytest.mark.parametrize(
    ("codes", "decision", "approved"),
    [
        (["A1", "A1"], "approved", 2),
        (["A1", "A3"], "partial", 1),
        (["A6", "A1"], "modified", 2),
        (["A2"], "partial", 1),
        (["A1", "A4"], "pending", 1),  # not final until every item is decided
        (["A3", "NA"], "denied", 0),
        (["C"], "cancelled", 0),
    ],
)
def test_item_review_actions_combine(codes: list[str], decision: str, approved: int) -> None:
    resource = _example("ClaimResponse-preauth-pas.ndjson", "RejectionResponseExample")
    template = resource["item"][0]
    resource["item"] = []
    for sequence, code in enumerate(codes, start=1):
        item = copy.deepcopy(template)
        item["itemSequence"] = sequence
        item["adjudication"][0]["extension"] = [_review(code)]
        resource["item"].append(item)
    row = _one(map_resource(resource, CTX), "prior_auth_response")
    assert (row["decision"], row["items_approved"]) == (decision, approved)


def test_demo_style_zero_benefit_is_a_denial() -> None:
    resource = _example("ClaimResponse-preauth-hl7.ndjson", "UR3503")
    for item in resource["addItem"]:
        for adjudication in item["adjudication"]:
            if "amount" in adjudication:
                adjudication["amount"]["value"] = 0
    del resource["preAuthRef"]
    assert _one(map_resource(resource, CTX), "prior_auth_response")["decision"] == "denied"


def test_no_patient_text_reaches_the_rows() -> None:
    resource = _example("ClaimResponse-preauth-pas.ndjson", "UnsolicitedReferralAuthorizationResponseExample")
    resource["patient"]["display"] = "Beverly Weaver"
    flat = json.dumps(map_resource(resource, CTX), default=str)
    assert "Beverly" not in flat
    assert "<div" not in flat  # the narrative is not copied
