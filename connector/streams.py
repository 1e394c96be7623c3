"""Resource streams: the search side of each synced type's spec (`mappings.specs`), and the plan of how
one stream is searched on one endpoint."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from connector.config import EndpointSettings
from connector.errors import ConfigError
from connector.fhir import capabilities
from mappings.specs import SPECS

Mode = Literal["last-updated", "date-param", "full", "ndjson", "bulk"]


@dataclass(frozen=True, slots=True)
class Stream:
    resource_type: str
    #: Default fallback search parameter when the server cannot search by `_lastUpdated`.
    date_param: str | None = None
    #: Search `_include`s fetched with the stream (resources referenced by the matches).
    includes: tuple[str, ...] = ()


#: Which resource element each date search parameter compares, per resource type.
DATE_PARAM_ELEMENTS: dict[tuple[str, str], str] = {
    (s.resource_type, param): element for s in SPECS for param, element in s.date_params.items()
}

STREAMS: tuple[Stream, ...] = tuple(
    Stream(s.resource_type, date_param=s.date_param, includes=s.includes) for s in SPECS if s.role != "pushed"
)

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


def plan_stream(endpoint: EndpointSettings, stream: Stream, capability: dict[str, Any] | None) -> Plan:
    """Choose the incremental mode: `_lastUpdated`, a date parameter, or a full crawl upserting by version."""
    plan = _choose_mode(endpoint, stream, capability)
    if endpoint.is_server and stream.includes:
        plan = replace(plan, includes=stream.includes)
    return plan


def _choose_mode(endpoint: EndpointSettings, stream: Stream, capability: dict[str, Any] | None) -> Plan:
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
