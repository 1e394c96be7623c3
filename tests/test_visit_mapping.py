"""Appointment / Encounter -> visit: golden rows from real examples, statuses, kinds and rejections."""

from __future__ import annotations

import copy
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connector.errors import MappingError
from mappings.referral import content_hash, map_appointment, map_encounter
from mappings.registry import map_resource
from mappings.types import MapContext, MappingOptions
from mappings.visit import VISIT_STATUSES

DATA = Path(__file__).parent / "data" / "fhir"
CTX = MapContext(endpoint="clinic-emr", synced_at=datetime(2026, 11, 1, 6, 0, tzinfo=UTC))
CPT = "http://www.ama-assn.org/go/cpt"
SNOMED = "http://snomed.info/sct"
VISIT_KEYS = {
    "endpoint",
    "resource_type",
    "resource_id",
    "version_id",
    "last_updated",
    "content_hash",
    "referral_ref",
    "referral_link",
    "patient_ref",
    "kind",
    "kind_source",
    "discipline",
    "status",
    "fhir_status",
    "start_at",
    "booked_at",
    "appointment_ref",
    "type_codes",
}


def _lines(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line]


FILES = ("Appointment.ndjson", "Encounter.ndjson", "Appointment-demo.ndjson", "Encounter-demo.ndjson")
ALL = [(name, r) for name in FILES for r in _lines(name)]
BY_ID = {(name, r["id"]): r for name, r in ALL}


def _example(rid: str, name: str) -> dict[str, Any]:
    return copy.deepcopy(BY_ID[(name, rid)])


def _visit(resource: dict[str, Any], ctx: MapContext = CTX) -> dict[str, Any]:
    records = map_resource(resource, ctx)
    assert list(records) == ["visit"]
    (row,) = records["visit"]
    return row


# -- golden rows from the official examples ----------------------------------------------------------


def test_golden_appointment_based_on_a_service_request() -> None:
    resource = _example("example", "Appointment.ndjson")
    assert _visit(resource) == {
        "endpoint": "clinic-emr",
        "resource_type": "Appointment",
        "resource_id": "example",
        "version_id": None,
        "last_updated": None,
        "content_hash": content_hash(resource),
        "referral_ref": "ServiceRequest/myringotomy",
        "referral_link": "basedOn",
        "patient_ref": "Patient/example",
        "kind": "other",  # "General Discussion" / FOLLOWUP: no therapy codes
        "kind_source": None,
        "discipline": "other",
        "status": "booked",
        "fhir_status": "booked",
        "start_at": datetime(2013, 12, 10, 9, 0, tzinfo=UTC),
        "booked_at": datetime(2013, 10, 10, tzinfo=UTC),
        "appointment_ref": None,
        "type_codes": [
            "|52",
            "http://terminology.hl7.org/CodeSystem/v2-0276|FOLLOWUP",
        ],
    }


def test_appointment_without_referral_is_still_a_visit() -> None:
    row = _visit(_example("2docs", "Appointment.ndjson"))
    assert row["referral_ref"] is None
    assert row["patient_ref"] == "Patient/example"  # the Patient participant, not the practitioners
    assert row["booked_at"] is None


def test_proposed_appointment_has_no_start_and_status_other() -> None:
    row = _visit(_example("examplereq", "Appointment.ndjson"))
    assert (row["status"], row["fhir_status"], row["start_at"]) == ("other", "proposed", None)


def test_golden_encounter_based_on_a_service_request_with_its_appointment() -> None:
    row = _visit(_example("f203", "Encounter.ndjson"))
    assert row["referral_ref"] == "ServiceRequest/myringotomy"
    assert row["appointment_ref"] == "Appointment/example"
    assert row["patient_ref"] == "Patient/f201"
    assert (row["status"], row["fhir_status"]) == ("fulfilled", "finished")
    assert row["start_at"] == datetime(2013, 3, 11, tzinfo=UTC)
    assert row["kind"] == "other"
    assert row["type_codes"] == [f"{SNOMED}|183807002"]


def test_encounter_in_progress_counts_as_fulfilled_and_offsets_become_utc() -> None:
    row = _visit(_example("emerg", "Encounter.ndjson"))
    assert (row["status"], row["fhir_status"]) == ("fulfilled", "in-progress")
    assert row["start_at"] == datetime(2017, 1, 31, 21, 15, tzinfo=UTC)  # 07:15+10:00
    assert row["referral_ref"] is None


def test_encounter_without_period_has_no_start() -> None:
    row = _visit(_example("example", "Encounter.ndjson"))
    assert row["start_at"] is None
    assert row["patient_ref"] == "Patient/example"


def test_no_patient_names_in_visit_rows() -> None:
    rows = [_visit(copy.deepcopy(r)) for _, r in ALL]
    flat = json.dumps(rows, default=str)
    for name in ("Chalmers", "Heuvel", "Roel", "Careful"):
        assert name not in flat


# -- the demo: evaluation visits ----------------------------------------------------------------------


def test_golden_demo_evaluation_appointment() -> None:
    row = _visit(_example("demo-appt-001", "Appointment-demo.ndjson"))
    assert {
        k: row[k] for k in ("referral_ref", "patient_ref", "kind", "kind_source", "discipline", "status")
    } == {
        "referral_ref": "ServiceRequest/demo-sr-001",
        "patient_ref": "Patient/demo-139",
        "kind": "evaluation",  # CPT 92524 in serviceType
        "kind_source": "code",
        "discipline": "SLP",
        "status": "fulfilled",
    }
    assert row["start_at"] == datetime(2026, 9, 23, 20, 30, tzinfo=UTC)
    assert row["booked_at"] == datetime(2026, 9, 18, tzinfo=UTC)
    assert (row["version_id"], row["last_updated"]) == ("2", datetime(2026, 9, 23, 21, 30, tzinfo=UTC))


@pytest.mark.parametrize(
    ("rid", "status"),
    [("demo-appt-010", "noshow"), ("demo-appt-019", "cancelled"), ("demo-appt-013", "booked")],
)
def test_demo_appointment_statuses(rid: str, status: str) -> None:
    row = _visit(_example(rid, "Appointment-demo.ndjson"))
    assert (row["status"], row["fhir_status"], row["kind"]) == (status, status, "evaluation")


def test_golden_demo_evaluation_encounter() -> None:
    row = _visit(_example("demo-enc-001", "Encounter-demo.ndjson"))
    assert row["kind"] == "evaluation"  # Encounter.type CPT 92524
    assert row["discipline"] == "SLP"
    assert row["appointment_ref"] == "Appointment/demo-appt-001"
    assert row["referral_ref"] == "ServiceRequest/demo-sr-001"
    assert row["status"] == "fulfilled"


# -- statuses and kinds -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fhir_status", "status"),
    [
        ("proposed", "other"),
        ("pending", "other"),
        ("booked", "booked"),
        ("arrived", "fulfilled"),
        ("checked-in", "fulfilled"),
        ("fulfilled", "fulfilled"),
        ("noshow", "noshow"),
        ("cancelled", "cancelled"),
        ("entered-in-error", "other"),
        ("waitlist", "other"),
    ],
)
def test_appointment_status_map(fhir_status: str, status: str) -> None:
    resource = _example("example", "Appointment.ndjson")
    resource["status"] = fhir_status
    assert _visit(resource)["status"] == status


@pytest.mark.parametrize(
    ("fhir_status", "status"),
    [
        ("planned", "booked"),
        ("arrived", "fulfilled"),
        ("triaged", "fulfilled"),
        ("in-progress", "fulfilled"),
        ("onleave", "fulfilled"),
        ("finished", "fulfilled"),
        ("cancelled", "cancelled"),
        ("entered-in-error", "other"),
        ("unknown", "other"),
    ],
)
def test_encounter_status_map(fhir_status: str, status: str) -> None:
    resource = _example("f001", "Encounter.ndjson")
    resource["status"] = fhir_status
    assert _visit(resource)["status"] == status


@pytest.mark.parametrize(
    ("codes", "kind", "discipline"),
    [
        ([(CPT, "97161")], "evaluation", "PT"),
        ([(CPT, "97166")], "evaluation", "OT"),
        ([(CPT, "92610")], "evaluation", "SLP"),
        ([(CPT, "97110")], "treatment", "PT"),
        ([(CPT, "92507")], "treatment", "SLP"),
        ([(CPT, "97530")], "treatment", "other"),  # PT and OT bill it alike
        ([(CPT, "97164")], "treatment", "PT"),  # a re-evaluation is part of the plan of care
        ([(CPT, "97110"), (CPT, "97162")], "evaluation", "PT"),  # evaluation wins
        ([(SNOMED, "91251008")], "other", "PT"),
        ([("http://example.org/local", "97161")], "other", "other"),  # system matters
    ],
)
def test_kind_and_discipline_from_encounter_type(
    codes: list[tuple[str, str]], kind: str, discipline: str
) -> None:
    resource = _example("f001", "Encounter.ndjson")
    resource["type"] = [{"coding": [{"system": s, "code": c} for s, c in codes]}]
    row = _visit(resource)
    assert (row["kind"], row["discipline"]) == (kind, discipline)


def test_kind_from_encounter_service_type_and_appointment_type() -> None:
    encounter = _example("example", "Encounter.ndjson")
    encounter["serviceType"] = {"coding": [{"system": CPT, "code": "97165"}]}
    assert _visit(encounter)["kind"] == "evaluation"
    appointment = _example("2docs", "Appointment.ndjson")
    appointment["appointmentType"] = {"coding": [{"system": CPT, "code": "97140"}]}
    assert _visit(appointment)["kind"] == "treatment"


def test_visit_discipline_uses_the_endpoint_codes() -> None:
    resource = _example("f001", "Encounter.ndjson")  # SNOMED 270427003 Patient-initiated encounter
    options = MappingOptions(discipline_codes={f"{SNOMED}|270427003": "OT"})
    assert _visit(resource, MapContext("e", CTX.synced_at, options))["discipline"] == "OT"


def test_based_on_care_plan_is_not_a_referral() -> None:
    resource = _example("f001", "Encounter.ndjson")
    resource["basedOn"] = [{"reference": "CarePlan/x"}, {"reference": "https://h/fhir/ServiceRequest/sr9"}]
    assert _visit(resource)["referral_ref"] == "ServiceRequest/sr9"


# -- rejections -------------------------------------------------------------------------------------


def test_appointment_without_patient_participant_is_rejected() -> None:
    resource = _example("2docs", "Appointment.ndjson")
    resource["participant"] = [p for p in resource["participant"] if "Patient" not in str(p)]
    with pytest.raises(MappingError, match=r"^Appointment/2docs: participant: no Patient participant"):
        map_resource(resource, CTX)


@pytest.mark.parametrize("subject", [None, {"reference": "Group/g1"}, {"display": "P. van de Heuvel"}])
def test_encounter_without_patient_subject_is_rejected(subject: dict[str, Any] | None) -> None:
    resource = _example("f001", "Encounter.ndjson")
    if subject is None:
        del resource["subject"]
    else:
        resource["subject"] = subject
    with pytest.raises(MappingError) as err:
        map_resource(resource, CTX)
    assert str(err.value) == "Encounter/f001: subject: not a Patient reference"
    assert "Heuvel" not in str(err.value)


def test_unknown_status_is_rejected_before_mapping() -> None:
    resource = _example("demo-appt-001", "Appointment-demo.ndjson")
    resource["status"] = "done"
    with pytest.raises(MappingError, match=r"^Appointment/demo-appt-001: invalid Appointment: status: code"):
        map_resource(resource, CTX)


def test_bad_date_is_rejected_naming_the_element() -> None:
    resource = _example("demo-appt-001", "Appointment-demo.ndjson")
    resource["created"] = "2026-02-30"
    with pytest.raises(MappingError, match=r"^Appointment/demo-appt-001: created: not a valid date"):
        map_appointment(resource, CTX)


def test_wrong_type_for_the_mapper() -> None:
    with pytest.raises(MappingError, match="expected a Encounter"):
        map_encounter(_example("example", "Appointment.ndjson"), CTX)


# -- corpus regression ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "resource"), ALL, ids=[f"{n}:{r['id']}" for n, r in ALL])
def test_every_example_maps_or_is_rejected_with_a_reason(name: str, resource: dict[str, Any]) -> None:
    try:
        row = _visit(copy.deepcopy(resource))
    except MappingError as exc:
        message = str(exc)
        assert message.startswith(f"{resource['resourceType']}/{resource['id']}: ")
        assert "\n" not in message
        return
    assert set(row) == VISIT_KEYS
    assert row["status"] in VISIT_STATUSES
    assert row["patient_ref"].startswith("Patient/")
    assert row["start_at"] is None or row["start_at"].utcoffset().total_seconds() == 0


def test_corpus_counts() -> None:
    outcomes: Counter[str] = Counter()
    for name, resource in ALL:
        if name.endswith("-demo.ndjson"):
            continue
        try:
            map_resource(copy.deepcopy(resource), CTX)
            outcomes[resource["resourceType"]] += 1
        except MappingError:
            outcomes["rejected"] += 1
    # Every official Appointment and Encounter example has a patient: all 3 + 10 map.
    assert outcomes == {"Appointment": 3, "Encounter": 10}


# -- the endpoint's own evaluation codes and words ([endpoints.visits]) ------------------------------


def _typed(
    codes: list[tuple[str, str]], text: str | None = None, display: str | None = None
) -> dict[str, Any]:
    resource = _example("2docs", "Appointment.ndjson")
    coding = [{"system": s, "code": c, **({"display": display} if display else {})} for s, c in codes]
    resource["serviceType"] = [{"coding": coding, **({"text": text} if text else {})}]
    resource.pop("appointmentType", None)
    return resource


OWN = MappingOptions(
    evaluation_codes=("http://clinic.example.org/visit|PTEVAL", "INIT"), evaluation_text=("eval",)
)


@pytest.mark.parametrize(
    ("resource", "kind", "source"),
    [
        (_typed([("http://clinic.example.org/visit", "PTEVAL")]), "evaluation", "config"),  # system|code
        (_typed([("urn:other", "INIT")]), "evaluation", "config"),  # a bare code: any system
        (_typed([("urn:local", "X1")], text="PT Initial Eval"), "evaluation", "config"),  # a word of the text
        (_typed([("urn:local", "X2")], display="OT Evaluation"), "evaluation", "config"),  # of a display
        (_typed([("urn:local", "X3")], text="Follow-up"), "other", None),
        # The shipped code map decides first: CPT 97140 is a treatment, whatever the text says.
        (_typed([(CPT, "97140")], text="Re-eval"), "treatment", "code"),
        (_typed([(CPT, "97161")]), "evaluation", "code"),
    ],
)
def test_the_endpoints_evaluation_codes_and_words_decide_where_the_code_map_does_not(
    resource: dict[str, Any], kind: str, source: str | None
) -> None:
    row = _visit(resource, MapContext("e", CTX.synced_at, OWN))
    assert (row["kind"], row["kind_source"]) == (kind, source)


def test_without_own_codes_a_free_text_visit_is_other() -> None:
    row = _visit(_typed([("urn:local", "X1")], text="PT Initial Eval"))
    assert (row["kind"], row["kind_source"]) == ("other", None)


def test_visits_config_reaches_the_mapping_options() -> None:
    from connector.config import parse_settings

    settings = parse_settings(
        {
            "endpoints": [
                {
                    "name": "e",
                    "ndjson_dir": "x",
                    "visits": {"evaluation_codes": ["INIT"], "evaluation_text": ["Initial Eval"]},
                }
            ]
        }
    )
    options = settings.endpoints[0].mapping_options()
    assert (options.evaluation_codes, options.evaluation_text) == (("INIT",), ("initial eval",))
    import pickle

    assert pickle.loads(pickle.dumps(options)) == options  # noqa: S301 - our own bytes; options cross to workers
