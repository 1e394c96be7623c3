"""Push-based intake (issue 27): notifications parsed as servers send them, the listener's answers (secret,
size, shape), its durable queue, and the worker that writes what was notified and acknowledges it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import respx
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.config import parse_settings
from connector.fhir.client import FhirClient
from connector.subscriptions import manage, queue
from connector.subscriptions.app import create_app
from connector.subscriptions.notifications import Refused, parse_notification
from connector.subscriptions.worker import Processor
from connector.warehouse.models.subscriptions import Notification
from tests.fhir_capability import capability_statement

BASE = "https://emr.test/fhir"
SECRET = "s3cret-hook-token"
SUB = f"{BASE}/Subscription/sub-1"
TOPIC = "http://sekmet.dev/fhir/SubscriptionTopic/servicerequest-new"


def status_entry(
    kind: str, numbers: tuple[int, ...] = (), focus: tuple[str, ...] = (), since: int = 0
) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": SUB}},
        {"name": "topic", "valueCanonical": TOPIC},
        {"name": "status", "valueCode": "active"},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(since)},
    ]
    for number, ref in zip(numbers, focus or [None] * len(numbers), strict=True):
        parts: list[dict[str, Any]] = [{"name": "event-number", "valueString": str(number)}]
        if ref:
            parts.append({"name": "focus", "valueReference": {"reference": f"{BASE}/{ref}"}})
        parameters.append({"name": "notification-event", "part": parts})
    return {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Parameters", "parameter": parameters}}


def bundle(*entries: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "resourceType": "Bundle",
            "type": "history",
            "timestamp": "2026-12-08T01:00:00Z",
            "entry": list(entries),
        }
    )


def referral(rid: str) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": rid,
        "meta": {"versionId": "1", "lastUpdated": "2026-12-08T00:59:00.000Z"},
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "authoredOn": "2026-12-08T00:58:00Z",
        "requester": {"reference": "Practitioner/dr1"},
    }


# -- parsing -------------------------------------------------------------------------------------------


def test_backport_id_only_handshake_and_full_resource_as_sekmet_sends_them() -> None:
    parsed = parse_notification(
        bundle(status_entry("event-notification", (7,), ("ServiceRequest/sr1",), since=7))
    )
    assert (parsed.kind, parsed.subscription_ref, parsed.event_numbers, parsed.focus_refs) == (
        "event-notification",
        "Subscription/sub-1",
        (7,),
        ("ServiceRequest/sr1",),
    )
    assert (parsed.resource_type, parsed.events_since_start, parsed.resources) == ("ServiceRequest", 7, ())
    assert parse_notification(bundle(status_entry("handshake"))).kind == "handshake"
    full = parse_notification(
        bundle(
            status_entry("event-notification", (8,), ("ServiceRequest/sr2",)), {"resource": referral("sr2")}
        )
    )
    assert [r["id"] for r in full.resources] == ["sr2"]
    # Criteria style: the resource PUT to <endpoint>/ServiceRequest/<id>, or an empty POST.
    put = parse_notification(orjson.dumps(referral("sr3")), ("ServiceRequest", "sr3"))
    assert (put.kind, put.focus_refs) == ("resource", ("ServiceRequest/sr3",))
    assert parse_notification(b"").kind == "empty"


@pytest.mark.parametrize(
    ("body", "path", "reason"),
    [
        (b"<xml/>", None, "not JSON"),
        (b"[1, 2]", None, "not a FHIR resource"),
        (orjson.dumps({"resourceType": "Bundle", "type": "searchset"}), None, "history"),
        (
            orjson.dumps({"resourceType": "Bundle", "type": "history", "entry": []}),
            None,
            "SubscriptionStatus",
        ),
        (orjson.dumps(referral("sr3")), ("ServiceRequest", "other"), "does not match the path"),
        (bundle(status_entry("surprise")), None, "notification type"),
    ],
)
def test_what_is_not_a_notification_is_refused_with_the_reason(
    body: bytes, path: tuple[str, str] | None, reason: str
) -> None:
    with pytest.raises(Refused, match=reason):
        parse_notification(body, path)


# -- the listener's answers ------------------------------------------------------------------------------


def settings(url: str, **endpoint: Any) -> Any:
    return parse_settings(
        {
            "warehouse": {"url": url},
            "listen": {"public_url": "https://hooks.practice.test", "max_body_bytes": 4096},
            "endpoints": [
                {
                    "name": "emr",
                    "base_url": BASE,
                    "subscriptions": True,
                    "subscription_secret": SECRET,
                    "push_acknowledgments": True,
                    "owner": "Organization/practice",
                    "case_summary": "off",
                    "resources": ["ServiceRequest"],
                    "retry": {"max_attempts": 1, "initial_backoff_seconds": 0, "max_backoff_seconds": 0},
                }
                | endpoint
            ],
        }
    )


def rows(engine: Engine) -> list[dict[str, Any]]:
    table = Notification.__table__
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(table).order_by(table.c.id)).mappings()]


class Client:
    """Requests to the app in-process (no lifespan: the worker does not start)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://listener.test") as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(go())

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self._send("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> httpx.Response:
        return self._send("PUT", path, **kwargs)


def test_the_listener_commits_before_it_answers_and_refuses_strangers(
    engine: Engine, warehouse_url: str
) -> None:
    client = Client(create_app(settings(warehouse_url), engine))
    body = bundle(status_entry("event-notification", (1,), ("ServiceRequest/sr1",)))
    ok = client.post("/notify/emr", content=body, headers={"Authorization": f"Bearer {SECRET}"})
    assert ok.status_code == 200
    assert ok.json()["resourceType"] == "OperationOutcome"
    (queued,) = rows(engine)
    assert (queued["status"], queued["kind"], queued["event_number"], queued["focus_refs"]) == (
        "pending",
        "event-notification",
        1,
        ["ServiceRequest/sr1"],
    )
    # The secret as a path segment works the same; a criteria-style PUT carries the resource.
    put = client.put(f"/notify/emr/{SECRET}/ServiceRequest/sr2", content=orjson.dumps(referral("sr2")))
    assert put.status_code == 200
    assert rows(engine)[-1]["payload"]["resources"][0]["id"] == "sr2"
    refused = [
        client.post("/notify/emr", content=body, headers={"Authorization": "Bearer wrong"}).status_code,
        client.post("/notify/emr", content=body).status_code,
        client.post("/notify/emr/wrong", content=body).status_code,
        client.post(
            "/notify/emr", content=b"x" * 5000, headers={"Authorization": f"Bearer {SECRET}"}
        ).status_code,
        client.post(
            "/notify/emr", content=b"<xml/>", headers={"Authorization": f"Bearer {SECRET}"}
        ).status_code,
        client.post("/notify/other", content=body, headers={"Authorization": f"Bearer {SECRET}"}).status_code,
    ]
    assert refused == [401, 401, 401, 413, 400, 404]
    counted = [(r["endpoint"], r["error"]) for r in rows(engine) if r["status"] == "refused"]
    assert counted == [
        ("emr", "a wrong or missing secret"),
        ("emr", "a wrong or missing secret"),
        ("emr", "a wrong or missing secret"),
        ("emr", "the body is over max_body_bytes"),
        ("emr", "the body is not JSON"),
        ("other", "no subscribed endpoint of that name"),
    ]
    # A refused body is never stored, nor the secret.
    assert SECRET not in str(rows(engine))
    assert all(r["payload"] is None for r in rows(engine) if r["status"] == "refused")


# -- the worker --------------------------------------------------------------------------------------------


def subscribed(engine: Engine, **state: Any) -> None:
    """The endpoint's ServiceRequest topic Subscription, active on the server as `sub-1`, with `state`."""
    values = {"server_id": "sub-1", "style": "topic", "criteria": TOPIC, "status": "active", **state}
    queue.save_state(engine, "emr", "ServiceRequest", values)


def subscription_row(engine: Engine) -> dict[str, Any]:
    found = queue.state(engine, "emr", "ServiceRequest")
    assert found is not None
    return found


def capability() -> dict[str, Any]:
    search = [{"name": "_lastUpdated", "type": "date"}, {"name": "identifier", "type": "token"}]
    return capability_statement(
        {"type": "ServiceRequest", "searchParam": search},
        {"type": "Task", "conditionalCreate": True, "searchParam": search},
        {"type": "Subscription", "extension": [{"url": manage.TOPIC_CANONICAL, "valueCanonical": TOPIC}]},
    )


def _task_created(request: httpx.Request) -> httpx.Response:
    return httpx.Response(201, json=orjson.loads(request.content) | {"id": "t1", "meta": {"versionId": "1"}})


def _run(
    engine: Engine, warehouse_url: str, search_pages: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    s = settings(warehouse_url)
    endpoint = s.endpoints[0]
    subscribed(engine, last_event_number=1)

    async def go() -> dict[str, Any]:
        with respx.mock(base_url=BASE, assert_all_called=False) as mock:
            mock.get("/metadata").respond(json=capability())
            mock.get("/ServiceRequest/sr5").respond(json=referral("sr5"))
            # A server answering a read with something that is not JSON.
            mock.get("/ServiceRequest/garbled").respond(200, content=b"<html>oops</html>")
            search = mock.get("/ServiceRequest").respond(
                json={
                    "resourceType": "Bundle",
                    "type": "searchset",
                    "entry": [{"resource": r, "search": {"mode": "match"}} for r in search_pages or []],
                }
            )
            posts = mock.post("/Task").mock(side_effect=_task_created)
            async with FhirClient(endpoint) as client:
                processor = Processor(s, endpoint, engine, client)
                for row in queue.pending(engine):
                    await processor.process(row)
            return {"searched": search.call_count, "tasks": posts.call_count}

    return asyncio.run(go())


def test_an_id_only_notification_is_fetched_written_and_acknowledged(
    engine: Engine, warehouse_url: str
) -> None:
    parsed = parse_notification(
        bundle(status_entry("event-notification", (2,), ("ServiceRequest/sr5",), since=2))
    )
    queue.enqueue(engine, "emr", parsed, datetime.now(UTC) - timedelta(seconds=3))
    done = _run(engine, warehouse_url)
    # Event 2 follows event 1: no gap, no search; the referral written and its Task sent at once.
    assert done == {"searched": 0, "tasks": 1}
    with engine.connect() as conn:
        referral_row = conn.execute(sa.text("SELECT resource_id, status FROM referral")).one()
        latency = conn.execute(sa.text("SELECT referral_id, seconds FROM intake_latency")).one()
    assert tuple(referral_row) == ("sr5", "active")
    assert latency[0] == "sr5"
    assert latency[1] >= 3.0
    (notification,) = rows(engine)
    assert (notification["status"], notification["payload"]) == ("done", None)
    assert subscription_row(engine)["last_event_number"] == 2


def test_a_gap_in_the_event_numbers_is_caught_up_by_a_search(engine: Engine, warehouse_url: str) -> None:
    # Events 2-4 never arrived (the listener was down): event 5 says so; the search brings sr6 too.
    parsed = parse_notification(
        bundle(status_entry("event-notification", (5,), ("ServiceRequest/sr5",), since=5))
    )
    queue.enqueue(engine, "emr", parsed)
    done = _run(engine, warehouse_url, search_pages=[referral("sr5"), referral("sr6")])
    assert done == {"searched": 1, "tasks": 2}
    subscription = subscription_row(engine)
    assert subscription["catch_up_reason"] == "a gap in the event numbers (1 then 5)"
    assert subscription["last_event_number"] == 5


def test_an_empty_notification_is_a_search_from_the_watermark(engine: Engine, warehouse_url: str) -> None:
    queue.enqueue(engine, "emr", parse_notification(b""))
    done = _run(engine, warehouse_url, search_pages=[referral("sr7")])
    assert done == {"searched": 1, "tasks": 1}
    assert subscription_row(engine)["catch_up_reason"] == "a notification without its resources"


def test_subscription_resources_topic_or_criteria() -> None:
    endpoint = settings("sqlite:///unused.db").endpoints[0]
    listen = settings("sqlite:///unused.db").listen
    topic = manage.subscription_resource(
        endpoint, listen, "ServiceRequest", manage.topic_for(endpoint, "ServiceRequest", capability())
    )
    assert topic["criteria"] == TOPIC
    assert topic["channel"]["endpoint"] == "https://hooks.practice.test/notify/emr"
    assert topic["channel"]["header"] == [f"Authorization: Bearer {SECRET}"]
    assert topic["channel"]["_payload"]["extension"][0]["valueCode"] == "id-only"
    no_topics = {
        "resourceType": "CapabilityStatement",
        "rest": [{"mode": "server", "resource": [{"type": "Subscription"}]}],
    }
    criteria = manage.subscription_resource(
        endpoint, listen, "ServiceRequest", manage.topic_for(endpoint, "ServiceRequest", no_topics)
    )
    assert criteria["criteria"] == "ServiceRequest?status=active"
    assert "_payload" not in criteria["channel"]
    assert manage.offers_subscriptions(no_topics)
    assert not manage.offers_subscriptions({"rest": [{"resource": [{"type": "ServiceRequest"}]}]})


def test_three_missed_heartbeats_make_a_subscription_unhealthy() -> None:
    now = datetime(2026, 12, 8, 1, 0, tzinfo=UTC)
    row = {"status": "active", "style": "topic", "last_heartbeat_at": now - timedelta(seconds=179)}
    assert manage.unhealthy_reason(row, 60, now) is None
    late = {**row, "last_heartbeat_at": now - timedelta(seconds=181)}
    assert manage.unhealthy_reason(late, 60, now) == "no heartbeat for 181 s (3 periods are 180 s)"
    assert manage.unhealthy_reason({**row, "status": "error"}, 60, now) == "the server says it is error"


def test_a_healthy_subscription_is_polled_hourly_an_unhealthy_one_on_schedule(
    engine: Engine, warehouse_url: str
) -> None:
    from connector.subscriptions.polling import resting_streams
    from connector.sync.pipeline import StreamResult
    from connector.warehouse import state

    s = settings(warehouse_url, heartbeat_seconds=60)
    endpoint, listen = s.endpoints[0], s.listen
    now = datetime.now(UTC)
    assert resting_streams(engine, endpoint, listen, now) == {}  # not subscribed yet: polled
    subscribed(engine, last_heartbeat_at=now)
    assert resting_streams(engine, endpoint, listen, now) == {}  # never polled: polled
    run = state.start_run(engine, "r1", "emr", "ServiceRequest")
    state.finish_run(engine, run, StreamResult("emr", "ServiceRequest", "last-updated", status="succeeded"))
    assert resting_streams(engine, endpoint, listen, now) == {
        "ServiceRequest": "the subscription is healthy; polled every 60 min"
    }
    # An hour later it is polled again; with heartbeats missing it is polled on every scheduled run.
    assert resting_streams(engine, endpoint, listen, now + timedelta(minutes=61)) == {}
    assert resting_streams(engine, endpoint, listen, now + timedelta(minutes=4)) == {}


def _check(engine: Engine, warehouse_url: str, subscription: dict[str, Any], count: int) -> dict[str, Any]:
    """One check round of the listener against a server whose Subscription is `subscription`."""
    from connector.subscriptions.app import Listener

    s = settings(warehouse_url)
    endpoint = s.endpoints[0]
    status_bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "resource": {
                    "resourceType": "Parameters",
                    "parameter": [{"name": "events-since-subscription-start", "valueString": str(count)}],
                }
            }
        ],
    }

    async def go() -> dict[str, Any]:
        with respx.mock(base_url=BASE, assert_all_called=False) as mock:
            mock.get("/metadata").respond(json=capability())
            # The server's copy: as given until a PUT asks for it again, then active (as sekmet does).
            held = dict(subscription)

            def reactivate(request: httpx.Request) -> httpx.Response:
                held.update(orjson.loads(request.content), status="active")
                held.pop("error", None)
                return httpx.Response(200, json={**held, "status": "requested"})

            reads = mock.get("/Subscription/sub-1").mock(
                side_effect=lambda _r: httpx.Response(200, json=held)
            )
            mock.get("/Subscription/sub-1/$status").respond(json=status_bundle)
            put = mock.put("/Subscription/sub-1").mock(side_effect=reactivate)
            search = mock.get("/ServiceRequest").respond(json={"resourceType": "Bundle", "type": "searchset"})
            async with FhirClient(endpoint) as client:
                listener = Listener(s, engine, subscribe=True)
                listener.processors["emr"] = Processor(s, endpoint, engine, client)
                await listener.check()
            return {"reads": reads.call_count, "reactivated": put.call_count, "searched": search.call_count}

    return asyncio.run(go())


def test_a_status_count_above_what_arrived_is_caught_up(engine: Engine, warehouse_url: str) -> None:
    subscribed(engine, last_event_number=5, last_heartbeat_at=datetime.now(UTC))
    subscription = {"resourceType": "Subscription", "id": "sub-1", "status": "active", "criteria": TOPIC}
    done = _check(engine, warehouse_url, subscription, count=9)
    assert (done["reactivated"], done["searched"]) == (0, 1)
    row = subscription_row(engine)
    assert row["catch_up_reason"] == "$status counts 9 events, 5 arrived"
    assert (row["last_event_number"], row["healthy"]) == (9, True)
    # The same count again: nothing missed since, no search.
    assert _check(engine, warehouse_url, subscription, count=9)["searched"] == 0


def test_a_subscription_found_in_error_is_reactivated_and_caught_up(
    engine: Engine, warehouse_url: str
) -> None:
    subscribed(engine, last_event_number=3)
    listen = settings(warehouse_url).listen
    wanted = manage.subscription_resource(
        settings(warehouse_url).endpoints[0], listen, "ServiceRequest", TOPIC
    )
    broken = {**wanted, "id": "sub-1", "status": "error", "error": "Event notification delivery failed"}
    done = _check(engine, warehouse_url, broken, count=3)
    assert (done["reactivated"], done["searched"]) == (1, 1)
    row = subscription_row(engine)
    assert row["catch_up_reason"] == "the subscription was error"
    assert row["status"] == "active"


def test_one_notification_that_fails_does_not_hold_up_the_next(engine: Engine, warehouse_url: str) -> None:
    for number, focus in ((2, "ServiceRequest/garbled"), (3, "ServiceRequest/sr5")):
        parsed = parse_notification(
            bundle(status_entry("event-notification", (number,), (focus,), since=number))
        )
        queue.enqueue(engine, "emr", parsed)
    done = _run(engine, warehouse_url)
    assert done["tasks"] == 1
    assert [(r["status"], r["error"]) for r in rows(engine)] == [
        ("failed", "unexpected JSONDecodeError"),
        ("done", None),
    ]
