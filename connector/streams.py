"""The declarative registry of resource streams: one entry per FHIR resource type the connector pulls.

Adding a resource type is adding one `Stream` here (and its mapper in `mappings.registry`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from connector.config import SUPPORTED_RESOURCES, EndpointSettings
from connector.errors import ConfigError
from connector.fhir import capabilities

Mode = Literal["last-updated", "date-param", "full", "ndjson", "bulk"]


@dataclass(frozen=True, slots=True)
class Stream:
    resource_type: str
    #: Default fallback search parameter when the server cannot search by `_lastUpdated`.
    date_param: str | None = None
    #: Search `_include`s fetched with the stream (resources referenced by the matches).
    includes: tuple[str, ...] = ()


#: Which resource element each date search parameter compares, per resource type (FHIR R4 search specs).
DATE_PARAM_ELEMENTS: dict[tuple[str, str], str] = {
    ("ServiceRequest", "authored"): "authoredOn",
    ("Appointment", "date"): "start",
    ("Encounter", "date"): "period.start",
    ("Coverage", "period"): "period.start",
    ("CoverageEligibilityResponse", "created"): "created",
    ("Claim", "created"): "created",
    ("ClaimResponse", "created"): "created",
    ("ExplanationOfBenefit", "created"): "created",
}

STREAMS: tuple[Stream, ...] = (
    Stream("ServiceRequest", date_param="authored", includes=("ServiceRequest:requester",)),
    Stream("Appointment", date_param="date"),
    Stream("Encounter", date_param="date"),
    Stream("Coverage"),
    Stream("CoverageEligibilityResponse", date_param="created"),
    Stream("Claim", date_param="created"),
    Stream("ClaimResponse", date_param="created"),
    Stream("ExplanationOfBenefit", date_param="created"),
    Stream("Practitioner"),
    Stream("PractitionerRole"),
    Stream("Organization"),
)

assert tuple(s.resource_type for s in STREAMS) == SUPPORTED_RESOURCES, "registry and config disagree"

_BY_TYPE = {s.resource_type: s for s in STREAMS}


def stream_for(resource_type: str) -> Stream:
    try:
        return _BY_TYPE[resource_type]
    except KeyError:
        raise ConfigError(f"no stream for resource type {resource_type!r}") from None


@dataclass(frozen=True, slots=True)
class Plan:
    """How one stream will be searched on one endpoint, and why."""

    resource_type: str
    mode: Mode
    date_param: str | None
    reason: str
    includes: tuple[str, ...] = ()

    @property
    def date_element(self) -> str | None:
        if self.date_param is None:
            return None
        return DATE_PARAM_ELEMENTS.get((self.resource_type, self.date_param))


def plan_stream(endpoint: EndpointSettings, stream: Stream, capability: dict | None) -> Plan:
    """Choose the incremental mode: `_lastUpdated`, a date parameter, or a full crawl upserting by version."""
    plan = _choose_mode(endpoint, stream, capability)
    if endpoint.is_server and stream.includes:
        plan = replace(plan, includes=stream.includes)
    return plan


def _choose_mode(endpoint: EndpointSettings, stream: Stream, capability: dict | None) -> Plan:
    rt = stream.resource_type
    if not endpoint.is_server:
        return Plan(rt, "ndjson", None, "NDJSON folder: every file is read, upserts keep the newest version")
    date_param = endpoint.date_params.get(rt, stream.date_param)
    if date_param is not None and (rt, date_param) not in DATE_PARAM_ELEMENTS:
        known = ", ".join(p for (t, p) in DATE_PARAM_ELEMENTS if t == rt) or "none"
        raise ConfigError(
            f"endpoints[{endpoint.name!r}].date_params.{rt}: unknown date parameter "
            f"{date_param!r} (known: {known})"
        )
    forced = endpoint.incremental
    if forced == "last-updated":
        return Plan(rt, "last-updated", None, "configured: incremental = last-updated")
    if forced == "full":
        return Plan(rt, "full", None, "configured: incremental = full")
    if forced == "date-param":
        if date_param is None:
            raise ConfigError(
                f"endpoints[{endpoint.name!r}]: incremental = date-param but no date parameter "
                f"is known for {rt}; set date_params.{rt}"
            )
        return Plan(rt, "date-param", date_param, f"configured: incremental = date-param ({date_param})")
    if capability is None or capabilities.supports_last_updated(capability, rt):
        return Plan(rt, "last-updated", None, "server supports _lastUpdated")
    if date_param is not None and date_param in capabilities.search_params(capability, rt):
        return Plan(rt, "date-param", date_param, f"no _lastUpdated; server supports {date_param}")
    return Plan(
        rt, "full", None, "no _lastUpdated or date parameter: full crawl, upserts keep the newest version"
    )
