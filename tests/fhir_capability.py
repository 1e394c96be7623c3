"""A server's CapabilityStatement for tests: FHIR 4.0.1, one REST server, the resource entries given."""

from __future__ import annotations

from typing import Any


def capability_statement(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "fhirVersion": "4.0.1",
        "rest": [{"mode": "server", "resource": list(resources)}],
    }
