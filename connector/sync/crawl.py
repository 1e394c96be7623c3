"""The per-patient crawl of a stream the EMR searches only with `patient` (Epic, Oracle Health, athena).

The patients are the members of a Group (`patient_group_id`, else `bulk_group_id`; a `Group/{id}` read) or
the ids of a file (`patient_list_file`, read line by line). Each patient's search is the stream's own
search plus `patient=<id>`, at most `max_connections` at once, its pages handed on as they come. A patient
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
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.config import EndpointSettings
from connector.errors import ConfigError, FatalFhirError
from connector.fhir.client import FhirClient
from connector.fhir.page import Page
from connector.progress import sink
from connector.streams import Plan
from connector.sync.pipeline import search_params
from connector.warehouse.engine import begin_write, insert_for
from connector.warehouse.models.crawl import PatientCrawl as _CrawlRow
from mappings.fhir_ids import ID_PATTERN

_CRAWL: sa.Table = _CrawlRow.__table__  # type: ignore[assignment]
_ID = re.compile(rf"^(?:Patient/)?({ID_PATTERN})$")
#: Patients whose crawl state is written per statement.
_CHUNK = 1000


def crawled_patients(engine: Engine, endpoint: str, resource_type: str) -> set[str]:
    """The patients this stream has searched in a complete run."""
    query = sa.select(_CRAWL.c.patient_id).where(
        _CRAWL.c.endpoint == endpoint, _CRAWL.c.resource_type == resource_type
    )
    with engine.connect() as conn:
        return set(conn.execute(query).scalars())


def record_crawled(engine: Engine, endpoint: str, resource_type: str, patients: list[str]) -> None:
    """Mark patients as crawled by the stream (after the run that searched them succeeded)."""
    now = datetime.now(UTC)
    for start in range(0, len(patients), _CHUNK):
        rows = [
            {"endpoint": endpoint, "resource_type": resource_type, "patient_id": p, "crawled_at": now}
            for p in patients[start : start + _CHUNK]
        ]
        with begin_write(engine) as conn:
            stmt = insert_for(conn, _CRAWL).on_conflict_do_nothing(
                index_elements=["endpoint", "resource_type", "patient_id"]
            )
            conn.execute(stmt, rows)


def _file_ids(endpoint: EndpointSettings) -> Iterator[str]:
    path = endpoint.patient_list_file
    assert path is not None
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                match = _ID.match(text)
                if match is None:
                    raise ConfigError(f"patient_list_file {path.name}:{number}: not a Patient id")
                yield match.group(1)
    except OSError as exc:
        raise ConfigError(f"patient_list_file {path}: cannot read: {exc.strerror}") from None


def group_members(group: dict[str, Any]) -> list[str]:
    """The ids of a Group's active Patient members."""
    ids = []
    for member in group.get("member") or []:
        if not isinstance(member, dict) or member.get("inactive") is True:
            continue
        reference = (member.get("entity") or {}).get("reference")
        if isinstance(reference, str) and reference.startswith("Patient/"):
            match = _ID.match(reference)
            if match is not None:
                ids.append(match.group(1))
    return ids


@dataclass
class PatientCrawl:
    """One run of a per-patient crawl; `new` lists the patients searched for the first time."""

    client: FhirClient
    engine: Engine
    endpoint: EndpointSettings
    plan: Plan
    watermark_at: datetime | None
    new: list[str] = field(default_factory=list)
    done: int = 0

    async def patients(self) -> tuple[Iterator[str], int]:
        """The patients to search, and how many there are (a file is counted first, then read again)."""
        endpoint = self.endpoint
        if endpoint.patient_list_file is not None:
            count = await asyncio.to_thread(lambda: sum(1 for _ in _file_ids(endpoint)))
            return _file_ids(endpoint), count
        group_id = endpoint.crawl_group_id
        if group_id is None:
            raise ConfigError(
                f"{endpoint.name}: {endpoint.vendor.title} searches {self.plan.resource_type} only per "
                "patient: set `patient_group_id` (or `bulk_group_id`) or `patient_list_file`"
            )
        response = await self.client.request("GET", f"Group/{group_id}")
        group = response.json()
        if not isinstance(group, dict) or group.get("resourceType") != "Group":
            raise FatalFhirError(f"GET Group/{group_id} did not return a Group")
        members = group_members(group)
        return iter(members), len(members)

    def _params(self, patient: str, known: set[str]) -> list[tuple[str, str]]:
        # Only `_lastUpdated` says what changed: a date parameter (Epic's `authored`) does not move when
        # a referral's status does, so without `_lastUpdated` every patient is searched in full (the
        # unchanged resources are skipped before mapping).
        incremental = patient in known and self.plan.mode == "last-updated"
        since = self.watermark_at if incremental else None
        return [*search_params(self.plan, self.endpoint, since), ("patient", patient)]

    async def pages(self) -> AsyncIterator[Page]:
        """Every patient's pages, numbered in the order they arrive."""
        rt = self.plan.resource_type
        known = await asyncio.to_thread(crawled_patients, self.engine, self.endpoint.name, rt)
        ids, total = await self.patients()
        queue: asyncio.Queue[Page | BaseException | None] = asyncio.Queue(self.endpoint.max_connections * 2)
        progress = sink()

        async def worker() -> None:
            for patient in ids:  # one shared iterator: each patient goes to one worker
                async for page in self.client.search(rt, self._params(patient, known)):
                    await queue.put(page)
                if patient not in known:
                    self.new.append(patient)
                self.done += 1
                progress.patients_done(self.endpoint.name, rt, self.done, total)

        async def run() -> None:
            try:
                # A TaskGroup: the first failure cancels the other searches.
                async with asyncio.TaskGroup() as group:
                    for _ in range(self.endpoint.max_connections):
                        group.create_task(worker())
            except asyncio.CancelledError:
                raise
            except BaseExceptionGroup as failed:  # handed to the reader, which raises it after the pages
                await queue.put(failed.exceptions[0])
            else:
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
        """After the stream succeeded: the new patients are crawled from now on from the watermark."""
        record_crawled(self.engine, self.endpoint.name, self.plan.resource_type, self.new)


__all__ = ["PatientCrawl", "crawled_patients", "group_members", "record_crawled"]
