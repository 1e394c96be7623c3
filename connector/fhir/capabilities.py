"""Pure questions asked of a CapabilityStatement (a dict as returned by `FhirClient.capabilities`).

Only `rest` entries in server mode count: a client-mode entry describes what the server *calls*.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def _server_rests(cap: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for rest in cap.get("rest") or []:
        if isinstance(rest, dict) and rest.get("mode", "server") == "server":
            yield rest


def _names(params: Any) -> set[str]:
    return {p["name"] for p in params or [] if isinstance(p, dict) and isinstance(p.get("name"), str)}


def fhir_version(cap: dict[str, Any]) -> str | None:
    """CapabilityStatement.fhirVersion, e.g. "4.0.1"."""
    version = cap.get("fhirVersion")
    return version if isinstance(version, str) else None


def is_r4(cap: dict[str, Any]) -> bool:
    """True for FHIR 4.0.x (R4); R4B (4.3) is wire-compatible for what we read, so it counts too."""
    version = fhir_version(cap) or ""
    return version.startswith(("4.0", "4.3"))


def resource_types(cap: dict[str, Any]) -> set[str]:
    """Resource types the server exposes over REST."""
    return {
        resource["type"]
        for rest in _server_rests(cap)
        for resource in rest.get("resource") or []
        if isinstance(resource, dict) and isinstance(resource.get("type"), str)
    }


def search_params(cap: dict[str, Any], resource_type: str) -> set[str]:
    """Search parameter names for a type, including the `rest.searchParam` ones that apply to all types.

    Empty when the server does not expose the type at all (rest-level params do not make it searchable).
    """
    names: set[str] = set()
    found = False
    for rest in _server_rests(cap):
        for resource in rest.get("resource") or []:
            if isinstance(resource, dict) and resource.get("type") == resource_type:
                found = True
                names |= _names(resource.get("searchParam"))
        names |= _names(rest.get("searchParam"))
    return names if found else set()


def supports_search(cap: dict[str, Any], resource_type: str) -> bool:
    """True when the type declares the search-type interaction (or declares no interactions at all)."""
    for rest in _server_rests(cap):
        for resource in rest.get("resource") or []:
            if not isinstance(resource, dict) or resource.get("type") != resource_type:
                continue
            interactions = resource.get("interaction")
            if not interactions:  # many servers omit the list; they still answer searches
                return True
            if any(isinstance(i, dict) and i.get("code") == "search-type" for i in interactions):
                return True
    return False


def supports_last_updated(cap: dict[str, Any], resource_type: str) -> bool:
    """Whether `_lastUpdated` is declared for the type (directly or at rest level)."""
    return "_lastUpdated" in search_params(cap, resource_type)


def supports_sort(cap: dict[str, Any], resource_type: str) -> bool:
    """Whether `_sort` is declared for the type; R4 has no other standard way to say so."""
    return "_sort" in search_params(cap, resource_type)


#: The Bulk Data Access IG's canonical URLs (the CapabilityStatement it defines, its operations).
BULK_DATA_CAPABILITY = "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
_BULK_OPERATIONS = {
    "system": ("export", "/OperationDefinition/export"),
    "group": ("group-export", "/OperationDefinition/group-export"),
    "patient": ("patient-export", "/OperationDefinition/patient-export"),
}
_BULK_RESOURCE = {"group": "Group", "patient": "Patient"}


def _declares_export(operations: Any, level: str) -> bool:
    name, definition_suffix = _BULK_OPERATIONS[level]
    for op in operations or []:
        if not isinstance(op, dict):
            continue
        definition = op["definition"] if isinstance(op.get("definition"), str) else ""
        if op.get("name") in ("export", name) or definition.split("|")[0].endswith(definition_suffix):
            return True
    return False


def supports_bulk_export(cap: dict[str, Any], level: str = "system") -> bool:
    """Whether the server offers Bulk Data `$export` at `level` (system, group or patient).

    Either the statement instantiates the IG's bulk-data CapabilityStatement, or it declares the operation
    (at rest level for system, on Group or Patient for the other levels).
    """
    if level not in _BULK_OPERATIONS:
        raise ValueError(f"unknown bulk export level {level!r}")
    instantiates = cap.get("instantiates") or []
    if any(isinstance(u, str) and u.split("|")[0] == BULK_DATA_CAPABILITY for u in instantiates):
        return True
    for rest in _server_rests(cap):
        if level == "system" and _declares_export(rest.get("operation"), level):
            return True
        for resource in rest.get("resource") or []:
            if (
                isinstance(resource, dict)
                and resource.get("type") == _BULK_RESOURCE.get(level)
                and _declares_export(resource.get("operation"), level)
            ):
                return True
    return False


def bulk_export_levels(cap: dict[str, Any]) -> list[str]:
    """The `$export` levels (system, group, patient) the statement declares, in that order."""
    return [level for level in _BULK_OPERATIONS if supports_bulk_export(cap, level)]
