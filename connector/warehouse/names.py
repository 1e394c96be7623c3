"""Names people recognise for referral sources and payers, and the one label for a source without one.

`v_source_names` (migration 0014) names every `referral_source` row: a Practitioner or an Organization by
its own name, a PractitionerRole as "<Practitioner> (<Organization>)" from the synced Practitioner and
Organization (their current names, so a renamed Practitioner renames its roles), else from the role's
displays. A reference whose name cannot be found anywhere is shown as "unknown (<Type>/…)": one bucket per
type, never the raw reference (which would also put resource ids in charts).
"""

from __future__ import annotations

import re

#: Types a referral source or a payer is named by; a reference of another type is plain "unknown".
NAMED_TYPES: tuple[str, ...] = ("PractitionerRole", "Practitioner", "Organization")
UNKNOWN = "unknown"
# A literal FHIR reference, relative or absolute ("Organization/1", "https://x/fhir/Organization/1/_history/2").
_REFERENCE = re.compile(
    r"^(?:https?://\S+/)?[A-Z][A-Za-z]+/[A-Za-z0-9\-.#]{1,128}(?:/_history/[A-Za-z0-9\-.]+)?$"
)


def is_reference(text: str) -> bool:
    """Whether a key is a literal reference (shown only as its bucket), not an identifier or a display."""
    return _REFERENCE.match(text) is not None


def unknown_name(ref: str | None) -> str | None:
    """The bucket of a reference without a name: "unknown (Organization/…)"; None without a reference."""
    if ref is None:
        return None
    for rtype in NAMED_TYPES:
        if ref.startswith(f"{rtype}/") or f"/{rtype}/" in ref:
            return f"{UNKNOWN} ({rtype}/…)"
    return UNKNOWN


def unknown_name_sql(expr: str) -> str:
    """`unknown_name` in SQL (the same on SQLite and PostgreSQL)."""
    cases = "".join(
        f" WHEN {expr} LIKE '{rtype}/%' OR {expr} LIKE '%/{rtype}/%' THEN '{UNKNOWN} ({rtype}/…)'"
        for rtype in NAMED_TYPES
    )
    return f"(CASE WHEN {expr} IS NULL THEN NULL{cases} ELSE '{UNKNOWN}' END)"


def shown(text: str) -> str:
    """A key as it may be shown: a literal reference becomes its bucket, anything else stays as it is."""
    return (unknown_name(text) or text) if is_reference(text) else text
