"""`connector push`: deliver the outbox to the FHIR server, each send conditional on a stable identifier.

- Task (acknowledgment): conditional create, `If-None-Exist: identifier=<system>|<value>`, so a retry after a
  crash or a timeout finds the Task instead of creating a second one. Servers that do not declare
  conditional create are searched by identifier first.
- Task update (a milestone of the referral's life, `pushback.lifecycle`): conditional update
  `PUT Task?identifier=...`, or search + PUT; never one that would move the Task backwards (skipped).
- Case summary (Communication or DocumentReference): conditional create on its identifier, like the Task;
  its text is stored masked in the outbox and shown masked by a dry run.
- Measure: conditional create on its canonical `url`; servers that cannot search Measure by url get an
  update-as-create on a deterministic id.
- MeasureReport: conditional update on its identifier; servers that cannot search MeasureReport by
  identifier get an update-as-create on a deterministic id.
A 4xx other than 408/429 fails the item at once with the OperationOutcome text; transient errors leave it
pending until `push_max_attempts`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from sqlalchemy.engine import Engine

from connector.config import EndpointSettings, Settings
from connector.errors import ConnectorError, FatalFhirError, FhirError, MappingError
from connector.fhir import capabilities as caps
from connector.fhir.client import FhirClient
from connector.pushback import build
from connector.pushback import summary as case_summary
from connector.pushback.resources import measure_id, report_id
from connector.warehouse import outbox
from connector.warehouse.outbox import CASE_SUMMARY, MEASURE, MEASURE_REPORT, TASK_CREATE, TASK_UPDATE, Item

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PushSummary:
    endpoint: str
    target: str | None
    sent: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    #: Dry runs: what would be sent, as (kind, item_key, resource).
    previews: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "target": self.target,
            "sent": self.sent,
            "failed": self.failed,
            "waiting": self.waiting,
            "skipped": self.skipped,
            "would_send": [{"kind": k, "item": key, "resource": r} for k, key, r in self.previews],
            "errors": self.errors,
        }


@dataclass(frozen=True, slots=True)
class Sent:
    server_id: str | None
    server_version: str | None


def _bump(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


def _resource_type_support(cap: dict[str, Any], rtype: str) -> dict[str, Any]:
    for rest in cap.get("rest") or []:
        for resource in rest.get("resource") or []:
            if resource.get("type") == rtype:
                found: dict[str, Any] = resource
                return found
    return {}


class Server:
    """What the target server can do, read from its CapabilityStatement once per push."""

    def __init__(self, client: FhirClient, capability: dict[str, Any]) -> None:
        self.client = client
        self.capability = capability

    def conditional_create(self, rtype: str) -> bool:
        return bool(_resource_type_support(self.capability, rtype).get("conditionalCreate"))

    def conditional_update(self, rtype: str) -> bool:
        support = _resource_type_support(self.capability, rtype)
        return bool(support.get("conditionalUpdate")) and "identifier" in caps.search_params(
            self.capability, rtype
        )

    def searchable_by(self, rtype: str, param: str) -> bool:
        return param in caps.search_params(self.capability, rtype)

    async def find(self, rtype: str, param: str, value: str) -> dict[str, Any] | None:
        response = await self.client.request("GET", rtype, params={param: value, "_count": "2"})
        bundle = orjson.loads(response.content)
        matches = [
            e["resource"]
            for e in bundle.get("entry") or []
            if isinstance(e.get("resource"), dict)
            and e["resource"].get("resourceType") == rtype
            and (e.get("search") or {}).get("mode", "match") == "match"
        ]
        if len(matches) > 1:
            raise FatalFhirError(
                f"{rtype}?{param}: {len(matches)} resources share one identifier; fix on the server"
            )
        return matches[0] if matches else None


def _identity(response: httpx.Response, fallback: dict[str, Any] | None = None) -> Sent:
    body: dict[str, Any] = {}
    if response.content:
        try:
            parsed = orjson.loads(response.content)
            body = parsed if isinstance(parsed, dict) else {}
        except orjson.JSONDecodeError:
            body = {}
    server_id = body.get("id") if body.get("resourceType") else None
    version = (body.get("meta") or {}).get("versionId")
    location = response.headers.get("Location") or response.headers.get("Content-Location")
    if location and "/_history/" in location:
        head, _, version_part = location.partition("/_history/")
        server_id = server_id or head.rstrip("/").rsplit("/", 1)[-1]
        version = version or version_part.strip("/") or None
    elif location:
        server_id = server_id or location.rstrip("/").rsplit("/", 1)[-1]
    etag = response.headers.get("ETag")
    if not version and etag:
        version = etag.removeprefix("W/").strip('"') or None
    if fallback is not None:
        server_id = server_id or fallback.get("id")
        version = version or (fallback.get("meta") or {}).get("versionId")
    return Sent(server_id, version)


def _json_headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = {"Content-Type": "application/fhir+json", "Prefer": "return=representation"}
    return headers | (extra or {})


async def create_once(
    server: Server, resource: dict[str, Any], search_param: str, token: str, *, fallback_id: str | None = None
) -> Sent:
    """Create `resource` unless one with the same identifier (or url) exists: exactly-once in effect.

    Both the conditional create and the search need `search_param` to be a declared search parameter: a
    server that ignores an unknown parameter (sekmet does) would match any resource of the type. Without it
    the resource is written with `PUT <type>/<fallback_id>` (update as create), or not at all.
    """
    rtype = resource["resourceType"]
    if server.searchable_by(rtype, search_param):
        if server.conditional_create(rtype):
            headers = _json_headers({"If-None-Exist": f"{search_param}={token}"})
            return _identity(await server.client.request("POST", rtype, json=resource, headers=headers))
        existing = await server.find(rtype, search_param, token)
        if existing is not None:
            return Sent(existing.get("id"), (existing.get("meta") or {}).get("versionId"))
        response = await server.client.request("POST", rtype, json=resource, headers=_json_headers())
        return _identity(response)
    if fallback_id is None:
        raise FatalFhirError(f"{rtype}: the server cannot search by {search_param}, so it cannot create once")
    response = await server.client.request(
        "PUT", f"{rtype}/{fallback_id}", json={**resource, "id": fallback_id}, headers=_json_headers()
    )
    return _identity(response, {"id": fallback_id})


async def update_by_identifier(
    server: Server, resource: dict[str, Any], token: str, *, known_id: str | None, fallback_id: str | None
) -> Sent:
    """Update the resource carrying this identifier, creating it when missing; never a second copy."""
    rtype = resource["resourceType"]
    if server.conditional_update(rtype):
        response = await server.client.request(
            "PUT", rtype, json=resource, headers=_json_headers(), params={"identifier": token}
        )
        return _identity(response)
    target_id = known_id
    if target_id is None and server.searchable_by(rtype, "identifier"):
        existing = await server.find(rtype, "identifier", token)
        target_id = existing.get("id") if existing else None
    target_id = target_id or fallback_id
    if target_id is None:
        raise FatalFhirError(f"{rtype}: the server supports neither conditional update nor identifier search")
    response = await server.client.request(
        "PUT", f"{rtype}/{target_id}", json={**resource, "id": target_id}, headers=_json_headers()
    )
    return _identity(response, {"id": target_id})


async def push_endpoint(
    settings: Settings,
    endpoint: EndpointSettings,
    engine: Engine,
    *,
    dry_run: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
    now: datetime | None = None,
    show_phi: bool = False,
) -> PushSummary:
    """Deliver (or, dry, build and show) the endpoint's pending outbox items in delivery order. A dry run
    shows a case summary's structure with its text masked, unless `show_phi`."""
    moment = now or datetime.now(UTC)
    target = settings.push_target(endpoint)
    summary = PushSummary(endpoint.name, target.name if target else None)
    # A referral's milestones go out in the order of its life, whatever order they were queued in.
    items = sorted(outbox.pending(engine, endpoint.name), key=_delivery_order)
    if not items:
        return summary
    reference_base = endpoint.base_url if target is not None and target.name != endpoint.name else None
    if dry_run or target is None:
        for item in items:
            resource = build.resource_for(engine, endpoint, item, now=moment, reference_base=reference_base)
            if resource is not None:
                shown = resource if show_phi or item.kind != CASE_SUMMARY else case_summary.masked(resource)
                summary.previews.append((item.kind, item.item_key, shown))
            _bump(summary.waiting, item.kind)
        return summary
    async with FhirClient(target, transport=transport) as client:
        server = Server(client, await client.capabilities())
        for item in items:
            await _deliver(server, engine, endpoint, item, summary, moment, reference_base)
    return summary


async def _deliver(
    server: Server,
    engine: Engine,
    endpoint: EndpointSettings,
    item: Item,
    summary: PushSummary,
    now: datetime,
    reference_base: str | None,
) -> None:
    try:
        stale = build.superseded(engine, endpoint.name, item)
        if stale is not None:
            outbox.mark_skipped(engine, item, stale)
            _bump(summary.skipped, item.kind)
            return
        resource = build.resource_for(engine, endpoint, item, now=now, reference_base=reference_base)
        if resource is None:
            # A Task update or case summary waits for its Task.
            referral = f"ServiceRequest/{build.referral_id_of(item)}"
            if outbox.item_status(engine, endpoint.name, TASK_CREATE, referral) in ("pending", "sent"):
                # A Task update waits for its Task; nothing is sent and no attempt is counted.
                _bump(summary.waiting, item.kind)
            else:
                # The referral was never acknowledged (not active, older than acknowledge_since, or its
                # Task failed): there is no Task to move, and there never will be.
                outbox.mark_skipped(engine, item, "no acknowledgment Task for this referral")
                _bump(summary.skipped, item.kind)
            return
        system = endpoint.identifier_system
        ack: dict[str, Any] | None = None
        if item.kind in (TASK_CREATE, TASK_UPDATE):
            token = f"{system}|{resource['identifier'][0]['value']}"
            if item.kind == TASK_CREATE:
                sent = await create_once(server, resource, "identifier", token)
            else:
                known = outbox_task_id(engine, endpoint.name, item)
                sent = await update_by_identifier(server, resource, token, known_id=known, fallback_id=None)
            ack = build.acknowledgment_row(
                engine, endpoint, item, resource, sent.server_id, sent.server_version, now
            )
        elif item.kind == CASE_SUMMARY:
            # Conditional create on the summary's identifier: a retry finds the first one.
            token = f"{system}|{resource['identifier'][0]['value']}"
            sent = await create_once(server, resource, "identifier", token)
        elif item.kind == MEASURE:
            sent = await create_once(
                server, resource, "url", resource["url"], fallback_id=measure_id(resource["url"])
            )
        elif item.kind == MEASURE_REPORT:
            token = f"{system}|{resource['identifier'][0]['value']}"
            fallback = report_id(endpoint.name, item.item_key)
            sent = await update_by_identifier(
                server, resource, token, known_id=item.server_id, fallback_id=fallback
            )
        else:
            raise FatalFhirError(f"unknown outbox kind {item.kind!r}")
    except FhirError as exc:
        fatal = isinstance(exc, FatalFhirError)
        status = outbox.mark_attempt(
            engine, item, str(exc), max_attempts=endpoint.push_max_attempts, fatal=fatal
        )
        _bump(summary.failed if status == "failed" else summary.waiting, item.kind)
        summary.errors.append(f"{item.kind} {item.item_key}: {exc}")
        log.warning(
            "push %s %s: %s", endpoint.name, item.kind, "failed" if status == "failed" else "will retry"
        )
        return
    except (ConnectorError, MappingError) as exc:
        outbox.mark_attempt(engine, item, str(exc), max_attempts=endpoint.push_max_attempts, fatal=True)
        _bump(summary.failed, item.kind)
        summary.errors.append(f"{item.kind} {item.item_key}: {exc}")
        return
    outbox.mark_sent(
        engine,
        item,
        # The summary's words went to the EMR; the warehouse keeps its structure only.
        payload=case_summary.masked(resource) if item.kind == CASE_SUMMARY else resource,
        server_id=sent.server_id,
        server_version=sent.server_version,
        acknowledgment=ack,
    )
    _bump(summary.sent, item.kind)


def _delivery_order(item: Item) -> tuple[int, int]:
    kind = outbox.KIND_ORDER.index(item.kind) if item.kind in outbox.KIND_ORDER else len(outbox.KIND_ORDER)
    milestone = build.milestone_of(item) if item.kind == TASK_UPDATE else None
    return kind, milestone.rank if milestone else 0


def outbox_task_id(engine: Engine, endpoint: str, item: Item) -> str | None:
    """The server id of the Task an update refers to, from its acknowledgment."""
    referral_id = build.referral_id_of(item)
    ack = outbox.acknowledgment(engine, endpoint, referral_id)
    return ack.get("task_id") if ack else None
