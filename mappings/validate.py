"""Validate a FHIR R4 resource (plain dict) with the `fhir.resources.R4B` models.

`fhir.resources` 8.x has no R4 package; its R4B models (FHIR 4.3.0) accept R4 content where the two agree,
while its top-level models are R5 and reject R4 data, so only `fhir.resources.R4B` is used here.

The pydantic models check structure, datatypes, cardinality and unknown elements but not code bindings,
so the required bindings of the top-level status-like codes we report on are checked here as well: a
`status` of "bogus" must be a dead letter, not a row.

Error messages are built from error locations and pydantic's messages only, never from input values:
resources hold PHI, and these messages end up in logs and in `dead_letter.error`.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from functools import cache
from typing import Any

from fhir_core.fhirabstractmodel import FHIRAbstractModel
from pydantic import ValidationError

from mappings.errors import MappingError
from mappings.fhir_ids import TYPE_RE, resource_label
from mappings.specs import SPECS

_MAX_ERRORS_SHOWN = 3
#: JSON nesting (objects and arrays) a resource may have; real resources stay far below it.
MAX_DEPTH = 64
#: Element names as they may appear in an error location; unknown keys come from the input and may hold
#: anything (newlines, megabytes, PHI), so other names are not echoed.
_LOC_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,63}")


#: Required bindings of top-level code elements, per resource type (from `mappings.specs`).
REQUIRED_CODES: dict[str, Mapping[str, frozenset[str]]] = {
    s.resource_type: s.required_codes for s in SPECS if s.required_codes
}


@cache
def _model_class(resource_type: str) -> type[FHIRAbstractModel] | None:
    """The R4B model class for a resource type, imported on first use (importing all is slow)."""
    try:
        module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
    except ImportError:
        return None
    model = getattr(module, resource_type, None)
    return model if isinstance(model, type) and issubclass(model, FHIRAbstractModel) else None


def _format_loc(loc: tuple[int | str, ...]) -> str:
    """('code', 'coding', 0, 'system') -> 'code.coding[0].system'."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = part if _LOC_NAME_RE.fullmatch(part) else "<invalid name>"
            text += f".{name}" if text else name
    return text or "<root>"


def _value_at(resource: Any, loc: tuple[int | str, ...]) -> Any:
    node = resource
    for part in loc:
        if isinstance(part, int) and isinstance(node, list) and -len(node) <= part < len(node):
            node = node[part]
        elif isinstance(part, str) and isinstance(node, dict):
            node = node.get(part)
        else:
            return None
    return node


def _safe_message(resource: dict[str, Any], error: dict[str, Any]) -> str:
    """Pydantic's message, unless a custom validator echoed the offending value into it."""
    msg = " ".join(str(error.get("msg", "")).split())
    value = _value_at(resource, tuple(error.get("loc", ())))
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        text = str(value)
        if text and text in msg:
            return str(error.get("type", "invalid value"))
    return msg


def _check_required_codes(resource: dict[str, Any], resource_type: str) -> list[str]:
    problems = []
    for element, allowed in REQUIRED_CODES.get(resource_type, {}).items():
        value = resource.get(element)
        # A list or object (unhashable) is invalid too; the model has already said why.
        if value is not None and (not isinstance(value, str) or value not in allowed):
            problems.append(f"{element}: code not in the required value set")
    return problems


def too_deep(resource: Any, limit: int) -> bool:
    """Whether JSON objects / arrays nest more than `limit` levels (checked without recursion)."""
    stack: list[tuple[Any, int]] = [(resource, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def validate(resource: dict[str, Any]) -> None:
    """Raise `MappingError` (one line, no resource values) unless `resource` is a valid R4 resource.

    The reference judgement; `mappings.validate_strict.validate_strict` gives the same, faster.
    """
    label = resource_label(resource)
    if not isinstance(resource, dict):
        raise MappingError(f"{label}: a resource must be a JSON object")
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise MappingError(f"{label}: missing resourceType")
    model = _model_class(rtype) if TYPE_RE.fullmatch(rtype) else None
    if model is None:
        raise MappingError(f"{label}: unknown resourceType")
    rid = resource.get("id")
    if not isinstance(rid, str) or not rid:
        raise MappingError(f"{label}: missing id")

    if too_deep(resource, MAX_DEPTH):
        # The model validator recurses per level (RecursionError), and so do the JSON encoders.
        raise MappingError(f"{label}: invalid {rtype}: nested more than {MAX_DEPTH} levels deep")
    problems: list[str] = []
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False, include_context=False)
        problems = [f"{_format_loc(tuple(e['loc']))}: {_safe_message(resource, dict(e))}" for e in errors]
    except (ValueError, TypeError, LookupError) as exc:
        # fhir_core raises these for some shape problems (a root-level list, a contained resource whose
        # resourceType is empty: KeyError); the input is invalid, not our code.
        problems = [f"<root>: {type(exc).__name__}"]
    problems += _check_required_codes(resource, rtype)
    raise_problems(resource, rtype, problems)


def raise_problems(resource: Any, rtype: str, problems: list[str]) -> None:
    """Raise one MappingError listing the first problems found, if any (labelled only then)."""
    if not problems:
        return
    label = resource_label(resource)
    shown = "; ".join(problems[:_MAX_ERRORS_SHOWN])
    more = len(problems) - _MAX_ERRORS_SHOWN
    suffix = f" ({more} more)" if more > 0 else ""
    raise MappingError(f"{label}: invalid {rtype}: {shown}{suffix}")
