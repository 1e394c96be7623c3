"""`connector check`: prove an endpoint works before the first sync, and say how each stream will run."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from rich.table import Table

from connector.config import EndpointSettings, Settings, with_directory
from connector.errors import AuthError, ConnectorError, FhirError, SourceFileError, WarehouseError
from connector.fhir import capabilities as caps
from connector.fhir.client import FhirClient
from connector.fhir.http import url_path
from connector.fhir.ndjson import NdjsonSource
from connector.streams import plan_stream, stream_for
from connector.sync.bulk import should_use_bulk
from connector.sync.pipeline import search_params
from connector.warehouse import bulk_state, state
from connector.warehouse.engine import open_existing
from mappings.vendors import recognise


@dataclass(slots=True)
class StreamCheck:
    resource_type: str
    supported: bool | None
    last_updated: bool | None
    mode: str
    reason: str
    #: What a type-level search as a sync sends it (`_count=1`) got: "ok", or the server's refusal.
    search: str | None = None


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
    #: The configured profile, the one that fits the server, and why.
    profile: str = "generic"
    profile_fit: str | None = None
    profile_why: str = ""
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
        for col in ("stream", "supported", "_lastUpdated", "search", "mode", "why"):
            table.add_column(col)
        for s in self.streams:
            table.add_row(
                s.resource_type,
                _yes_no(s.supported),
                _yes_no(s.last_updated),
                (s.search or "-")[:60],
                s.mode,
                s.reason,
            )
        return table


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


@dataclass(frozen=True, slots=True)
class Known:
    """What the warehouse knows of an endpoint that decides how its next sync runs."""

    #: Streams with a watermark (their next sync is incremental).
    synced: frozenset[str] = frozenset()
    #: An export an earlier run left pending (`export_view`), which the next sync resumes.
    export: dict[str, Any] | None = None


async def check_endpoint(
    endpoint: EndpointSettings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    known: Known | None = None,
) -> EndpointReport:
    """`known`: the warehouse's state of the endpoint, so the modes shown are those the next sync uses."""
    known = known or Known()
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
                mode, reason = _next_mode(endpoint, rt, capability, known)
                report.streams.append(
                    StreamCheck(rt, supported, caps.supports_last_updated(capability, rt), mode, reason)
                )
                if not supported and endpoint.lists(rt):
                    report.problems.append(f"the server does not offer {rt}")
                elif not supported:
                    report.notes.append(f"the server does not offer {rt}: not synced (a default type)")
                elif probe is None:
                    probe = rt
            _check_bulk(endpoint, capability, report)
            _check_subscriptions(endpoint, capability, report)
            if probe is not None:
                await _probe_searches(client, endpoint, report)
            _check_profile(endpoint, capability, report)
    except ConnectorError as exc:
        report.problems.append(str(exc))
    return report


async def _probe_searches(client: FhirClient, endpoint: EndpointSettings, report: EndpointReport) -> None:
    """One type-level search per offered stream, as a first sync sends it but for one resource: it proves
    the credentials (/metadata is often public) and shows the searches the server refuses."""
    for stream in report.streams:
        if not stream.supported:
            continue
        if endpoint.crawls_per_patient(stream.resource_type):
            stream.search = "per patient"  # a type-level search is refused by design
            continue
        plan = plan_stream(endpoint, stream_for(stream.resource_type), None)
        params = [(k, v) for k, v in search_params(plan, endpoint, None) if k != "_count"] + [("_count", "1")]
        try:
            await client.request("GET", stream.resource_type, params=params)
        except AuthError as exc:
            report.auth = "FAILED"
            report.problems.append(f"auth failed: {exc}")
            return
        except FhirError as exc:
            said = f": {exc.outcome}" if exc.outcome else ""
            stream.search = f"refused (HTTP {exc.status}){said}" if exc.status else f"failed: {exc}"
            report.problems.append(
                f"{stream.resource_type}: a sync would fail: the search is {stream.search}"
            )
            continue
        stream.search = "ok"
        report.auth = "ok" if endpoint.auth.type != "none" else "ok (no auth configured)"


def _check_subscriptions(
    endpoint: EndpointSettings, capability: dict[str, Any], report: EndpointReport
) -> None:
    """How `listen` would be notified: a Backport topic, R4 criteria, or not at all (polling only)."""
    from connector.subscriptions import manage

    if not manage.offers_subscriptions(capability):
        tail = "; `subscriptions = true` has no effect" if endpoint.subscriptions else ""
        report.notes.append(f"the server offers no Subscription: polling only{tail}")
        return
    if not endpoint.subscriptions:
        return
    for rtype in endpoint.subscription_resources:
        topic = manage.topic_for(endpoint, rtype, capability)
        how = f"R4 Backport topic {topic}" if topic else f"R4 criteria {manage.criteria_for(rtype)}"
        report.notes.append(f"subscriptions: {rtype} by {how}")


def _check_profile(endpoint: EndpointSettings, capability: dict[str, Any], report: EndpointReport) -> None:
    """Which vendor profile fits the server and why, against the configured one."""
    report.profile = endpoint.profile
    recognised = recognise(capability)
    refused = [s.resource_type for s in report.streams if s.search and "patient" in s.search.lower()]
    if recognised is not None:
        fit, report.profile_why = recognised[0].name, recognised[1]
    elif refused:
        fit = None
        report.profile_why = f"{', '.join(refused)}: searched only per patient, like epic, oracle and athena"
    elif any(s.search == "ok" for s in report.streams):
        fit, report.profile_why = "generic", "every offered stream answered a type-level search"
    else:
        return
    report.profile_fit = fit
    if fit is not None and fit != endpoint.profile:
        report.problems.append(
            f'profile: {report.profile_why}: set profile = "{fit}" (now {endpoint.profile!r})'
        )
    elif fit is None:
        report.problems.append(f"profile: {report.profile_why}; set `profile` to the EMR's vendor")
    else:
        report.notes.append(f"profile {fit}: {report.profile_why}")
    vendor = endpoint.vendor
    if endpoint.bulk != "never" and endpoint.bulk_level not in vendor.bulk_levels:
        report.problems.append(
            f"{vendor.title} allows $export at {' or '.join(vendor.bulk_levels)} level only, not "
            f'{endpoint.bulk_level}: set bulk_level = "{vendor.bulk_levels[0]}"'
            + (" and bulk_group_id" if vendor.bulk_levels[0] == "group" else "")
        )
    crawled = [
        s.resource_type
        for s in report.streams
        if s.supported and endpoint.crawls_per_patient(s.resource_type)
    ]
    if not crawled:
        return
    if endpoint.patient_list_file is not None:
        report.notes.append(
            f"{', '.join(crawled)}: crawled per patient, the ids in {endpoint.patient_list_file}"
        )
    elif endpoint.patient_search is not None:
        report.notes.append(
            f"{', '.join(crawled)}: crawled per patient, the matches of Patient?{endpoint.patient_search}"
        )
    elif endpoint.crawl_group_id is not None:
        report.notes.append(
            f"{', '.join(crawled)}: crawled per patient, the members of Group/{endpoint.crawl_group_id}"
        )
    else:
        report.problems.append(
            f"{', '.join(crawled)}: {vendor.title} searches them only per patient: set `patient_group_id` "
            "(or `bulk_group_id`), `patient_search` or `patient_list_file`"
        )


def _next_mode(
    endpoint: EndpointSettings, rt: str, capability: dict[str, Any], known: Known
) -> tuple[str, str]:
    """The mode the next sync runs the stream in, and why: the same decision `plan_endpoint` makes."""
    has_watermark = rt in known.synced
    if should_use_bulk(endpoint, capability, has_watermark, pending=known.export is not None):
        if known.export is not None:
            return "bulk", "an export an earlier run kicked off is resumed"
        if endpoint.bulk == "always":
            return "bulk", "configured: bulk = always"
        return "bulk", f"first load: the server offers $export at {endpoint.bulk_level} level (bulk = auto)"
    plan = plan_stream(endpoint, stream_for(rt), capability)
    return plan.mode, plan.reason


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


def warehouse_state(settings: Settings) -> dict[str, Known]:
    """Per endpoint, its streams with a watermark and the export an earlier run left pending.

    Read without creating or migrating anything: with no warehouse yet, every stream's next sync is its
    first.
    """
    engine = open_existing(settings.warehouse.url)
    if engine is None:
        return {}
    try:
        exports = bulk_state.pending_exports(engine)
        synced: dict[str, set[str]] = {}
        for row in state.watermarks(engine):
            if row["watermark"] is not None:
                synced.setdefault(row["endpoint"], set()).add(row["resource_type"])
    finally:
        engine.dispose()
    names = set(exports) | set(synced)
    return {
        name: Known(frozenset(synced.get(name, ())), export_view(exports[name]) if name in exports else None)
        for name in names
    }


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
    source = NdjsonSource(endpoint.ndjson_dir, endpoint.page_size, endpoint.resources)
    try:
        source.files()
    except ConnectorError as exc:
        report.problems.append(str(exc))
        return report
    lines: dict[Path, int] = {}
    for path in source.files():
        try:
            lines[path] = source.line_count(path)  # a truncated .gz fails here, not half-way into a sync
        except SourceFileError as exc:
            report.problems.append(str(exc))
    for rt in endpoint.resources:
        files = source.files_for(rt)
        plan = plan_stream(endpoint, stream_for(rt), None)
        counted = sum(lines.get(path, 0) for path in files)
        reason = f"{len(files)} file(s), {counted} line(s)" if files else "no file names this type"
        report.streams.append(StreamCheck(rt, bool(files), None, plan.mode, reason))
    return report


async def check_settings(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> list[EndpointReport]:
    endpoints = [e for e in settings.endpoints if e.enabled]
    unknown: str | None = None
    try:
        known = warehouse_state(settings)
    except WarehouseError as exc:
        # The warehouse is not what `check` proves; say it could not be read and go on.
        known, unknown = {}, f"the warehouse could not be read ({exc}): modes assume a first sync"
    reports = list(
        await asyncio.gather(
            *(check_endpoint(e, transport=transport, known=known.get(e.name)) for e in endpoints)
        )
    )
    for report in reports:
        state_of = known.get(report.endpoint) or Known()
        report.export_in_progress = state_of.export
        if unknown is not None:
            report.notes.append(unknown)
        if state_of.export is not None:
            report.notes.append(describe_export(state_of.export))
    return reports
