"""Test resources, and ways to break them, for the tests that hold a compiled check to R4B's judgement.

`RESOURCES` is every test resource (tests/data/fhir) and the demo data; `mutate` changes one value at a
random place; `json_values` draws any JSON value for hypothesis. Used by
tests/test_mappings_validate_mapped.py (`validate_mapped`) and tests/test_validate_strict.py
(`validate_strict`).
"""

from __future__ import annotations

import copy
import gzip
import json
import random
from collections.abc import Callable, Iterator
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from mappings.validate import validate
from mappings.validate_mapped import project

DATA = Path(__file__).parent / "data" / "fhir"


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
def valid_resources() -> tuple[dict[str, Any], ...]:
    """The resources R4B accepts whole."""
    return tuple(r for r in RESOURCES if outcome(validate, r) is None)


def outcome(check: Callable[[Any], None], resource: Any) -> str | None:
    """None when `check` accepts, else the exception (any: R4B sometimes raises AttributeError)."""
    try:
        check(resource)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


ANY_VALUES: list[Any] = [
    "x", "", " ", "  two  spaces", "a\nb", 0, -1, 1, 1.5, -0.0, 10**20, 2**31, 2**63, True, False, None,
    [], {}, ["x"], [None], [{}], {"x": 1}, {"extension": []}, "true", "1.50", "01", "1e3", "5", 5.0,
    "2020", "2020-13", "2020-02-30", "2020-02-29", "2021-02-29", "2020-01-01T10:00:00",
    "2020-01-01T10:00:00Z", "2020-01-01T10:00Z", "2020-01-01T24:00:00Z", "2016-12-31T23:59:60Z",
    "2016-12-31T23:59:61Z", "2020-01-01T10:00:00+14:00", "2020-01-01T10:00:00+14:30", "0000-01-01",
    "2020-01-01T10:00:00.123456789+01:00", "20200101", "10:00:00", "Patient/1", "#c", "urn:uuid:1",
    '{"reference": "Patient/1"}', '{"bogus": 1}', "[1]", "{", "null", "active", "claim", "order",
]  # fmt: skip
KEYS = [
    "bogus", "fhir_comments", "resourceType", "resource_type", "_bogus", "id", "extension",
    "modifierExtension", "valueString", "valueCode", "valueBoolean", "valueReference", "valuePeriod",
    "occurrencePeriod", "occurrenceDateTime", "servicedDate", "servicedPeriod", "timingDate",
    "locationCodeableConcept", "allowedUnsignedInt", "allowedString", "diagnosisReference", "boundsPeriod",
    "class_fhir", "Jane Doe 1970-01-01", "",
]  # fmt: skip
#: Top-level elements some resource types have and others not.
TOP_LEVEL_KEYS = [
    "text", "contained", "language", "_language", "implicitRules", "_implicitRules", "meta", "_id",
    "identifier", "status", "_status", "active", "name", "subject", "patient", "period", "created",
]  # fmt: skip
EXTENSIONS: list[Any] = [
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
RESOURCE_TYPES: list[Any] = [
    "Element", "Coding", "Extension", "FHIRPrimitiveExtension", "Narrative", "Resource", "DomainResource",
    "Patient", "Observation", "Organization", "Practitioner", "Bogus", "coverage", "", None, 5,
]  # fmt: skip
ELEMENT_TYPES: list[Any] = [
    *RESOURCE_TYPES, "Reference", "CodeableConcept", "Period", "Meta", "Identifier", "Money", "Quantity",
    "HumanName", "Extension", "Annotation", "Timing", "Claim", "ServiceRequest",
]  # fmt: skip
IDS: list[Any] = ["", 5, None, "a b", "x" * 64, "x" * 65, "é", "ok-1.2"]


def walk(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, (*path, index))


def node_at(root: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        root = root[part]
    return root


def nested_extension(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"url": "http://example.org/leaf", "valueString": "x"}
    for _ in range(depth):
        node = {"url": "http://example.org/nest", "extension": [node]}
    return node


def mutate(resource: dict[str, Any], rng: random.Random, *, whole: bool = False) -> dict[str, Any]:
    """One random change at a random place of a copy of `resource`: of its projection (what
    `validate_mapped` checks), or anywhere (`whole`: what `validate_strict` checks)."""
    out = copy.deepcopy(resource)
    nodes = [(p, v) for p, v in walk(out if whole else project(out)) if p]
    if not nodes:
        return out
    path, value = rng.choice(nodes)
    parent, key = node_at(out, path[:-1]), path[-1]
    # Whole resources get two more kinds of change; the projection keeps the sequence its tests had.
    op = rng.randrange(15 if whole else 13)
    if op == 0:  # another JSON type or value
        parent[key] = rng.choice(ANY_VALUES)
    elif op == 1:  # a list where one value belongs, one value where a list belongs
        parent[key] = value[0] if isinstance(value, list) and value else [value]
    elif op == 2:  # empty
        parent[key] = type(value)() if isinstance(value, str | list | dict) else None
    elif op == 3:  # removed (a required element, a list item)
        del parent[key]
    elif op == 4:  # an unknown (or odd) key beside it
        target = value if isinstance(value, dict) else parent if isinstance(parent, dict) else None
        if target is not None:
            name = rng.choice([*KEYS, *(f"{k}__ext" for k in target)])
            if name in ("resourceType", "resource_type"):
                target[name] = rng.choice(ELEMENT_TYPES)
            else:
                target[name] = rng.choice([*ANY_VALUES, rng.choice(EXTENSIONS)])
    elif op == 5 and isinstance(parent, dict) and isinstance(key, str) and not key.startswith("_"):
        parent[f"_{key}"] = rng.choice(EXTENSIONS)  # a primitive's extension, maybe instead of it
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
        value["extension"] = [nested_extension(rng.choice([5, 30, 31, 32, 40]))]
    elif op == 10 and path[0] == "contained" and isinstance(value, dict):
        value["resourceType"] = rng.choice(RESOURCE_TYPES)
        if rng.random() < 0.2:
            del value["resourceType"]
    elif op == 13:  # a contained resource (maybe a broken one) here or in a contained resource
        holder = value if isinstance(value, dict) and "resourceType" in value else out
        item = rng.choice(RESOURCES)
        item = mutate(item, rng, whole=True) if rng.random() < 0.3 else copy.deepcopy(item)
        if not isinstance(holder.get("contained"), list):
            holder["contained"] = []
        holder["contained"].append(item)
    elif op == 14:  # a top-level key: unknown, of another type, a `_x` of an element, a type name
        name = rng.choice([*KEYS, *TOP_LEVEL_KEYS, *(f"_{k}" for k in out), *(f"{k}__ext" for k in out)])
        if name in ("resourceType", "resource_type"):
            out[name] = rng.choice(ELEMENT_TYPES)
        else:
            out[name] = rng.choice([*ANY_VALUES, rng.choice(EXTENSIONS), value])
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
        st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(KEYS), children, max_size=3)
    ),
    max_leaves=6,
)
