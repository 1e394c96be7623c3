"""`connector listen`: the ASGI service (Starlette on uvicorn) that receives Subscription notifications.

Each endpoint with `subscriptions = true` has its own path, `/notify/<endpoint>`; the server proves itself
with the endpoint's `subscription_secret`, as `Authorization: Bearer <secret>` (the Subscription's
`channel.header`) or as a path segment (`/notify/<endpoint>/<secret>`), compared in constant time. A
notification is committed to the `notification` queue before the 200; the work happens after, in the
background worker. A wrong secret is a 401, a body over `max_body_bytes` a 413, a body that is not a
notification a 400 (each with an OperationOutcome, counted, logged without content).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connector.config import EndpointSettings, Settings
from connector.errors import ConnectorError, FhirError
from connector.fhir.client import FhirClient
from connector.subscriptions import manage, queue
from connector.subscriptions.notifications import Parsed, Refused, parse_notification
from connector.subscriptions.worker import Processor

log = logging.getLogger(__name__)
FHIR_JSON = "application/fhir+json"
#: Seconds the worker waits after an unexpected failure (the warehouse away) before it tries again.
RETRY_SECONDS = 5.0


def outcome(status: int, severity: str, code: str, text: str) -> Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": text}],
    }
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON)


def _bearer(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def _same(presented: str | None, secret: str) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode("utf-8"), secret.encode("utf-8"))


async def _body(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is larger than `limit` (read no further than that)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class Listener:
    """The receiving side and the worker, sharing the warehouse engine."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        subscribe: bool = True,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.subscribe = subscribe
        self.endpoints: dict[str, EndpointSettings] = {e.name: e for e in settings.subscribed_endpoints()}
        self.wake = asyncio.Event()
        self.ready = asyncio.Event()
        self.on_ready = on_ready
        #: Notifications of events this process finished (handshakes and heartbeats are not counted).
        self.processed = 0
        self.progress = asyncio.Condition()
        self.processors: dict[str, Processor] = {}

    # -- receiving --------------------------------------------------------------------------------------

    async def receive(self, request: Request) -> Response:
        name = request.path_params["endpoint"]
        segments = [s for s in str(request.path_params.get("rest", "")).split("/") if s]
        token: str | None = None
        path_resource: tuple[str, str] | None = None
        if request.method == "PUT" and len(segments) in (2, 3):
            token = segments[0] if len(segments) == 3 else None
            path_resource = (segments[-2], segments[-1])
        elif request.method == "POST" and len(segments) <= 1:
            token = segments[0] if segments else None
        else:
            return outcome(404, "error", "not-found", "not a notification path")
        endpoint = self.endpoints.get(name)
        if endpoint is None or endpoint.subscription_secret is None:
            await asyncio.to_thread(queue.refuse, self.engine, name, "no subscribed endpoint of that name")
            return outcome(404, "error", "not-found", "no subscribed endpoint of that name")
        secret = endpoint.subscription_secret.get_secret_value()
        if not _same(token or _bearer(request.headers.get("authorization")), secret):
            log.warning("%s: a notification with a wrong or missing secret was refused", name)
            await asyncio.to_thread(queue.refuse, self.engine, name, "a wrong or missing secret")
            return outcome(401, "error", "security", "a wrong or missing secret")
        body = await _body(request, self.settings.listen.max_body_bytes)
        if body is None:
            await asyncio.to_thread(queue.refuse, self.engine, name, "the body is over max_body_bytes")
            return outcome(413, "error", "too-long", "the body is too large")
        try:
            parsed: Parsed = parse_notification(body, path_resource)
        except Refused as exc:
            log.warning("%s: a notification was refused: %s", name, exc)
            await asyncio.to_thread(queue.refuse, self.engine, name, str(exc))
            return outcome(400, "error", "invalid", str(exc))
        await asyncio.to_thread(queue.enqueue, self.engine, name, parsed)
        self.wake.set()
        return outcome(200, "information", "informational", "received")

    async def health(self, request: Request) -> Response:
        """The listener's state; `?processed=N&timeout=S` answers once N event notifications are processed
        (or S seconds passed): a script (or a test) waits on the work instead of guessing a time."""
        wanted = request.query_params.get("processed")
        if wanted is not None and wanted.isdigit():
            timeout = float(request.query_params.get("timeout", "60") or 60)
            async with self.progress:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self.progress.wait_for(lambda: self.processed >= int(wanted)), min(timeout, 600)
                    )
        return JSONResponse(
            {
                "status": "ok",
                "endpoints": sorted(self.endpoints),
                "ready": self.ready.is_set(),
                "processed": self.processed,
            }
        )

    # -- working ----------------------------------------------------------------------------------------

    async def work(self) -> None:
        """Subscribe, catch up (a restart may have missed events), then process the queue as it fills."""
        async with contextlib.AsyncExitStack() as stack:
            for name, endpoint in self.endpoints.items():
                client = await stack.enter_async_context(FhirClient(endpoint))
                self.processors[name] = Processor(self.settings, endpoint, self.engine, client)
            for name, started in self.processors.items():
                await self._start(name, started)
            self.ready.set()
            if self.on_ready is not None:
                self.on_ready()
            while True:
                try:
                    busy = await self._drain()
                except Exception as exc:  # the worker outlives a database hiccup
                    # The rows stay pending: the next round takes them again (the warehouse briefly away,
                    # locked). Told by type only: an error's text may quote what it was writing.
                    log.error("listener worker: %s; retrying in %s s", type(exc).__name__, RETRY_SECONDS)
                    await asyncio.sleep(RETRY_SECONDS)
                    continue
                if busy:
                    continue
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout=self.settings.listen.check_seconds)
                except TimeoutError:
                    try:
                        await self.check()
                    except Exception as exc:  # a failed check waits for the next one
                        log.error("listener check: %s", type(exc).__name__)
                self.wake.clear()

    async def _drain(self) -> bool:
        """Process what is pending; whether there was anything."""
        rows = await asyncio.to_thread(queue.pending, self.engine)
        for row in rows:
            handler = self.processors.get(row["endpoint"])
            if handler is None:
                await asyncio.to_thread(queue.finish, self.engine, row["id"], "not a subscribed endpoint")
            else:
                await handler.process(row)
                if row["kind"] not in ("handshake", "heartbeat", "query-status"):
                    async with self.progress:
                        self.processed += 1
                        self.progress.notify_all()
        return bool(rows)

    async def _start(self, name: str, processor: Processor) -> None:
        for rtype in processor.endpoint.subscription_resources:
            try:
                if self.subscribe:
                    await manage.ensure(
                        processor.client, self.engine, processor.endpoint, self.settings.listen, rtype
                    )
                await processor.catch_up(rtype, "the listener started")
            except (ConnectorError, FhirError) as exc:
                log.error("%s/%s: %s", name, rtype, exc)

    async def check(self) -> None:
        """Reactivate a subscription found in `error`, catch up when `$status` counts more events than
        arrived, mark one whose heartbeats stopped unhealthy."""
        for row in await asyncio.to_thread(queue.states, self.engine):
            found = self.processors.get(row["endpoint"])
            if found is None or not row.get("server_id"):
                continue
            processor = found
            endpoint, rtype = processor.endpoint, row["resource_type"]
            try:
                current = await manage.read_subscription(processor.client, row["server_id"])
                status = (current or {}).get("status")
                if current is None or status in ("error", "off"):
                    await manage.ensure(processor.client, self.engine, endpoint, self.settings.listen, rtype)
                    await processor.catch_up(rtype, f"the subscription was {status or 'gone'}")
                    continue
                if row["style"] == "topic":
                    count = await manage.status_count(processor.client, row["server_id"])
                    if count is not None and count > (row.get("last_event_number") or 0):
                        await asyncio.to_thread(
                            queue.save_state,
                            self.engine,
                            endpoint.name,
                            rtype,
                            {"events_since_start": count, "last_event_number": count},
                        )
                        await processor.catch_up(
                            rtype,
                            f"$status counts {count} events, {row.get('last_event_number') or 0} arrived",
                        )
                why = manage.unhealthy_reason({**row, "status": status}, endpoint.heartbeat_seconds)
                await asyncio.to_thread(
                    queue.save_state,
                    self.engine,
                    endpoint.name,
                    rtype,
                    {"status": status, "healthy": why is None, "error": why},
                )
            except (ConnectorError, FhirError) as exc:
                log.warning("%s/%s: checking the subscription failed: %s", endpoint.name, rtype, exc)


def create_app(
    settings: Settings,
    engine: Engine,
    *,
    subscribe: bool = True,
    worker: bool = True,
    on_ready: Callable[[], None] | None = None,
) -> Starlette:
    """The listener's app; without `worker` it only receives (a benchmark of its answers). `on_ready` is
    called once the subscriptions are checked and the streams caught up."""
    listener = Listener(settings, engine, subscribe=subscribe, on_ready=on_ready)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[dict[str, Any]]:
        if not worker:
            yield {"listener": listener}
            return
        # The worker runs beside the server: a topic's handshake needs the listener answering already.
        task = asyncio.create_task(listener.work())
        try:
            yield {"listener": listener}
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    routes = [
        Route("/health", listener.health, methods=["GET"]),
        Route("/notify/{endpoint}", listener.receive, methods=["POST", "PUT"]),
        Route("/notify/{endpoint}/{rest:path}", listener.receive, methods=["POST", "PUT"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.listener = listener
    return app
