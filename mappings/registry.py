"""The explicit list of mapped resource types: adding a type is adding one entry here.

A resource type may feed several mappers (a Claim is a prior-authorization request or a claim, depending
on `use`); each returns the rows it is responsible for, or nothing. Validation runs once, before them.
"""

from __future__ import annotations

from typing import Any

from mappings.referral import map_service_request
from mappings.types import MapContext, MappedRecords, Mapper
from mappings.validate import validate

MAPPERS: dict[str, tuple[Mapper, ...]] = {
    "ServiceRequest": (map_service_request,),
}

# Tables each resource type's mappers write.
TARGET_TABLES: dict[str, tuple[str, ...]] = {
    "ServiceRequest": ("referral",),
}


def map_resource(resource: dict[str, Any], ctx: MapContext) -> MappedRecords:
    """Validate once (fhir.resources R4B), then run every mapper of the type and merge their rows.

    Raises MappingError with a one-line reason; types without a mapper are validated only (kept raw).
    """
    validate(resource)
    records: MappedRecords = {}
    for mapper in MAPPERS.get(resource["resourceType"], ()):
        for table, rows in mapper(resource, ctx).items():
            records.setdefault(table, []).extend(rows)
    return records
