"""What a Subscription notification says (pure): R4 Backport notification Bundles and R4 criteria-based
rest-hook deliveries, as servers send them (see docs/subscriptions.md).

- Backport (topic-based): a `history` Bundle whose first entry is a Parameters (`SubscriptionStatus`) with
  `type` handshake | heartbeat | event-notification | query-status, the subscription, its
  `events-since-subscription-start` and one `notification-event` per event (`event-number`, `focus`); with
  `full-resource` the focus resources follow as entries.
- Criteria-based with a payload: the resource itself, PUT to `<endpoint>/<Type>/<id>` (or POSTed).
- Criteria-based without a payload: an empty POST.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from mappings.elements import reference

NOTIFICATION_TYPES = frozenset({"handshake", "heartbeat", "event-notification", "query-status"})


class Refused(ValueError):
    """A body the listener does not take (answered with an OperationOutcome, logged without content)."""


@dataclass(frozen=True, slots=True)
class Parsed:
    #: event-notification | handshake | heartbeat | query-status | resource | empty
    kind: str
    resource_type: str | None = None
    subscription_ref: str | None = None
    status: str | None = None
    events_since_start: int | None = None
    event_numbers: tuple[int, ...] = ()
    focus_refs: tuple[str, ...] = ()
    resources: tuple[dict[str, Any], ...] = ()


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _value(parameter: dict[str, Any]) -> Any:
    for key, value in parameter.items():
        if key.startswith("value"):
            return value
    return None


def _status_parameters(parameters: dict[str, Any]) -> Parsed:
    kind = "event-notification"
    subscription = status = None
    since = None
    numbers: list[int] = []
    focus: list[str] = []
    for parameter in parameters.get("parameter") or ():
        if not isinstance(parameter, dict):
            continue
        name, value = parameter.get("name"), _value(parameter)
        if name == "type" and isinstance(value, str):
            kind = value
        elif name == "subscription" and isinstance(value, dict):
            subscription = reference(value)
        elif name == "status" and isinstance(value, str):
            status = value
        elif name == "events-since-subscription-start":
            since = _int(value)
        elif name == "notification-event":
            for part in parameter.get("part") or ():
                if not isinstance(part, dict):
                    continue
                if part.get("name") == "event-number" and (number := _int(_value(part))) is not None:
                    numbers.append(number)
                elif part.get("name") == "focus" and isinstance(_value(part), dict):
                    ref = reference(_value(part))
                    if ref and "/" in ref and not ref.startswith(("#", "urn:")):
                        focus.append(ref)
    if kind not in NOTIFICATION_TYPES:
        raise Refused(f"notification type {kind!r} is not one of {', '.join(sorted(NOTIFICATION_TYPES))}")
    return Parsed(kind, None, subscription, status, since, tuple(numbers), tuple(dict.fromkeys(focus)))


def parse_notification(body: bytes, path_resource: tuple[str, str] | None = None) -> Parsed:
    """The notification in `body`; `path_resource` is (type, id) of a criteria-style PUT's path."""
    if not body.strip():
        if path_resource is not None:
            raise Refused("a PUT of a resource needs the resource")
        return Parsed("empty")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Refused("the body is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise Refused("the body is not a FHIR resource")
    rtype = data["resourceType"]
    if path_resource is not None:
        if (rtype, data.get("id")) != path_resource:
            raise Refused("the resource does not match the path it was PUT to")
        return Parsed("resource", rtype, focus_refs=(f"{rtype}/{data['id']}",), resources=(data,))
    if rtype != "Bundle":
        if not isinstance(data.get("id"), str):
            raise Refused(f"a {rtype} without an id")
        return Parsed("resource", rtype, focus_refs=(f"{rtype}/{data['id']}",), resources=(data,))
    if data.get("type") != "history":
        raise Refused(f"a notification Bundle is of type history, not {data.get('type')!r}")
    entries = [e for e in data.get("entry") or () if isinstance(e, dict)]
    first = entries[0].get("resource") if entries else None
    if not isinstance(first, dict) or first.get("resourceType") != "Parameters":
        raise Refused("the notification Bundle does not start with its SubscriptionStatus Parameters")
    parsed = _status_parameters(first)
    resources = tuple(
        e["resource"]
        for e in entries[1:]
        if isinstance(e.get("resource"), dict) and isinstance(e["resource"].get("id"), str)
    )
    focus = parsed.focus_refs or tuple(f"{r['resourceType']}/{r['id']}" for r in resources)
    types = {ref.split("/", 1)[0] for ref in focus}
    return Parsed(
        parsed.kind,
        types.pop() if len(types) == 1 else None,
        parsed.subscription_ref,
        parsed.status,
        parsed.events_since_start,
        parsed.event_numbers,
        focus,
        resources,
    )
