"""Patient -> `patient`: demographics that group patients without identifying them.

Stored: gender, birth year (none for patients 90 or older, who are `age_90_or_over` instead, as HIPAA's Safe
Harbor rule asks), whether the patient is deceased or active, the preferred language and the managing
organization. Never stored: names, addresses, telecom, identifiers, full birth dates, photos or contacts.
Age bands are computed from `birth_year` in SQL, at the time a view is read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from mappings.elements import coding, parse_fhir_datetime, reference_to
from mappings.eligibility import base_row
from mappings.errors import MappingError
from mappings.fhir_ids import resource_label
from mappings.types import MapContext, MappedRecords

#: Safe Harbor: ages over 89 (and the birth years that reveal them) are one group.
OLDEST_AGE_KEPT = 89


def map_patient(resource: dict[str, Any], ctx: MapContext) -> MappedRecords:
    """Map a validated Patient to one `patient` row."""
    if resource.get("resourceType") != "Patient":
        raise MappingError(f"{resource_label(resource)}: expected a Patient")
    row = base_row(resource, ctx)
    birth = parse_fhir_datetime(resource.get("birthDate"), "birthDate")
    over = birth is not None and _age(birth, ctx.synced_at) > OLDEST_AGE_KEPT
    deceased_at = resource.get("deceasedDateTime")
    row.update(
        active=resource.get("active"),
        gender=resource.get("gender"),
        birth_year=None if birth is None or over else birth.year,
        age_90_or_over=None if birth is None else over,
        deceased=True if deceased_at is not None else resource.get("deceasedBoolean"),
        language=_preferred_language(resource.get("communication")),
        managing_organization_ref=reference_to(resource.get("managingOrganization"), "Organization"),
    )
    return {"patient": [row]}


def _age(birth: datetime, at: datetime) -> int:
    """Completed years at `at`; a partial birth date (a year alone) counts from its first day."""
    return at.year - birth.year - ((at.month, at.day) < (birth.month, birth.day))


def _preferred_language(communication: Any) -> str | None:
    """The language code (BCP-47, e.g. `es`) of the preferred communication, else of the first one."""
    entries = [c for c in communication or () if isinstance(c, dict)]
    preferred = [c for c in entries if c.get("preferred") is True]
    for entry in preferred or entries[:1]:
        _system, code, _display = coding(entry.get("language"))
        if code:
            return code
    return None
