"""ServiceRequest -> referral: golden rows from real examples (fields, discipline, source, intake checklist),
and every example maps or is rejected with a reason."""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from connector.errors import MappingError
from mappings import referral
from mappings.referral import map_service_request
from mappings.referral_source import SOURCE_RESOURCES
from mappings.registry import MAPPERS, TARGET_TABLES, map_resource
from mappings.types import MapContext, MappingOptions

DATA = Path(__file__).parent / "data" / "fhir"
FILES = (
    "ServiceRequest.ndjson",
    "ServiceRequest-ig.ndjson",
    "ServiceRequest-synthea-contained.ndjson",
    "ServiceRequest-demo.ndjson",
)
CTX = MapContext(endpoint="clinic-emr", synced_at=datetime(2026, 11, 1, 6, 0, tzinfo=UTC))

ROW_KEYS = {
    "endpoint",
    "resource_type",
    "resource_id",
    "version_id",
    "last_updated",
    "content_hash",
    "status",
    "intent",
    "priority",
    "category_code",
    "authored_on",
    "requested_start",
    "patient_ref",
    "requester_ref",
    "requester_display",
    "service_system",
    "service_code",
    "service_display",
    "reason_codes",
    "coverage_ref",
    "coverage_refs",
    "reason_refs",
    "discipline",
    "performer_ref",
    "based_on_refs",
    "replaces_refs",
    "source_ref",
    "source_type",
    "intake_missing",
    "intake_complete",
}
SNOMED = "http://snomed.info/sct"
CPT = "http://www.ama-assn.org/go/cpt"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"


def _lines(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line]


ALL = [(name, resource) for name in FILES for resource in _lines(name)]
BY_ID = {(name, r["id"]): r for name, r in ALL}


def _example(resource_id: str, name: str = "ServiceRequest.ndjson") -> dict[str, Any]:
    return copy.deepcopy(BY_ID[(name, resource_id)])


def _row(resource: dict[str, Any]) -> dict[str, Any]:
    records = map_service_request(resource, CTX)
    assert list(records) == ["referral"]
    assert len(records["referral"]) == 1
    return records["referral"][0]


def _hash(resource: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)).hexdigest()


# -- golden rows ---------------------------------------------------------------------------------


def test_golden_di_occurrence_datetime_with_offset() -> None:
    assert _row(_example("di")) == {
        "endpoint": "clinic-emr",
        "resource_type": "ServiceRequest",
        "resource_id": "di",
        "version_id": None,
        "last_updated": None,
        "content_hash": "c47b7182315660c5fc06685df8b9fa38871b4c2bfccb3b604f2931b44e4f0227",
        "status": "active",
        "intent": "original-order",
        "priority": None,
        "category_code": None,
        "authored_on": None,
        "requested_start": datetime(2013, 5, 8, 2, 33, 27, tzinfo=UTC),  # 09:33:27+07:00
        "patient_ref": "Patient/dicom",
        "requester_ref": "Practitioner/example",
        "requester_display": "Dr. Adam Careful",
        "service_system": "http://loinc.org",
        "service_code": "24627-2",
        "service_display": "Chest CT",  # no coding display: code.text
        "reason_codes": [],  # reasonCode has text only
        "coverage_ref": None,
        "coverage_refs": [],
        "reason_refs": [],
        "discipline": "other",  # a LOINC imaging code is no therapy
        "performer_ref": None,
        "based_on_refs": [],
        "replaces_refs": [],
        "source_ref": "Practitioner/example",
        "source_type": None,  # known once the Practitioner is joined
        "intake_missing": ["diagnosis", "payer"],  # a text-only reason is not a coded diagnosis
        "intake_complete": False,
    }


def test_golden_myringotomy_absolute_references_and_no_patient_text() -> None:
    resource = _example("myringotomy")
    row = _row(resource)
    assert row == {
        "endpoint": "clinic-emr",
        "resource_type": "ServiceRequest",
        "resource_id": "myringotomy",
        "version_id": None,
        "last_updated": None,
        "content_hash": _hash(resource),
        "status": "active",
        "intent": "order",
        "priority": "routine",
        "category_code": "103696004",
        "authored_on": datetime(2014, 2, 14, tzinfo=UTC),
        "requested_start": None,  # occurrencePeriod has an end only
        "patient_ref": "Patient/77662",  # https://fhir.orionhealth.com/blaze/fhir/Patient/77662
        "requester_ref": "Practitioner/77272",
        "requester_display": "Serena Shrink",
        "service_system": SNOMED,
        "service_code": "172676009",
        "service_display": "Myringotomy and insertion of tympanic ventilation tube",
        "reason_codes": [],
        "coverage_ref": None,
        "coverage_refs": [],
        "reason_refs": [],
        "discipline": "other",  # ENT surgery
        "performer_ref": "Practitioner/76597",
        "based_on_refs": [],  # identifier-only basedOn and replaces: nothing to key on
        "replaces_refs": [],
        "source_ref": "Practitioner/77272",
        "source_type": None,
        "intake_missing": ["diagnosis", "payer", "requested_start"],
        "intake_complete": False,
    }
    # The patient's name (subject.display, encounter.display) and the note text never reach the row.
    flat = json.dumps(row, default=str)
    assert "Beverly" not in flat
    assert "Weaver" not in flat
    assert resource["note"][0]["text"][:20] not in flat


def test_golden_us_core_dnr_period_start_and_coded_reason() -> None:
    row = _row(_example("servicerequest-dnr-example1", "ServiceRequest-ig.ndjson"))
    assert row["category_code"] == "PMO"  # first coding of the first category
    assert row["authored_on"] == datetime(2025, 8, 26, tzinfo=UTC)
    assert row["requested_start"] == datetime(2025, 8, 26, tzinfo=UTC)  # occurrencePeriod.start
    assert row["patient_ref"] == "Patient/example"
    assert row["requester_ref"] == "Practitioner/practitioner-1"
    assert row["requester_display"] == "Dr. Ronald Bone"
    assert (row["service_system"], row["service_code"]) == ("http://loinc.org", "LA33471-6")
    assert row["reason_codes"] == ["http://snomed.info/sct|300936002"]


def test_golden_lipid_contained_resources_and_local_code_system() -> None:
    row = _row(_example("lipid"))
    assert row["service_system"] == "http://acme.org/tests"
    assert row["service_code"] == "LIPID"
    assert row["service_display"] == "Lipid Panel"
    assert row["reason_codes"] == ["http://hl7.org/fhir/sid/icd-9|V173"]
    assert row["requested_start"] == datetime(2013, 5, 2, 23, 16, tzinfo=UTC)
    assert row["requester_display"] is None


def test_golden_physiotherapy_timing_without_start() -> None:
    resource = _example("physiotherapy")
    row = _row(resource)
    assert row["requested_start"] is None  # Timing.repeat with frequency only
    assert row["authored_on"] == datetime(2017, 2, 1, 17, 23, 7, tzinfo=UTC)
    assert row["service_code"] == "34431008"
    assert row["reason_codes"] == []  # reasonReference to a contained Condition, not reasonCode


def test_golden_physical_therapy_display_only_requester() -> None:
    row = _row(_example("physical-therapy"))
    assert row["requester_ref"] is None
    assert row["requester_display"] == "Ollie Ortho, MD"
    assert row["requested_start"] == datetime(2016, 9, 27, tzinfo=UTC)
    assert row["category_code"] == "386053000"


def test_golden_pct_cpt_only_code() -> None:
    row = _row(_example("PCT-ServiceRequest-1", "ServiceRequest-ig.ndjson"))
    assert (row["service_system"], row["service_code"]) == (CPT, "73722")
    assert row["intent"] == "proposal"


def test_golden_us_core_rehab_prefers_snomed_over_other_codings() -> None:
    row = _row(_example("rehab", "ServiceRequest-ig.ndjson"))
    assert (row["service_system"], row["service_code"], row["service_display"]) == (
        SNOMED,
        "24165007",
        "Alcoholism counseling",
    )


def test_golden_demo_timing_bounds_and_insurance() -> None:
    resource = _example("demo-sr-028", "ServiceRequest-demo.ndjson")
    assert _row(resource) == {
        "endpoint": "clinic-emr",
        "resource_type": "ServiceRequest",
        "resource_id": "demo-sr-028",
        "version_id": "1",
        "last_updated": datetime(2026, 8, 30, 20, 17, 52, tzinfo=UTC),
        "content_hash": _hash(resource),
        "status": "completed",
        "intent": "order",
        "priority": "routine",
        "category_code": "3457005",
        "authored_on": datetime(2026, 8, 29, 21, 50, 52, tzinfo=UTC),  # 17:50:52-04:00
        "requested_start": datetime(2026, 9, 5, tzinfo=UTC),  # occurrenceTiming.repeat.boundsPeriod.start
        "patient_ref": "Patient/demo-141",
        "requester_ref": "Organization/demo-referrer-org-3",
        "requester_display": "Northside Pediatrics",
        "service_system": SNOMED,
        "service_code": "91251008",
        "service_display": "Physical therapy procedure",
        "reason_codes": [f"{ICD10CM}|M25.561"],
        "coverage_ref": "Coverage/demo-cov-141",
        "coverage_refs": ["Coverage/demo-cov-141"],
        "reason_refs": [],
        "discipline": "PT",
        "performer_ref": None,
        "based_on_refs": [],
        "replaces_refs": [],
        "source_ref": "Organization/demo-referrer-org-3",
        "source_type": None,
        "intake_missing": [],
        "intake_complete": True,
    }


def test_golden_demo_cpt_only_and_date_only_occurrence() -> None:
    row = _row(_example("demo-sr-005", "ServiceRequest-demo.ndjson"))
    assert (row["service_system"], row["service_code"], row["service_display"]) == (
        CPT,
        "97166",
        "OT eval mod complexity",
    )
    assert row["requested_start"] == datetime(2026, 7, 28, tzinfo=UTC)
    assert row["authored_on"] == datetime(2026, 7, 23, 23, 45, 24, tzinfo=UTC)
    assert row["coverage_ref"] == "Coverage/demo-cov-106"


def test_golden_demo_two_reason_codes() -> None:
    row = _row(_example("demo-sr-012", "ServiceRequest-demo.ndjson"))
    assert row["reason_codes"] == [f"{ICD10CM}|M54.50", f"{ICD10CM}|Z96.651"]


def test_golden_synthea_bundle_local_and_conditional_references() -> None:
    rows = [_row(r) for r in _lines("ServiceRequest-synthea-contained.ndjson")]
    urn, display_only, conditional = rows
    assert urn["requester_ref"] == "urn:uuid:6d705d81-8546-43b2-b336-31a282128f2d"
    assert urn["patient_ref"] is None  # a urn:uuid subject does not say it is a Patient
    assert display_only["requester_ref"] is None
    assert display_only["requester_display"] == "Unknown"
    assert conditional["requester_ref"] is None  # a search, not an id
    assert all(r["service_code"] is None and r["status"] == "completed" for r in rows)


def test_multiple_insurance_references() -> None:
    resource = _example("demo-sr-028", "ServiceRequest-demo.ndjson")
    resource["insurance"] = [
        {"display": "card on file"},
        {"reference": "https://payer.example/fhir/Coverage/abc/_history/3"},
        {"reference": "ClaimResponse/pa-1"},
    ]
    row = _row(resource)
    assert row["coverage_ref"] == "Coverage/abc"
    assert row["coverage_refs"] == ["Coverage/abc", "ClaimResponse/pa-1"]


@pytest.mark.parametrize("requester_type", ["Patient", "RelatedPerson"])
def test_requester_display_dropped_when_it_names_the_patient_or_a_relative(requester_type: str) -> None:
    resource = _example("ambulation")
    resource["requester"] = {"reference": f"{requester_type}/example", "display": "Peter James Chalmers"}
    row = _row(resource)
    assert row["requester_ref"] == f"{requester_type}/example"
    assert row["requester_display"] is None


def test_patient_ref_only_for_patients() -> None:
    resource = _example("ambulation")
    resource["subject"] = {"reference": "Group/102"}
    assert _row(resource)["patient_ref"] is None
    resource["subject"] = {"reference": "urn:uuid:a4fbfefa-4eee-4963-9f29-247fa46e1410", "type": "Patient"}
    assert _row(resource)["patient_ref"] == "urn:uuid:a4fbfefa-4eee-4963-9f29-247fa46e1410"


def test_occurrence_timing_event_wins_over_bounds() -> None:
    resource = _example("benchpress")
    resource["occurrenceTiming"] = {
        "event": ["2020-05-01T10:00:00+02:00", "2020-05-08T10:00:00+02:00"],
        "repeat": {"boundsPeriod": {"start": "2020-04-01"}},
    }
    assert _row(resource)["requested_start"] == datetime(2020, 5, 1, 8, tzinfo=UTC)


def test_content_hash_ignores_key_order() -> None:
    resource = _example("di")
    reordered = dict(reversed(list(resource.items())))
    assert _row(reordered)["content_hash"] == _row(resource)["content_hash"]
    resource["status"] = "completed"
    assert _row(resource)["content_hash"] != _row(reordered)["content_hash"]


def test_mapper_is_pure() -> None:
    resource = _example("myringotomy")
    before = copy.deepcopy(resource)
    assert _row(resource) == _row(resource)
    assert resource == before


def test_not_a_service_request() -> None:
    with pytest.raises(MappingError, match="expected a ServiceRequest"):
        map_service_request({"resourceType": "Basic", "id": "b", "code": {"text": "x"}}, CTX)


def test_registry() -> None:
    referral_types = {"ServiceRequest", "Appointment", "Encounter", "Practitioner", "PractitionerRole"}
    assert {
        rt for rt, tables in TARGET_TABLES.items() if "visit" in tables or "referral_source" in tables
    } == (referral_types | {"Organization"})
    assert MAPPERS["ServiceRequest"] == (map_service_request,)
    assert TARGET_TABLES["ServiceRequest"] == ("referral", "referral_source")
    assert MAPPERS["Appointment"][0] is referral.map_appointment
    assert TARGET_TABLES["Encounter"][0] == "visit"
    assert all(MAPPERS[t][0] is referral.map_referral_source for t in SOURCE_RESOURCES)


# -- discipline, source and intake checklist on real examples ---------------------------------------

ALL_ITEMS = ["diagnosis", "referral_reason", "payer", "requested_start", "referrer", "patient"]


def test_physiotherapy_is_pt_with_a_referenced_diagnosis_but_no_start_date() -> None:
    row = _row(_example("physiotherapy"))
    assert row["discipline"] == "PT"  # SNOMED 34431008 Physiotherapy of chest
    assert row["reason_refs"] == ["#cystic-fibrosis"]  # a contained Condition counts as a diagnosis
    assert row["based_on_refs"] == ["CarePlan/gpvisit"]
    assert row["source_ref"] == "Practitioner/example"
    assert row["intake_missing"] == ["payer", "requested_start"]  # Timing with a frequency only
    assert row["intake_complete"] is False


def test_physical_therapy_display_only_referrer_counts_as_referrer_but_has_no_source() -> None:
    row = _row(_example("physical-therapy"))
    assert row["discipline"] == "PT"  # SNOMED 710830005 Assessment of passive range of motion
    assert row["source_ref"] is None  # nothing to join on; the views fall back to the display
    assert row["source_type"] is None
    assert row["performer_ref"] is None  # display-only performer
    assert row["intake_missing"] == ["diagnosis", "payer"]  # "assessment of mobility ..." is text only


def test_ambulation_reason_reference_and_care_plan() -> None:
    row = _row(_example("ambulation"))
    assert row["discipline"] == "other"
    assert row["reason_refs"] == ["Observation/blood-pressure"]
    assert row["based_on_refs"] == ["CarePlan/preg"]
    assert row["source_ref"] == "Practitioner/3ad0687e-f477-468c-afd5-fcc2bf897809"
    assert row["intake_missing"] == ["payer", "requested_start"]


def test_display_only_subject_maps_with_the_patient_item_missing() -> None:
    row = _row(_example("education"))
    assert row["patient_ref"] is None
    assert row["performer_ref"] is None
    # Every item but the reason and the referrer ("Angela Care, MD") is missing.
    assert row["intake_missing"] == ["diagnosis", "payer", "patient"]


def test_referral_without_requester_is_an_unknown_source_not_dropped() -> None:
    row = _row(_example("ReferralRequestExample", "ServiceRequest-ig.ndjson"))
    assert row["source_ref"] is None
    assert row["source_type"] == "unknown"
    assert row["discipline"] == "other"
    assert row["intake_missing"] == ["diagnosis", "payer", "requested_start", "referrer"]


def test_subreferral_links_to_the_referral_it_is_based_on() -> None:
    resource = next(
        r
        for n, r in ALL
        if n == "ServiceRequest-ig.ndjson" and r["id"].startswith("SDOHCC-ServiceRequestSubreferral")
    )
    row = _row(copy.deepcopy(resource))
    assert row["based_on_refs"] == [
        "ServiceRequest/SDOHCC-ServiceRequestActiveFoodPantryApplicationAssistExample"
    ]
    assert row["source_type"] == "unknown"


def test_performer_role_reference() -> None:
    row = _row(_example("1", "ServiceRequest-ig.ndjson"))
    assert row["performer_ref"] == "PractitionerRole/2"


def test_demo_referrals_discipline_from_cpt_only_and_complete_intake() -> None:
    assert _row(_example("demo-sr-005", "ServiceRequest-demo.ndjson"))["discipline"] == "OT"  # CPT 97166
    row = _row(_example("demo-sr-012", "ServiceRequest-demo.ndjson"))
    assert (row["discipline"], row["intake_missing"], row["intake_complete"]) == ("PT", [], True)
    assert row["source_ref"] == "Practitioner/demo-referrer-4"


def test_synthea_urn_requester_and_patient() -> None:
    urn, display_only, conditional = [_row(r) for r in _lines("ServiceRequest-synthea-contained.ndjson")]
    assert urn["source_ref"] == "urn:uuid:6d705d81-8546-43b2-b336-31a282128f2d"
    assert "patient" not in urn["intake_missing"]  # a urn:uuid subject still identifies someone
    assert display_only["source_ref"] is None
    assert conditional["source_ref"] is None
    assert "referrer" not in conditional["intake_missing"]


def test_intake_items_are_configurable_per_endpoint() -> None:
    resource = _example("physiotherapy")
    ctx = MapContext("clinic-emr", CTX.synced_at, MappingOptions(intake_required=("diagnosis", "referrer")))
    (row,) = map_service_request(resource, ctx)["referral"]
    assert (row["intake_missing"], row["intake_complete"]) == ([], True)
    ctx = MapContext("clinic-emr", CTX.synced_at, MappingOptions(intake_required=("requested_start",)))
    (row,) = map_service_request(resource, ctx)["referral"]
    assert row["intake_missing"] == ["requested_start"]


def test_each_intake_item_is_checked() -> None:
    resource = _example("demo-sr-012", "ServiceRequest-demo.ndjson")
    assert _row(resource)["intake_missing"] == []
    for item, element in [
        ("diagnosis", "reasonCode"),
        ("payer", "insurance"),
        ("requested_start", "occurrencePeriod"),
        ("referrer", "requester"),
    ]:
        changed = copy.deepcopy(resource)
        del changed[element]
        assert _row(changed)["intake_missing"] == [item], item
    no_reason = copy.deepcopy(resource)
    no_reason["code"] = {"coding": [{"system": SNOMED, "display": "no code"}]}
    assert _row(no_reason)["intake_missing"] == ["referral_reason"]
    no_reason["note"] = [{"text": "evaluate and treat"}]
    assert _row(no_reason)["intake_missing"] == []
    group = copy.deepcopy(resource)
    group["subject"] = {"reference": "Group/1"}
    assert _row(group)["intake_missing"] == ["patient"]


def test_discipline_codes_from_config_extend_and_override_the_shipped_map() -> None:
    resource = _example("lipid")  # local code http://acme.org/tests|LIPID
    assert _row(resource)["discipline"] == "other"
    options = MappingOptions(discipline_codes={"http://acme.org/tests|LIPID": "SLP"})
    (row,) = map_service_request(resource, MapContext("e", CTX.synced_at, options))["referral"]
    assert row["discipline"] == "SLP"
    # An endpoint may also declare a shipped code "other"; a later PT code still decides.
    demo = _example("demo-sr-028", "ServiceRequest-demo.ndjson")  # SNOMED 91251008, then CPT 97161
    options = MappingOptions(discipline_codes={f"{SNOMED}|91251008": "other"})
    (row,) = map_service_request(demo, MapContext("e", CTX.synced_at, options))["referral"]
    assert row["discipline"] == "PT"
    options = MappingOptions(discipline_codes={f"{SNOMED}|91251008": "other", f"{CPT}|97161": "other"})
    (row,) = map_service_request(demo, MapContext("e", CTX.synced_at, options))["referral"]
    assert row["discipline"] == "other"


def test_discipline_from_performer_type_when_the_code_says_nothing() -> None:
    resource = _example("subrequest")
    resource["performerType"] = {"coding": [{"system": SNOMED, "code": "80546007"}]}
    assert _row(resource)["discipline"] == "OT"
    resource["code"] = {"coding": [{"system": CPT, "code": "92610"}]}
    assert _row(resource)["discipline"] == "SLP"  # the ordered service wins over the performer type


def test_codes_match_on_system_and_code() -> None:
    resource = _example("lipid")
    resource["code"] = {"coding": [{"system": "http://acme.org/tests", "code": "97161"}]}
    assert _row(resource)["discipline"] == "other"  # not the CPT code


def test_contained_practitioner_requester_becomes_a_source_row() -> None:
    resource = _example("demo-sr-012", "ServiceRequest-demo.ndjson")
    resource["contained"] = [
        {
            "resourceType": "PractitionerRole",
            "id": "ref1",
            "practitioner": {"display": "Dr. Inez Contained"},
            "code": [{"coding": [{"system": "http://nucc.org/provider-taxonomy", "code": "171M00000X"}]}],
            "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}],
        }
    ]
    resource["requester"] = {"reference": "#ref1"}
    records = map_resource(resource, CTX)
    (row,) = records["referral"]
    (source,) = records["referral_source"]
    assert row["requester_ref"] == "#ref1"
    assert row["source_ref"] == "PractitionerRole/demo-sr-012#ref1" == source["source_ref"]
    assert row["source_type"] == "case_manager"
    assert source == {
        "endpoint": "clinic-emr",
        "resource_type": "PractitionerRole",
        "resource_id": "demo-sr-012#ref1",
        "version_id": resource["meta"]["versionId"],
        "last_updated": row["last_updated"],
        "content_hash": _hash(resource["contained"][0]),
        "source_ref": "PractitionerRole/demo-sr-012#ref1",
        "name": "Dr. Inez Contained",
        "source_type": "case_manager",
        "npi": "1234567893",
        "practitioner_ref": None,
        "organization_ref": None,
        "practitioner_display": "Dr. Inez Contained",
        "organization_display": None,
        "type_codes": ["http://nucc.org/provider-taxonomy|171M00000X"],
        "active": None,
    }


@pytest.mark.parametrize(
    "requester",
    [
        {"reference": "Patient/demo-132", "display": "Zelda Quux"},
        {"reference": "RelatedPerson/mum", "display": "Zelda's mother"},
        {"reference": "#me"},
    ],
)
def test_self_referral_keeps_no_name_and_no_source_row(requester: dict[str, Any]) -> None:
    resource = _example("demo-sr-012", "ServiceRequest-demo.ndjson")
    resource["contained"] = [{"resourceType": "Patient", "id": "me", "name": [{"family": "Secret"}]}]
    resource["requester"] = requester
    records = map_resource(resource, CTX)
    assert list(records) == ["referral"]
    (row,) = records["referral"]
    assert (row["source_ref"], row["source_type"], row["requester_display"]) == (None, "self", None)
    flat = json.dumps(records, default=str)
    assert "Zelda" not in flat
    assert "Secret" not in flat
    assert "referrer" not in row["intake_missing"]


def test_service_request_without_subject_is_rejected_naming_the_element() -> None:
    resource = _example("demo-sr-012", "ServiceRequest-demo.ndjson")
    resource["subject"] = {}
    with pytest.raises(MappingError, match=r"^ServiceRequest/demo-sr-012: subject: missing$"):
        map_service_request(resource, CTX)
    del resource["subject"]
    with pytest.raises(MappingError, match=r"^ServiceRequest/demo-sr-012: invalid ServiceRequest: subject"):
        map_resource(resource, CTX)


# -- corpus regression ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "resource"), ALL, ids=[f"{n}:{r['id']}" for n, r in ALL])
def test_every_example_maps_or_is_rejected_with_a_reason(name: str, resource: dict[str, Any]) -> None:
    try:
        records = map_resource(resource, CTX)
    except MappingError as exc:
        message = str(exc)
        assert message.startswith(f"ServiceRequest/{resource['id']}: ")
        assert "\n" not in message
        return
    (row,) = records["referral"]
    assert set(row) == ROW_KEYS
    assert row["endpoint"] == "clinic-emr"
    assert row["resource_id"] == resource["id"]
    for key in ("last_updated", "authored_on", "requested_start"):
        assert row[key] is None or row[key].utcoffset().total_seconds() == 0
    assert all("|" in token for token in row["reason_codes"])


def test_corpus_counts() -> None:
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for _, resource in ALL:
        try:
            map_resource(resource, CTX)
            outcomes["mapped"] += 1
        except MappingError as exc:
            outcomes["rejected"] += 1
            reasons[str(exc).split(": ", 2)[-1]] += 1
    # 20 HL7 R4 + 17 IG + 3 Synthea + 3 demo map; only the 5 deliberately broken demo referrals fail.
    assert outcomes == {"mapped": 43, "rejected": 5}
    assert sum(n for reason, n in reasons.items() if reason.startswith("status: code not in")) == 3


def test_mappings_stay_free_of_io_imports() -> None:
    # A fresh interpreter, so other tests' imports do not count.
    code = (
        "import sys, mappings.registry, mappings.elements, mappings.validate; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'httpx', 'sqlalchemy'} "
        "or m.startswith('connector.warehouse')); print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_mapper_and_context_pickle() -> None:
    # Dask/process task runners ship both to workers.
    mapper, ctx = pickle.loads(pickle.dumps((map_resource, CTX)))  # noqa: S301 (our own bytes)
    assert mapper(_example("di"), ctx) == map_service_request(_example("di"), CTX)
