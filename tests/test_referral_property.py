"""Property: any structurally valid ServiceRequest maps without an exception, to a consistent row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from connector.errors import MappingError
from mappings.discipline import DISCIPLINES
from mappings.registry import map_resource
from mappings.types import DEFAULT_INTAKE_ITEMS, MapContext, MappingOptions
from mappings.validate import validate

SYSTEMS = (
    "http://snomed.info/sct",
    "http://www.ama-assn.org/go/cpt",
    "http://hl7.org/fhir/sid/icd-10-cm",
    "http://loinc.org",
    "http://example.org/local",
)
CODES = ("91251008", "84478008", "5154007", "97161", "97166", "92523", "97110", "M54.50", "LIPID", "x")

ids = st.from_regex(r"[A-Za-z0-9\-.]{1,20}", fullmatch=True)
texts = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=20
).filter(lambda s: s.strip() == s and s != "")
codings = st.fixed_dictionaries(
    {},
    optional={
        "system": st.sampled_from(SYSTEMS),
        "code": st.sampled_from(CODES),
        "display": texts,
    },
)
concepts = st.fixed_dictionaries(
    {}, optional={"coding": st.lists(codings, max_size=3), "text": texts}
).filter(bool)
ref_types = st.sampled_from(
    ["Patient", "Group", "Practitioner", "PractitionerRole", "Organization", "RelatedPerson", "Device"]
)
literal_refs = st.one_of(
    st.builds(lambda t, i: f"{t}/{i}", ref_types, ids),
    st.builds(lambda t, i: f"https://h.example/fhir/{t}/{i}/_history/2", ref_types, ids),
    st.builds(lambda i: f"urn:uuid:{i}", st.uuids()),
    st.builds(lambda i: f"#{i}", ids),
    st.just("Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|1234567893"),
)
references = st.fixed_dictionaries(
    {},
    optional={
        "reference": literal_refs,
        "display": texts,
        "type": ref_types,
        "identifier": st.fixed_dictionaries({"system": st.just("urn:x"), "value": ids}),
    },
).filter(bool)


@st.composite
def fhir_datetimes(draw: st.DrawFn) -> str:
    moment = draw(st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2100, 12, 30)))
    shape = draw(st.sampled_from(["year", "month", "date", "utc", "offset"]))
    if shape == "year":
        return f"{moment.year:04d}"
    if shape == "month":
        return f"{moment.year:04d}-{moment.month:02d}"
    if shape == "date":
        return moment.date().isoformat()
    if shape == "utc":
        return moment.replace(tzinfo=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    minutes = draw(st.integers(min_value=-14 * 60, max_value=14 * 60)) // 15 * 15
    return moment.replace(tzinfo=timezone(timedelta(minutes=minutes))).isoformat()


occurrences = st.one_of(
    st.none(),
    st.builds(lambda d: {"occurrenceDateTime": d}, fhir_datetimes()),
    st.builds(
        lambda p: {"occurrencePeriod": p},
        st.fixed_dictionaries({}, optional={"start": fhir_datetimes(), "end": fhir_datetimes()}),
    ),
    st.builds(
        lambda e, b: {"occurrenceTiming": {"event": e, "repeat": {"boundsPeriod": {"start": b}}}},
        st.lists(fhir_datetimes(), max_size=2),
        fhir_datetimes(),
    ),
    st.just({"occurrenceTiming": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "wk"}}}),
)
contained_requesters = st.sampled_from(
    [
        {"resourceType": "Practitioner", "id": "req", "name": [{"family": "Lee", "given": ["Kim"]}]},
        {"resourceType": "PractitionerRole", "id": "req", "practitioner": {"display": "Dr. Lee"}},
        {"resourceType": "Organization", "id": "req", "name": "Clinic"},
        {"resourceType": "Patient", "id": "req"},
        {"resourceType": "RelatedPerson", "id": "req", "patient": {"reference": "Patient/p"}},
    ]
)


@st.composite
def service_requests(draw: st.DrawFn) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": draw(ids),
        "status": draw(st.sampled_from(["draft", "active", "on-hold", "revoked", "completed", "unknown"])),
        "intent": draw(st.sampled_from(["proposal", "plan", "order", "original-order", "option"])),
        "subject": draw(references),
    }
    optional: dict[str, Any] = {
        "meta": st.fixed_dictionaries(
            {}, optional={"versionId": ids, "lastUpdated": fhir_datetimes().filter(lambda d: "T" in d)}
        ),
        "priority": st.sampled_from(["routine", "urgent", "asap", "stat"]),
        "category": st.lists(concepts, max_size=2),
        "code": concepts,
        "performerType": concepts,
        "authoredOn": fhir_datetimes(),
        "requester": references,
        "performer": st.lists(references, max_size=2),
        "reasonCode": st.lists(concepts, max_size=2),
        "reasonReference": st.lists(references, max_size=2),
        "insurance": st.lists(references, max_size=2),
        "basedOn": st.lists(references, max_size=2),
        "replaces": st.lists(references, max_size=2),
        "note": st.lists(st.fixed_dictionaries({"text": texts}), max_size=1),
    }
    for element, strategy in optional.items():
        if draw(st.booleans()):
            resource[element] = draw(strategy)
    occurrence = draw(occurrences)
    if occurrence:
        resource.update(occurrence)
    if draw(st.booleans()):
        resource["contained"] = [draw(contained_requesters)]
        resource["requester"] = {"reference": "#req"}
    return resource


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    resource=service_requests(),
    required=st.lists(st.sampled_from(DEFAULT_INTAKE_ITEMS), unique=True).map(tuple),
)
def test_any_valid_service_request_maps(resource: dict[str, Any], required: tuple[str, ...]) -> None:
    try:
        validate(resource)
    except MappingError:
        assume(False)  # only structurally valid resources are the property's input
    ctx = MapContext("e", datetime(2026, 11, 1, tzinfo=UTC), MappingOptions(intake_required=required))
    records = map_resource(resource, ctx)
    (row,) = records["referral"]
    assert row["resource_id"] == resource["id"]
    assert row["discipline"] in DISCIPLINES
    assert set(row["intake_missing"]) <= set(required)
    assert row["intake_complete"] is (not row["intake_missing"])
    assert row["source_type"] in (
        None,
        "self",
        "unknown",
        *(s["source_type"] for s in records.get("referral_source", [])),
    )
    for key in ("last_updated", "authored_on", "requested_start"):
        assert row[key] is None or row[key].utcoffset() == timedelta(0)
    for source in records.get("referral_source", []):
        assert row["source_ref"] == source["source_ref"]
        assert source["resource_id"] == f"{resource['id']}#req"
    if row["source_type"] == "self":
        assert row["requester_display"] is None
        assert row["source_ref"] is None
