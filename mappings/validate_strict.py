"""`validation = "strict"`: the whole resource judged as R4B judges it, in microseconds when it is valid.

`mappings.validate.validate` builds the `fhir.resources` R4B model of the whole resource (60-400 µs).
`validate_strict` first runs the same model compiled to a pydantic-core schema (`mappings.r4b_schemas`)
over the whole resource (5-25 µs). What the compiled check accepts, R4B accepts, so the resource is
valid; anything else goes to `validate`, which rejects it with R4B's own message. Verdicts and messages
are `validate`'s by construction. tests/test_validate_strict.py holds the compiled check to never
accepting what R4B rejects, and (it is exact) to accepting what R4B accepts, so valid resources skip R4B.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import SchemaValidator

from mappings.fhir_ids import TYPE_RE
from mappings.r4b_schemas import _element_validator, nests_too_deep
from mappings.validate import _check_required_codes, _model_class, validate

#: Per known resource type (filled on first use): the compiled validator of whole resources of it.
_VALIDATORS: dict[str, SchemaValidator] = {}


def strict_validator(rtype: str) -> SchemaValidator | None:
    """The compiled whole-resource validator of `rtype`, built once; None when R4B has no such type.

    Building takes 5-15 ms per type, and 100 ms more for the first (the datatypes all share): call it
    for the types a worker will see before it sees them.
    """
    validator = _VALIDATORS.get(rtype)
    if validator is None:
        model = _model_class(rtype) if TYPE_RE.fullmatch(rtype) else None
        if model is None:
            return None
        validator = _element_validator(model)  # thread-safe: the compiler builds under its lock
        _VALIDATORS[rtype] = validator
    return validator


def accepts(resource: Any, whole_json: bytes | None = None) -> bool:
    """Whether the compiled check alone finds `resource` valid: then `validate` accepts it as well.

    False says nothing (the resource may still be valid): ask `validate`. `whole_json`: the resource's
    JSON text, when the caller has it (see `nests_too_deep`).
    """
    if not isinstance(resource, dict):
        return False
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return False
    validator = strict_validator(rtype)
    rid = resource.get("id")
    if validator is None or not isinstance(rid, str) or not rid or nests_too_deep(resource, whole_json):
        return False
    try:
        validator.validate_python(resource)
    except Exception:  # a ValidationError, or whatever a Python rule raised: `validate` will say
        return False
    return not _check_required_codes(resource, rtype)


def validate_strict(resource: dict[str, Any], whole_json: bytes | None = None) -> None:
    """Raise `MappingError` (one line, no resource values) unless `resource` is a valid R4 resource.

    The same verdict and message as `mappings.validate.validate`, which judges whatever the compiled
    check does not accept. `whole_json`: the resource's JSON text, when the caller has it.
    """
    if not accepts(resource, whole_json):
        validate(resource)
