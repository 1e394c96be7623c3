"""Mappers per resource type, derived from `mappings.specs`, and `map_resource`, which runs them.

A resource type may feed several mappers (a Claim is a prior-authorization request or a claim, depending
on `use`); each returns the rows it is responsible for, or nothing. Validation runs once, before them.
"""

from __future__ import annotations

from typing import Any

from mappings.specs import SPECS
from mappings.types import MapContext, MappedRecords, Mapper
from mappings.validate_mapped import validate_mapped
from mappings.validate_strict import validate_strict

MAPPERS: dict[str, tuple[Mapper, ...]] = {s.resource_type: s.mappers for s in SPECS if s.mappers}
TARGET_TABLES: dict[str, tuple[str, ...]] = {s.resource_type: s.tables for s in SPECS if s.mappers}


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
