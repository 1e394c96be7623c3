"""The per-patient crawl of a stream the EMR searches only with `patient` (Epic, Oracle Health, athena).

The patients are the ids of a file (`patient_list_file`, read line by line), the matches of a Patient search
(`patient_search`, page by page), or the members of a Group (`patient_group_id`, else `bulk_group_id`): a
`Group/{id}` read, or with `patient_group_export` a `Group/{id}/$export` of Patient, file by file.

Each patient's search is the stream's own search plus `patient=<id>`, at most `max_connections` at once,
its pages handed on as they come. A patient
the stream has crawled before is searched from the stream's watermark (with the overlap); a new one (not in
`patient_crawl` yet) in full, and so is every patient of a server without `_lastUpdated` (Epic): a date
parameter does not move when a resource changes. A patient who left the group is not searched again; what
was loaded of them is kept.

The stream's watermark stays one per stream: the newest `meta.lastUpdated` seen across patients, but never
past the crawl's start when a resource changed while it ran (`WatermarkTracker`: the first page's Bundle
time is when the crawl began), so an update to a patient crawled early is read on the next run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.config import EndpointSettings
from connector.errors import ConfigError, FatalFhirError
from connector.fhir.bulk import BulkExport
from connector.fhir.client import FhirClient
from connector.fhir.ndjson import NdjsonSource
from connector.fhir.page import Page
from connector.fhir.paging import entries_of
from connector.progress import sink
from connector.streams import Plan
from connector.sync.pipeline import search_params
from connector.sync.windows import server_count
from connector.warehouse.engine import begin_write, insert_for
from connector.warehouse.models.crawl import PatientCrawl as _CrawlRow
from mappings.fhir_ids import ID_PATTERN

_CRAWL: sa.Table = _CrawlRow.__table__  # type: ignore[assignment]
_ID = re.compile(rf"^(?:Patient/)?({ID_PATTERN})$")
#: Patients whose crawl state is written per statement.
_CHUNK = 1000


def _patient_id(text: object) -> str | None:
    """The id of `123` or `Patient/123`, or None when it is not one."""
    match = _ID.match(text) if isinstance(text, str) else None
    return match.group(1) if match else None


def known_patients(engine: Engine, endpoint: str, resource_type: str, patients: list[str]) -> set[str]:
    """Which of `patients` the stream has searched in a run that completed."""
    query = sa.select(_CRAWL.c.patient_id).where(
        _CRAWL.c.endpoint == endpoint,
        _CRAWL.c.resource_type == resource_type,
        _CRAWL.c.patient_id.in_(patients),
        _CRAWL.c.pending_run.is_(None),
    )
    with engine.connect() as conn:
        return set(conn.execute(query).scalars())


def record_pending(
    engine: Engine, endpoint: str, resource_type: str, run_id: str, patients: list[str]
) -> None:
    """Note patients searched in full by run `run_id`; they count as crawled once the run succeeds."""
    if not patients:
        return
    now = datetime.now(UTC)
    rows = [
        {
            "endpoint": endpoint,
            "resource_type": resource_type,
            "patient_id": p,
            "crawled_at": now,
            "pending_run": run_id,
        }
        for p in patients
    ]
    with begin_write(engine) as conn:
        stmt = insert_for(conn, _CRAWL)
        stmt = stmt.on_conflict_do_update(
            index_elements=["endpoint", "resource_type", "patient_id"],
            set_={"pending_run": stmt.excluded.pending_run, "crawled_at": stmt.excluded.crawled_at},
            where=_CRAWL.c.pending_run.is_not(None),  # a patient crawled in a complete run stays so
        )
        conn.execute(stmt, rows)


def confirm_run(engine: Engine, endpoint: str, resource_type: str, run_id: str) -> int:
    """The run succeeded: the patients it searched in full are crawled from now on."""
    with begin_write(engine) as conn:
        result = conn.execute(
            sa.update(_CRAWL)
            .where(
                _CRAWL.c.endpoint == endpoint,
                _CRAWL.c.resource_type == resource_type,
                _CRAWL.c.pending_run == run_id,
            )
            .values(pending_run=None)
        )
        return int(result.rowcount or 0)


def _file_ids(endpoint: EndpointSettings) -> Iterator[str]:
    path = endpoint.patient_list_file
    assert path is not None
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                patient = _patient_id(text)
                if patient is None:
                    raise ConfigError(f"patient_list_file {path.name}:{number}: not a Patient id")
                yield patient
    except OSError as exc:
        raise ConfigError(f"patient_list_file {path}: cannot read: {exc.strerror}") from None


async def _as_async(ids: Iterator[str]) -> AsyncIterator[str]:
    for patient in ids:
        yield patient


def group_members(group: dict[str, Any]) -> list[str]:
    """The ids of a Group's active Patient members."""
    ids = []
    for member in group.get("member") or []:
        if not isinstance(member, dict) or member.get("inactive") is True:
            continue
        reference = (member.get("entity") or {}).get("reference")
        patient = _patient_id(reference) if str(reference).startswith("Patient/") else None
        if patient is not None:
            ids.append(patient)
    return ids


@dataclass
class PatientCrawl:
    """One run of a per-patient crawl of one stream."""

    client: FhirClient
    engine: Engine
    endpoint: EndpointSettings
    plan: Plan
    watermark_at: datetime | None
    run_id: str
    #: Patients searched in full (new to the stream), and patients done.
    new: int = 0
    done: int = 0

    async def patients(self) -> tuple[AsyncIterator[str], int | None]:
        """The patients to search, streamed, and how many there are when that is known up front (a
        file is counted first and read again; a search says its Bundle.total, if the server gives one)."""
        endpoint = self.endpoint
        if endpoint.patient_list_file is not None:
            count = await asyncio.to_thread(lambda: sum(1 for _ in _file_ids(endpoint)))
            return _as_async(_file_ids(endpoint)), count
        if endpoint.patient_search is not None:
            return self._searched_patients(), await self._search_total()
        group_id = endpoint.crawl_group_id
        if group_id is not None and endpoint.patient_group_export:
            return self._exported_patients(group_id), None
        if group_id is None:
            raise ConfigError(
                f"{endpoint.name}: {endpoint.vendor.title} searches {self.plan.resource_type} only per "
                "patient: set `patient_group_id` (or `bulk_group_id`), `patient_search` or "
                "`patient_list_file`"
            )
        response = await self.client.request("GET", f"Group/{group_id}")
        group = response.json()
        if not isinstance(group, dict) or group.get("resourceType") != "Group":
            raise FatalFhirError(f"GET Group/{group_id} did not return a Group")
        members = group_members(group)
        return _as_async(iter(members)), len(members)

    def _patient_query(self) -> list[tuple[str, str]]:
        query = self.endpoint.patient_search or ""
        return [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "_count"]

    async def _search_total(self) -> int | None:
        return await server_count(self.client, "Patient", self._patient_query())

    async def _exported_patients(self, group_id: str) -> AsyncIterator[str]:
        """The ids of a `Group/{id}/$export` of Patient, file by file (for groups too big to read whole)."""
        export = BulkExport(self.client)
        status_url = await export.kick_off(["Patient"], path=f"Group/{group_id}/$export")
        try:
            manifest = await export.wait_for_manifest(status_url, started_at=datetime.now(UTC))
            export.vet_manifest(manifest)
            with tempfile.TemporaryDirectory(prefix="connector-patients-") as tmp:
                for file in manifest.files_for("Patient"):
                    path = await export.download(
                        file, Path(tmp), requires_token=manifest.requires_access_token
                    )
                    async for page in NdjsonSource(Path(tmp), self.endpoint.page_size).pages("Patient"):
                        for resource in page.resources:
                            if (patient := _patient_id(resource.get("id"))) is not None:
                                yield patient
                    path.unlink()
        finally:
            await export.cancel(status_url)

    async def _searched_patients(self) -> AsyncIterator[str]:
        """The ids of a Patient search's matches, page by page (memory stays one page)."""
        params = [*self._patient_query(), ("_elements", "id")]
        async for page in self.client.search("Patient", params):
            for resource in entries_of(page).resources:
                patient = _patient_id(resource.get("id"))
                if resource.get("resourceType") == "Patient" and patient is not None:
                    yield patient

    def _params(self, patient: str, known: bool) -> list[tuple[str, str]]:
        # Only `_lastUpdated` says what changed: a date parameter (Epic's `authored`) does not move when
        # a referral's status does, so without `_lastUpdated` every patient is searched in full (the
        # unchanged resources are skipped before mapping).
        incremental = known and self.plan.mode == "last-updated"
        since = self.watermark_at if incremental else None
        return [*search_params(self.plan, self.endpoint, since), ("patient", patient)]

    async def pages(self) -> AsyncIterator[Page]:
        """Every patient's pages, numbered in the order they arrive.

        Memory stays flat however many patients there are: the list is read as the crawl goes, whether a
        patient was crawled before is asked of the warehouse a chunk at a time, and the patients searched
        in full are written down (pending until the run succeeds) a chunk at a time.
        """
        rt, name = self.plan.resource_type, self.endpoint.name
        ids, total = await self.patients()
        workers = self.endpoint.max_connections
        queue: asyncio.Queue[Page | BaseException | None] = asyncio.Queue(workers * 2)
        waiting: asyncio.Queue[tuple[str, bool] | None] = asyncio.Queue(_CHUNK)
        progress = sink()
        searched_in_full: list[str] = []

        async def feed() -> None:
            chunk: list[str] = []

            async def hand_on() -> None:
                known = await asyncio.to_thread(known_patients, self.engine, name, rt, chunk)
                for patient in chunk:
                    await waiting.put((patient, patient in known))
                chunk.clear()

            async for patient in ids:
                chunk.append(patient)
                if len(chunk) >= _CHUNK:
                    await hand_on()
            await hand_on()
            for _ in range(workers):
                await waiting.put(None)

        async def note_full(patient: str | None) -> None:
            if patient is not None:
                searched_in_full.append(patient)
            if searched_in_full and (patient is None or len(searched_in_full) >= _CHUNK):
                batch = list(searched_in_full)
                searched_in_full.clear()
                await asyncio.to_thread(record_pending, self.engine, name, rt, self.run_id, batch)
                self.new += len(batch)

        async def worker() -> None:
            while (item := await waiting.get()) is not None:
                patient, known = item
                async for page in self.client.search(rt, self._params(patient, known)):
                    await queue.put(page)
                if not known:
                    await note_full(patient)
                self.done += 1
                progress.patients_done(name, rt, self.done, total)

        async def run() -> None:
            try:
                # A TaskGroup: the first failure cancels the other searches.
                async with asyncio.TaskGroup() as group:
                    group.create_task(feed())
                    for _ in range(workers):
                        group.create_task(worker())
                await note_full(None)
            except asyncio.CancelledError:
                raise
            except BaseExceptionGroup as failed:  # handed to the reader, which raises it after the pages
                await queue.put(failed.exceptions[0])
            else:
                if total is None:  # now it is known
                    progress.patients_done(name, rt, self.done, self.done)
                await queue.put(None)

        runner = asyncio.create_task(run())
        number = 0
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                number += 1
                yield dataclasses.replace(item, number=number)
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    def record(self) -> None:
        """After the stream succeeded: the patients it searched in full are crawled from now on from the
        watermark."""
        confirm_run(self.engine, self.endpoint.name, self.plan.resource_type, self.run_id)


__all__ = ["PatientCrawl", "confirm_run", "group_members", "known_patients", "record_pending"]
