"""The Bulk $export backfill of one endpoint: resume or kick off, wait, load every file, finish.

    if should_use_bulk(endpoint, capability, has_watermark, pending=...):
        results = await run_bulk_backfill(settings, endpoint, engine, resource_types=[...],
                                          run_id=run_id, synced_at=synced_at)

Each output file is loaded through `connector.pipeline.run_stream` (the same mapping and loading as search
pages; one `sync_run` row per file) and marked done in `sync_state` once its rows are committed, so a run
that stops is resumed by the next one: the stored status URL is polled instead of a new kick-off, and files
done are skipped. A stream whose files all loaded gets the manifest's transactionTime as its watermark in
the transaction that forgets the export; once no stream waits for it, the export is deleted on the server.
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
from connector.errors import ConfigError, ConnectorError, FhirError, TransientFhirError, WarehouseError
from connector.fhir.bulk import (
    BulkExport,
    BulkExportError,
    BulkExportGone,
    BulkStatus,
    BulkUrlRefused,
    ExportFile,
    Manifest,
    bulk_pages,
)
from connector.fhir.capabilities import supports_bulk_export
from connector.fhir.client import FhirClient
from connector.fhir.http import outcome_text, url_path
from connector.mapping_pool import page_mapper, pages_ahead
from connector.pipeline import StreamResult, run_stream
from connector.streams import Plan
from connector.warehouse import bulk_state, state
from connector.warehouse.writer import PageWrite, Reject, write_page

log = logging.getLogger(__name__)

#: `Type/id` (optionally `/_history/n`) at the end of a deleted entry's request.url.
_DELETED_REF = re.compile(r"(?:^|/)([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?/?$")


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


async def run_bulk_backfill(
    settings: Settings,
    endpoint: EndpointSettings,
    engine: Engine,
    *,
    resource_types: Sequence[str],
    run_id: str,
    synced_at: datetime,
    transport: Any = None,
    sleep: Callable[[float], Any] = asyncio.sleep,
    now: Callable[[], datetime] | None = None,
    on_status: Callable[[BulkStatus], None] | None = None,
) -> list[StreamResult]:
    """Load `resource_types` of `endpoint` by Bulk $export; one StreamResult per stream, never raises for
    server or data trouble (failed results carry the error, `transient` says whether a retry may help).

    A pending export of the endpoint is resumed instead of kicking off a new one; it covers the streams it
    was kicked off for (`resource_types` is then only used for streams it does not cover: they are left for
    the next run). `sleep` and `now` are injectable for tests; `transport` is httpx's.
    """
    if not endpoint.is_server:
        raise ConfigError(f"endpoint {endpoint.name!r} reads NDJSON files; Bulk $export needs a base_url")
    clock = now or (lambda: datetime.now(UTC))
    async with FhirClient(endpoint, transport=transport, sleep=sleep) as fhir:
        export = BulkExport(fhir, sleep=sleep, now=clock, on_status=on_status)
        job = _Job(settings, endpoint, engine, export, run_id, synced_at)
        return await job.run(list(dict.fromkeys(resource_types)), clock)


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

    async def run(self, requested: list[str], clock: Callable[[], datetime]) -> list[StreamResult]:
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
            types = requested
            try:
                since = await asyncio.to_thread(self._since, types)
                started_at = clock()
                status_url = await self.export.kick_off(types, since)
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
        except BulkUrlRefused as exc:
            # Kept: the export resumes once bulk_allowed_hosts names the storage host (if it should).
            return await self._failed(types, exc)
        except BulkExportError as exc:  # failed on the server, or past its deadline
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
            await self._record_errors(status_url, manifest, types, done_any)
        except (ConnectorError, OSError) as exc:
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

        results = [_combine(self.name, rt, per_type[rt]) for rt in types]
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
                if not per_type[rt]:
                    await asyncio.to_thread(self._record_run, result)
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
                    match = _DELETED_REF.search(str(request.get("url") or "").split("?")[0])
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
    ) -> None:
        """The error files' OperationOutcomes become dead letters (resource type OperationOutcome)."""
        for file in manifest.error:
            if file.key in done:
                continue
            outcomes = await self._download_resources(
                [file], "OperationOutcome", manifest.requires_access_token
            )
            rejects = [
                Reject(
                    self.name,
                    "OperationOutcome",
                    outcome.get("id") if isinstance(outcome.get("id"), str) else None,
                    "bulk export error: "
                    + (outcome_text(orjson.dumps(outcome)) or "OperationOutcome without text"),
                    outcome,
                )
                for outcome in outcomes
            ]
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
        state.finish_run(
            self.engine,
            run_pk,
            status=result.status,
            fetched=result.fetched,
            loaded=result.loaded,
            rejected=result.rejected,
            error=result.error,
        )


def _combine(endpoint: str, resource_type: str, parts: list[StreamResult]) -> StreamResult:
    """The results of a stream's files as one result."""
    result = StreamResult(endpoint, resource_type, "bulk", status="succeeded")
    for part in parts:
        result.fetched += part.fetched
        result.loaded += part.loaded
        result.rejected += part.rejected
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
    return result


def _bundle_time(bundle: dict[str, Any]) -> datetime | None:
    meta = bundle.get("meta") if isinstance(bundle.get("meta"), dict) else {}
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
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:500]
