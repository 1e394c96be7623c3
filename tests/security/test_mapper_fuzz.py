"""Fuzzing every mapper: real examples, mutated at random, either map or fail with `MappingError`.

Each example starts from a real resource (`tests/data/fhir/*.ndjson`) of a mapped type, then a handful of
mutations at random paths: drop the element, replace it with any JSON value, keep its type but change its
value (strings, numbers, dates, codes the mappers look at), empty or repeat a list. Most mutants fail
validation (a `MappingError`); the rest reach the mappers, which must not raise anything else either.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.errors import MappingError
from mappings.registry import MAPPERS, map_resource
from mappings.types import MapContext, MappingOptions

DATA = Path(__file__).resolve().parents[1] / "data" / "fhir"
CTX = MapContext(endpoint="fuzz", synced_at=datetime(2026, 11, 1, tzinfo=UTC))
CTX_KEEP = MapContext(
    endpoint="fuzz",
    synced_at=datetime(2026, 11, 1, tzinfo=UTC),
    options=MappingOptions(keep_subscriber_id=True, intake_required=("diagnosis",)),
)


def _examples() -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(DATA.glob("*.ndjson")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                resource = json.loads(line)
                found.setdefault(resource["resourceType"], []).append(resource)
    return found


EXAMPLES = _examples()
FUZZED_TYPES = sorted(MAPPERS)


def test_every_mapped_type_has_real_examples_to_start_from() -> None:
    assert FUZZED_TYPES, "no mappers registered"
    missing = [rtype for rtype in FUZZED_TYPES if rtype not in EXAMPLES]
    assert missing == []


# Values a FHIR element may plausibly hold, mixed with ones it may not.
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(
        [
            "",
            " ",
            "2026-02-30",
            "2026-11-01",
            "2026-11",
            "2026",
            "2026-11-01T10:00:00Z",
            "2026-11-01T10:00:00+14:00",
            "9999-12-31T23:59:59.999999Z",
            "0001-01-01",
            "T10:00:00",
            "http://snomed.info/sct",
            "http://hl7.org/fhir/sid/us-npi",
            "urn:uuid:0",
            "#",
            "#p1",
            "Patient/",
            "/",
            "Patient/p1/_history/",
            "Organization?identifier=x|y",
            "active",
            "entered-in-error",
            "preauthorization",
            "claim",
            "complete",
            "partial",
            "error",
            "PT",
            "97110",
            "-1",
            "1e400",
            "NaN",
        ]
    ),
)
_json = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if prefix == () and key == "resourceType":
                continue
            out.append((*prefix, key))
            out.extend(_paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.append((*prefix, i))
            out.extend(_paths(value, (*prefix, i)))
    return out


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        node = node[part]
    return node


@st.composite
def _mutants(draw: st.DrawFn, rtype: str) -> dict[str, Any]:
    resource = copy.deepcopy(draw(st.sampled_from(EXAMPLES[rtype])))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = _paths(resource)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _get(resource, path[:-1]), path[-1]
        current = parent[key]
        action = draw(st.sampled_from(["drop", "any", "same-type", "same-type", "list"]))
        if action == "drop":
            del parent[key]
        elif action == "any":
            parent[key] = draw(_json)
        elif action == "list":
            parent[key] = draw(st.sampled_from([[], [current], [current, current], {}]))
        elif isinstance(current, bool):
            parent[key] = not current
        elif isinstance(current, int | float):
            parent[key] = draw(st.one_of(st.integers(-(10**12), 10**12), st.floats(allow_nan=False)))
        elif isinstance(current, str):
            parent[key] = draw(_scalars.filter(lambda v: isinstance(v, str)))
        else:
            parent[key] = draw(_json)
    return resource


def _map_or_reject(resource: dict[str, Any], ctx: MapContext) -> None:
    try:
        records = map_resource(resource, ctx)
    except MappingError as exc:
        text = str(exc)
        assert text, "a MappingError has a reason"
        assert "\n" not in text, "a MappingError reason is one line"
        return
    assert isinstance(records, dict)
    for table, rows in records.items():
        assert isinstance(table, str)
        assert all(isinstance(row, dict) for row in rows)


@pytest.mark.parametrize("rtype", FUZZED_TYPES)
@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_mutated_real_resources_map_or_fail_with_mapping_error(rtype: str, data: st.DataObject) -> None:
    resource = data.draw(_mutants(rtype))
    _map_or_reject(resource, data.draw(st.sampled_from([CTX, CTX_KEEP])))


@pytest.mark.parametrize("rtype", FUZZED_TYPES)
@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.dictionaries(st.text(max_size=12), _json, max_size=6), rid=_scalars)
def test_arbitrary_objects_claiming_a_mapped_type_fail_cleanly(rtype: str, body: dict, rid: Any) -> None:
    _map_or_reject({**body, "resourceType": rtype, "id": rid}, CTX)
