"""`validation = "strict"`: `validate_strict` gives `validate`'s verdict and message, fast when valid.

`validate_strict` returns when its compiled check (`mappings.r4b_schemas`, the whole resource) accepts and
hands everything else to `validate`, so whatever it raises is `validate`'s by construction. What must never
happen is the compiled check accepting a resource R4B rejects. That is checked on every test and demo
resource, on a few thousand deterministic mutations anywhere in them, on hypothesis-chosen values
anywhere, on hostile shapes and on a minimal resource of every type R4B knows. The fast path also has to
be the path taken: it accepts every resource R4B accepts in the test data and in the benchmark's data,
and (the compiled check is exact) every mutation R4B accepts.
"""

from __future__ import annotations

import copy
import importlib
import json
import pkgutil
import random
from typing import Any

import fhir.resources.R4B
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.data import generate
from connector.errors import MappingError
from mappings import registry
from mappings.validate import MAX_DEPTH, validate
from mappings.validate_strict import accepts, strict_validator, validate_strict
from tests.r4b_inputs import (
    ANY_VALUES,
    ELEMENT_TYPES,
    EXTENSIONS,
    IDS,
    KEYS,
    RESOURCE_TYPES,
    RESOURCES,
    TOP_LEVEL_KEYS,
    json_values,
    mutate,
    nested_extension,
    node_at,
    outcome,
    valid_resources,
    walk,
)
from tests.test_mappings_validate_mapped import COVERAGE, ODDITIES

MUTATIONS_PER_RESOURCE = 5


def _assert_alike(resource: Any, what: str = "") -> bool:
    """`validate_strict` raises exactly what `validate` raises (or neither does); the compiled check never
    accepts what `validate` rejects. Returns whether `validate` accepts what the compiled check did not."""
    reference = outcome(validate, resource)
    fast = accepts(resource)
    assert not (fast and reference is not None), f"{what}: the compiled check accepts\n  R4B: {reference}"
    strict = outcome(validate_strict, resource)
    assert strict == reference, f"{what}\n  strict: {strict}\n  R4B:    {reference}"
    return reference is None and not fast


def _label(resource: Any) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}" if isinstance(resource, dict) else "?"


# -- the data ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("rtype", sorted({r["resourceType"] for r in RESOURCES}))
def test_every_data_resource_is_judged_alike(rtype: str) -> None:
    for resource in RESOURCES:
        if resource["resourceType"] == rtype:
            _assert_alike(resource, _label(resource))


def test_the_fast_path_accepts_every_valid_data_resource() -> None:
    valid = valid_resources()
    assert len(valid) > 0.9 * len(RESOURCES) > 1000
    accepted = [r for r in RESOURCES if accepts(r)]
    assert len(accepted) == len(valid)
    assert [_label(r) for r in accepted] == [_label(r) for r in valid]


def test_the_fast_path_accepts_the_benchmark_data() -> None:
    """`bench` measures the fast path, not the fallback."""
    data = generate(3000)
    assert {r["resourceType"] for r in data} == {"ServiceRequest", "Coverage", "Claim"}
    assert [_label(r) for r in data if not accepts(r)] == []
    for resource in data[::50]:
        validate(resource)


def test_strict_mapping_uses_the_fast_path() -> None:
    assert registry.validate_strict is validate_strict


# -- every type R4B knows ---------------------------------------------------------------------------


def _model_names() -> list[str]:
    """Every name `mappings.validate._model_class` resolves: a class named as its R4B module."""
    names = []
    for module_info in pkgutil.iter_modules(fhir.resources.R4B.__path__):
        module = importlib.import_module(f"fhir.resources.R4B.{module_info.name}")
        names += [
            name
            for name, value in vars(module).items()
            if isinstance(value, type) and name.lower() == module_info.name
        ]
    return sorted(names)


def test_every_r4b_type_compiles_and_a_minimal_resource_of_it_is_judged_alike() -> None:
    names = _model_names()
    assert len(names) > 180
    assert "Observation" in names
    assert "Coding" in names  # not a resource, but `validate` takes it as a resourceType
    for name in names:
        assert strict_validator(name) is not None, name
        for resource in ({"resourceType": name, "id": "x"}, {"resourceType": name, "id": "x", "text": None}):
            _assert_alike(resource, name)


# -- R4B's judgement, case by case ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ODDITIES))
def test_r4b_judgements_are_matched(name: str) -> None:
    change, valid = ODDITIES[name]
    resource = {**COVERAGE, **change}
    _assert_alike(resource, name)
    if name != "unread element":  # unread by the mappers, judged all the same
        assert (outcome(validate_strict, resource) is None) == valid


def test_top_level_keys_type_and_id_are_judged_alike() -> None:
    rng = random.Random(11)
    samples = RESOURCES[::37]
    for resource in samples:
        for rtype in [*RESOURCE_TYPES, *ELEMENT_TYPES]:
            _assert_alike({**resource, "resourceType": rtype}, f"resourceType {rtype!r}")
            _assert_alike({**resource, "resource_type": rtype}, f"resource_type {rtype!r}")
        for rid in IDS:
            _assert_alike({**resource, "id": rid}, f"id {rid!r}")
        _assert_alike({k: v for k, v in resource.items() if k != "id"}, "no id")
        _assert_alike({k: v for k, v in resource.items() if k != "resourceType"}, "no resourceType")
        for key in [*KEYS, *TOP_LEVEL_KEYS, *(f"_{k}" for k in resource)]:
            value = rng.choice([*ANY_VALUES, *EXTENSIONS])
            _assert_alike({**resource, key: value}, f"{_label(resource)} + {key!r}: {value!r}")
    for value in [None, [], "ServiceRequest", 5, {}]:
        _assert_alike(value, repr(value))


def _with(resource: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(resource), **changes}


def test_hostile_shapes_are_judged_alike() -> None:
    base = next(r for r in valid_resources() if r["resourceType"] == "ServiceRequest" and "text" in r)
    organization = next(r for r in valid_resources() if r["resourceType"] == "Organization")
    chain: dict[str, Any] = {"resourceType": "Basic", "id": "b0", "code": {"text": "x"}}
    for n in range(1, 40):
        chain = {"resourceType": "Basic", "id": f"b{n}", "code": {"text": "x"}, "contained": [chain]}
    # (resource, whether R4B accepts it)
    cases = [
        (_with(base, extension=[nested_extension(200)]), False),
        (_with(base, modifierExtension=[nested_extension(MAX_DEPTH // 2 - 2)]), True),
        (_with(base, modifierExtension=[nested_extension(MAX_DEPTH // 2)]), False),
        (_with(base, contained=[chain]), False),
        (_with(base, contained=[organization, {**organization, "id": "o2"}]), True),
        (_with(base, contained=[{**organization, "contained": [organization]}]), True),
        (_with(base, contained=[{**organization, "name": 5}]), False),
        (_with(base, contained=[json.dumps(organization)]), False),  # a typed resource as JSON text
        (_with(base, contained=[{"resourceType": "", "id": "c"}]), False),
        (_with(base, contained=[None]), False),
        (_with(base, note=[{"text": "A" * 100_000}]), True),
        (_with(base, text={**base["text"], "div": "no xhtml"}), True),  # R4B: xhtml is any string
        (_with(base, text={**base["text"], "div": 5}), False),
        (_with(base, text=json.dumps(base["text"])), True),  # R4B reads an element from JSON text
        (_with(base, text=json.dumps(base["text"])[:-1]), False),
        (_with(base, identifier=[None]), False),  # null in a list of complex elements
        (_with(base, identifier=[{"value": "a"}, None]), False),
        (_with(base, instantiatesUri=["http://x", None]), True),  # ... but not in a list of primitives
        (_with(base, occurrenceDateTime="2026-01-01", occurrencePeriod={"start": "2026-01-01"}), False),
        (_with(base, asNeededBoolean=True, asNeededCodeableConcept={"text": "x"}), False),
        (_with(base, _implicitRules={"extension": EXTENSIONS[0]["extension"]}), True),
        (_with(base, _implicitRules={}), False),
        (_with(base, _language=[]), False),
        (_with(base, language="en", _language={"id": "l"}), True),
        (_with(base, meta={"\n": None}), False),
        (_with(base, note=[{"text": 10**30}]), False),
        (_with(base, resource_type="ServiceRequest"), True),
        (_with(base, resource_type="Claim"), True),  # `resourceType` wins (FHIRAbstractModel.__init__)
        (_with(base, status="bogus"), False),
        (_with(base, authoredOn=20261001), True),  # a unix timestamp to R4B
    ]
    for case, valid in cases:
        _assert_alike(case, json.dumps(case)[:200])
        assert (outcome(validate, case) is None) == valid, json.dumps(case)[:200]


# -- mutations anywhere -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_mutations_anywhere_are_judged_alike(seed: int) -> None:
    rng = random.Random(1000 + seed)
    misses = []
    checked = 0
    for index, resource in enumerate(RESOURCES):
        if index % 4 != seed:
            continue
        for _ in range(MUTATIONS_PER_RESOURCE):
            mutated = mutate(resource, rng, whole=True)
            if rng.random() < 0.3:
                mutated = mutate(mutated, rng, whole=True)
            if _assert_alike(mutated, f"seed {seed}, {_label(resource)}"):
                misses.append(mutated)
            checked += 1
    assert checked > 1000
    # The compiled check is exact: what R4B accepts, it accepts too (no fallback for valid resources).
    assert misses == []


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_hypothesis_values_anywhere_are_judged_alike(data: st.DataObject) -> None:
    resource = copy.deepcopy(data.draw(st.sampled_from(RESOURCES)))
    path = data.draw(st.sampled_from([p for p, _ in walk(resource) if p]))
    parent = node_at(resource, path[:-1])
    if data.draw(st.booleans()) and isinstance(parent, dict):
        parent[data.draw(st.sampled_from([*KEYS, *TOP_LEVEL_KEYS]))] = data.draw(json_values)
    else:
        parent[path[-1]] = data.draw(json_values)
    assert not _assert_alike(resource, repr(path))


# -- messages ---------------------------------------------------------------------------------------


def _claim() -> dict[str, Any]:
    return copy.deepcopy(next(r for r in valid_resources() if r["resourceType"] == "Claim"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"created": "2014-13-01"}, r"^Claim/\S+: invalid Claim: created: "),
        ({"status": "bogus"}, r"^Claim/\S+: invalid Claim: status: code not in the required value set$"),
        ({"bogusElement": 1}, r"^Claim/\S+: invalid Claim: bogusElement: Extra inputs are not permitted$"),
        ({"text": {"status": "generated"}}, r"^Claim/\S+: invalid Claim: text\.div: "),
        ({"extension": [nested_extension(40)]}, rf"nested more than {MAX_DEPTH} levels deep$"),
        ({"id": ""}, r"^Claim/<invalid id>: missing id$"),
        ({"resourceType": "Bogus"}, r"^Bogus/\S+: unknown resourceType$"),
        ({"item": [{"sequence": 1, "net": {"value": "1,5"}}]}, r"invalid Claim: item\[0\]\.net\.value: "),
    ],
)
def test_what_the_fast_check_refuses_gets_validates_message(change: dict[str, Any], message: str) -> None:
    resource = {**_claim(), **change}
    assert not accepts(resource)
    with pytest.raises(MappingError, match=message) as strict:
        validate_strict(resource)
    with pytest.raises(MappingError) as reference:
        validate(resource)
    assert str(strict.value) == str(reference.value)


def test_an_error_r4b_raises_is_raised_alike() -> None:
    """R4B raises AttributeError for a `_x` that is JSON text of a list: so does strict, as it always did."""
    resource = {**COVERAGE, "_subscriberId": "[1]"}
    assert outcome(validate, resource) is not None
    _assert_alike(resource)
    with pytest.raises(AttributeError):
        validate_strict(resource)


@pytest.mark.parametrize("resource", [[], "Claim", None, {"id": "x"}, {"resourceType": "Claim"}])
def test_the_first_checks_are_validates(resource: Any) -> None:
    with pytest.raises(MappingError) as strict:
        validate_strict(resource)
    with pytest.raises(MappingError) as reference:
        validate(resource)
    assert str(strict.value) == str(reference.value)
