"""`connector subscribe`: the Subscription of each subscribed type, created or updated on the server, waited
for until `active`, reactivated when it went to `error`, and checked for missed events.

Topic-based (R4 Subscriptions Backport) when the server lists a topic for the type (or the config names one),
else criteria-based (R4). Servers write `requested` first and `active` / `error` after (sekmet-fhir does
so in a second version): the Subscription is re-read until it settles.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy.engine import Engine

from connector.config import EndpointSettings, ListenSettings
from connector.errors import ConfigError, FatalFhirError, FhirError
from connector.fhir.client import FhirClient
from connector.subscriptions import queue

log = logging.getLogger(__name__)

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
TOPIC_CANONICAL = f"{BACKPORT}/capabilitystatement-subscriptiontopic-canonical"
#: How long a Subscription may stay `requested` before it counts as not activated.
SETTLE_SECONDS = 15.0


@dataclass(frozen=True, slots=True)
class Subscribed:
    resource_type: str
    server_id: str | None
    style: str
    criteria: str
    status: str | None
    error: str | None


def topics(capability: dict[str, Any]) -> list[str]:
    """The SubscriptionTopic canonicals a CapabilityStatement lists (R4 Backport)."""
    found: list[str] = []
    for rest in capability.get("rest") or ():
        for resource in rest.get("resource") or ():
            if resource.get("type") != "Subscription":
                continue
            for ext in resource.get("extension") or ():
                if ext.get("url") == TOPIC_CANONICAL and isinstance(ext.get("valueCanonical"), str):
                    found.append(ext["valueCanonical"])
    return found


def offers_subscriptions(capability: dict[str, Any]) -> bool:
    return any(
        r.get("type") == "Subscription"
        for rest in capability.get("rest") or ()
        for r in rest.get("resource") or ()
    )


def topic_for(endpoint: EndpointSettings, resource_type: str, capability: dict[str, Any]) -> str | None:
    """The configured topic, else a listed one named after the type (`…/servicerequest-new`)."""
    if resource_type in endpoint.subscription_topics:
        return endpoint.subscription_topics[resource_type]
    wanted = resource_type.lower()
    for canonical in topics(capability):
        if canonical.rstrip("/").rsplit("/", 1)[-1].lower().startswith(wanted):
            return canonical
    return None


def criteria_for(resource_type: str) -> str:
    # New and changed referrals that can be acknowledged; other types: every change.
    return "ServiceRequest?status=active" if resource_type == "ServiceRequest" else f"{resource_type}?"


def notify_url(listen: ListenSettings, endpoint: EndpointSettings) -> str:
    if listen.public_url is None:
        raise ConfigError("[listen] public_url is needed: the URL the EMR reaches the listener at")
    return f"{listen.public_url}/notify/{endpoint.name}"


def subscription_resource(
    endpoint: EndpointSettings, listen: ListenSettings, resource_type: str, topic: str | None
) -> dict[str, Any]:
    """The Subscription to ask for (status `requested`)."""
    assert endpoint.subscription_secret is not None
    channel: dict[str, Any] = {
        "type": "rest-hook",
        "endpoint": notify_url(listen, endpoint),
        "payload": "application/fhir+json",
        "header": [f"Authorization: Bearer {endpoint.subscription_secret.get_secret_value()}"],
    }
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": f"therapy-fhir-connector {endpoint.name}: {resource_type}",
        "channel": channel,
    }
    if topic is None:
        resource["criteria"] = criteria_for(resource_type)
        return resource
    resource["meta"] = {"profile": [f"{BACKPORT}/backport-subscription"]}
    resource["criteria"] = topic
    channel["_payload"] = {
        "extension": [
            {"url": f"{BACKPORT}/backport-payload-content", "valueCode": endpoint.subscription_payload}
        ]
    }
    channel["extension"] = [
        {"url": f"{BACKPORT}/backport-heartbeat-period", "valueUnsignedInt": endpoint.heartbeat_seconds}
    ]
    return resource


async def read_subscription(client: FhirClient, server_id: str) -> dict[str, Any] | None:
    try:
        response = await client.request("GET", f"Subscription/{server_id}")
    except FatalFhirError as exc:
        if "404" in str(exc) or "410" in str(exc):
            return None
        raise
    found: dict[str, Any] = orjson.loads(response.content)
    return found


async def _settle(client: FhirClient, server_id: str) -> dict[str, Any] | None:
    """Re-read until the server moved it past `requested` (or SETTLE_SECONDS passed)."""
    deadline = asyncio.get_running_loop().time() + SETTLE_SECONDS
    delay = 0.05
    while True:
        found = await read_subscription(client, server_id)
        if found is None or found.get("status") != "requested":
            return found
        if asyncio.get_running_loop().time() >= deadline:
            return found
        await asyncio.sleep(delay)  # waiting on the server's own state change, not on our timing
        delay = min(delay * 2, 1.0)


async def ensure(
    client: FhirClient, engine: Engine, endpoint: EndpointSettings, listen: ListenSettings, resource_type: str
) -> Subscribed:
    """The type's Subscription exists on the server, as configured, and is active if the server allows it."""
    capability = await client.capabilities()
    topic = topic_for(endpoint, resource_type, capability)
    wanted = subscription_resource(endpoint, listen, resource_type, topic)
    known = queue.state(engine, endpoint.name, resource_type)
    current = (
        await read_subscription(client, known["server_id"]) if known and known.get("server_id") else None
    )
    same = current is not None and (
        current.get("criteria") == wanted["criteria"]
        and (current.get("channel") or {}).get("endpoint") == wanted["channel"]["endpoint"]
    )
    if current is None:
        response = await client.request("POST", "Subscription", json=wanted)
        created = orjson.loads(response.content)
        server_id = created.get("id")
    else:
        server_id = current["id"]
        if not same or current.get("status") in ("error", "off"):
            # A Subscription that went to `error` stays there: asking for `requested` again reactivates it.
            await client.request("PUT", f"Subscription/{server_id}", json={**wanted, "id": server_id})
    if not server_id:
        raise FhirError("the server did not say the id of the Subscription it created")
    settled = await _settle(client, server_id) or {}
    status, error = settled.get("status"), settled.get("error")
    style = "topic" if topic else "criteria"
    queue.save_state(
        engine,
        endpoint.name,
        resource_type,
        {
            "server_id": server_id,
            "style": style,
            "criteria": wanted["criteria"],
            "status": status,
            "error": str(error)[:500] if error else None,
            "healthy": status == "active",
        },
    )
    log.info("%s/%s: Subscription %s (%s) is %s", endpoint.name, resource_type, server_id, style, status)
    return Subscribed(
        resource_type, server_id, style, wanted["criteria"], status, str(error) if error else None
    )


async def status_count(client: FhirClient, server_id: str) -> int | None:
    """`events-since-subscription-start` of the Backport `$status` operation, when the server answers it."""
    try:
        response = await client.request("GET", f"Subscription/{server_id}/$status")
    except FhirError:
        return None
    body = orjson.loads(response.content)
    resources = (
        [e.get("resource") for e in body.get("entry") or ()]
        if body.get("resourceType") == "Bundle"
        else [body]
    )
    for resource in resources:
        for parameter in (resource or {}).get("parameter") or ():
            if parameter.get("name") == "events-since-subscription-start":
                try:
                    return int(parameter.get("valueString") or parameter.get("valueInteger64") or 0)
                except (TypeError, ValueError):
                    return None
    return None


def unhealthy_reason(row: dict[str, Any], heartbeat_seconds: int, now: datetime | None = None) -> str | None:
    """Why a subscription is not healthy (None when it is): not active, or three heartbeats missed."""
    moment = now or datetime.now(UTC)
    if row.get("status") != "active":
        return f"the server says it is {row.get('status') or 'unknown'}"
    if row.get("style") == "topic":
        last = row.get("last_heartbeat_at") or row.get("last_notified_at")
        if last is not None and moment - last > timedelta(seconds=3 * heartbeat_seconds):
            silent = int((moment - last).total_seconds())
            return f"no heartbeat for {silent} s (3 periods are {3 * heartbeat_seconds} s)"
    return None
