"""`validation = "mapped"`: validate only what the mappers read, in microseconds.

`mappings.validate.validate` builds the `fhir.resources` R4B model of the whole resource (60-400 µs).
Here only the projection of a resource is validated: resourceType, id, meta and status (the pipeline reads
them of every resource), the top-level elements the mappers read (`READ_ELEMENTS`) and the top-level
elements R4 requires (`required_elements`). Inside each of them every nested element is checked and
unknown keys are rejected, as R4B does.

The contract (enforced by tests/test_mappings_validate_mapped.py): for every resource R,
`validate_mapped(R)` raises `MappingError` if and only if `validate(project(R))` raises.

The checks are R4B's models compiled to pydantic-core schemas (`mappings.r4b_schemas`): each element
judged as R4B judges it, in Rust. R4B's odd judgements come along on purpose; the test module lists them.

Messages follow `mappings.validate`: one line, `Type/id: invalid Type: loc: reason`, built from element
names and pydantic's messages only, never from input values (resources hold PHI).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any, cast

from pydantic_core import SchemaValidator, ValidationError

from mappings.errors import MappingError
from mappings.fhir_ids import TYPE_RE, resource_label
from mappings.r4b_schemas import _COMPILER, _FAST, _JSON, _OBJECT, _TAGS, _rules, nests_too_deep
from mappings.specs import SPECS
from mappings.validate import (
    MAX_DEPTH,
    _check_required_codes,
    _format_loc,
    _model_class,
    _safe_message,
    raise_problems,
)

#: Per mapped resource type: the top-level elements its mappers read (`ResourceSpec.read_elements`).
#: `content_hash` hashes the whole resource, but reads no element: it is not validation-relevant.
READ_ELEMENTS: dict[str, tuple[str, ...]] = {s.resource_type: s.read_elements for s in SPECS if s.mappers}

#: Read of every resource, mapped or kept raw: `connector.sync.pipeline.map_resources` takes the key, meta
#: (versionId, lastUpdated) and `status` (entered-in-error marks a deletion). On a type without a status
#: element (Practitioner, Organization, ...) a `status` key is therefore invalid, as in strict mode.
_ALWAYS = ("resourceType", "id", "meta", "status", "_status")


# -- the projection ---------------------------------------------------------------------------------


@cache
def required_elements(rtype: str) -> tuple[str, ...]:
    """Top-level elements R4 requires of `rtype` (min 1), with their `_x` siblings and choice variants.

    They are validated although no mapper reads them: without them `validate(project(R))` could never
    pass (Encounter.class, ClaimResponse.type, ExplanationOfBenefit.type and .insurance), and a resource
    that lacks them is not R4.
    """
    model = _model_class(rtype) if _known_type(rtype) else None
    if model is None:
        return ()
    aliases = {name: field.alias or name for name, field in model.model_fields.items()}
    rules = _rules(model)
    names = [aliases[name] for name, field in model.model_fields.items() if field.is_required()]
    for element, _, ext in rules.required:
        names += [element, aliases[ext]] if ext else [element]
    for variants, needed in rules.choices:
        for variant in variants if needed else ():
            names.append(aliases[variant])
            if f"{variant}__ext" in aliases:
                names.append(aliases[f"{variant}__ext"])
    return tuple(dict.fromkeys(names))


@cache
def _projected_keys(rtype: str) -> frozenset[str]:
    return frozenset((*_ALWAYS, *READ_ELEMENTS.get(rtype, ()), *required_elements(rtype)))


def project(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource reduced to resourceType, id, meta, status, its type's read and required elements.

    A type without a mapper keeps resourceType, id, meta, status and its required elements.
    """
    rtype = resource.get("resourceType")
    keys = _projected_keys(rtype) if _known_type(rtype) else frozenset(_ALWAYS)
    return {key: value for key, value in resource.items() if key in keys}


def _known_type(rtype: Any) -> bool:
    """A type R4B has a model for (checked before anything is cached by an input's type name)."""
    if not isinstance(rtype, str) or TYPE_RE.fullmatch(rtype) is None:
        return False
    return _model_class(rtype) is not None


@cache
def _root_validator(rtype: str) -> SchemaValidator:
    """The validator of projected resources of a known type."""
    model = _model_class(rtype)
    assert model is not None, rtype
    return _COMPILER.root(model, _projected_keys(rtype))


# -- the check ---------------------------------------------------------------------------------------


def validate_mapped(resource: dict[str, Any], whole_json: bytes | None = None) -> None:
    """Raise `MappingError` (one line, no resource values) unless the projection of `resource` is valid.

    `whole_json`: the resource's JSON text, when the caller has it (see `nests_too_deep`).
    """
    if not isinstance(resource, dict):
        raise MappingError(f"{resource_label(resource)}: a resource must be a JSON object")
    rtype = resource.get("resourceType")
    prepared = _PREPARED.get(rtype) if isinstance(rtype, str) else None
    if prepared is None:
        prepared = _prepare(resource, rtype)
    rid = resource.get("id")
    if not isinstance(rid, str) or not rid:
        raise MappingError(f"{resource_label(resource)}: missing id")
    keys, validator = prepared
    projected = {key: value for key, value in resource.items() if key in keys}  # project(), checked
    if nests_too_deep(projected, whole_json):
        raise MappingError(
            f"{resource_label(resource)}: invalid {rtype}: nested more than {MAX_DEPTH} levels deep"
        )
    problems: list[str] = []
    try:
        validator.validate_python(projected)
    except ValidationError as exc:
        problems = _problems(projected, exc)
    except (ValueError, TypeError, LookupError, AttributeError) as exc:  # as `validate`: invalid input
        problems = [f"<root>: {type(exc).__name__}"]
    known = cast(str, rtype)  # a str: _PREPARED holds only str keys, and _prepare raises otherwise
    problems += _check_required_codes(projected, known)
    raise_problems(resource, known, problems)


#: Per known resource type (filled on first use): its projected keys and the validator of its projection.
_PREPARED: dict[str, tuple[frozenset[str], SchemaValidator]] = {}


def _prepare(resource: dict[str, Any], rtype: Any) -> tuple[frozenset[str], SchemaValidator]:
    """The first checks of `validate` (resourceType), then what `rtype` needs, built once."""
    if not isinstance(rtype, str) or not rtype:
        raise MappingError(f"{resource_label(resource)}: missing resourceType")
    if not _known_type(rtype):
        raise MappingError(f"{resource_label(resource)}: unknown resourceType")
    prepared = (_projected_keys(rtype), _root_validator(rtype))
    _PREPARED[rtype] = prepared
    return prepared


def _problems(resource: dict[str, Any], exc: ValidationError) -> list[str]:
    """`loc: reason` per error of R4B's judgement (the full branches), as `mappings.validate` words it."""
    errors = [
        e
        for e in exc.errors(include_url=False, include_context=False, include_input=False)
        if _FAST not in e["loc"] and e["type"] != "json_type"  # json_type: not a string, no JSON reading
    ]
    # A string where an element belongs: its JSON reading says what is wrong, not "not an object".
    strings = {_before_last(e["loc"], _JSON) for e in errors if _JSON in e["loc"]}
    problems = []
    for error in errors:
        loc = error["loc"]
        if error["type"] == "dict_type" and _OBJECT in loc and _before_last(loc, _OBJECT) in strings:
            continue
        stripped = tuple(part for part in loc if part not in _TAGS)
        message = _safe_message(resource, {**error, "loc": stripped})
        problems.append(f"{_format_loc(stripped)}: {message}")
    return list(dict.fromkeys(problems)) or ["<root>: invalid"]  # never a failure without a reason


def _before_last(loc: tuple[int | str, ...], tag: str) -> tuple[int | str, ...]:
    index = len(loc) - 1 - loc[::-1].index(tag)
    return loc[:index]


# -- the speed figures: `python -m mappings.validate_mapped` ------------------------------------------


def _benchmark(repeats: int = 5) -> None:
    """Print µs per resource of `validate` (R4B), `validate_strict` (compiled, R4B for what it refuses) and
    `validate_mapped` over the bundled demo data (best of `repeats` runs, validators built beforehand)."""
    import contextlib
    import gzip
    import json
    import time
    from importlib import resources

    from mappings.validate import validate
    from mappings.validate_strict import validate_strict

    demo = resources.files("connector").joinpath("demo/data")
    by_type: dict[str, list[dict[str, Any]]] = {}
    for entry in sorted(demo.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".ndjson.gz"):
            lines = gzip.decompress(entry.read_bytes()).decode("utf-8").splitlines()
            by_type[entry.name.removesuffix(".ndjson.gz")] = [json.loads(line) for line in lines if line]

    def per_resource(check: Callable[[dict[str, Any]], None], items: list[dict[str, Any]]) -> float:
        best = float("inf")
        for _ in range(repeats):
            started = time.process_time()
            for item in items:
                with contextlib.suppress(MappingError):
                    check(item)
            best = min(best, time.process_time() - started)
        return best / len(items) * 1e6

    checks = (validate, validate_strict, validate_mapped)
    everything = [item for items in by_type.values() for item in items]
    for check in checks:
        per_resource(check, everything)  # import the models, build the validators
    started = time.process_time()
    for _ in range(1000):
        sum(range(1000))
    print(f"(this machine: sum(range(1000)) takes {(time.process_time() - started) * 1000:.1f} µs)")
    print(
        f"{'type':<28} {'n':>4} {'bytes':>6} {'validate µs':>12} {'strict µs':>10} {'mapped µs':>10}"
        f" {'÷strict':>8} {'÷mapped':>8}"
    )
    for label, items in [*by_type.items(), ("all", everything)]:
        size = sum(len(json.dumps(item)) for item in items) // len(items)
        r4b, strict, mapped = (per_resource(check, items) for check in checks)
        print(
            f"{label:<28} {len(items):>4} {size:>6} {r4b:>12.1f} {strict:>10.1f} {mapped:>10.1f}"
            f" {r4b / strict:>8.1f} {r4b / mapped:>8.1f}"
        )


if __name__ == "__main__":
    _benchmark()
