"""After the listener answered: process queued notifications through the sync's own write path, catch up
by an incremental search when something may have been missed, and acknowledge the referrals at once.

A notification's resources go through `map_resources` → `page_write` → `write_page`, like a page of a
sync: the same validation and dead letters, the same upsert-by-version (a notification and a poll that bring
the same resource write it once), the same outbox intents. They never move a watermark: only a search does.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from connector.config import EndpointSettings, Settings
from connector.errors import ConnectorError, FhirError, MappingError
from connector.fhir.client import FhirClient
from connector.pushback.run import push_round
from connector.streams import plan_stream, stream_for
from connector.subscriptions import queue
from connector.sync.pipeline import StreamResult, map_resources, page_write, run_stream
from connector.sync.windows import window_params
from connector.warehouse import state
from connector.warehouse.writer import write_page

log = logging.getLogger(__name__)


class Processor:
    """Processes one endpoint's notifications with one open FHIR client."""

    def __init__(self, settings: Settings, endpoint: EndpointSettings, engine: Engine, client: FhirClient):
        self.settings = settings
        self.endpoint = endpoint
        self.engine = engine
        self.client = client
        self.lock = asyncio.Lock()

    async def _fetch(self, refs: list[str]) -> list[dict[str, Any]]:
        """The focus resources of an id-only notification; a resource gone since (404/410) is skipped."""
        out: list[dict[str, Any]] = []
        for ref in refs:
            try:
                response = await self.client.request("GET", ref)
            except FhirError as exc:
                if "404" in str(exc) or "410" in str(exc):
                    log.info("%s: %s is gone", self.endpoint.name, ref.split("/", 1)[0])
                    continue
                raise
            body = orjson.loads(response.content)
            if isinstance(body, dict) and body.get("resourceType"):
                out.append(body)
        return out

    def _write(self, resources: list[dict[str, Any]], synced_at: datetime) -> int:
        by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for resource in resources:
            by_type[str(resource.get("resourceType"))].append(resource)
        loaded = 0
        for rtype, group in by_type.items():
            if rtype not in self.endpoint.resources:
                log.info(
                    "%s: a notified %s is not a configured stream; not written", self.endpoint.name, rtype
                )
                continue
            mapped = map_resources(
                self.endpoint.name, rtype, group, synced_at, options=self.endpoint.mapping_options()
            )
            written = write_page(self.engine, page_write(self.endpoint, rtype, "notification", mapped, None))
            loaded += written.loaded
        return loaded

    async def catch_up(self, resource_type: str, reason: str, run_id: str = "listen") -> StreamResult:
        """An incremental search of the stream from its watermark, as a sync does it, then push-back."""
        log.info("%s/%s: catching up (%s)", self.endpoint.name, resource_type, reason)
        plan = plan_stream(self.endpoint, stream_for(resource_type), await self.client.capabilities())
        _, watermark_at = state.get_watermark(self.engine, self.endpoint.name, resource_type)
        pages = self.client.search(resource_type, window_params(plan, self.endpoint, None, watermark_at))
        result = await run_stream(
            engine=self.engine,
            endpoint=self.endpoint,
            plan=plan,
            pages=pages,
            run_id=run_id,
            synced_at=datetime.now(UTC),
            batch_size=self.settings.warehouse.batch_size,
            skip_unchanged=True,
        )
        await asyncio.to_thread(
            queue.save_state,
            self.engine,
            self.endpoint.name,
            resource_type,
            {"caught_up_at": datetime.now(UTC), "catch_up_reason": reason[:200]},
        )
        await self.push()
        return result

    async def push(self) -> None:
        if not self.endpoint.pushes:
            return
        summary = await push_round(self.settings, self.endpoint, self.engine)
        if summary.errors:
            log.warning("%s: push after a notification: %d error(s)", self.endpoint.name, len(summary.errors))
        await asyncio.to_thread(queue.record_acknowledged, self.engine, self.endpoint.name)

    async def process(self, row: dict[str, Any]) -> None:
        """One queued notification: written, gaps caught up, referrals acknowledged; never raises."""
        async with self.lock:
            try:
                await self._process(row)
            except (ConnectorError, MappingError, FhirError) as exc:
                log.warning("%s: notification %d failed: %s", self.endpoint.name, row["id"], exc)
                await asyncio.to_thread(queue.finish, self.engine, row["id"], str(exc))
                return
            except DBAPIError:
                raise  # the warehouse is away: the notification stays pending for the next round
            except Exception as exc:  # one notification's surprise must not hold up the queue behind it
                log.error("%s: notification %d failed: %s", self.endpoint.name, row["id"], type(exc).__name__)
                await asyncio.to_thread(
                    queue.finish, self.engine, row["id"], f"unexpected {type(exc).__name__}"
                )
                return
            await asyncio.to_thread(queue.finish, self.engine, row["id"])

    async def _process(self, row: dict[str, Any]) -> None:
        kind = row["kind"]
        subscribed = self._subscribed_state(row)
        now = datetime.now(UTC)
        if kind in ("handshake", "heartbeat", "query-status"):
            if subscribed is not None:
                values: dict[str, Any] = {"last_heartbeat_at": row["received_at"]}
                values |= (
                    {"events_since_start": row["events_since_start"]} if row["events_since_start"] else {}
                )
                await asyncio.to_thread(
                    queue.save_state, self.engine, self.endpoint.name, subscribed["resource_type"], values
                )
            return
        rtype = row["resource_type"] or (subscribed or {}).get("resource_type")
        payload = row.get("payload") or {}
        resources = list(payload.get("resources") or ())
        refs = [r for r in row["focus_refs"] if r.split("/", 1)[0] in self.endpoint.resources]
        if not resources and refs:
            resources = await self._fetch(refs)
        referrals = [
            str(r["id"]) for r in resources if r.get("resourceType") == "ServiceRequest" and r.get("id")
        ]
        await asyncio.to_thread(
            queue.notified, self.engine, self.endpoint.name, referrals, row["received_at"]
        )
        if resources:
            await asyncio.to_thread(self._write, resources, now)
        gap = self._gap(row, subscribed)
        if kind == "empty" or (not resources and not refs):
            gap = gap or "a notification without its resources"
        if subscribed is not None:
            numbers = [
                n for n in (row["event_number"], (subscribed or {}).get("last_event_number")) if n is not None
            ]
            values = {"last_notified_at": row["received_at"]}
            if numbers:
                values["last_event_number"] = max(numbers)
            if row["events_since_start"] is not None:
                values["events_since_start"] = row["events_since_start"]
            await asyncio.to_thread(
                queue.save_state, self.engine, self.endpoint.name, subscribed["resource_type"], values
            )
        if gap:
            # An empty criteria-style POST does not say its type: every subscribed stream is searched.
            for caught in [rtype] if rtype else self.endpoint.subscription_resources:
                await self.catch_up(caught, gap)
        else:
            await self.push()

    def _subscribed_state(self, row: dict[str, Any]) -> dict[str, Any] | None:
        ref = row.get("subscription_ref")
        if ref and ref.startswith("Subscription/"):
            found = queue.state_by_server_id(
                self.engine, self.endpoint.name, ref.removeprefix("Subscription/")
            )
            if found is not None:
                return found
        if row.get("resource_type"):
            return queue.state(self.engine, self.endpoint.name, row["resource_type"])
        return None

    @staticmethod
    def _gap(row: dict[str, Any], subscribed: dict[str, Any] | None) -> str | None:
        """Why this notification says events were missed: a jump in the event numbers."""
        number, last = row.get("event_number"), (subscribed or {}).get("last_event_number")
        batch = len((row.get("payload") or {}).get("event_numbers") or ()) or 1
        if number is not None and last is not None and number - batch > last:
            return f"a gap in the event numbers ({last} then {number})"
        if number is not None and last is None and number - batch > 0 and (subscribed or {}).get("server_id"):
            return f"events before number {number} were not received"
        return None
