"""R4B models compiled to pydantic-core schemas that judge a resource exactly as R4B does, in Rust.

`fhir.resources` R4B builds a model instance per element and calls back into Python for each (60-400 µs a
resource). `_element_validator(model)` judges the same input the same way without building anything: it
checks a whole resource (or element) of `model`; `_COMPILER.root` checks a resource restricted to some
top-level elements (`mappings.validate_mapped`). Both raise pydantic's ValidationError where R4B would
raise (its locations carry the tags in `_TAGS`, which messages drop).

How it stays exact: the schemas are derived from the R4B models' own core schemas, so each string, code,
uri, integer or boolean is checked by the very schema R4B uses (its regex, its lax coercions). How it gets
fast: what makes R4B slow is replaced. A nested model becomes a TypedDict schema validated in Rust (no
model objects, no Python call per element); date, dateTime, instant, time and decimal (Python in
fhir_core) are re-expressed in Rust and tested against fhir_core; the models' Python rules (required
primitives, choice elements, `_x` extensions, contained resources) become small checks that run only where
they apply. R4B's odd judgements come along on purpose; tests/test_mappings_validate_mapped.py lists them,
and tests/test_validate_strict.py holds whole resources to the same standard.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, cast

import orjson
from fhir_core.constraints import FHIR_TYPES_MAPS
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from fhir_core.types import FhirBase, FhirElementOrResourceBase, validate_leap_second
from fhir_core.utils import is_list_type, is_primitive_type
from pydantic._internal._validators import import_string
from pydantic_core import PydanticCustomError, SchemaValidator, ValidationError
from pydantic_core import core_schema as cs

from mappings.validate import MAX_DEPTH, too_deep

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


def _text(pattern: str) -> cs.CoreSchema:
    return cs.str_schema(pattern=pattern, strict=True)


def _number() -> cs.CoreSchema:
    """An int (not a bool) or a float: what the parsers read as a unix timestamp."""
    return cs.union_schema([cs.int_schema(strict=True), cs.float_schema(strict=True)], mode="left_to_right")


def _leap_second(pattern: str, parser: cs.CoreSchema) -> cs.CoreSchema:
    """fhir_core keeps a ":60" value as text once the same value with ":59" parses (rare: Python)."""
    validator = SchemaValidator(parser)

    def check(value: str) -> str:
        validate_leap_second(value, validator.validate_python)
        return value

    return cs.chain_schema([_text(pattern), cs.no_info_plain_validator_function(check)])


def _one_of(kind: str, *choices: cs.CoreSchema) -> cs.CoreSchema:
    return cs.union_schema(
        list(choices),
        mode="left_to_right",
        custom_error_type=f"fhir_{kind}",
        custom_error_message=f"Input should be a valid FHIR {kind}",
    )


def _date() -> cs.CoreSchema:
    return _one_of(
        "date",
        _text(_PARTIAL_DATE),
        cs.chain_schema([_text(_FULL_DATE), cs.date_schema()]),
        cs.chain_schema([_number(), cs.date_schema()]),
    )


def _datetime() -> cs.CoreSchema:
    return _one_of(
        "dateTime",
        _text(_PARTIAL_DATE),
        cs.chain_schema([_text(_DATETIME), cs.datetime_schema()]),
        _leap_second(_DATETIME_LEAP, cs.datetime_schema()),
        cs.chain_schema([_number(), cs.datetime_schema()]),
    )


def _instant() -> cs.CoreSchema:
    return _one_of(
        "instant",
        cs.chain_schema([_text(_INSTANT), cs.datetime_schema()]),
        _leap_second(_DATETIME_LEAP, cs.datetime_schema()),
        cs.chain_schema([_number(), cs.datetime_schema()]),
    )


def _time() -> cs.CoreSchema:
    return _one_of(
        "time",
        cs.chain_schema([_text(_TIME), cs.time_schema()]),
        _leap_second(_TIME_LEAP, cs.time_schema()),
        cs.chain_schema([_number(), cs.time_schema()]),
    )


def _decimal() -> cs.CoreSchema:
    # fhir_core: str(value) must match the decimal regex, then Decimal(value); so ints of any size, finite
    # floats and decimal text pass, bools ("True") and nan / inf do not.
    return _one_of(
        "decimal",
        cs.int_schema(strict=True),
        cs.float_schema(strict=True, allow_inf_nan=False),
        _text(_DECIMAL),
    )


def _url() -> cs.CoreSchema:
    # fhir_core's url accepts any string; anything else ends in an AttributeError there.
    return cs.str_schema()


_NATIVE_PRIMITIVES: dict[str, Callable[[], cs.CoreSchema]] = {
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
                alias=field.get("validation_alias", name),  # FHIRResourceModel's fields have none
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
        self.definitions: dict[str, cs.CoreSchema] = {}
        self._dependencies: dict[str, set[str]] = {}
        self._building: list[str] = []
        self._lock = threading.RLock()  # validators are built lazily, maybe from several threads

    def validator(self, schema_builder: Callable[[], cs.CoreSchema], name: str) -> SchemaValidator:
        """A validator of the schema `schema_builder` returns, with every definition it reaches."""
        with self._lock:
            return self._validator(schema_builder, name)

    def _validator(self, schema_builder: Callable[[], cs.CoreSchema], name: str) -> SchemaValidator:
        schema = self._define(name, schema_builder)
        needed: set[str] = set()
        stack = [name]
        while stack:
            for dep in self._dependencies[stack.pop()]:
                if dep not in needed:
                    needed.add(dep)
                    stack.append(dep)
        definitions: list[cs.CoreSchema] = [
            cast(cs.CoreSchema, {**self.definitions[dep], "ref": dep}) for dep in sorted(needed)
        ]
        return SchemaValidator(cs.definitions_schema(schema, definitions))

    def root(self, model: type[FHIRAbstractModel], keys: frozenset[str]) -> SchemaValidator:
        """The validator of a projected resource: `model` restricted to the top-level elements `keys`."""

        def union() -> cs.CoreSchema:
            fast = self._typed_dict(model, fast=True, keys=keys)
            full = self._typed_dict(model, fast=False, keys=keys)
            return cs.union_schema([(fast, _FAST), (full, _FULL)], mode="left_to_right")

        return self.validator(union, f"root:{_key(model)}")

    def union_ref(self, model: type[FHIRAbstractModel]) -> cs.CoreSchema:
        def union() -> cs.CoreSchema:
            return cs.union_schema(
                [(self._fast_ref(model), _FAST), (self._full_ref(model), _FULL)], mode="left_to_right"
            )

        return self._ref(f"U:{_key(model)}", union)

    def _fast_ref(self, model: type[FHIRAbstractModel]) -> cs.CoreSchema:
        return self._ref(f"F:{_key(model)}", lambda: self._typed_dict(model, fast=True))

    def _full_ref(self, model: type[FHIRAbstractModel]) -> cs.CoreSchema:
        return self._ref(f"S:{_key(model)}", lambda: self._typed_dict(model, fast=False))

    def _ref(self, name: str, builder: Callable[[], cs.CoreSchema]) -> cs.CoreSchema:
        if name not in self._dependencies:  # else built, or being built (a recursive type)
            self.definitions[name] = self._define(name, builder)
        elif self._building:
            self._dependencies[self._building[-1]].add(name)
        return cs.definition_reference_schema(name)

    def _define(self, name: str, builder: Callable[[], cs.CoreSchema]) -> cs.CoreSchema:
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
    ) -> cs.CoreSchema:
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
        schema: cs.CoreSchema = cs.typed_dict_schema(
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

    def _value(self, node: dict[str, Any], *, fast: bool, complex_list: bool = False) -> cs.CoreSchema:
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

    def _complex(self, base: type[FhirBase], model: type[FHIRAbstractModel], *, fast: bool) -> cs.CoreSchema:
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


def _not_null(schema: cs.CoreSchema) -> cs.CoreSchema:
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
    # ~20 µs a call uncached; the paths are R4B's own (a bounded set)
    model: type[FHIRAbstractModel] = import_string(path)
    return model


_COMPILER = _Compiler()


@cache
def _element_validator(model: type[FHIRAbstractModel]) -> SchemaValidator:
    """A whole model, every element: a resource (`validate_strict`), a contained one, an element."""
    return _COMPILER.validator(lambda: _COMPILER.union_ref(model), f"element:{_key(model)}")


# -- nesting -------------------------------------------------------------------------------------------

_BRACKETS = bytes.maketrans(b"{}[]", b"()()")
_NOT_STRUCTURE = bytes(set(range(256)) - set(b'{}[]"'))
_STRINGS = re.compile(rb'"[^"]*"')


def nests_too_deep(resource: Any, whole_json: bytes | None = None) -> bool:
    """`too_deep(resource, MAX_DEPTH)` in a few µs, from the bracket nesting of the resource's JSON text.

    `validate_strict` checks the whole resource with it, `validate_mapped` the projection, as `validate`
    does. Whoever stores the whole resource (the raw payload) after `validate_mapped` should check the
    whole resource with it too: unread elements are not validated, and the JSON encoders fail on deeper
    nesting.

    `whole_json`, the JSON text of the whole resource when the caller has it (the pipeline serializes
    each resource for its payload), answers the usual case without serializing again: text with no more
    opening brackets than `MAX_DEPTH` cannot nest deeper, nor can any part of it (a projection).
    """
    if whole_json is not None and whole_json.count(b"{") + whole_json.count(b"[") <= MAX_DEPTH:
        return False
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
