"""Element helpers: FHIR dates, references, codings, meta."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.errors import MappingError
from mappings.elements import (
    codes,
    coding,
    parse_fhir_datetime,
    reference,
    reference_type,
    resource_meta,
)

# -- parse_fhir_datetime ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2017", datetime(2017, 1, 1, tzinfo=UTC)),
        ("2017-03", datetime(2017, 3, 1, tzinfo=UTC)),
        ("2017-03-05", datetime(2017, 3, 5, tzinfo=UTC)),
        ("2017-02-01T17:23:07Z", datetime(2017, 2, 1, 17, 23, 7, tzinfo=UTC)),
        ("2013-05-08T09:33:27+07:00", datetime(2013, 5, 8, 2, 33, 27, tzinfo=UTC)),
        ("2016-10-10T15:00:00-07:00", datetime(2016, 10, 10, 22, 0, tzinfo=UTC)),
        ("2024-10-13T10:59:38-08:00", datetime(2024, 10, 13, 18, 59, 38, tzinfo=UTC)),
        ("2020-01-01T00:30:00+05:30", datetime(2019, 12, 31, 19, 0, tzinfo=UTC)),
        # instant with more digits than Python keeps: truncated to microseconds
        ("2015-02-07T13:28:17.239123456+02:00", datetime(2015, 2, 7, 11, 28, 17, 239123, tzinfo=UTC)),
        ("2015-02-07T13:28:17.2Z", datetime(2015, 2, 7, 13, 28, 17, 200000, tzinfo=UTC)),
        # a time without a zone (not valid FHIR, sent by some servers) is read as UTC
        ("2015-02-07T13:28:17", datetime(2015, 2, 7, 13, 28, 17, tzinfo=UTC)),
        ("2024-02-29", datetime(2024, 2, 29, tzinfo=UTC)),
    ],
)
def test_parse_fhir_datetime(text: str, expected: datetime) -> None:
    parsed = parse_fhir_datetime(text)
    assert parsed == expected
    assert parsed is not None
    assert parsed.utcoffset() == timedelta(0)


def test_parse_fhir_datetime_none() -> None:
    assert parse_fhir_datetime(None, "authoredOn") is None


@pytest.mark.parametrize(
    "text",
    [
        "2017-13",
        "2017-02-30",
        "2023-02-29",
        "yesterday",
        "20170305",
        "2017-03-05T25:00:00Z",
        "2017-03-05T10:00:00+24:00",
        "2017-03-05 10:00:00Z",
        "",
        "0000-01-01",
        "2017-3-5",
        "2017-03-05T10Z",
    ],
)
def test_parse_fhir_datetime_rejects_bad_text_naming_the_element(text: str) -> None:
    with pytest.raises(MappingError) as info:
        parse_fhir_datetime(text, "authoredOn")
    message = str(info.value)
    assert message.startswith("authoredOn: ")
    if text:
        assert text not in message


def test_parse_fhir_datetime_rejects_non_text() -> None:
    with pytest.raises(MappingError, match=r"^occurrenceDateTime: "):
        parse_fhir_datetime(20170305, "occurrenceDateTime")  # type: ignore[arg-type]


_offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


@given(
    st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2200, 12, 30), timezones=_offsets),
    st.sampled_from(["seconds", "milliseconds", "microseconds"]),
)
def test_parse_fhir_datetime_roundtrips_any_instant(moment: datetime, timespec: str) -> None:
    text = moment.isoformat(timespec=timespec)
    if text.endswith("+00:00") and moment.microsecond % 2:
        text = text[:-6] + "Z"  # both UTC spellings
    expected = moment.replace(microsecond=moment.microsecond if timespec == "microseconds" else 0)
    if timespec == "milliseconds":
        expected = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    assert parse_fhir_datetime(text) == expected.astimezone(UTC)


@given(st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31)))
def test_parse_fhir_datetime_dates_and_partials(day: date) -> None:
    full = day.isoformat()
    assert parse_fhir_datetime(full) == datetime(day.year, day.month, day.day, tzinfo=UTC)
    assert parse_fhir_datetime(full[:7]) == datetime(day.year, day.month, 1, tzinfo=UTC)
    assert parse_fhir_datetime(full[:4]) == datetime(day.year, 1, 1, tzinfo=UTC)


# -- reference ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ({"reference": "Patient/example"}, "Patient/example"),
        ({"reference": "Practitioner/3ad0687e-f477-468c"}, "Practitioner/3ad0687e-f477-468c"),
        ({"reference": "Patient/1/_history/2"}, "Patient/1"),
        ({"reference": "https://fhir.orionhealth.com/blaze/fhir/Patient/77662"}, "Patient/77662"),
        ({"reference": "http://example.org/fhir/Practitioner/full2/_history/7"}, "Practitioner/full2"),
        ({"reference": "http://example.org/fhir/ServiceRequest/someRef/"}, "ServiceRequest/someRef"),
        ({"reference": "#cystic-fibrosis"}, "#cystic-fibrosis"),
        ({"reference": "urn:uuid:6d705d81-8546-43b2"}, "urn:uuid:6d705d81-8546-43b2"),
        ({"reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999966979"}, None),
        ({"identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567890"}}, None),
        ({"display": "Dr. Adam Careful"}, None),
        ({"reference": "http://example.org/some/page"}, None),
        ({"reference": ""}, None),
        ({}, None),
        (None, None),
    ],
)
def test_reference(ref: dict[str, Any] | None, expected: str | None) -> None:
    assert reference(ref) == expected


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ({"reference": "Patient/1"}, "Patient"),
        ({"reference": "https://host/fhir/Organization/7"}, "Organization"),
        ({"reference": "urn:uuid:a4fbfefa-4eee-4963-9f29-247fa46e1410"}, None),
        ({"reference": "urn:uuid:a4fbfefa-4eee-4963-9f29-247fa46e1410", "type": "Patient"}, "Patient"),
        (
            {"identifier": {"value": "x"}, "type": "http://hl7.org/fhir/StructureDefinition/Patient"},
            "Patient",
        ),
        ({"reference": "#p1"}, None),
        ({"display": "Someone"}, None),
        (None, None),
    ],
)
def test_reference_type(ref: dict[str, Any] | None, expected: str | None) -> None:
    assert reference_type(ref) == expected


# -- coding / codes -----------------------------------------------------------------------------

RAW_CODE = {
    "coding": [
        {"system": "http://snomed.info/sct", "code": "24165007", "display": "Alcoholism counseling"},
        {"system": "http://www.cms.gov/Medicare/Coding/ICD10", "code": "HZ30ZZZ"},
    ],
    "text": "Alcohol rehabilitation",
}


def test_coding_first_and_by_system() -> None:
    assert coding(RAW_CODE) == ("http://snomed.info/sct", "24165007", "Alcoholism counseling")
    # no display on the coding: the concept text stands in
    assert coding(RAW_CODE, "http://www.cms.gov/Medicare/Coding/ICD10") == (
        "http://www.cms.gov/Medicare/Coding/ICD10",
        "HZ30ZZZ",
        "Alcohol rehabilitation",
    )
    assert coding(RAW_CODE, "http://loinc.org") == (None, None, "Alcohol rehabilitation")


def test_coding_text_only_and_missing() -> None:
    assert coding({"text": "Appendectomy"}) == (None, None, "Appendectomy")
    assert coding(None) == (None, None, None)
    assert coding({}) == (None, None, None)


def test_codes() -> None:
    concepts: list[Any] = [
        {
            "coding": [
                {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "M54.50"},
                {"system": "http://snomed.info/sct", "code": "279039007"},
            ]
        },
        {"text": "text only"},
        {"coding": [{"code": "V173"}, {"system": "http://loinc.org", "display": "no code"}]},
    ]
    assert codes(concepts) == [
        "http://hl7.org/fhir/sid/icd-10-cm|M54.50",
        "http://snomed.info/sct|279039007",
        "|V173",
    ]
    assert codes(None) == []
    assert codes([]) == []


# -- resource_meta ------------------------------------------------------------------------------


def test_resource_meta() -> None:
    resource = {
        "resourceType": "ServiceRequest",
        "id": "demo-sr-001",
        "meta": {"versionId": "3", "lastUpdated": "2026-09-18T11:01:43.123-04:00"},
    }
    assert resource_meta(resource) == (
        "ServiceRequest",
        "demo-sr-001",
        "3",
        datetime(2026, 9, 18, 15, 1, 43, 123000, tzinfo=UTC),
        "2026-09-18T11:01:43.123-04:00",
    )


def test_resource_meta_without_meta() -> None:
    assert resource_meta({"resourceType": "Coverage", "id": "9876B1"}) == (
        "Coverage",
        "9876B1",
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    "resource",
    [{"id": "x"}, {"resourceType": "ServiceRequest"}, {"resourceType": "ServiceRequest", "id": ""}],
)
def test_resource_meta_requires_type_and_id(resource: dict[str, Any]) -> None:
    with pytest.raises(MappingError):
        resource_meta(resource)


def test_resource_meta_bad_last_updated_names_the_element() -> None:
    with pytest.raises(MappingError, match=r"^meta\.lastUpdated: "):
        resource_meta({"resourceType": "Task", "id": "t", "meta": {"lastUpdated": "last tuesday"}})
