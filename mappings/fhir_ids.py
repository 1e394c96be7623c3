"""What a FHIR resource type name and a resource id look like (FHIR R4 `id` datatype), in one place.

Messages echo a type or id only when it matches: anything else came from the input and may hold PHI.
"""

from __future__ import annotations

import re
from typing import Any

#: A resource type name as FHIR writes them (`ServiceRequest`).
TYPE_PATTERN = r"[A-Z][A-Za-z]{1,63}"
#: A resource id (R4 `id`: letters, digits, `-` and `.`, at most 64).
ID_PATTERN = r"[A-Za-z0-9\-.]{1,64}"
TYPE_RE = re.compile(TYPE_PATTERN)
ID_RE = re.compile(ID_PATTERN)
#: `Type/id` at the end of a (relative or absolute) reference, optionally `/_history/n`.
REFERENCE_TAIL_RE = re.compile(rf"(?:^|/)({TYPE_PATTERN})/({ID_PATTERN})(?:/_history/[^/]+)?/?$")


def resource_label(resource: Any) -> str:
    """`Type/id` for messages; parts that are not a valid FHIR type or id are not echoed."""
    if not isinstance(resource, dict):
        return "<not a JSON object>"
    rtype = resource.get("resourceType")
    rid = resource.get("id")
    type_part = rtype if isinstance(rtype, str) and TYPE_RE.fullmatch(rtype) else "<unknown type>"
    id_part = rid if isinstance(rid, str) and ID_RE.fullmatch(rid) else "<invalid id>"
    return f"{type_part}/{id_part}"
