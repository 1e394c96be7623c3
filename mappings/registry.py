"""The explicit list of mapped resource types, gathered from each subject's module.

Each subject module (`referral`, `payer`, `denials`) exports `MAPPERS` (resource type -> mappers) and
`TARGET_TABLES` (resource type -> tables written). A resource type may feed several mappers (a Claim is
a prior-authorization request or a claim, depending on `use`); each returns the rows it is responsible
for, or nothing. Validation runs once, before them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mappings import denials, payer, referral
from mappings.types import MapContext, MappedRecords, Mapper
from mappings.validate_mapped import validate_mapped
from mappings.validate_strict import validate_strict


def _merge_mappers(*parts: Mapping[str, tuple[Mapper, ...]]) -> dict[str, tuple[Mapper, ...]]:
    merged: dict[str, tuple[Mapper, ...]] = {}
    for part in parts:
        for rtype, mappers in part.items():
            merged[rtype] = merged.get(rtype, ()) + tuple(mappers)
    return merged


def _merge_tables(*parts: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    merged: dict[str, tuple[str, ...]] = {}
    for part in parts:
        for rtype, tables in part.items():
            merged[rtype] = tuple(dict.fromkeys(merged.get(rtype, ()) + tuple(tables)))
    return merged


MAPPERS: dict[str, tuple[Mapper, ...]] = _merge_mappers(referral.MAPPERS, payer.MAPPERS, denials.MAPPERS)
TARGET_TABLES: dict[str, tuple[str, ...]] = _merge_tables(
    referral.TARGET_TABLES, payer.TARGET_TABLES, denials.TARGET_TABLES
)


def map_resource(resource: dict[str, Any], ctx: MapContext) -> MappedRecords:
    """Validate once, then run every mapper of the type and merge their rows.

    Validation is the endpoint's level: `strict` checks the whole resource (as fhir.resources R4B does),
    `mapped` what the mappers read. Raises MappingError with a one-line reason; types without a mapper are
    validated only (kept raw).
    """
    if ctx.options.validation == "mapped":
        validate_mapped(resource, ctx.resource_json)
    else:
        validate_strict(resource, ctx.resource_json)
    records: MappedRecords = {}
    for mapper in MAPPERS.get(resource["resourceType"], ()):
        for table, rows in mapper(resource, ctx).items():
            records.setdefault(table, []).extend(rows)
    return records
