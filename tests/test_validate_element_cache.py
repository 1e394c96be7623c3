"""Strict validation reuses validated element values; its verdicts and messages must not change by it."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.errors import MappingError
from mappings import validate as validation
from mappings.validate import _model_class, validate

DATA = Path(__file__).parent / "data" / "fhir"
SEED = 20261129


def corpus() -> list[dict[str, Any]]:
    out = []
    for path in sorted(DATA.glob("*.ndjson")):
        out.extend(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line)
    return out


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*prefix, index)
            yield from _paths(value, (*prefix, index))


BREAKS: list[Any] = [None, "", "not a date", 42, -1, 3.5, True, [], {}, ["x"], {"bogus": 1}, "x" * 3]


def mutations(resource: dict[str, Any], rng: random.Random, count: int) -> Iterator[dict[str, Any]]:
    """Copies with one value somewhere inside (an element's element, a list item...) replaced."""
    paths = [p for p in _paths(resource) if p[0] not in {"resourceType", "id"}]
    for _ in range(count):
        path = rng.choice(paths)
        mutant = copy.deepcopy(resource)
        node: Any = mutant
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = copy.deepcopy(rng.choice(BREAKS))
        yield mutant


def plain_verdict(resource: dict[str, Any]) -> str | None:
    """What the whole-resource model says, without the element cache."""
    model = _model_class(resource["resourceType"])
    try:
        model.model_validate(resource)
    except (ValueError, TypeError, LookupError) as exc:
        return type(exc).__name__
    return None


def cached_message(resource: dict[str, Any]) -> str | None:
    try:
        validate(resource)
    except MappingError as exc:
        return str(exc)
    return None


@pytest.fixture
def fresh_cache(monkeypatch: pytest.MonkeyPatch) -> validation._ElementCache:
    cache = validation._ElementCache(64)
    monkeypatch.setattr(validation, "_ELEMENTS", cache)
    return cache


def test_cached_validation_accepts_and_rejects_exactly_as_the_plain_model(
    fresh_cache: validation._ElementCache,
) -> None:
    rng = random.Random(SEED)
    resources = [r for r in corpus() if _model_class(r["resourceType"]) is not None]
    checked = rejected = 0
    for resource in resources:
        # Twice each: the second time its elements come from the cache.
        for candidate in [resource, resource, *mutations(resource, rng, 6)]:
            message = cached_message(candidate)
            plain = plain_verdict(candidate)
            # Codes outside a required value set are refused on top of the model (see validate.py).
            codes_ok = not validation._check_required_codes(candidate, candidate["resourceType"])
            assert (message is None) == (plain is None and codes_ok), (candidate.get("id"), message, plain)
            checked += 1
            rejected += message is not None
    assert fresh_cache.hits > checked  # the cache was used, not bypassed
    assert 0 < rejected < checked


def test_messages_are_those_of_the_whole_resource(fresh_cache: validation._ElementCache) -> None:
    resource = next(r for r in corpus() if r["resourceType"] == "ServiceRequest" and "code" in r)
    validate(resource)  # code, subject... now cached
    broken = copy.deepcopy(resource)
    broken["code"]["coding"] = [{"system": 42}]
    first = cached_message(broken)
    fresh_cache._items.clear()
    assert first is not None
    assert first == cached_message(broken)
    assert "code.coding[0].system" in first


def test_the_cache_is_bounded(fresh_cache: validation._ElementCache) -> None:
    base = next(r for r in corpus() if r["resourceType"] == "ServiceRequest" and "subject" in r)
    for n in range(200):
        resource = copy.deepcopy(base)
        resource["subject"] = {"reference": f"Patient/p{n}"}
        validate(resource)
    assert len(fresh_cache._items) == fresh_cache.size
