"""`connector check`: prove an endpoint works before the first sync, and say how each stream will run."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from rich.table import Table

from connector.config import EndpointSettings, Settings
from connector.errors import AuthError, ConnectorError
from connector.fhir import capabilities as caps
from connector.fhir.client import FhirClient
from connector.fhir.ndjson import NdjsonSource
from connector.streams import plan_stream, stream_for


@dataclass(slots=True)
class StreamCheck:
    resource_type: str
    supported: bool | None
    last_updated: bool | None
    mode: str
    reason: str


@dataclass(slots=True)
class EndpointReport:
    endpoint: str
    source: str
    fhir_version: str | None = None
    auth: str = "not tested"
    streams: list[StreamCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}

    def render(self) -> Table:
        title = f"{self.endpoint} ({self.source}): {'OK' if self.ok else 'PROBLEMS'}"
        if self.fhir_version:
            title += f" · FHIR {self.fhir_version}"
        title += f" · auth: {self.auth}"
        table = Table(
            title=title,
            title_justify="left",
            caption="\n".join(self.problems) or None,
            caption_justify="left",
        )
        for col in ("stream", "supported", "_lastUpdated", "mode", "why"):
            table.add_column(col)
        for s in self.streams:
            table.add_row(s.resource_type, _yes_no(s.supported), _yes_no(s.last_updated), s.mode, s.reason)
        return table


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


async def check_endpoint(
    endpoint: EndpointSettings, *, transport: httpx.AsyncBaseTransport | None = None
) -> EndpointReport:
    if not endpoint.is_server:
        return _check_ndjson(endpoint)
    report = EndpointReport(endpoint.name, "server")
    try:
        async with FhirClient(endpoint, transport=transport) as client:
            capability = await client.capabilities()
            report.fhir_version = caps.fhir_version(capability)
            if report.fhir_version and not report.fhir_version.startswith("4.0"):
                report.problems.append(
                    f"server speaks FHIR {report.fhir_version}; the connector needs R4 (4.0.x)"
                )
            types = caps.resource_types(capability)
            probe = None
            for rt in endpoint.resources:
                supported = rt in types
                plan = plan_stream(endpoint, stream_for(rt), capability)
                report.streams.append(
                    StreamCheck(
                        rt, supported, caps.supports_last_updated(capability, rt), plan.mode, plan.reason
                    )
                )
                if not supported:
                    report.problems.append(f"the server does not offer {rt}")
                elif probe is None:
                    probe = rt
            if probe is not None:
                # /metadata is often public; a one-resource search proves the credentials.
                try:
                    await client.request("GET", probe, params={"_count": "1"})
                    report.auth = "ok" if endpoint.auth.type != "none" else "ok (no auth configured)"
                except AuthError as exc:
                    report.auth = "FAILED"
                    report.problems.append(f"auth failed: {exc}")
    except ConnectorError as exc:
        report.problems.append(str(exc))
    return report


def _check_ndjson(endpoint: EndpointSettings) -> EndpointReport:
    assert endpoint.ndjson_dir is not None
    report = EndpointReport(endpoint.name, f"ndjson folder {endpoint.ndjson_dir}", auth="not needed")
    source = NdjsonSource(endpoint.ndjson_dir, endpoint.page_size)
    try:
        source.files()
    except ConnectorError as exc:
        report.problems.append(str(exc))
        return report
    for rt in endpoint.resources:
        files = source.files_for(rt)
        plan = plan_stream(endpoint, stream_for(rt), None)
        reason = f"{len(files)} file(s)" if files else "no file names this type"
        report.streams.append(StreamCheck(rt, bool(files), None, plan.mode, reason))
    return report


async def check_settings(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> list[EndpointReport]:
    endpoints = [e for e in settings.endpoints if e.enabled]
    return list(await asyncio.gather(*(check_endpoint(e, transport=transport) for e in endpoints)))
