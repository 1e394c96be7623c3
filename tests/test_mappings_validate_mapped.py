"""`validation = "mapped"`: the fast check judges exactly as R4B judges the projection.

The contract: for every resource R, `validate_mapped(R)` raises if and only if
`mappings.validate.validate(project(R))` raises. It is checked on every test and demo resource, on a few
thousand deterministic mutations of them, and on hypothesis-chosen values at hypothesis-chosen places.
A second contract proves `READ_ELEMENTS` complete: the mappers (and `map_resources`) give the same rows
for `project(R)` as for R, and look at no top-level key that `project` drops.

R4B judgements that look odd, matched on purpose (the contract is equivalence):
- an element given as a JSON string of the object is parsed and accepted (`"subject": "{...}"`);
- a null single complex element is accepted, even a required one (`"beneficiary": null`);
- an empty list satisfies a required list (`"payor": []`);
- any element may carry `resourceType` (null or its own type) or `resource_type`, `fhir_comments`, and
  fields may be named by their Python names (`class_fhir`, `status__ext`);
- uri accepts "" and blanks; url accepts any string; strings may be blank (" "), not empty;
- dateTime / instant / date accept numbers (unix timestamps); decimal accepts decimal text ("1.5");
  integers and booleans take pydantic's lax forms ("5", 5.0, "true", 1);
- a `_x` extension stands in for a required primitive only when it carries extensions (an id is not enough);
- some inputs make R4B raise AttributeError rather than a validation error (a JSON string holding a list
  where a `_x` belongs; a `_x` list beside a required list primitive): `validate` lets it escape, the
  fast check reports it as a MappingError. Both raise; the contract counts raising.
"""

from __future__ import annotations

import copy
import functools
import json
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter
from pydantic_core import SchemaValidator

import mappings.r4b_schemas as schemas
import mappings.validate_mapped as vm
from connector.errors import MappingError
from connector.streams import DATE_PARAM_ELEMENTS
from connector.sync.pipeline import map_resources
from mappings.r4b_schemas import nests_too_deep
from mappings.referral import content_hash
from mappings.registry import MAPPERS
from mappings.types import MapContext
from mappings.validate import MAX_DEPTH, _model_class, too_deep, validate
from mappings.validate_mapped import READ_ELEMENTS, project, required_elements, validate_mapped
from mappings.validate_strict import validate_strict
from tests.r4b_inputs import (
    ANY_VALUES,
    IDS,
    KEYS,
    RESOURCE_TYPES,
    RESOURCES,
    json_values,
    mutate,
    nested_extension,
    node_at,
    outcome,
    valid_resources,
    walk,
)

NOW = datetime(2026, 11, 1, tzinfo=UTC)
MUTATIONS_PER_RESOURCE = 5


def _assert_equivalent(resource: Any, what: str = "") -> None:
    fast = outcome(validate_mapped, resource)
    if fast is not None:
        assert fast.startswith("MappingError: "), f"{what}: {fast}"
    projected = project(resource) if isinstance(resource, dict) else resource
    r4b = outcome(validate, projected)
    assert (fast is None) == (r4b is None), f"{what}\n  mapped: {fast}\n  R4B:    {r4b}"


# -- the data ---------------------------------------------------------------------------------------


def test_the_data_is_there_and_mostly_valid() -> None:
    assert len(RESOURCES) > 1000
    assert {r["resourceType"] for r in RESOURCES} >= set(READ_ELEMENTS)
    assert len(valid_resources()) > 0.9 * len(RESOURCES)


@pytest.mark.parametrize("rtype", sorted({r["resourceType"] for r in RESOURCES}))
def test_every_data_resource_is_judged_alike(rtype: str) -> None:
    for resource in RESOURCES:
        if resource["resourceType"] == rtype:
            _assert_equivalent(resource, f"{rtype}/{resource.get('id')}")


# -- READ_ELEMENTS ----------------------------------------------------------------------------------


def test_read_elements_cover_exactly_the_mapped_types() -> None:
    assert set(READ_ELEMENTS) == set(MAPPERS)


#: Keys a mapper reads that R4 does not define for the type (read, so listed, so their presence is invalid).
NOT_R4_ELEMENTS = {("ExplanationOfBenefit", "error")}


@pytest.mark.parametrize("rtype", sorted(READ_ELEMENTS))
def test_read_elements_are_elements_with_their_variants_and_extensions(rtype: str) -> None:
    model = _model_class(rtype)
    assert model is not None
    aliases = {field.alias or name: name for name, field in model.model_fields.items()}
    read = tuple(e for e in READ_ELEMENTS[rtype] if (rtype, e) not in NOT_R4_ELEMENTS)
    assert len(read) == len(set(read))
    for element in read:
        assert element in aliases, element
    for element in read:
        name = aliases[element]
        ext = f"{name}__ext"
        if ext in model.model_fields and not element.startswith("_"):
            assert f"_{element}" in read, f"{element} is a primitive: its _{element} belongs with it"
    for variants in model.get_one_of_many_fields(None).values():  # type: ignore[arg-type]
        chosen = [v for v in variants if model.model_fields[v].alias in read]
        assert not chosen or len(chosen) == len(variants), f"all of {variants} or none"


def test_projection_keeps_only_what_is_validated() -> None:
    resource = {
        "resourceType": "Encounter",
        "id": "e1",
        "meta": {"versionId": "1"},
        "status": "finished",
        "class": {"code": "AMB"},
        "text": {"status": "generated", "div": "<div/>"},
        "hospitalization": {"bogus": 1},
        "subject": {"reference": "Patient/1"},
    }
    assert project(resource) == {k: v for k, v in resource.items() if k not in ("text", "hospitalization")}
    assert "class" in required_elements("Encounter")  # 1..1, though no mapper reads it
    assert project({"resourceType": "Patient", "id": "p", "name": [{}], "meta": {}}) == {
        "resourceType": "Patient",
        "id": "p",
        "meta": {},
    }
    validate_mapped({**resource, "hospitalization": {"bogus": 1}})  # not read: not judged


class _Recording(dict):
    """A resource that notes which of its top-level keys are looked at."""

    def __init__(self, resource: dict[str, Any]) -> None:
        super().__init__(resource)
        self.read: set[str] = set()

    def get(self, key: Any, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: Any) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: Any) -> bool:
        self.read.add(key)
        return super().__contains__(key)


def test_the_pipeline_and_mappers_read_only_projected_elements(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every top-level key looked at while mapping what `validate_mapped` accepts is one `project` keeps."""
    monkeypatch.setattr("mappings.registry.validate_strict", validate_mapped)
    mutated = [mutate(r, random.Random(i)) for i, r in enumerate(RESOURCES[::3])]
    for resource in [*RESOURCES, *mutated]:
        if outcome(validate_mapped, resource) is not None:
            continue
        rtype = resource["resourceType"]
        dates = [None, *(e for (t, _), e in DATE_PARAM_ELEMENTS.items() if t == rtype)]
        for date_element in dates:
            recording = _Recording(resource)
            map_resources("test", rtype, [recording], NOW, date_element=date_element)
            assert recording.read <= set(project(resource)) | set(vm._projected_keys(rtype)), rtype


def test_an_explanation_of_benefit_with_an_error_element_is_invalid() -> None:
    eob = next(r for r in valid_resources() if r["resourceType"] == "ExplanationOfBenefit")
    with_error = {**eob, "error": [{"code": {"text": "x"}}]}
    _assert_equivalent(with_error)
    with pytest.raises(MappingError, match="error: Extra inputs are not permitted"):
        validate_mapped(with_error)


def _normalised(records: Any, resource: dict[str, Any]) -> Any:
    """Rows with the resource's own content hash (a hash of every element) replaced by a marker."""
    own = content_hash(resource)
    if isinstance(records, dict):
        return {k: ("<own hash>" if v == own else _normalised(v, resource)) for k, v in records.items()}
    if isinstance(records, list):
        return [_normalised(item, resource) for item in records]
    return records


def _mapped(mapper: Callable[..., Any], resource: dict[str, Any]) -> Any:
    try:
        return _normalised(mapper(resource, MapContext(endpoint="test", synced_at=NOW)), resource)
    except MappingError as exc:
        return f"MappingError: {exc}"


@pytest.mark.parametrize("rtype", sorted(READ_ELEMENTS))
def test_mappers_give_the_same_rows_for_the_projection(rtype: str) -> None:
    checked = 0
    for resource in valid_resources():
        if resource["resourceType"] != rtype:
            continue
        for mapper in MAPPERS[rtype]:
            assert _mapped(mapper, project(resource)) == _mapped(mapper, resource), resource["id"]
        checked += 1
    assert checked > 0


@pytest.mark.parametrize("rtype", sorted(READ_ELEMENTS))
def test_the_pipeline_gives_the_same_rows_for_the_projection(rtype: str) -> None:
    """`map_resources` reads meta, status (entered-in-error) and the date-param cursor as well."""
    valid = [r for r in valid_resources() if r["resourceType"] == rtype]
    erased = [{**r, "status": "entered-in-error"} for r in valid if "status" in r][:3]
    for resource in valid + erased:
        for date_element in [None, *(e for (t, _), e in DATE_PARAM_ELEMENTS.items() if t == rtype)]:
            pages = [
                map_resources("test", rtype, [candidate], NOW, date_element=date_element)
                for candidate in (resource, project(resource))
            ]
            full, projected = pages
            assert _normalised(projected.mapped, project(resource)) == _normalised(full.mapped, resource)
            assert (projected.deletions, projected.newest, projected.values) == (
                full.deletions,
                full.newest,
                full.values,
            )
            assert [r.error for r in projected.rejects] == [r.error for r in full.rejects]


# -- R4B's judgement, case by case ------------------------------------------------------------------

COVERAGE: dict[str, Any] = {
    "resourceType": "Coverage",
    "id": "c1",
    "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z"},
    "status": "active",
    "beneficiary": {"reference": "Patient/1"},
    "payor": [{"reference": "Organization/1"}],
    "subscriberId": "A1",
    "order": 1,
    "period": {"start": "2026-01-01"},
}
_EXT = [{"url": "http://example.org/x", "valueString": "a"}]
_PERIOD_EXT = {"start": "2026-01-01"}

#: (change to COVERAGE, valid to R4B?): the odd judgements the fast check must match, and their neighbours.
ODDITIES: dict[str, tuple[dict[str, Any], bool]] = {
    "null single element": ({"beneficiary": None}, True),
    "empty required list": ({"payor": []}, True),
    "null in a list of elements": ({"payor": [None]}, False),
    "blank string": ({"subscriberId": " "}, True),
    "empty string": ({"subscriberId": ""}, False),
    "element as JSON text": ({"beneficiary": '{"reference": "Patient/1"}'}, True),
    "element as other text": ({"beneficiary": "Patient/1"}, False),
    "element as JSON text of bad content": ({"beneficiary": '{"bogus": 1}'}, False),
    "element with its own resourceType": ({"beneficiary": {"resourceType": "Reference"}}, True),
    "element with another resourceType": ({"beneficiary": {"resourceType": "Coding"}}, False),
    "resource_type overruled by resourceType": (
        {"beneficiary": {"resourceType": None, "resource_type": "X"}},
        True,
    ),
    "resource_type alone": ({"beneficiary": {"resource_type": "X"}}, False),
    "fhir_comments": ({"beneficiary": {"fhir_comments": ["x"], "reference": "Patient/1"}}, True),
    "Python field name": ({"type": {"coding": [{"code": "x", "code__ext": {"id": "a"}}]}}, True),
    "required primitive": ({"class": [{"type": {"text": "plan"}}]}, False),
    "required primitive as _x": (
        {"class": [{"type": {"text": "plan"}, "_value": {"extension": _EXT}}]},
        True,
    ),
    "required primitive as _x with an id": (
        {"class": [{"type": {"text": "plan"}, "_value": {"id": "a"}}]},
        False,
    ),
    "required code as _x": ({"status": None, "_status": {"extension": _EXT}}, True),
    "_x without content": ({"_subscriberId": {}}, False),
    "_x as JSON text of a list": ({"_subscriberId": "[1]"}, False),  # R4B: AttributeError
    "positiveInt as text": ({"order": "5"}, True),
    "positiveInt as bool": ({"order": True}, True),
    "positiveInt 0": ({"order": 0}, False),
    "positiveInt 5.5": ({"order": 5.5}, False),
    "dateTime as a timestamp": ({"period": {"start": 1700000000}}, True),
    "dateTime without zone": ({"period": {"start": "2026-01-01T10:00:00"}}, False),
    "dateTime leap second": ({"period": {"start": "2016-12-31T23:59:60Z"}}, True),
    "dateTime second 61": ({"period": {"start": "2016-12-31T23:59:61Z"}}, False),
    "dateTime February 30": ({"period": {"start": "2026-02-30"}}, False),
    "dateTime month 13": ({"period": {"start": "2026-13"}}, False),
    "dateTime year and month": ({"period": {"start": "2026-02"}}, True),
    "instant as a date": ({"meta": {"lastUpdated": "2026-01-01"}}, False),
    "instant as a timestamp": ({"meta": {"lastUpdated": 0}}, True),
    "decimal as text": (
        {"period": {**_PERIOD_EXT, "extension": [{"url": "u", "valueDecimal": "1.50"}]}},
        True,
    ),
    "decimal with a leading zero": (
        {"period": {**_PERIOD_EXT, "extension": [{"url": "u", "valueDecimal": "01"}]}},
        False,
    ),
    "decimal as bool": (
        {"period": {**_PERIOD_EXT, "extension": [{"url": "u", "valueDecimal": True}]}},
        False,
    ),
    "extension with two values": (
        {"period": {**_PERIOD_EXT, "extension": [{"url": "u", "valueString": "a", "valueCode": "b"}]}},
        False,
    ),
    "extension without url": ({"period": {**_PERIOD_EXT, "extension": [{"valueString": "a"}]}}, False),
    "extension without value": ({"period": {**_PERIOD_EXT, "extension": [{"url": "u"}]}}, True),
    "empty uri": ({"period": {**_PERIOD_EXT, "extension": [{"url": "", "valueString": "a"}]}}, True),
    "url any text": ({"period": {**_PERIOD_EXT, "extension": [{"url": "u", "valueUrl": "no url"}]}}, True),
    "contained without resourceType": ({"contained": [{"id": "o1"}]}, True),
    "contained Organization": (
        {"contained": [{"resourceType": "Organization", "id": "o1", "name": "X"}]},
        True,
    ),
    "contained element type": ({"contained": [{"resourceType": "Coding"}]}, False),
    "contained unknown type": ({"contained": [{"resourceType": "Bogus"}]}, False),  # R4B: KeyError
    "contained as JSON text": ({"contained": ['{"id": "o1"}']}, True),
    "contained as JSON text of a typed resource": (
        {"contained": ['{"resourceType": "Organization"}']},
        False,
    ),
    "unread element": ({"costToBeneficiary": 5, "text": 5}, True),
}


@pytest.mark.parametrize("name", sorted(ODDITIES))
def test_r4b_judgements_are_matched(name: str) -> None:
    change, valid = ODDITIES[name]
    resource = {**COVERAGE, **change}
    _assert_equivalent(resource, name)
    assert (outcome(validate_mapped, resource) is None) == valid


# -- mutations --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_mutations_are_judged_alike(seed: int) -> None:
    rng = random.Random(seed)
    for index, resource in enumerate(RESOURCES):
        if index % 4 != seed:
            continue
        for _ in range(MUTATIONS_PER_RESOURCE):
            mutated = mutate(resource, rng)
            if rng.random() < 0.3:
                mutated = mutate(mutated, rng)
            _assert_equivalent(mutated, f"seed {seed}, {resource['resourceType']}/{resource.get('id')}")


def test_top_level_type_and_id_are_judged_alike() -> None:
    rng = random.Random(7)
    samples = [r for r in RESOURCES if r["resourceType"] in READ_ELEMENTS][::40]
    for resource in samples:
        for rtype in RESOURCE_TYPES:
            _assert_equivalent({**resource, "resourceType": rtype}, f"resourceType {rtype!r}")
        for rid in IDS:
            _assert_equivalent({**resource, "id": rid}, f"id {rid!r}")
        _assert_equivalent({k: v for k, v in resource.items() if k != "id"})
        _assert_equivalent({**resource, "text": rng.choice(ANY_VALUES), "bogusElement": 1}, "unread")
    odd: list[Any] = [None, [], "ServiceRequest", 5]
    for value in odd:
        _assert_equivalent(value, repr(value))


def test_hostile_shapes_are_judged_alike() -> None:
    base = next(r for r in valid_resources() if r["resourceType"] == "ServiceRequest")
    contained: dict[str, Any] = {"resourceType": "Basic", "id": "b0", "code": {"text": "x"}}
    for n in range(1, 40):
        contained = {"resourceType": "Basic", "id": f"b{n}", "code": {"text": "x"}, "contained": [contained]}
    # (resource, whether it is invalid where it is read); the rest are valid or not read.
    cases = [
        ({**base, "extension": [nested_extension(200)]}, False),  # ServiceRequest.extension: not read
        ({**base, "note": [{"text": "x", "extension": [nested_extension(200)]}]}, True),
        ({**base, "contained": [contained]}, True),
        ({**base, "note": [{"text": "A" * 100_000}]}, False),
        ({**base, "status": ["active"]}, True),
        ({**base, "subject": "Patient/p1"}, True),
        ({**base, "authoredOn": 20261001}, False),  # a unix timestamp to R4B; the mapper rejects it
        ({**base, "meta": {"\n": None}}, True),
        ({**base, "contained": [{"resourceType": "", "id": "c"}]}, True),
        ({**base, "note": [{"text": 10**30}]}, True),
        ({**base, "status": "bogus"}, True),
    ]
    for case, invalid in cases:
        _assert_equivalent(case)
        assert (outcome(validate_mapped, case) is not None) == invalid


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_hypothesis_values_anywhere_are_judged_alike(data: st.DataObject) -> None:
    resource = copy.deepcopy(data.draw(st.sampled_from(RESOURCES)))
    nodes = [p for p, _ in walk(project(resource)) if p]
    path = data.draw(st.sampled_from(nodes))
    parent = node_at(resource, path[:-1])
    if data.draw(st.booleans()) and isinstance(parent, dict):
        parent[data.draw(st.sampled_from(KEYS))] = data.draw(json_values)
    else:
        parent[path[-1]] = data.draw(json_values)
    _assert_equivalent(resource, repr(path))


# -- the parts --------------------------------------------------------------------------------------


def _primitive_inputs(rng: random.Random) -> list[Any]:
    parts = {
        "year": ["2020", "0000", "0001", "1000", "9999", "202", "20201"],
        "month": ["01", "02", "12", "13", "00", "1", ""],
        "day": ["01", "28", "29", "30", "31", "32", "00", "1", ""],
        "hour": ["00", "23", "24", "9"],
        "minute": ["00", "59", "60"],
        "second": ["00", "59", "60", "61", ""],
        "fraction": ["", ".1", ".123456", ".1234567890", "."],
        "zone": ["Z", "+00:00", "-05:00", "+14:00", "+14:01", "+13:59", "-15:00", "", "z", " Z"],
    }
    out: list[Any] = [v for v in ANY_VALUES if not isinstance(v, dict | list)]
    out += [86400, 86401, -86400, 1e20, 2**70, "1.", "-", "0.0", " 1", "1 ", "\u0661", "1E+3", "-0", "+1"]
    for _ in range(1500):
        pick = {name: rng.choice(values) for name, values in parts.items()}
        text = pick["year"] + (f"-{pick['month']}" if pick["month"] else "")
        text += f"-{pick['day']}" if pick["month"] and pick["day"] else ""
        clock = f"{pick['hour']}:{pick['minute']}" + (f":{pick['second']}" if pick["second"] else "")
        if rng.random() < 0.6:
            text += f"T{clock}{pick['fraction']}{pick['zone']}"
        elif rng.random() < 0.3:
            text = f"{clock}{pick['fraction']}"
        out.append(text)
    return out


@pytest.mark.parametrize("kind", ["date", "dateTime", "instant", "time", "decimal", "url"])
def test_native_primitives_accept_what_fhir_core_accepts(kind: str) -> None:
    from fhir.resources.R4B import fhirtypes

    r4b_type: Any
    r4b_type, native = {
        "date": (fhirtypes.DateType, schemas._date),
        "dateTime": (fhirtypes.DateTimeType, schemas._datetime),
        "instant": (fhirtypes.InstantType, schemas._instant),
        "time": (fhirtypes.TimeType, schemas._time),
        "decimal": (fhirtypes.DecimalType, schemas._decimal),
        "url": (fhirtypes.UrlType, schemas._url),
    }[kind]
    r4b: TypeAdapter[Any] = TypeAdapter(r4b_type)
    mine = SchemaValidator(native())
    for value in _primitive_inputs(random.Random(kind)):
        assert (outcome(r4b.validate_python, value) is None) == (
            outcome(mine.validate_python, value) is None
        ), repr(value)
        text = json.dumps(value)
        assert (outcome(r4b.validate_json, text) is None) == (outcome(mine.validate_json, text) is None), text


def _nested(rng: random.Random, depth: int) -> Any:
    if depth == 0:
        return rng.choice(["x", '"', "\\", '\\"', "[{", "}]", 1, None, "é", "\u2028", '\\\\"[', "\\u005b"])
    child = _nested(rng, depth - 1)
    return rng.choice(
        [[child], {rng.choice(["a", "[", '"{', "\\"]): child}, [1, child, {}], {"k": [], "v": child}]
    )


def test_depth_check_agrees_with_too_deep() -> None:
    rng = random.Random(3)
    for _ in range(300):
        depth = rng.randrange(55, 70)
        value = {"resourceType": "Basic", "x": _nested(rng, depth)}
        assert nests_too_deep(value) == too_deep(value, MAX_DEPTH), depth
    for odd in ({"n": 2**70}, {"s": "\ud800"}):  # what orjson cannot write: the Python fallback
        for depth in (63, 64, 65):
            value = {**odd, "x": _nested(rng, depth)}
            assert nests_too_deep(value) == too_deep(value, MAX_DEPTH), (odd, depth)
    for resource in RESOURCES:
        assert not nests_too_deep(resource)
        assert nests_too_deep({**resource, "extension": [nested_extension(32)]})


def test_depth_check_with_the_whole_resources_json_agrees_with_too_deep() -> None:
    """The pipeline passes the whole resource's JSON: the verdict on the projection stays too_deep's."""
    rng = random.Random(5)
    for _ in range(300):
        depth = rng.randrange(1, 70)
        value = {"resourceType": "Basic", "x": _nested(rng, depth)}
        unread = {"unread": _nested(rng, rng.randrange(1, 70))}  # in the whole resource, not the part
        for whole in (value, {**value, **unread}):
            text = orjson.dumps(whole, option=orjson.OPT_SORT_KEYS)
            assert nests_too_deep(value, text) == too_deep(value, MAX_DEPTH), depth
    for resource in RESOURCES:
        deep = {**resource, "extension": [nested_extension(32)]}
        assert not nests_too_deep(resource, orjson.dumps(resource))
        assert nests_too_deep(deep, orjson.dumps(deep))
        # The projection of a deep resource whose depth is in an element it leaves out.
        assert not nests_too_deep(resource, orjson.dumps(deep))


def test_validation_given_the_resources_json_judges_as_without_it() -> None:
    for resource in RESOURCES:
        for candidate in (resource, {**resource, "extension": [nested_extension(32)]}):
            text = orjson.dumps(candidate, option=orjson.OPT_SORT_KEYS)
            for check in (validate_mapped, validate_strict):
                given = outcome(functools.partial(check, whole_json=text), candidate)
                assert given == outcome(check, candidate)


# -- messages ---------------------------------------------------------------------------------------


def test_messages_are_one_line_in_the_style_of_validate_and_echo_no_values() -> None:
    secret = "Jane-Doe-1970"
    base = next(r for r in valid_resources() if r["resourceType"] == "Claim")
    cases = {
        "status": {**base, "status": f"{secret} x"},
        "created": {**base, "created": secret},
        "key": {**base, "patient": {"reference": "Patient/1", f"{secret} x": secret}},
        "json": {**base, "patient": secret},
        "deep": {**base, "item": [{"sequence": secret}]},
        "code": {**base, "use": secret},
    }
    for name, resource in cases.items():
        with pytest.raises(MappingError) as caught:
            validate_mapped(resource)
        text = str(caught.value)
        assert text.startswith(f"Claim/{base['id']}: invalid Claim: "), (name, text)
        assert "\n" not in text, (name, text)
        assert secret not in text, (name, text)
        assert not any(tag in text for tag in ("(fast)", "(full)", "(object)", "(json)")), (name, text)
    with pytest.raises(MappingError, match=r"^Claim/x: invalid Claim: created: "):
        validate_mapped({**base, "id": "x", "created": "2014-13-01"})
    with pytest.raises(MappingError, match=r"invalid Claim: item\[0\]\.net\.value: "):
        validate_mapped({**base, "id": "x", "item": [{"sequence": 1, "net": {"value": "1,5"}}]})
    with pytest.raises(MappingError, match=r"^Claim/x: invalid Claim: status: code not in the required"):
        validate_mapped({**base, "id": "x", "status": "bogus"})


@pytest.mark.parametrize(
    ("resource", "reason"),
    [
        ([], "a resource must be a JSON object"),
        ({"id": "x"}, "missing resourceType"),
        ({"resourceType": "NotAThing", "id": "x"}, "unknown resourceType"),
        ({"resourceType": "Claim"}, "missing id"),
        ({"resourceType": "Claim", "id": ""}, "missing id"),
    ],
)
def test_the_same_first_checks_as_validate(resource: Any, reason: str) -> None:
    with pytest.raises(MappingError, match=reason):
        validate_mapped(resource)
    with pytest.raises(MappingError, match=reason):
        validate(resource)
