"""Pure helpers that read FHIR datatypes out of plain dicts.

They assume the resource was validated first (so shapes are right) but still tolerate missing parts,
because most FHIR elements are optional and real servers leave out what they can.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta, timezone
from functools import lru_cache
from typing import Any, TypeAlias

from mappings.errors import MappingError
from mappings.fhir_ids import ID_PATTERN, TYPE_PATTERN

# FHIR date / dateTime / instant: YYYY, YYYY-MM, YYYY-MM-DD, or a full time with seconds, optional
# fraction and a zone. FHIR requires the zone when a time is given; servers still send some without,
# and those are read as UTC rather than rejected (a referral is not lost over a missing "Z").
_DATETIME_RE = re.compile(
    r"(?P<year>\d{4})"
    r"(?:-(?P<month>\d{2})"
    r"(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?"
    r")?)?)?"
)

# A literal reference that ends in Type/id, optionally followed by /_history/version. Absolute URLs
# (https://server/fhir/Patient/1) are reduced to this tail, so the same target gets the same key.
_REFERENCE_RE = re.compile(
    rf"(?:^|/)(?P<type>{TYPE_PATTERN})/(?P<id>{ID_PATTERN})(?:/_history/{ID_PATTERN})?/?$"
)

#: (resourceType, id, meta.versionId, meta.lastUpdated parsed, meta.lastUpdated as sent); see `resource_meta`.
ResourceMeta: TypeAlias = tuple[str, str, str | None, datetime | None, str | None]

SNOMED = "http://snomed.info/sct"
CPT = "http://www.ama-assn.org/go/cpt"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"


# The shapes nearly every server sends: a full date, or a full instant with seconds, an optional fraction
# and an optional zone. ASCII only (a bare `\d` also matches other scripts' digits) and with hour, minute,
# second and offset ranges limited, so whatever matches means the same to `datetime.fromisoformat` as to
# the general parser below; everything else (partial dates, leap seconds, "24:00", odd offsets) takes
# the general path.
_COMMON_DATETIME_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}"
    r"(?:T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,9})?(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)?)?",
    re.ASCII,
)
# A literal reference that is exactly Type/id, the common case of `_REFERENCE_RE` (same character sets).
_TYPE_ID_RE = re.compile(f"{TYPE_PATTERN}/{ID_PATTERN}")

_NOT_A_DATETIME = "not a FHIR date/dateTime/instant"
_INVALID_DATETIME = "not a valid date or time"

#: Distinct texts remembered by the parsing caches: a page repeats the same dates and references (every
#: lastUpdated is read by the pipeline and the mapper, patients recur). Only short texts are kept, so the
#: caches stay small whatever a resource holds.
_CACHE_SIZE = 4096
_CACHED_TEXT_MAX = 256


def parse_fhir_datetime(value: str | None, element: str = "dateTime") -> datetime | None:
    """Parse a FHIR date, dateTime or instant into an aware UTC datetime.

    Partial dates take the start of the period ("2017" -> 2017-01-01T00:00Z); dates without a time are
    midnight UTC. Text that is not a FHIR date raises `MappingError` naming `element` (not the text).
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise MappingError(f"{element}: {_NOT_A_DATETIME}")
    parsed = _parse_cached(value) if len(value) <= _CACHED_TEXT_MAX else _parse_datetime_text(value)
    if isinstance(parsed, str):
        raise MappingError(f"{element}: {parsed}")
    return parsed


def _parse_datetime_text(text: str) -> datetime | str:
    """The aware UTC datetime of `text`, or why it is not one."""
    if _COMMON_DATETIME_RE.fullmatch(text):
        try:
            return _as_utc(datetime.fromisoformat(text))
        except (ValueError, OverflowError):
            pass  # day 31 in April and the like: the general path says which error
    return _parse_general(text)


# Datetimes are immutable, so one parsed value may be handed to every caller.
_parse_cached = lru_cache(maxsize=_CACHE_SIZE)(_parse_datetime_text)


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is UTC:
        return moment
    if moment.tzinfo is None:  # a date, or a time sent without its (required) zone: read as UTC
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _parse_general(text: str) -> datetime | str:
    """Any FHIR date shape, by its parts; the reason as text when it is not a valid one."""
    match = _DATETIME_RE.fullmatch(text)
    if match is None:
        return _NOT_A_DATETIME
    parts = match.groupdict()
    try:
        day = date(int(parts["year"]), int(parts["month"] or 1), int(parts["day"] or 1))
        if parts["hour"] is None:
            return datetime.combine(day, time(), tzinfo=UTC)
        fraction = (parts["fraction"] or "")[:6].ljust(6, "0")
        clock = time(int(parts["hour"]), int(parts["minute"]), int(parts["second"] or 0), int(fraction))
        tz = parts["tz"]
        if tz is None or tz == "Z":
            zone: timezone = UTC
        else:
            sign = -1 if tz[0] == "-" else 1
            offset = timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
            if offset >= timedelta(hours=24):
                raise ValueError("offset out of range")
            zone = timezone(sign * offset)
        return datetime.combine(day, clock, tzinfo=zone).astimezone(UTC)
    except (ValueError, OverflowError):
        # Month 13, day 31 in April, hour 25, or a year-1 date shifted below datetime.min.
        return _INVALID_DATETIME


def fhir_instant(moment: datetime) -> str:
    """An instant as FHIR servers compare it in searches: UTC, milliseconds, an explicit Z (a raw `+`
    breaks in URLs)."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def object_at(container: dict[str, Any], key: str) -> dict[str, Any]:
    """`container[key]` when it is a JSON object, else an empty one (absent, null or another shape)."""
    value = container.get(key)
    return value if isinstance(value, dict) else {}


def reference_type(ref: dict[str, Any] | None) -> str | None:
    """The resource type a Reference points at: `Reference.type`, else the literal reference's type."""
    if not isinstance(ref, dict):
        return None
    explicit = ref.get("type")
    if isinstance(explicit, str) and explicit:
        # Reference.type may be a canonical URL of a StructureDefinition; its last segment is the type.
        return explicit.rsplit("/", 1)[-1]
    literal = ref.get("reference")
    if not isinstance(literal, str):
        return None
    return _read_literal(literal)[1]


def reference(ref: dict[str, Any] | None) -> str | None:
    """The `Type/id` a Reference points at, or None when it has no literal reference we can key on.

    - "Patient/1", "Patient/1/_history/2", "https://host/fhir/Patient/1" -> "Patient/1"
    - "#contained-id" -> kept as is (the target lives inside the same resource)
    - "urn:uuid:..." / "urn:oid:..." -> kept as is (a Bundle-local identity, as in Synthea bundles)
    - identifier-only or display-only references, conditional references ("Practitioner?identifier=...")
      and URLs that do not end in Type/id -> None
    """
    if not isinstance(ref, dict):
        return None
    literal = ref.get("reference")
    if not isinstance(literal, str):
        return None
    return _read_literal(literal)[0]


def reference_and_type(ref: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """(`reference(ref)`, `reference_type(ref)`), reading the Reference once (mappers usually need both)."""
    if not isinstance(ref, dict):
        return None, None
    literal = ref.get("reference")
    target, literal_type = _read_literal(literal) if isinstance(literal, str) else (None, None)
    explicit = ref.get("type")
    if isinstance(explicit, str) and explicit:
        return target, explicit.rsplit("/", 1)[-1]
    return target, literal_type


def reference_to(ref: dict[str, Any] | None, rtype: str) -> str | None:
    """`reference(ref)` when the Reference points at a `rtype` (by its `type` or its literal), else None."""
    target, found = reference_and_type(ref)
    return target if found == rtype else None


def _read_literal(literal: str) -> tuple[str | None, str | None]:
    """(target, type) of a literal reference: what `reference` and `reference_type` return for it."""
    # Most references recur (the same patient, coverage, requester on many resources): remember them.
    return _literal_cached(literal) if len(literal) <= _CACHED_TEXT_MAX else _parse_literal(literal)


def _parse_literal(literal: str) -> tuple[str | None, str | None]:
    if not literal:
        return None, None
    if literal.startswith("#"):
        return literal, None  # a contained resource: its type is inside the resource, not in the text
    if literal.startswith(("urn:uuid:", "urn:oid:")):
        return literal, None
    if "?" in literal:  # a conditional reference is a search the server resolves, not an id
        return None, None
    if _TYPE_ID_RE.fullmatch(literal):
        target = literal  # already Type/id: no history to drop, no base URL to strip
    else:
        match = _REFERENCE_RE.search(literal)
        if match is None:
            return None, None
        target = f"{match['type']}/{match['id']}"
    return target, target.split("/", 1)[0]


_literal_cached = lru_cache(maxsize=_CACHE_SIZE)(_parse_literal)


def coding(
    concept: dict[str, Any] | None, system: str | None = None
) -> tuple[str | None, str | None, str | None]:
    """(system, code, display) of the first coding in `system` (or the first coding when None).

    The display falls back to `CodeableConcept.text`, so a text-only concept still yields a label.
    """
    if not isinstance(concept, dict):
        return None, None, None
    text = concept.get("text")
    for item in concept.get("coding") or ():
        if not isinstance(item, dict):
            continue
        if system is None or item.get("system") == system:
            return item.get("system"), item.get("code"), item.get("display") or text
    return None, None, text


def codes(concepts: list[dict[str, Any]] | None) -> list[str]:
    """Every coding of every concept as a FHIR token "system|code" ("|code" when the system is absent)."""
    tokens: list[str] = []
    for concept in concepts or ():
        if not isinstance(concept, dict):
            continue
        for item in concept.get("coding") or ():
            if isinstance(item, dict) and item.get("code"):
                tokens.append(f"{item.get('system') or ''}|{item['code']}")
    return tokens


def resource_meta(resource: dict[str, Any]) -> ResourceMeta:
    """(resourceType, id, meta.versionId, meta.lastUpdated as aware UTC, meta.lastUpdated as sent).

    The raw text is kept next to the parsed value because it is what a server compares in `_lastUpdated`
    searches, and parsing drops sub-microsecond digits.
    """
    rtype = resource.get("resourceType")
    rid = resource.get("id")
    if not isinstance(rtype, str) or not rtype:
        raise MappingError("resource has no resourceType")
    if not isinstance(rid, str) or not rid:
        raise MappingError(f"{rtype}: resource has no id")
    meta = resource.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    version = meta.get("versionId")
    raw = meta.get("lastUpdated")
    return (
        rtype,
        rid,
        version if isinstance(version, str) else None,
        parse_fhir_datetime(raw, "meta.lastUpdated"),
        raw,
    )
