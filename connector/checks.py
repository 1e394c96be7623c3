"""`connector check`: prove an endpoint works before the first sync, and say how each stream will run."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import httpx
from rich.table import Table

from connector.config import EndpointSettings, Settings, with_directory
from connector.errors import AuthError, ConnectorError, WarehouseError
from connector.fhir import capabilities as caps
from connector.fhir.client import FhirClient
from connector.fhir.http import url_path
from connector.fhir.ndjson import NdjsonSource
from connector.streams import plan_stream, stream_for
from connector.warehouse import bulk_state
from connector.warehouse.engine import open_existing


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
    #: `$export` levels the CapabilityStatement declares (system, group, patient).
    bulk_levels: list[str] = field(default_factory=list)
    #: The configured bulk mode and level, e.g. "auto at system level".
    bulk: str = ""
    #: An export an earlier run kicked off and has not finished loading, from the warehouse.
    export_in_progress: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
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
            caption="\n".join([*self.notes, *self.problems]) or None,
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
            _check_bulk(endpoint, capability, report)
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


def _check_bulk(endpoint: EndpointSettings, capability: dict[str, Any], report: EndpointReport) -> None:
    """What `$export` would do here: the levels offered, the configured one, the types it would skip."""
    report.bulk_levels = caps.bulk_export_levels(capability)
    report.bulk = f"{endpoint.bulk} at {endpoint.bulk_level} level" if endpoint.bulk != "never" else "never"
    offered = ", ".join(report.bulk_levels) or "no level"
    report.notes.append(f"bulk export: server declares {offered}; configured {report.bulk}")
    if endpoint.bulk == "never":
        return
    if endpoint.bulk_level not in report.bulk_levels:
        message = (
            f"bulk = {endpoint.bulk!r} needs $export at {endpoint.bulk_level} level, "
            "which the server does not declare"
        )
        if endpoint.bulk == "always":
            report.problems.append(message)
        else:
            report.notes.append(f"{message}: backfills search instead")
        return
    types = caps.resource_types(capability)
    skipped = [rt for rt in with_directory(endpoint.resources) if rt not in types]
    if skipped:
        report.notes.append(f"an export would skip {', '.join(skipped)}: not in the CapabilityStatement")


def export_in_progress(settings: Settings) -> dict[str, dict[str, Any]]:
    """Per endpoint, the export an earlier run left pending; read without creating or migrating anything."""
    engine = open_existing(settings.warehouse.url)
    if engine is None:
        return {}
    try:
        return {name: export_view(export) for name, export in bulk_state.pending_exports(engine).items()}
    finally:
        engine.dispose()


def export_view(export: bulk_state.PendingExport) -> dict[str, Any]:
    return {
        "status_url": url_path(export.status_url),
        "started_at": export.started_at,
        "resource_types": list(export.resource_types),
        "transaction_time": export.transaction_time,
        "files_done": sum(len(files) for files in export.files_done.values()),
    }


def describe_export(export: dict[str, Any]) -> str:
    """One line for a pending export, as `check` and `status` print it."""
    started = export["started_at"]
    when = started.strftime("%Y-%m-%d %H:%M UTC") if isinstance(started, datetime) else str(started)
    state = "complete, loading" if export["transaction_time"] else "running on the server"
    return (
        f"export in progress since {when} ({state}; {export['files_done']} file(s) loaded) for "
        f"{', '.join(export['resource_types'])}: the next sync resumes it"
    )


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
    reports = list(await asyncio.gather(*(check_endpoint(e, transport=transport) for e in endpoints)))
    try:
        pending = export_in_progress(settings)
    except WarehouseError as exc:
        # The warehouse is not what `check` proves; say it could not be read and go on.
        for report in reports:
            report.notes.append(f"export in progress: not known ({exc})")
        return reports
    for report in reports:
        report.export_in_progress = pending.get(report.endpoint)
        if report.export_in_progress is not None:
            report.notes.append(describe_export(report.export_in_progress))
    return reports
