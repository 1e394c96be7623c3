"""`validation = "mapped"`: validate only what the mappers read, in microseconds.

`mappings.validate.validate` builds the `fhir.resources` R4B model of the whole resource (200-1000 µs).
Here only the projection of a resource is validated: resourceType, id, meta and status (the pipeline reads
them of every resource), the top-level elements the mappers read (`READ_ELEMENTS`) and the top-level
elements R4 requires (`required_elements`). Inside each of them every nested element is checked and
unknown keys are rejected, as R4B does.

The contract (enforced by tests/test_mappings_validate_mapped.py): for every resource R,
`validate_mapped(R)` raises `MappingError` if and only if `validate(project(R))` raises.

How it stays exact: the pydantic-core schemas are derived from the R4B models' own core schemas, so each
string, code, uri, integer or boolean is checked by the very schema R4B uses (its regex, its lax
coercions). How it gets fast: what makes R4B slow is replaced. A nested model becomes a TypedDict schema
validated in Rust (no model objects, no Python call per element); date, dateTime, instant, time and decimal
(Python in fhir_core) are re-expressed in Rust and tested against fhir_core; the models' Python rules
(required primitives, choice elements, `_x` extensions, contained resources) become small checks that run
only where they apply. R4B's odd judgements come along on purpose; the test module lists them.

Messages follow `mappings.validate`: one line, `Type/id: invalid Type: loc: reason`, built from element
names and pydantic's messages only, never from input values (resources hold PHI).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson
from fhir_core.constraints import FHIR_TYPES_MAPS
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from fhir_core.types import FhirBase, FhirElementOrResourceBase, validate_leap_second
from fhir_core.utils import is_list_type, is_primitive_type
from pydantic._internal._validators import import_string
from pydantic_core import PydanticCustomError, SchemaValidator, ValidationError
from pydantic_core import core_schema as cs

from connector.errors import MappingError
from mappings.validate import (
    _TYPE_RE,
    MAX_DEPTH,
    _check_required_codes,
    _format_loc,
    _model_class,
    _safe_message,
    raise_problems,
    resource_label,
    too_deep,
)

#: Per mapped resource type: the top-level elements a mapper (or `connector.pipeline.map_resources`) reads,
#: with every variant of a read choice element and the `_x` extension sibling of every read primitive.
#: `content_hash` hashes the whole resource, but reads no element: it is not validation-relevant.
READ_ELEMENTS: dict[str, tuple[str, ...]] = {
    # mappings.referral (+ intake, referral_source for a contained requester), pipeline: status
    "ServiceRequest": (
        "status", "_status", "intent", "_intent", "priority", "_priority", "category", "code",
        "subject", "requester", "performer", "performerType", "insurance",
        "occurrenceDateTime", "_occurrenceDateTime", "occurrencePeriod", "occurrenceTiming",
        "authoredOn", "_authoredOn", "reasonCode", "reasonReference", "basedOn", "replaces", "note",
        "contained",
    ),
    # mappings.visit
    "Appointment": (
        "status", "_status", "participant", "serviceType", "appointmentType", "basedOn",
        "start", "_start", "created", "_created",
    ),
    "Encounter": ("status", "_status", "subject", "type", "serviceType", "period", "appointment", "basedOn"),
    # mappings.referral_source
    "Practitioner": ("qualification", "name", "identifier", "active", "_active"),
    "PractitionerRole": (
        "code", "specialty", "practitioner", "organization", "identifier", "active", "_active",
    ),
    "Organization": ("type", "name", "_name", "partOf", "identifier", "active", "_active"),
    # mappings.eligibility (payer_fields reads a #contained payor)
    "Coverage": (
        "status", "_status", "type", "beneficiary", "subscriberId", "_subscriberId", "relationship",
        "payor", "class", "network", "_network", "order", "_order", "period", "contained",
    ),
    "CoverageEligibilityResponse": (
        "status", "_status", "outcome", "_outcome", "purpose", "_purpose", "patient", "request", "insurer",
        "created", "_created", "disposition", "_disposition", "servicedDate", "_servicedDate",
        "servicedPeriod", "insurance", "error", "contained",
    ),
    # mappings.claim (use = claim) and mappings.prior_auth (use = preauthorization)
    "Claim": (
        "status", "_status", "use", "_use", "type", "priority", "identifier", "patient", "provider",
        "insurer", "insurance", "created", "_created", "billablePeriod", "total", "item", "related",
        "referral", "supportingInfo", "extension", "contained",
    ),
    # mappings.adjudication (use = claim) and mappings.prior_auth (use = preauthorization)
    "ClaimResponse": (
        "status", "_status", "use", "_use", "outcome", "_outcome", "created", "_created", "request",
        "requestor", "patient", "insurer", "insurance", "payment", "adjudication", "total", "item",
        "addItem", "error", "disposition", "_disposition", "preAuthRef", "_preAuthRef", "preAuthPeriod",
        "extension", "contained",
    ),
    # mappings.adjudication; it reads `error` of an ExplanationOfBenefit too, which R4 does not define:
    # listed, so a resource carrying one is invalid (as in strict mode) instead of feeding denial rows.
    "ExplanationOfBenefit": (
        "status", "_status", "use", "_use", "outcome", "_outcome", "created", "_created", "claim",
        "claimResponse", "patient", "provider", "insurer", "payment", "adjudication", "total", "item",
        "addItem", "disposition", "_disposition", "error",
    ),
}  # fmt: skip

#: Read of every resource, mapped or kept raw: `connector.pipeline.map_resources` takes the key, meta
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
    if not isinstance(rtype, str) or _TYPE_RE.fullmatch(rtype) is None:
        return False
    return _model_class(rtype) is not None


# -- primitives in Rust ------------------------------------------------------------------------------
# fhir_core checks date, dateTime, instant, time and decimal in Python wrap validators (a few µs each).
# These schemas accept exactly what those accept, in Rust: the same regexes (anchored, as fullmatch), the
# same pydantic-core date/datetime/time parsers for full values, and the same lax non-string inputs
# (unix timestamps). Only a leap second (":60") goes to Python, as fhir_core's own check.

_YEAR = r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
_MONTH = r"(0[1-9]|1[0-2])"
_DAY = r"(0[1-9]|[1-2][0-9]|3[0-1])"
_ZONE = r"(Z|([+\-])((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
_CLOCK = r"([01][0-9]|2[0-3]):[0-5][0-9]:"
_PARTIAL_DATE = rf"^{_YEAR}(-{_MONTH})?$"
_FULL_DATE = rf"^{_YEAR}-{_MONTH}-{_DAY}$"
_DATETIME = rf"^{_YEAR}-{_MONTH}-{_DAY}(T{_CLOCK}[0-5][0-9](\.[0-9]+)?{_ZONE})?$"
_DATETIME_LEAP = rf"^{_YEAR}-{_MONTH}-{_DAY}T{_CLOCK}60(\.[0-9]+)?{_ZONE}$"
_INSTANT = rf"^{_YEAR}-{_MONTH}-{_DAY}T{_CLOCK}[0-5][0-9](\.[0-9]+)?{_ZONE}$"
_TIME = rf"^{_CLOCK}[0-5][0-9](\.[0-9]+)?$"
_TIME_LEAP = rf"^{_CLOCK}60(\.[0-9]+)?$"
_DECIMAL = r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$"


def _text(pattern: str) -> dict[str, Any]:
    return cs.str_schema(pattern=pattern, strict=True)


def _number() -> dict[str, Any]:
    """An int (not a bool) or a float: what the parsers read as a unix timestamp."""
    return cs.union_schema([cs.int_schema(strict=True), cs.float_schema(strict=True)], mode="left_to_right")


def _leap_second(pattern: str, parser: dict[str, Any]) -> dict[str, Any]:
    """fhir_core keeps a ":60" value as text once the same value with ":59" parses (rare: Python)."""
    validator = SchemaValidator(parser)

    def check(value: str) -> str:
        validate_leap_second(value, validator.validate_python)
        return value

    return cs.chain_schema([_text(pattern), cs.no_info_plain_validator_function(check)])


def _one_of(kind: str, *choices: dict[str, Any]) -> dict[str, Any]:
    return cs.union_schema(
        list(choices),
        mode="left_to_right",
        custom_error_type=f"fhir_{kind}",
        custom_error_message=f"Input should be a valid FHIR {kind}",
    )


def _date() -> dict[str, Any]:
    return _one_of(
        "date",
        _text(_PARTIAL_DATE),
        cs.chain_schema([_text(_FULL_DATE), cs.date_schema()]),
        cs.chain_schema([_number(), cs.date_schema()]),
    )


def _datetime() -> dict[str, Any]:
    return _one_of(
        "dateTime",
        _text(_PARTIAL_DATE),
        cs.chain_schema([_text(_DATETIME), cs.datetime_schema()]),
        _leap_second(_DATETIME_LEAP, cs.datetime_schema()),
        cs.chain_schema([_number(), cs.datetime_schema()]),
    )


def _instant() -> dict[str, Any]:
    return _one_of(
        "instant",
        cs.chain_schema([_text(_INSTANT), cs.datetime_schema()]),
        _leap_second(_DATETIME_LEAP, cs.datetime_schema()),
        cs.chain_schema([_number(), cs.datetime_schema()]),
    )


def _time() -> dict[str, Any]:
    return _one_of(
        "time",
        cs.chain_schema([_text(_TIME), cs.time_schema()]),
        _leap_second(_TIME_LEAP, cs.time_schema()),
        cs.chain_schema([_number(), cs.time_schema()]),
    )


def _decimal() -> dict[str, Any]:
    # fhir_core: str(value) must match the decimal regex, then Decimal(value); so ints of any size, finite
    # floats and decimal text pass, bools ("True") and nan / inf do not.
    return _one_of(
        "decimal",
        cs.int_schema(strict=True),
        cs.float_schema(strict=True, allow_inf_nan=False),
        _text(_DECIMAL),
    )


def _url() -> dict[str, Any]:
    # fhir_core's url accepts any string; anything else ends in an AttributeError there.
    return cs.str_schema()


_NATIVE_PRIMITIVES: dict[str, Callable[[], dict[str, Any]]] = {
    "Date._validate": _date,
    "DateTime._validate": _datetime,
    "Instant._validate": _instant,
    "Time.__get_pydantic_core_schema__.<locals>._validate": _time,
    "Decimal.__get_pydantic_core_schema__.<locals>._validate": _decimal,
    "Url.__get_pydantic_core_schema__.<locals>._validate": _url,
}


# -- schemas derived from the R4B models -------------------------------------------------------------
# Each R4B model M gets three definitions:
#   F:M  the fast shape: element names only (no `_x`, no `fhir_comments`), required primitives present,
#        children F as well. Everything it accepts R4B accepts; it is what real resources look like.
#   S:M  R4B's full judgement: every key R4B takes (`_x`, field names, `resourceType`), R4B's Python
#        rules, children U.
#   U:M  F, else S. Valid resources pass F in one go; S only runs where F failed, and its children try F
#        again, so an odd or invalid element costs its subtree once per level, never exponentially.

#: Tags of our own union branches in error locations; removed from messages (never element names).
_FAST, _FULL, _OBJECT, _JSON = "(fast)", "(full)", "(object)", "(json)"
_TAGS = frozenset({_FAST, _FULL, _OBJECT, _JSON})
_FHIR_BASE = "FhirBase.__get_pydantic_core_schema__.<locals>._validate"


def _qualname(node: dict[str, Any]) -> str:
    return getattr(node["function"]["function"], "__qualname__", "")


def _fhir_base_target(node: dict[str, Any]) -> tuple[type[FhirBase], type[FHIRAbstractModel]] | None:
    """(type, model class) behind the wrap validator R4B uses for a complex element, if `node` is one."""
    if node.get("type") != "function-wrap" or _qualname(node) != _FHIR_BASE:
        return None
    func = node["function"]["function"]
    cells = dict(zip(func.__code__.co_freevars, func.__closure__ or (), strict=True))
    source_type = cells["source_type"].cell_contents
    return source_type, source_type.get_model_klass()


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    alias: str
    node: dict[str, Any]  # R4B's core schema of the value, without its default
    required: bool  # no default in R4B: the key must be there (its value may still be null)
    #: A list of complex elements: R4B rejects a null item (`reject_null_complex_elements`), though not in a
    #: list of primitives nor in the `_x` list beside one, where a null lines values up.
    complex_list: bool
    #: Not part of the fast shape: `_x` extensions and comments are rare, so they take the full path.
    rare: bool


@dataclass(frozen=True, slots=True)
class _Rules:
    """R4B's Python rules of one model (`validate_after_model_construction`)."""

    #: (element name, field name, `_x` field name or None) of each required primitive.
    required: tuple[tuple[str, str, str | None], ...]
    #: (field names of the variants, whether one is required) of each choice element.
    choices: tuple[tuple[tuple[str, ...], bool], ...]


def _is_complex_list(info: Any) -> bool:
    return is_list_type(info) and not is_primitive_type(info)


@cache
def _fields(model: type[FHIRAbstractModel]) -> tuple[_Field, ...]:
    node = model.__pydantic_core_schema__
    while node["type"] != "model-fields":
        node = node["schema"]
    fields = []
    for name, field in node["fields"].items():
        value = field["schema"]
        required = value["type"] != "default"
        info = model.model_fields[name]
        fields.append(
            _Field(
                name=name,
                alias=field["validation_alias"],
                node=value if required else value["schema"],
                required=required,
                complex_list=_is_complex_list(info) and not name.endswith("__ext"),
                rare=name.endswith("__ext") or name == "fhir_comments",
            )
        )
    return tuple(fields)


@cache
def _rules(model: type[FHIRAbstractModel]) -> _Rules:
    declared = model.model_construct()  # the lists below are declared on instances
    aliases = model.get_alias_mapping()
    choices = []
    for variants in declared.get_one_of_many_fields().values():
        extra = model.model_fields[variants[0]].json_schema_extra
        needed = isinstance(extra, dict) and extra.get("one_of_many_required") is True
        choices.append((tuple(variants), needed))
    required = tuple((name, aliases[name], ext) for name, ext in declared.get_required_fields())
    return _Rules(required=required, choices=tuple(choices))


class _Compiler:
    """Builds the F / S / U definitions of R4B models, on demand, and validators from them."""

    def __init__(self) -> None:
        self.definitions: dict[str, dict[str, Any]] = {}
        self._dependencies: dict[str, set[str]] = {}
        self._building: list[str] = []
        self._lock = threading.RLock()  # validators are built lazily, maybe from several threads

    def validator(self, schema_builder: Callable[[], dict[str, Any]], name: str) -> SchemaValidator:
        """A validator of the schema `schema_builder` returns, with every definition it reaches."""
        with self._lock:
            return self._validator(schema_builder, name)

    def _validator(self, schema_builder: Callable[[], dict[str, Any]], name: str) -> SchemaValidator:
        schema = self._define(name, schema_builder)
        needed: set[str] = set()
        stack = [name]
        while stack:
            for dep in self._dependencies[stack.pop()]:
                if dep not in needed:
                    needed.add(dep)
                    stack.append(dep)
        definitions = [{**self.definitions[dep], "ref": dep} for dep in sorted(needed)]
        return SchemaValidator(cs.definitions_schema(schema, definitions))

    def root(self, model: type[FHIRAbstractModel], keys: frozenset[str]) -> SchemaValidator:
        """The validator of a projected resource: `model` restricted to the top-level elements `keys`."""

        def union() -> dict[str, Any]:
            fast = self._typed_dict(model, fast=True, keys=keys)
            full = self._typed_dict(model, fast=False, keys=keys)
            return cs.union_schema([(fast, _FAST), (full, _FULL)], mode="left_to_right")

        return self.validator(union, f"root:{_key(model)}")

    def union_ref(self, model: type[FHIRAbstractModel]) -> dict[str, Any]:
        def union() -> dict[str, Any]:
            return cs.union_schema(
                [(self._fast_ref(model), _FAST), (self._full_ref(model), _FULL)], mode="left_to_right"
            )

        return self._ref(f"U:{_key(model)}", union)

    def _fast_ref(self, model: type[FHIRAbstractModel]) -> dict[str, Any]:
        return self._ref(f"F:{_key(model)}", lambda: self._typed_dict(model, fast=True))

    def _full_ref(self, model: type[FHIRAbstractModel]) -> dict[str, Any]:
        return self._ref(f"S:{_key(model)}", lambda: self._typed_dict(model, fast=False))

    def _ref(self, name: str, builder: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if name not in self._dependencies:  # else built, or being built (a recursive type)
            self.definitions[name] = self._define(name, builder)
        elif self._building:
            self._dependencies[self._building[-1]].add(name)
        return cs.definition_reference_schema(name)

    def _define(self, name: str, builder: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """`builder()`, recording the definitions it refers to as the dependencies of `name`."""
        if self._building:
            self._dependencies[self._building[-1]].add(name)
        self._dependencies[name] = set()
        self._building.append(name)
        try:
            return builder()
        finally:
            self._building.pop()

    def _typed_dict(
        self, model: type[FHIRAbstractModel], *, fast: bool, keys: frozenset[str] | None = None
    ) -> dict[str, Any]:
        rules = _rules(model)
        required_primitives = {field_name for _, field_name, _ in rules.required}
        fields: dict[str, Any] = {}
        for field in _fields(model):
            if (keys is not None and field.alias not in keys) or (fast and field.rare):
                continue
            value = self._value(field.node, fast=fast, complex_list=field.complex_list)
            required = field.required
            if fast and field.name in required_primitives:
                # The fast shape has the value itself; a `_x` extension standing in for it takes S.
                value, required = _not_null(value), True
            fields[field.name] = cs.typed_dict_field(value, required=required, validation_alias=field.alias)
        rtype = model.__resource_type__
        # FHIRAbstractModel.__init__ pops `resourceType` (or `resource_type`) from any element or resource:
        # null or the model's own type pass, anything else fails. Resources carry it (fast), elements not.
        if keys is not None or not fast or model.has_resource_base():
            fields["resourceType"] = cs.typed_dict_field(
                cs.nullable_schema(cs.literal_schema([rtype])), required=keys is not None and fast
            )
        if not fast and keys is None:
            fields["resource_type"] = cs.typed_dict_field(
                cs.with_info_plain_validator_function(_resource_type_check(rtype)), required=False
            )
        schema: dict[str, Any] = cs.typed_dict_schema(
            fields,
            extra_behavior="forbid",
            # R4B takes a field's Python name for its element name too (`class_fhir`, `status__ext`).
            config=cs.CoreConfig(validate_by_name=not fast, validate_by_alias=True),
        )
        check = _choice_check(rules) if fast else _full_check(model.__name__, rules)
        if check is not None:
            schema = cs.no_info_after_validator_function(check, schema)
        if model.__name__ == "FHIRPrimitiveExtension":
            schema = cs.no_info_before_validator_function(_primitive_extension_check, schema)
        return schema

    def _value(self, node: dict[str, Any], *, fast: bool, complex_list: bool = False) -> dict[str, Any]:
        """R4B's schema of a value, with complex elements and slow primitives replaced."""
        kind = node["type"]
        target = _fhir_base_target(node)
        if target is not None:
            return self._complex(*target, fast=fast)
        if kind in ("nullable", "default"):
            inner = self._value(node["schema"], fast=fast, complex_list=complex_list)
            return {**_plain(node), "schema": inner}
        if kind == "list":
            items = self._value(node["items_schema"], fast=fast)
            if complex_list:
                items = _not_null(items)
            return {**_plain(node), "items_schema": items}
        if kind == "union":
            return {**_plain(node), "choices": [self._value(choice, fast=fast) for choice in node["choices"]]}
        if kind.startswith("function-"):
            native = _NATIVE_PRIMITIVES.get(_qualname(node))
            if native is not None:
                return native()
        return node  # R4B's own schema: a pattern, bounds, a lax bool or int, a uuid, base64 bytes

    def _complex(self, base: type[FhirBase], model: type[FHIRAbstractModel], *, fast: bool) -> dict[str, Any]:
        """A nested element: an object, or (R4B parses it) a JSON string of one; null passes (R4B)."""
        if issubclass(base, FhirElementOrResourceBase):
            return cs.nullable_schema(cs.no_info_plain_validator_function(_any_resource_check(base, model)))
        if fast:
            return cs.nullable_schema(self._fast_ref(model))
        union = self.union_ref(model)
        return cs.nullable_schema(
            cs.union_schema([(union, _OBJECT), (cs.json_schema(union), _JSON)], mode="left_to_right")
        )


def _key(model: type[FHIRAbstractModel]) -> str:
    return f"{model.__module__}.{model.__qualname__}"


def _plain(node: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k not in ("metadata", "serialization", "ref")}


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    return schema["schema"] if schema["type"] == "nullable" else schema


# -- R4B's Python rules ------------------------------------------------------------------------------


def _choice_check(rules: _Rules) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    """At most one variant of each choice element, and one of each required choice element."""
    if not rules.choices:
        return None
    variants = frozenset(v for group, _ in rules.choices for v in group)
    any_required = any(needed for _, needed in rules.choices)

    def check(value: dict[str, Any]) -> dict[str, Any]:
        if not any_required and len(variants.intersection(value)) < 2:
            return value  # the usual case, decided in C
        for group, needed in rules.choices:
            found = sum(value.get(name) is not None for name in group)
            if found > 1:
                raise PydanticCustomError("choice_multiple", "more than one value for a choice element")
            if needed and not found:
                raise PydanticCustomError("choice_missing", "a required choice element has no value")
        return value

    return check


def _full_check(title: str, rules: _Rules) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    """`validate_after_model_construction`: required primitives (a value, or a `_x` with extensions)."""
    choices = _choice_check(rules)
    if not rules.required:
        return choices

    def check(value: dict[str, Any]) -> dict[str, Any]:
        missing = [
            alias
            for alias, name, ext_name in rules.required
            if value.get(name) is None and not _has_extensions(value.get(ext_name) if ext_name else None)
        ]
        if missing:
            raise ValidationError.from_exception_data(
                title,
                [
                    {"type": PydanticCustomError("missing", "Field required"), "loc": (alias,), "input": None}
                    for alias in missing
                ],
            )
        return choices(value) if choices is not None else value

    return check


def _has_extensions(ext: Any) -> bool:
    # R4B: the `_x` must carry extensions (an id alone does not stand in for the value). A list, beside
    # a list primitive, makes R4B raise AttributeError: invalid either way.
    return isinstance(ext, dict) and bool(ext.get("extension"))


def _resource_type_check(rtype: str) -> Callable[[Any, Any], Any]:
    def check(value: Any, info: Any) -> Any:
        # `resourceType` wins over `resource_type` when both are given (FHIRAbstractModel.__init__).
        if "resourceType" in info.data or value is None or value == rtype:
            return value
        raise PydanticCustomError("literal_error", "Input should be '{expected}'", {"expected": rtype})

    return check


_PRIMITIVE_EXTENSION_KEYS = ("id", "extension", "fhir_comments")


def _primitive_extension_check(value: Any) -> Any:
    """FHIRPrimitiveExtension's own rule: a `_x` needs an id, extensions or comments (on the raw input)."""
    if isinstance(value, list):  # R4B: AttributeError (reachable through a JSON string only)
        raise PydanticCustomError("dict_type", "Input should be a valid dictionary")
    if isinstance(value, dict) and all(value.get(key) is None for key in _PRIMITIVE_EXTENSION_KEYS):
        raise PydanticCustomError("model_validation_format", "One of field value is required.")
    return value


def _any_resource_check(base: type[FhirBase], model: type[FHIRAbstractModel]) -> Callable[[Any], Any]:
    """FhirElementOrResourceBase (`contained`): the item's own resourceType picks the model."""
    prefix = getattr(base, "_prefix", "")

    def check(value: Any) -> Any:
        target = model
        if isinstance(value, dict) and "resourceType" in value:
            name = value["resourceType"]
            if not isinstance(name, str) or f"{prefix}{name}Type" not in FHIR_TYPES_MAPS:
                # R4B raises TypeError / KeyError here, which `validate` reports as invalid.
                raise PydanticCustomError("unknown_resource_type", "unknown resourceType")
            target = _import_model(FHIR_TYPES_MAPS[f"{prefix}{name}Type"])
        if model.__name__ == "Resource" and not target.has_resource_base():
            raise PydanticCustomError("model_validation_format", "not a resource")
        if model.__name__ == "Element" and target.has_resource_base():
            raise PydanticCustomError("model_validation_format", "not an element")
        if isinstance(value, dict):
            return _element_validator(target).validate_python(value)
        if isinstance(value, str | bytes):
            return _element_validator(target).validate_json(value)
        raise PydanticCustomError("model_validation_format", "Input should be an object")

    return check


@cache
def _import_model(path: str) -> type[FHIRAbstractModel]:
    return import_string(path)  # ~20 µs a call uncached; the paths are R4B's own (a bounded set)


_COMPILER = _Compiler()


@cache
def _element_validator(model: type[FHIRAbstractModel]) -> SchemaValidator:
    """A whole model, every element (for contained resources)."""
    return _COMPILER.validator(lambda: _COMPILER.union_ref(model), f"element:{_key(model)}")


@cache
def _root_validator(rtype: str) -> SchemaValidator:
    """The validator of projected resources of a known type."""
    model = _model_class(rtype)
    assert model is not None, rtype
    return _COMPILER.root(model, _projected_keys(rtype))


# -- the check ---------------------------------------------------------------------------------------

_BRACKETS = bytes.maketrans(b"{}[]", b"()()")
_NOT_STRUCTURE = bytes(set(range(256)) - set(b'{}[]"'))
_STRINGS = re.compile(rb'"[^"]*"')


def nests_too_deep(resource: Any) -> bool:
    """`too_deep(resource, MAX_DEPTH)` in a few µs, from the bracket nesting of the resource's JSON text.

    `validate_mapped` checks the projection with it, as `validate(project(R))` does. Whoever stores the
    whole resource (the raw payload) should check the whole resource with it too: unread elements are
    not validated, and the JSON encoders fail on deeper nesting.
    """
    try:
        text = orjson.dumps(resource)
    except (orjson.JSONEncodeError, TypeError):  # deeper than orjson goes, or an int beyond 64 bits
        return too_deep(resource, MAX_DEPTH)
    # Only brackets and quotes are kept. Fewer brackets than two per level cannot nest too deep.
    structure = text.translate(_BRACKETS, _NOT_STRUCTURE)
    if len(structure) - structure.count(b'"') <= 2 * MAX_DEPTH:
        return False  # the usual case
    if b"\\" in text:  # escaped backslashes and quotes go first, so quotes pair up
        structure = text.replace(b"\\\\", b"").replace(b'\\"', b"").translate(_BRACKETS, _NOT_STRUCTURE)
    # Strings go: empty ones (and adjacent ones, merged: that leaves what is outside them alone), then
    # the few that hold brackets.
    structure = structure.replace(b'""', b"")
    if b'"' in structure:
        structure = _STRINGS.sub(b"", structure)
    # Each pass removes the innermost pairs: the passes count the depth.
    for _ in range(MAX_DEPTH):
        if not structure:
            return False
        structure = structure.replace(b"()", b"")
    return bool(structure)


def validate_mapped(resource: dict[str, Any]) -> None:
    """Raise `MappingError` (one line, no resource values) unless the projection of `resource` is valid."""
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
    if nests_too_deep(projected):
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
    problems += _check_required_codes(projected, rtype)
    raise_problems(resource_label(resource), rtype, problems)


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


# -- the speed figure: `python -m mappings.validate_mapped` -------------------------------------------


def _benchmark(repeats: int = 5) -> None:
    """Print µs per resource of `validate` and `validate_mapped` over the bundled demo data (best of
    `repeats` runs, validators built beforehand)."""
    import contextlib
    import gzip
    import json
    import time
    from importlib import resources

    from mappings.validate import validate

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

    everything = [item for items in by_type.values() for item in items]
    per_resource(validate, everything)  # import the models, build the validators
    per_resource(validate_mapped, everything)
    started = time.process_time()
    for _ in range(1000):
        sum(range(1000))
    print(f"(this machine: sum(range(1000)) takes {(time.process_time() - started) * 1000:.1f} µs)")
    print(f"{'type':<28} {'n':>4} {'bytes':>6} {'validate µs':>12} {'mapped µs':>10} {'ratio':>6}")
    for label, items in [*by_type.items(), ("all", everything)]:
        size = sum(len(json.dumps(item)) for item in items) // len(items)
        slow, fast = per_resource(validate, items), per_resource(validate_mapped, items)
        print(f"{label:<28} {len(items):>4} {size:>6} {slow:>12.1f} {fast:>10.1f} {slow / fast:>6.1f}")


if __name__ == "__main__":
    _benchmark()
