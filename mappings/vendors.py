"""What each EMR vendor's FHIR R4 server allows in a search: one declarative profile per vendor, beside the
stream specs (pure data, no I/O).

From the vendors' public developer documentation:

- **Epic**: no `_lastUpdated` in the CapabilityStatement; ServiceRequest, Encounter, Appointment, Coverage
  and the episode's types (EpisodeOfCare, CarePlan, Goal, DocumentReference) searches need `patient` (a
  type-level search is a 400); population data comes from Group-level Bulk
  export only (system-level `/$export` is refused).
- **Oracle Health (Cerner Millennium)**: ServiceRequest needs `patient` or `_id`, other clinical and
  financial types `patient`; `_lastUpdated` takes `ge` / `le` only and a time (a date alone is a 400),
  and cannot be combined with `authored`; ServiceRequest results come on one page, whatever `_count` says.
- **athenahealth**: every request carries `ah-practice=Organization/a-1.Practice-{practice_id}`;
  ServiceRequest and the episode's types need `patient`; `_lastUpdated` takes `gt` / `ge`; `_count` above
  100 is clamped.

`generic` is a server that allows what FHIR R4 describes: type-level searches, every `_lastUpdated`
prefix, every Bulk level.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

ALL_PREFIXES = ("gt", "ge", "lt", "le")
ALL_BULK_LEVELS = ("system", "group", "patient")


@dataclass(frozen=True, slots=True)
class VendorProfile:
    name: str
    title: str
    #: Lower-case words of the CapabilityStatement's software.name / publisher / name that identify it.
    recognised_by: tuple[str, ...] = ()
    #: Types whose type-level search needs one of these parameters (without one the server refuses it).
    required_params: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: The prefixes `_lastUpdated` takes; () when the server does not search by `_lastUpdated`.
    last_updated_prefixes: tuple[str, ...] = ALL_PREFIXES
    #: `_lastUpdated` needs a time, not only a date.
    last_updated_needs_time: bool = False
    #: Date parameters the server refuses beside `_lastUpdated`.
    not_with_last_updated: tuple[str, ...] = ()
    #: Types whose results come on one page whatever `_count` says (no next link is not an error).
    single_page_types: tuple[str, ...] = ()
    #: The largest `_count` honoured; a larger one is clamped by the server without a word.
    max_count: int | None = None
    #: The `$export` levels the server allows.
    bulk_levels: tuple[str, ...] = ALL_BULK_LEVELS
    #: Parameters sent with every request: name -> value template over the endpoint's settings
    #: (`{practice_id}`).
    fixed_params: Mapping[str, str] = field(default_factory=dict)

    def incremental_prefix(self) -> str | None:
        """The `_lastUpdated` prefix of an incremental search from a watermark, or None when `_lastUpdated`
        cannot be searched. `gt` where allowed; else `ge`, which the overlap before the watermark makes
        safe (a resource seen again is an unchanged upsert)."""
        for prefix in ("gt", "ge"):
            if prefix in self.last_updated_prefixes:
                return prefix
        return None

    def needs(self, resource_type: str) -> tuple[str, ...]:
        """The parameters of which a type-level search of `resource_type` needs one; () when none."""
        return tuple(self.required_params.get(resource_type, ()))


#: Types of a patient's chart (clinical and financial): what Oracle Health searches only per patient.
_PATIENT_COMPARTMENT = (
    "ServiceRequest",
    "Appointment",
    "Encounter",
    "Coverage",
    "CoverageEligibilityResponse",
    "Claim",
    "ClaimResponse",
    "ExplanationOfBenefit",
    "EpisodeOfCare",
    "CarePlan",
    "Goal",
    "DocumentReference",
)

#: The therapy episode's types: searched per patient by Epic and athenahealth (as by Oracle).
_EPISODE = ("EpisodeOfCare", "CarePlan", "Goal", "DocumentReference")

GENERIC = VendorProfile(name="generic", title="a generic FHIR R4 server")

EPIC = VendorProfile(
    name="epic",
    title="Epic",
    recognised_by=("epic",),
    required_params=MappingProxyType(
        {t: ("patient",) for t in ("ServiceRequest", "Encounter", "Appointment", "Coverage", *_EPISODE)}
    ),
    last_updated_prefixes=(),
    bulk_levels=("group",),
)

ORACLE = VendorProfile(
    name="oracle",
    title="Oracle Health (Cerner Millennium)",
    recognised_by=("cerner", "millennium", "oracle health"),
    required_params=MappingProxyType(
        {t: ("patient", "_id") if t == "ServiceRequest" else ("patient",) for t in _PATIENT_COMPARTMENT}
    ),
    last_updated_prefixes=("ge", "le"),
    last_updated_needs_time=True,
    not_with_last_updated=("authored",),
    single_page_types=("ServiceRequest",),
)

ATHENA = VendorProfile(
    name="athena",
    title="athenahealth",
    recognised_by=("athena",),
    required_params=MappingProxyType({t: ("patient",) for t in ("ServiceRequest", *_EPISODE)}),
    last_updated_prefixes=("gt", "ge"),
    max_count=100,
    fixed_params=MappingProxyType({"ah-practice": "Organization/a-1.Practice-{practice_id}"}),
)

PROFILES: Mapping[str, VendorProfile] = MappingProxyType({p.name: p for p in (GENERIC, EPIC, ORACLE, ATHENA)})
PROFILE_NAMES: tuple[str, ...] = tuple(PROFILES)


def recognise(capability: Mapping[str, object]) -> tuple[VendorProfile, str] | None:
    """The vendor a CapabilityStatement names (software.name, publisher, name), and the words that said so."""
    software = capability.get("software")
    fields = {
        "software.name": software.get("name") if isinstance(software, Mapping) else None,
        "publisher": capability.get("publisher"),
        "name": capability.get("name"),
    }
    for where, value in fields.items():
        if not isinstance(value, str):
            continue
        lowered = value.lower()
        for profile in PROFILES.values():
            if any(word in lowered for word in profile.recognised_by):
                return profile, f"the CapabilityStatement's {where} is {value[:80]!r}"
    return None


__all__ = [
    "ALL_BULK_LEVELS",
    "ALL_PREFIXES",
    "ATHENA",
    "EPIC",
    "GENERIC",
    "ORACLE",
    "PROFILES",
    "PROFILE_NAMES",
    "VendorProfile",
    "recognise",
]
