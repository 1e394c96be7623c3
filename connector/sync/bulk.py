"""The Bulk $export backfill of one endpoint: resume or kick off, wait, load every file, finish.

    if should_use_bulk(endpoint, capability, has_watermark, pending=...):
        results = await run_bulk_backfill(settings, endpoint, engine, resource_types=[...],
                                          run_id=run_id, synced_at=synced_at)

Each output file is loaded through `connector.sync.pipeline.run_stream` (the same mapping and loading as
search pages; one `sync_run` row per file) and marked done in `sync_state` once its rows are committed, so
a run that stops is resumed by the next one: the stored status URL is polled instead of a new kick-off, and
files done are skipped. A stream whose files all loaded gets the manifest's transactionTime as its
watermark in the transaction that forgets the export; once no stream waits for it, the export is deleted on
the server.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy.engine import Engine

from connector.config import EndpointSettings, Settings
from connector.errors import (
    ConfigError,
    ConnectorError,
    FhirError,
    MappingError,
    TransientFhirError,
    WarehouseError,
)
from connector.fhir.bulk import (
    BulkExport,
    BulkExportError,
    BulkExportGone,
    BulkStatus,
    BulkTypeRefused,
    ExportFile,
    Manifest,
    bulk_pages,
)
from connector.fhir.capabilities import resource_types as resource_types_offered
from connector.fhir.capabilities import supports_bulk_export
from connector.fhir.client import FhirClient
from connector.fhir.http import outcome_text, url_path
from connector.mapping_pool import page_mapper, pages_ahead
from connector.streams import Plan
from connector.sync.pipeline import StreamResult, run_stream
from connector.warehouse import bulk_state, state
from connector.warehouse.writer import PageWrite, Reject, write_page
from mappings.elements import object_at
from mappings.fhir_ids import ID_PATTERN, REFERENCE_TAIL_RE, TYPE_PATTERN

log = logging.getLogger(__name__)


def should_use_bulk(
    endpoint: EndpointSettings,
    capability: dict[str, Any] | None,
    has_watermark: bool,
    *,
    pending: bool = False,
) -> bool:
    """Whether a stream of this endpoint is loaded by Bulk $export this run.

    `never` never; a pending export (`bulk_state.pending_export`) is always resumed otherwise; `always` for
    every stream; `auto` for streams without a watermark when the CapabilityStatement offers `$export` at the
    configured level.
    """
    if not endpoint.is_server or endpoint.bulk == "never":
        return False
    if pending or endpoint.bulk == "always":
        return True
    return (
        not has_watermark and capability is not None and supports_bulk_export(capability, endpoint.bulk_level)
    )


#: Answers to a type-level search that mean the server has no search for it (only $export).
SEARCH_UNAVAILABLE = frozenset({404, 405, 501})


def search_falls_back_to_bulk(
    endpoint: EndpointSettings, capability: dict[str, Any] | None, http_status: int | None
) -> bool:
    """Whether a stream whose search failed with `http_status` is loaded by Bulk $export instead.

    With `bulk = "auto"`, a server that offers `$export` at the configured level but answers every search
    404 (a Bulk-only server advertising search) still gets synced.
    """
    return (
        endpoint.is_server
        and endpoint.bulk == "auto"
        and http_status in SEARCH_UNAVAILABLE
        and capability is not None
        and supports_bulk_export(capability, endpoint.bulk_level)
    )


async def run_bulk_backfill(
    settings: Settings,
    endpoint: EndpointSettings,
    engine: Engine,
    *,
    resource_types: Sequence[str],
    run_id: str,
    synced_at: datetime,
    capability: dict[str, Any] | None = None,
    transport: Any = None,
    sleep: Callable[[float], Any] = asyncio.sleep,
    now: Callable[[], datetime] | None = None,
    on_status: Callable[[BulkStatus], None] | None = None,
) -> list[StreamResult]:
    """Load `resource_types` of `endpoint` by Bulk $export; one StreamResult per stream, never raises for
    server or data trouble (failed results carry the error, `transient` says whether a retry may help).

    A pending export of the endpoint is resumed instead of kicking off a new one; it covers the streams it
    was kicked off for (`resource_types` is then only used for streams it does not cover: they are left for
    the next run). A new export asks only for the types `capability` (the server's CapabilityStatement)
    lists, when it lists any; the others, and a type the kick-off is refused for, are `skipped`.
    A type the export reports failed (an `error` entry naming it, a file that is broken or holds fewer
    lines than the manifest's `count`) is a failed stream: its watermark stays, and the export is forgotten
    for it, so the next run exports it again. `sleep` and `now` are injectable for tests; `transport` is
    httpx's.
    """
    if not endpoint.is_server:
        raise ConfigError(f"endpoint {endpoint.name!r} reads NDJSON files; Bulk $export needs a base_url")
    clock = now or (lambda: datetime.now(UTC))
    async with FhirClient(endpoint, transport=transport, sleep=sleep) as fhir:
        export = BulkExport(fhir, sleep=sleep, now=clock, on_status=on_status)
        job = _Job(settings, endpoint, engine, export, run_id, synced_at)
        return await job.run(list(dict.fromkeys(resource_types)), clock, capability)


class _Job:
    def __init__(
        self,
        settings: Settings,
        endpoint: EndpointSettings,
        engine: Engine,
        export: BulkExport,
        run_id: str,
        synced_at: datetime,
    ) -> None:
        self.settings = settings
        self.endpoint = endpoint
        self.engine = engine
        self.export = export
        self.run_id = run_id
        self.synced_at = synced_at
        self.name = endpoint.name

    async def run(
        self, requested: list[str], clock: Callable[[], datetime], capability: dict[str, Any] | None
    ) -> list[StreamResult]:
        skipped: list[StreamResult] = []
        results = await self._export(requested, clock, capability, skipped)
        return results + skipped

    async def _export(
        self,
        requested: list[str],
        clock: Callable[[], datetime],
        capability: dict[str, Any] | None,
        skipped: list[StreamResult],
    ) -> list[StreamResult]:
        pending = await asyncio.to_thread(bulk_state.pending_export, self.engine, self.name)
        if pending is not None:
            status_url, started_at, types = (
                pending.status_url,
                pending.started_at,
                list(pending.resource_types),
            )
            left = [t for t in requested if t not in types]
            log.info(
                "%s: resuming the export kicked off at %s for %d stream(s)%s",
                self.name,
                started_at.isoformat(),
                len(types),
                f"; {len(left)} other stream(s) wait for the next run" if left else "",
            )
        else:
            offered = resource_types_offered(capability or {})
            types = [t for t in requested if not offered or t in offered]
            for rt in requested:
                if rt not in types:
                    why = "the server's CapabilityStatement does not list it"
                    skipped.append(await self._skipped(rt, why))
            if not types:
                return []
            try:
                since = await asyncio.to_thread(self._since, types)
                started_at = clock()
                while True:
                    try:
                        status_url = await self.export.kick_off(types, since)
                        break
                    except BulkTypeRefused as exc:
                        # One type the server will not export must not hold back the others.
                        types.remove(exc.resource_type)
                        skipped.append(await self._skipped(exc.resource_type, str(exc)))
                        if not types:
                            return []
            except FhirError as exc:
                return await self._failed(types, exc)
            # Stored before anything else can fail: a crash from here on resumes this export.
            try:
                await asyncio.to_thread(
                    bulk_state.save_kickoff, self.engine, self.name, types, status_url, started_at
                )
            except BaseException:
                await self.export.cancel(status_url)  # not remembered: nobody would ever finish it
                raise

        try:
            manifest = await self.export.wait_for_manifest(status_url, started_at=started_at)
            self.export.vet_manifest(manifest)
        except BulkExportGone as exc:
            # Nothing to resume: forget it, the next run kicks off a new export.
            await asyncio.to_thread(bulk_state.clear_export, self.engine, self.name, status_url)
            return await self._failed(types, exc, transient=True)
        except TransientFhirError as exc:
            return await self._failed(types, exc)  # kept: the next run polls the same export
        except BulkExportError as exc:  # failed on the server, past its deadline, or a file URL refused
            await self.export.cancel(status_url)
            await asyncio.to_thread(bulk_state.clear_export, self.engine, self.name, status_url)
            return await self._failed(types, exc)
        except FhirError as exc:  # AuthError: fix the credentials, the export is still there
            return await self._failed(types, exc)

        return await self._load(status_url, manifest, types)

    def _since(self, types: Sequence[str]) -> datetime | None:
        """`_since` for a kick-off: the oldest watermark minus the overlap; None if any stream has none."""
        marks = [state.get_watermark(self.engine, self.name, t)[1] for t in types]
        if not marks or any(m is None for m in marks):
            return None
        oldest = min(m for m in marks if m is not None)
        return oldest - timedelta(seconds=self.endpoint.overlap_seconds)

    async def _load(self, status_url: str, manifest: Manifest, types: list[str]) -> list[StreamResult]:
        changed = await asyncio.to_thread(
            bulk_state.save_transaction_time, self.engine, self.name, status_url, manifest.transaction_time
        )
        if changed:
            log.warning("%s: the export's transactionTime changed; loading all its files again", self.name)
        pending = await asyncio.to_thread(bulk_state.pending_export, self.engine, self.name)
        done: dict[str, frozenset[str]] = pending.files_done if pending else {}
        done_any = frozenset().union(*done.values()) if done else frozenset()
        ignored = {f.type for f in manifest.output if f.type not in types}
        if ignored:
            log.warning("%s: the export holds types not asked for, ignored: %s", self.name, sorted(ignored))

        try:
            await self._apply_deleted(status_url, manifest, types, done_any)
            reported = await self._record_errors(status_url, manifest, types, done_any)
        except (ConnectorError, MappingError, OSError) as exc:
            return await self._failed(types, exc, transient=_transient(exc))

        semaphore = asyncio.Semaphore(self.endpoint.bulk_max_parallel_downloads)
        per_type: dict[str, list[StreamResult]] = {t: [] for t in types}
        async with asyncio.TaskGroup() as group:
            for rt in types:
                for file in manifest.files_for(rt):
                    if file.key in done.get(rt, frozenset()):
                        log.info("%s/%s: %s already loaded, skipped", self.name, rt, url_path(file.url))
                        continue
                    group.create_task(self._load_file(semaphore, status_url, manifest, rt, file, per_type))

        results = [_combine(self.name, rt, per_type[rt], reported.get(rt)) for rt in types]
        if self.export.files_gone:
            # The server dropped the files: this export cannot be finished, the next run starts a new one.
            log.error("%s: export files are gone (404/410); the next run kicks off a new export", self.name)
            await self.export.cancel(status_url)
            await asyncio.to_thread(bulk_state.clear_export, self.engine, self.name, status_url)
            for result in results:
                if result.status != "succeeded":
                    result.transient = True
        for result in results:
            rt = result.resource_type
            if result.status == "succeeded":
                await asyncio.to_thread(
                    bulk_state.finish_stream,
                    self.engine,
                    self.name,
                    rt,
                    status_url,
                    manifest.transaction_time,
                    manifest.transaction_at,
                )
                result.watermark = manifest.transaction_time
            elif not result.transient:
                # The server reported the type failed, or a file of it is broken: this export will never
                # hold it whole. Its watermark stays, and the next run exports it again.
                await asyncio.to_thread(bulk_state.forget_streams, self.engine, self.name, status_url, [rt])
            if not per_type[rt]:
                await asyncio.to_thread(self._record_run, result)
            elif rt in reported:
                # Its files have rows of their own; this one says why the stream failed.
                failure = StreamResult(self.name, rt, "bulk", status="failed", error=result.error)
                await asyncio.to_thread(self._record_run, failure)
        remaining = await asyncio.to_thread(bulk_state.remaining_streams, self.engine, self.name, status_url)
        if not remaining:
            await self.export.cancel(status_url)
        return results

    async def _load_file(
        self,
        semaphore: asyncio.Semaphore,
        status_url: str,
        manifest: Manifest,
        rt: str,
        file: ExportFile,
        out: dict[str, list[StreamResult]],
    ) -> None:
        async with semaphore:
            plan = Plan(rt, "bulk", None, f"bulk export {url_path(status_url)}")
            pages = bulk_pages(
                self.export,
                [file],
                rt,
                page_size=self.endpoint.page_size,
                requires_token=manifest.requires_access_token,
            )
            async with aclosing(pages) as source:
                result = await run_stream(
                    engine=self.engine,
                    endpoint=self.endpoint,
                    plan=plan,
                    pages=source,
                    run_id=self.run_id,
                    synced_at=self.synced_at,
                    batch_size=self.settings.warehouse.batch_size,
                    # The watermark is the manifest's transactionTime, set once every file is in.
                    commit_watermark=False,
                    mapper=page_mapper(self.settings.runtime.mapping_workers()),
                    pages_ahead=pages_ahead(self.settings.runtime.mapping_workers()),
                )
        if result.status == "succeeded":
            await asyncio.to_thread(
                bulk_state.mark_files_done, self.engine, self.name, status_url, [rt], [file.key]
            )
        out[rt].append(result)

    async def _download_resources(
        self, files: Sequence[ExportFile], resource_type: str, requires_token: bool
    ) -> list[dict[str, Any]]:
        resources: list[dict[str, Any]] = []
        pages = bulk_pages(
            self.export,
            files,
            resource_type,
            page_size=self.endpoint.page_size,
            requires_token=requires_token,
            # The count of an error or deleted entry is not that of its lines (one outcome may stand for
            # a whole file that failed).
            check_count=False,
        )
        async with aclosing(pages) as source:
            async for page in source:
                resources.extend(page.resources)
        return resources

    async def _apply_deleted(
        self, status_url: str, manifest: Manifest, types: list[str], done: frozenset[str]
    ) -> None:
        """Mark the resources of the `deleted` Bundles deleted in raw_resource (idempotent)."""
        for file in manifest.deleted:
            if file.key in done:
                continue
            keys_at: dict[datetime, set[tuple[str, str]]] = {}
            for bundle in await self._download_resources([file], "Bundle", manifest.requires_access_token):
                at = _bundle_time(bundle) or manifest.transaction_at
                for entry in bundle.get("entry") or []:
                    request = entry.get("request") if isinstance(entry, dict) else None
                    if not isinstance(request, dict) or str(request.get("method", "")).upper() != "DELETE":
                        continue
                    match = REFERENCE_TAIL_RE.search(str(request.get("url") or "").split("?")[0])
                    if match and match.group(1) in types:
                        keys_at.setdefault(at, set()).add((match.group(1), match.group(2)))
            marked = 0
            for at, keys in keys_at.items():
                marked += await asyncio.to_thread(bulk_state.mark_deleted, self.engine, self.name, keys, at)
            log.info(
                "%s: %d deleted resource(s) listed, %d marked deleted",
                self.name,
                sum(len(k) for k in keys_at.values()),
                marked,
            )
            await asyncio.to_thread(
                bulk_state.mark_files_done, self.engine, self.name, status_url, types, [file.key]
            )

    async def _record_errors(
        self, status_url: str, manifest: Manifest, types: list[str], done: frozenset[str]
    ) -> dict[str, str]:
        """The error files' OperationOutcomes become dead letters (resource type OperationOutcome); returns
        the streams they report failed, with the reason.

        An error that names no type at all fails every stream of the export: nothing tells which one is
        incomplete, and a stream taken for complete would never be fetched again. The streams reported
        failed are forgotten by the export before its error files are marked done, so a resumed run
        cannot take them for done either.
        """
        reported: dict[str, str] = {}
        for file in manifest.error:
            if file.key in done:
                continue
            outcomes = await self._download_resources(
                [file], "OperationOutcome", manifest.requires_access_token
            )
            rejects = []
            for outcome in outcomes:
                text = outcome_text(orjson.dumps(outcome)) or "OperationOutcome without text"
                rejects.append(
                    Reject(
                        self.name,
                        "OperationOutcome",
                        outcome.get("id") if isinstance(outcome.get("id"), str) else None,
                        "bulk export error: " + text,
                        outcome,
                    )
                )
                for rt in failed_types(outcome, url_path(file.url), types):
                    reported.setdefault(rt, f"the server reported its export failed: {text}"[:500])
            failed = sorted(reported)
            if failed:
                await asyncio.to_thread(bulk_state.forget_streams, self.engine, self.name, status_url, failed)
            if rejects:
                await asyncio.to_thread(
                    write_page,
                    self.engine,
                    PageWrite(endpoint=self.name, resource_type="OperationOutcome", rejects=rejects),
                    batch_size=self.settings.warehouse.batch_size,
                )
            log.warning("%s: the export reported %d error(s), kept as dead letters", self.name, len(rejects))
            await asyncio.to_thread(
                bulk_state.mark_files_done, self.engine, self.name, status_url, types, [file.key]
            )
        if reported:
            log.error("%s: the export reported failed: %s", self.name, ", ".join(sorted(reported)))
        return reported

    async def _skipped(self, resource_type: str, why: str) -> StreamResult:
        log.warning("%s/%s: not exported: %s", self.name, resource_type, why)
        result = StreamResult(self.name, resource_type, "bulk", status="skipped", error=_one_line_text(why))
        await asyncio.to_thread(self._record_run, result)
        return result

    async def _failed(
        self, types: Sequence[str], exc: BaseException, *, transient: bool | None = None
    ) -> list[StreamResult]:
        """One failed result (and sync_run row) per stream, for a failure before any file was loaded."""
        error = _one_line(exc)
        log.error("%s: bulk export failed: %s", self.name, error)
        results = []
        for rt in types:
            result = StreamResult(self.name, rt, "bulk", status="failed", error=error)
            result.transient = _transient(exc) if transient is None else transient
            await asyncio.to_thread(self._record_run, result)
            results.append(result)
        return results

    def _record_run(self, result: StreamResult) -> None:
        run_pk = state.start_run(self.engine, self.run_id, self.name, result.resource_type)
        state.finish_run(self.engine, run_pk, result)


def _combine(
    endpoint: str, resource_type: str, parts: list[StreamResult], reported: str | None = None
) -> StreamResult:
    """The results of a stream's files as one result; `reported` is the failure the export's error files
    report for the stream, if any."""
    result = StreamResult(endpoint, resource_type, "bulk", status="succeeded")
    for part in parts:
        result.fetched += part.fetched
        result.loaded += part.loaded
        result.rejected += part.rejected
        result.unchanged += part.unchanged
        result.included += part.included
        result.pages += part.pages
        result.seconds = round(result.seconds + part.seconds, 3)
    failed = [p for p in parts if p.status != "succeeded"]
    if failed:
        result.status = "failed"
        result.error = failed[0].error
        if len(failed) > 1:
            result.error = f"{len(failed)} of {len(parts)} files failed; first: {failed[0].error}"
        result.transient = all(p.transient for p in failed)
    if reported is not None:
        result.status = "failed"
        result.error = reported
        result.transient = False
    return result


#: Severities of an OperationOutcome issue that mean something was not exported.
_FAILING_SEVERITIES = frozenset({"fatal", "error"})
#: A resource type named as a reference (`Claim/77`) or a file name (`2.Claim.ndjson`).
_NAMED_TYPE = re.compile(rf"\b({TYPE_PATTERN})(?:/{ID_PATTERN}|\.ndjson)")


def failed_types(outcome: dict[str, Any], file_path: str, types: Sequence[str]) -> list[str]:
    """The streams of `types` an error file's OperationOutcome reports failed.

    An outcome whose issues are all warnings or information fails nothing. Otherwise the streams it names
    (in its texts, expressions and locations, or the error file's name), or, when it names no resource
    type at all, every stream: an error that cannot be placed must not let a stream pass as complete.
    Naming only types not asked for (`Claim/77` in an export of Coverage) fails nothing.
    """
    issues = [i for i in outcome.get("issue") or [] if isinstance(i, dict)]
    if issues and not any(i.get("severity", "error") in _FAILING_SEVERITIES for i in issues):
        return []
    texts: list[Any] = [file_path]
    for issue in issues:
        details = object_at(issue, "details")
        texts += [issue.get("diagnostics"), details.get("text")]
        texts += [c.get("code") for c in details.get("coding") or [] if isinstance(c, dict)]
        texts += list(issue.get("expression") or []) + list(issue.get("location") or [])
    text = " ".join(t for t in texts if isinstance(t, str))
    named = [t for t in types if re.search(rf"\b{t}\b", text)]
    if named:
        return named
    return [] if _NAMED_TYPE.search(text) else list(types)


def _bundle_time(bundle: dict[str, Any]) -> datetime | None:
    meta = object_at(bundle, "meta")
    text = meta.get("lastUpdated")
    if not isinstance(text, str):
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo is not None else None


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, TransientFhirError) or (isinstance(exc, WarehouseError) and exc.transient)


def _one_line(exc: BaseException) -> str:
    return _one_line_text(str(exc)) or type(exc).__name__


def _one_line_text(text: str) -> str:
    return " ".join(text.split())[:500]
