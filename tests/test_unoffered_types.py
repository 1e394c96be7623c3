"""A type synced by default that a server does not offer (sekmet-fhir has no Goal) is skipped and noted; a
type the config names is searched, and `check` calls its absence a problem."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy.engine import Engine

from connector.config import DEFAULT_RESOURCES, EndpointSettings, RuntimeSettings
from connector.sync.endpoint import plan_endpoint, record_unoffered
from connector.warehouse import state

BASE = "https://emr.test/fhir"


def capability(*types: str) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "fhirVersion": "4.0.1",
        "rest": [
            {
                "mode": "server",
                "resource": [{"type": t, "interaction": [{"code": "search-type"}]} for t in types],
            }
        ],
    }


def _plan(engine: Engine, endpoint: EndpointSettings, cap: dict[str, Any]) -> tuple[list[str], list[str]]:
    plan = asyncio.run(
        plan_endpoint(endpoint, engine, None, cap, RuntimeSettings(), list(endpoint.resources))
    )
    return [s.plan.resource_type for s in plan.searched], plan.unoffered


def test_default_types_the_server_lacks_are_skipped_named_ones_are_searched(engine: Engine) -> None:
    offered = [t for t in DEFAULT_RESOURCES if t != "Goal"]
    defaults = EndpointSettings(name="emr", base_url=BASE, bulk="never")
    searched, unoffered = _plan(engine, defaults, capability(*offered))
    assert (searched, unoffered) == (offered, ["Goal"])
    named = EndpointSettings(name="emr", base_url=BASE, bulk="never", resources=["ServiceRequest", "Goal"])
    assert _plan(engine, named, capability(*offered)) == (["ServiceRequest", "Goal"], [])
    # A CapabilityStatement that lists no types at all says nothing: every stream is searched.
    assert _plan(engine, defaults, capability()) == (list(DEFAULT_RESOURCES), [])


def test_a_skipped_stream_has_its_run_row(engine: Engine) -> None:
    (result,) = record_unoffered(engine, "run-1", "emr", ["Goal"])
    assert (result.status, result.fetched, result.error) == (
        "skipped",
        0,
        "the server's CapabilityStatement does not list it",
    )
    (run,) = state.runs_for(engine, "run-1")
    assert (run["resource_type"], run["status"], run["fetched"]) == ("Goal", "skipped", 0)
