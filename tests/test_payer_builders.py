"""Small valid R4 payer resources for the warehouse tests and a loader through the pipeline (no tests)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine

from connector.sync.pipeline import map_resources
from connector.warehouse.writer import PageWrite, PageWriteResult, write_page

ENDPOINT = "clinic-emr"
SYNCED_AT = datetime(2026, 11, 1, tzinfo=UTC)
X12_306 = "https://codesystem.x12.org/005010/306"
PAS = "http://hl7.org/fhir/us/davinci-pas/StructureDefinition"
PROFESSIONAL = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]
}


def instant(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def coverage(
    rid: str,
    payor: str,
    *,
    patient: str = "Patient/p1",
    plan: str | None = None,
    status: str = "active",
    end: str | None = None,
    updated: str = "2026-09-01T00:00:00Z",
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Coverage",
        "id": rid,
        "meta": {"versionId": "1", "lastUpdated": updated},
        "status": status,
        "beneficiary": {"reference": patient},
        "payor": [{"reference": payor}],
    }
    if plan:
        coverage_class = "http://terminology.hl7.org/CodeSystem/coverage-class"
        resource["class"] = [
            {"type": {"coding": [{"system": coverage_class, "code": "plan"}]}, "value": plan}
        ]
    if end:
        resource["period"] = {"end": end}
    return resource


def eligibility_response(
    rid: str,
    created: str,
    *,
    patient: str = "Patient/p1",
    coverage_ref: str | None = None,
    outcome: str = "complete",
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "CoverageEligibilityResponse",
        "id": rid,
        "meta": {"versionId": "1", "lastUpdated": created if "T" in created else f"{created}T00:00:00Z"},
        "status": "active",
        "purpose": ["validation"],
        "patient": {"reference": patient},
        "created": created,
        "request": {"reference": f"CoverageEligibilityRequest/{rid}"},
        "outcome": outcome,
        "insurer": {"reference": "Organization/pA"},
    }
    if coverage_ref:
        resource["insurance"] = [{"coverage": {"reference": coverage_ref}, "inforce": outcome == "complete"}]
    return resource


def preauth_claim(
    rid: str,
    created: str,
    *,
    insurer: str | None = "Organization/pA",
    coverage_ref: str = "Coverage/cov-a1",
    quantities: tuple[int, ...] = (1, 12),
    version: int = 1,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Claim",
        "id": rid,
        "meta": {"versionId": str(version), "lastUpdated": created},
        "status": "active",
        "type": PROFESSIONAL,
        "use": "preauthorization",
        "patient": {"reference": "Patient/p1"},
        "created": created,
        "provider": {"reference": "Organization/practice"},
        "priority": {"coding": [{"code": "normal"}]},
        "insurance": [{"sequence": 1, "focal": True, "coverage": {"reference": coverage_ref}}],
        "item": [
            {
                "sequence": n,
                "productOrService": {
                    "coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "97110"}]
                },
                "quantity": {"value": q},
            }
            for n, q in enumerate(quantities, start=1)
        ],
    }
    if insurer:
        resource["insurer"] = {"reference": insurer}
    return resource


def preauth_response(
    rid: str,
    created: str,
    *,
    request: str | None,
    actions: dict[int, str] | None = None,
    outcome: str = "complete",
    end: str | None = None,
    updated: str | None = None,
) -> dict[str, Any]:
    """A PAS-style ClaimResponse; `actions` maps item sequence -> X12 306 review action."""
    resource: dict[str, Any] = {
        "resourceType": "ClaimResponse",
        "id": rid,
        "meta": {"versionId": "1", "lastUpdated": updated or created},
        "status": "active",
        "type": PROFESSIONAL,
        "use": "preauthorization",
        "patient": {"reference": "Patient/p1"},
        "created": created,
        "insurer": {"reference": "Organization/pA"},
        "outcome": outcome,
    }
    if request:
        resource["request"] = {"reference": request}
    if end:
        resource["preAuthRef"] = f"AUTH-{rid}"
        resource["preAuthPeriod"] = {"start": created[:10], "end": end}
    if actions:
        resource["item"] = [
            {
                "itemSequence": sequence,
                "adjudication": [
                    {
                        "category": {"coding": [{"code": "submitted"}]},
                        "extension": [
                            {
                                "url": f"{PAS}/extension-reviewAction",
                                "extension": [
                                    {
                                        "url": f"{PAS}/extension-reviewActionCode",
                                        "valueCodeableConcept": {
                                            "coding": [{"system": X12_306, "code": code}]
                                        },
                                    }
                                ],
                            }
                        ],
                    }
                ],
            }
            for sequence, code in actions.items()
        ]
    return resource


def load(engine: Engine, *resources: dict[str, Any]) -> list[PageWriteResult]:
    """Map and write each resource as its own page, in the order given (the sync order)."""
    results = []
    for resource in resources:
        mapped = map_resources(ENDPOINT, resource["resourceType"], [resource], SYNCED_AT)
        assert not mapped.rejects, mapped.rejects[0].error
        page = PageWrite(ENDPOINT, resource["resourceType"], raw=mapped.raw, mapped=mapped.mapped)
        results.append(write_page(engine, page))
    return results
