"""validate(): R4B models, required code bindings, and messages that never carry resource values."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest

from connector.errors import MappingError
from mappings.validate import _safe_message, validate

DATA = Path(__file__).parent / "data" / "fhir"


def _load(name: str) -> dict[str, dict[str, Any]]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


SAMPLES = _load("ServiceRequest.ndjson")
DEMO = _load("ServiceRequest-demo.ndjson")


def _error(resource: dict[str, Any]) -> str:
    with pytest.raises(MappingError) as info:
        validate(resource)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_valid_examples_pass() -> None:
    for resource in SAMPLES.values():
        validate(resource)


def test_bad_status_code_names_the_element_not_the_value() -> None:
    resource = copy.deepcopy(SAMPLES["physical-therapy"])
    resource["status"] = "ZZ-SECRET-STATUS-4711"
    message = _error(resource)
    assert message.startswith("ServiceRequest/physical-therapy: invalid ServiceRequest: ")
    assert "status" in message
    assert "ZZ-SECRET-STATUS-4711" not in message


def test_wrong_datatype_names_the_location_not_the_value() -> None:
    resource = copy.deepcopy(SAMPLES["di"])
    resource["subject"] = "Patient/Jane-Q-Secretname-1957"  # a string where a Reference belongs
    resource["authoredOn"] = "1957-99-99T99:99:99Z"
    resource["reasonCode"][0]["text"] = 42
    message = _error(resource)
    for location in ("subject", "authoredOn", "reasonCode[0].text"):
        assert location in message
    for value in ("Jane-Q-Secretname-1957", "1957-99-99", "42"):
        assert value not in message


def test_unknown_element_is_named_but_its_content_is_not() -> None:
    resource = copy.deepcopy(SAMPLES["ob"])
    resource["patientName"] = "Mary Secret Smith"
    message = _error(resource)
    assert "patientName: Extra inputs are not permitted" in message
    assert "Mary Secret Smith" not in message


def test_missing_required_element() -> None:
    resource = copy.deepcopy(SAMPLES["ob"])
    del resource["intent"]
    assert "intent" in _error(resource)


def test_many_errors_are_summarised_on_one_line() -> None:
    resource = copy.deepcopy(SAMPLES["ob"])
    for n in range(6):
        resource[f"bogusElement{n}"] = "x"
    message = _error(resource)
    assert message.endswith("(3 more)")
    assert message.count(";") == 2


def test_r5_shaped_service_request_is_rejected() -> None:
    message = _error(DEMO["demo-sr-invalid-5"])
    assert "code.concept" in message
    assert "reason" in message
    assert "84478008" not in message


@pytest.mark.parametrize("resource_id", ["demo-sr-invalid-1", "demo-sr-invalid-2", "demo-sr-invalid-3"])
def test_demo_bogus_status_is_rejected(resource_id: str) -> None:
    message = _error(DEMO[resource_id])
    assert "status: code not in the required value set" in message
    assert "bogus" not in message


def test_demo_impossible_date_is_rejected() -> None:
    message = _error(DEMO["demo-sr-invalid-4"])
    assert "authoredOn" in message
    assert "2026-13-45" not in message


@pytest.mark.parametrize(
    ("resource", "reason"),
    [
        ({"id": "x", "status": "active"}, "missing resourceType"),
        ({"resourceType": "", "id": "x"}, "missing resourceType"),
        ({"resourceType": "NoSuchThing", "id": "x"}, "unknown resourceType"),
        ({"resourceType": "servicerequest", "id": "x"}, "unknown resourceType"),
        ({"resourceType": "../../etc", "id": "x"}, "unknown resourceType"),
        # R5-only resource types do not exist in R4/R4B
        ({"resourceType": "Transport", "id": "x"}, "unknown resourceType"),
        ({"resourceType": "ServiceRequest", "status": "active", "intent": "order"}, "missing id"),
        ({"resourceType": "ServiceRequest", "id": 7}, "missing id"),
        (["not", "a", "resource"], "a resource must be a JSON object"),
    ],
)
def test_missing_or_unknown_type_or_id(resource: Any, reason: str) -> None:
    assert reason in _error(resource)


def test_label_does_not_echo_an_invalid_id_or_type() -> None:
    message = _error({"resourceType": "Jane Doe's chart", "id": "x"})
    assert "Jane" not in message
    message = _error(
        {
            "resourceType": "ServiceRequest",
            "id": "Jane Doe 1957",
            "status": "active",
            "intent": "order",
            "subject": {"reference": "Patient/1"},
        }
    )
    assert message.startswith("ServiceRequest/<invalid id>: invalid ServiceRequest: id")
    assert "Jane" not in message


def test_message_echoing_the_value_falls_back_to_the_error_type() -> None:
    resource = {"resourceType": "ServiceRequest", "id": "x", "authoredOn": "SECRET-42"}
    error = {"type": "value_error", "loc": ("authoredOn",), "msg": "bad value 'SECRET-42' here"}
    assert _safe_message(resource, error) == "value_error"
    error = {"type": "value_error", "loc": ("authoredOn",), "msg": "DateTime value string does not match"}
    assert _safe_message(resource, error) == "DateTime value string does not match"


def test_fast_enough_for_thousands() -> None:
    resources = list(SAMPLES.values()) * 100  # 2000 resources
    started = time.perf_counter()
    for resource in resources:
        validate(resource)
    # ~1 ms each on a laptop; the bound only catches a pathological slowdown (e.g. re-importing models).
    assert time.perf_counter() - started < 20
