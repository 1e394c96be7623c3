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
import gzip
import json
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter
from pydantic_core import SchemaValidator

import mappings.validate_mapped as vm
from connector.errors import MappingError
from connector.pipeline import map_resources
from connector.streams import DATE_PARAM_ELEMENTS
from mappings.referral import content_hash
from mappings.registry import MAPPERS
from mappings.types import MapContext
from mappings.validate import MAX_DEPTH, _model_class, too_deep, validate
from mappings.validate_mapped import (
    READ_ELEMENTS,
    nests_too_deep,
    project,
    required_elements,
    validate_mapped,
)

DATA = Path(__file__).parent / "data" / "fhir"
NOW = datetime(2026, 11, 1, tzinfo=UTC)
MUTATIONS_PER_RESOURCE = 5


def _load() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for path in sorted(DATA.glob("*.ndjson")):
        found += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    demo = resources.files("connector").joinpath("demo/data")
    for entry in sorted(demo.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".ndjson.gz"):
            text = gzip.decompress(entry.read_bytes()).decode("utf-8")
            found += [json.loads(line) for line in text.splitlines() if line.strip()]
    return found


RESOURCES = _load()


@cache
def _valid() -> tuple[dict[str, Any], ...]:
    """The resources R4B accepts whole."""
    return tuple(r for r in RESOURCES if _outcome(validate, r) is None)


def _outcome(check: Callable[[Any], None], resource: Any) -> str | None:
    """None when `check` accepts, else the exception (any: R4B sometimes raises AttributeError)."""
    try:
        check(resource)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _assert_equivalent(resource: Any, what: str = "") -> None:
    fast = _outcome(validate_mapped, resource)
    if fast is not None:
        assert fast.startswith("MappingError: "), f"{what}: {fast}"
    projected = project(resource) if isinstance(resource, dict) else resource
    r4b = _outcome(validate, projected)
    assert (fast is None) == (r4b is None), f"{what}\n  mapped: {fast}\n  R4B:    {r4b}"


# -- the data ---------------------------------------------------------------------------------------


def test_the_data_is_there_and_mostly_valid() -> None:
    assert len(RESOURCES) > 1000
    assert {r["resourceType"] for r in RESOURCES} >= set(READ_ELEMENTS)
    assert len(_valid()) > 0.9 * len(RESOURCES)


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


class _Recording(dict):  # type: ignore[type-arg]
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
    monkeypatch.setattr("mappings.registry.validate", validate_mapped)
    mutated = [_mutate(r, random.Random(i)) for i, r in enumerate(RESOURCES[::3])]
    for resource in [*RESOURCES, *mutated]:
        if _outcome(validate_mapped, resource) is not None:
            continue
        rtype = resource["resourceType"]
        dates = [None, *(e for (t, _), e in DATE_PARAM_ELEMENTS.items() if t == rtype)]
        for date_element in dates:
            recording = _Recording(resource)
            map_resources("test", rtype, [recording], NOW, date_element=date_element)
            assert recording.read <= set(project(resource)) | set(vm._projected_keys(rtype)), rtype


def test_an_explanation_of_benefit_with_an_error_element_is_invalid() -> None:
    eob = next(r for r in _valid() if r["resourceType"] == "ExplanationOfBenefit")
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
    for resource in _valid():
        if resource["resourceType"] != rtype:
            continue
        for mapper in MAPPERS[rtype]:
            assert _mapped(mapper, project(resource)) == _mapped(mapper, resource), resource["id"]
        checked += 1
    assert checked > 0


@pytest.mark.parametrize("rtype", sorted(READ_ELEMENTS))
def test_the_pipeline_gives_the_same_rows_for_the_projection(rtype: str) -> None:
    """`map_resources` reads meta, status (entered-in-error) and the date-param cursor as well."""
    valid = [r for r in _valid() if r["resourceType"] == rtype]
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
    assert (_outcome(validate_mapped, resource) is None) == valid


# -- mutations --------------------------------------------------------------------------------------

_ANY_VALUES: list[Any] = [
    "x", "", " ", "  two  spaces", "a\nb", 0, -1, 1, 1.5, -0.0, 10**20, 2**31, 2**63, True, False, None,
    [], {}, ["x"], [None], [{}], {"x": 1}, {"extension": []}, "true", "1.50", "01", "1e3", "5", 5.0,
    "2020", "2020-13", "2020-02-30", "2020-02-29", "2021-02-29", "2020-01-01T10:00:00",
    "2020-01-01T10:00:00Z", "2020-01-01T10:00Z", "2020-01-01T24:00:00Z", "2016-12-31T23:59:60Z",
    "2016-12-31T23:59:61Z", "2020-01-01T10:00:00+14:00", "2020-01-01T10:00:00+14:30", "0000-01-01",
    "2020-01-01T10:00:00.123456789+01:00", "20200101", "10:00:00", "Patient/1", "#c", "urn:uuid:1",
    '{"reference": "Patient/1"}', '{"bogus": 1}', "[1]", "{", "null", "active", "claim", "order",
]  # fmt: skip
_KEYS = [
    "bogus", "fhir_comments", "resourceType", "resource_type", "_bogus", "id", "extension",
    "modifierExtension", "valueString", "valueCode", "valueBoolean", "valueReference", "valuePeriod",
    "occurrencePeriod", "occurrenceDateTime", "servicedDate", "servicedPeriod", "timingDate",
    "locationCodeableConcept", "allowedUnsignedInt", "allowedString", "diagnosisReference", "boundsPeriod",
    "class_fhir", "Jane Doe 1970-01-01", "",
]  # fmt: skip
_EXTENSIONS: list[Any] = [
    {"extension": [{"url": "http://example.org/x", "valueString": "a"}]},
    {
        "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}
        ]
    },
    {"id": "a"},
    {},
    {"extension": []},
    {"extension": None},
    {"fhir_comments": "c"},
    {"extension": [{"valueString": "no url"}]},
    [],
    [None, {"id": "a"}],
    "x",
    '{"id": "a"}',
    "[1]",
    None,
]
_RESOURCE_TYPES: list[Any] = [
    "Element", "Coding", "Extension", "FHIRPrimitiveExtension", "Narrative", "Resource", "DomainResource",
    "Patient", "Observation", "Organization", "Practitioner", "Bogus", "coverage", "", None, 5,
]  # fmt: skip
_ELEMENT_TYPES: list[Any] = [
    *_RESOURCE_TYPES, "Reference", "CodeableConcept", "Period", "Meta", "Identifier", "Money", "Quantity",
    "HumanName", "Extension", "Annotation", "Timing", "Claim", "ServiceRequest",
]  # fmt: skip
_IDS: list[Any] = ["", 5, None, "a b", "x" * 64, "x" * 65, "é", "ok-1.2"]


def _nodes(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _nodes(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _nodes(value, (*path, index))


def _at(root: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        root = root[part]
    return root


def _nested_extension(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"url": "http://example.org/leaf", "valueString": "x"}
    for _ in range(depth):
        node = {"url": "http://example.org/nest", "extension": [node]}
    return node


def _mutate(resource: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One random change at a random place of the projected part of a copy of `resource`."""
    out = copy.deepcopy(resource)
    nodes = [(p, v) for p, v in _nodes(project(out)) if p]
    if not nodes:
        return out
    path, value = rng.choice(nodes)
    parent, key = _at(out, path[:-1]), path[-1]
    op = rng.randrange(13)
    if op == 0:  # another JSON type or value
        parent[key] = rng.choice(_ANY_VALUES)
    elif op == 1:  # a list where one value belongs, one value where a list belongs
        parent[key] = value[0] if isinstance(value, list) and value else [value]
    elif op == 2:  # empty
        parent[key] = type(value)() if isinstance(value, str | list | dict) else None
    elif op == 3:  # removed (a required element, a list item)
        del parent[key]
    elif op == 4:  # an unknown (or odd) key beside it
        target = value if isinstance(value, dict) else parent if isinstance(parent, dict) else None
        if target is not None:
            name = rng.choice([*_KEYS, *(f"{k}__ext" for k in target)])
            if name in ("resourceType", "resource_type"):
                target[name] = rng.choice(_ELEMENT_TYPES)
            else:
                target[name] = rng.choice([*_ANY_VALUES, rng.choice(_EXTENSIONS)])
    elif op == 5 and isinstance(parent, dict) and isinstance(key, str) and not key.startswith("_"):
        parent[f"_{key}"] = rng.choice(_EXTENSIONS)  # a primitive's extension, maybe instead of it
        if rng.random() < 0.5:
            del parent[key]
    elif op == 6 and isinstance(value, dict):  # R4B parses a JSON string where an element belongs
        parent[key] = json.dumps(value) if rng.random() < 0.8 else json.dumps(value)[:-1]
    elif op == 7 and isinstance(value, str):  # a code / date / text gone wrong
        parent[key] = rng.choice(
            [f" {value}", f"{value} ", value.replace("-", " - "), f"{value}\n", value.upper(), value[:-1], ""]
        )
    elif op == 8 and isinstance(value, list):  # a null in a list
        value.insert(rng.randrange(len(value) + 1), None)
    elif op == 9 and isinstance(value, dict):  # nested deep: over the limit, or just under
        value["extension"] = [_nested_extension(rng.choice([5, 30, 31, 32, 40]))]
    elif op == 10 and path[0] == "contained" and isinstance(value, dict):
        value["resourceType"] = rng.choice(_RESOURCE_TYPES)
        if rng.random() < 0.2:
            del value["resourceType"]
    elif op == 11:  # numbers where numbers are
        parent[key] = rng.choice([-1, 0, 1, 2**31 - 1, 2**31, "3", 3.0, 3.5, True, "1.50", 1e-7])
    else:  # an extension with two values, or none and no url
        if isinstance(value, dict):
            if not isinstance(value.get("extension"), list):
                value["extension"] = []
            value["extension"].append(
                rng.choice(
                    [
                        {"url": "http://example.org/x", "valueString": "a", "valueCode": "b"},
                        {"valueString": "a"},
                        {"url": "http://example.org/x"},
                        {"url": "http://example.org/x", "valueDecimal": "1.5"},
                        {"url": "http://example.org/x", "valueDateTime": 1700000000},
                    ]
                )
            )
    if isinstance(out.get("meta"), dict) and rng.random() < 0.02:
        out["meta"]["lastUpdated"] = rng.choice(["2026-01-01", "2026-01-01T00:00:00Z", 0, "bad"])
    return out


@pytest.mark.parametrize("seed", range(4))
def test_mutations_are_judged_alike(seed: int) -> None:
    rng = random.Random(seed)
    for index, resource in enumerate(RESOURCES):
        if index % 4 != seed:
            continue
        for _ in range(MUTATIONS_PER_RESOURCE):
            mutated = _mutate(resource, rng)
            if rng.random() < 0.3:
                mutated = _mutate(mutated, rng)
            _assert_equivalent(mutated, f"seed {seed}, {resource['resourceType']}/{resource.get('id')}")


def test_top_level_type_and_id_are_judged_alike() -> None:
    rng = random.Random(7)
    samples = [r for r in RESOURCES if r["resourceType"] in READ_ELEMENTS][::40]
    for resource in samples:
        for rtype in _RESOURCE_TYPES:
            _assert_equivalent({**resource, "resourceType": rtype}, f"resourceType {rtype!r}")
        for rid in _IDS:
            _assert_equivalent({**resource, "id": rid}, f"id {rid!r}")
        _assert_equivalent({k: v for k, v in resource.items() if k != "id"})
        _assert_equivalent({**resource, "text": rng.choice(_ANY_VALUES), "bogusElement": 1}, "unread")
    for value in [None, [], "ServiceRequest", 5]:
        _assert_equivalent(value, repr(value))


def test_hostile_shapes_are_judged_alike() -> None:
    base = next(r for r in _valid() if r["resourceType"] == "ServiceRequest")
    contained: dict[str, Any] = {"resourceType": "Basic", "id": "b0", "code": {"text": "x"}}
    for n in range(1, 40):
        contained = {"resourceType": "Basic", "id": f"b{n}", "code": {"text": "x"}, "contained": [contained]}
    # (resource, whether it is invalid where it is read); the rest are valid or not read.
    cases = [
        ({**base, "extension": [_nested_extension(200)]}, False),  # ServiceRequest.extension: not read
        ({**base, "note": [{"text": "x", "extension": [_nested_extension(200)]}]}, True),
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
        assert (_outcome(validate_mapped, case) is not None) == invalid


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.from_regex(
        r"\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?(Z|[+-]\d{2}:\d{2})?)?)?)?", fullmatch=True
    ),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(_KEYS), children, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_hypothesis_values_anywhere_are_judged_alike(data: st.DataObject) -> None:
    resource = copy.deepcopy(data.draw(st.sampled_from(RESOURCES)))
    nodes = [p for p, _ in _nodes(project(resource)) if p]
    path = data.draw(st.sampled_from(nodes))
    parent = _at(resource, path[:-1])
    if data.draw(st.booleans()) and isinstance(parent, dict):
        parent[data.draw(st.sampled_from(_KEYS))] = data.draw(json_values)
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
    out: list[Any] = [v for v in _ANY_VALUES if not isinstance(v, dict | list)]
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

    r4b_type, native = {
        "date": (fhirtypes.DateType, vm._date),
        "dateTime": (fhirtypes.DateTimeType, vm._datetime),
        "instant": (fhirtypes.InstantType, vm._instant),
        "time": (fhirtypes.TimeType, vm._time),
        "decimal": (fhirtypes.DecimalType, vm._decimal),
        "url": (fhirtypes.UrlType, vm._url),
    }[kind]
    r4b = TypeAdapter(r4b_type)
    mine = SchemaValidator(native())
    for value in _primitive_inputs(random.Random(kind)):
        assert (_outcome(r4b.validate_python, value) is None) == (
            _outcome(mine.validate_python, value) is None
        ), repr(value)
        text = json.dumps(value)
        assert (_outcome(r4b.validate_json, text) is None) == (_outcome(mine.validate_json, text) is None), (
            text
        )


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
        assert nests_too_deep({**resource, "extension": [_nested_extension(32)]})


# -- messages ---------------------------------------------------------------------------------------


def test_messages_are_one_line_in_the_style_of_validate_and_echo_no_values() -> None:
    secret = "Jane-Doe-1970"
    base = next(r for r in _valid() if r["resourceType"] == "Claim")
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
