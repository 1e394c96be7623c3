"""Small valid R4 Claim / ClaimResponse / ExplanationOfBenefit builders for the denial tests."""

from __future__ import annotations

from typing import Any

ADJ = "http://terminology.hl7.org/CodeSystem/adjudication"
CARC = "https://x12.org/codes/claim-adjustment-reason-codes"
RARC = "https://x12.org/codes/remittance-advice-remark-codes"
CPT = "http://www.ama-assn.org/go/cpt"
CLAIM_TYPE = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]
}


def _meta(updated: str) -> dict[str, Any]:
    return {"versionId": "1", "lastUpdated": updated}


def claim(
    rid: str,
    created: str,
    items: list[tuple[int, str, float]],
    *,
    payer: str = "Organization/payer-a",
    related: str | None = None,
    relationship: str = "prior",
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Claim",
        "id": rid,
        "meta": _meta(created),
        "status": "active",
        "type": CLAIM_TYPE,
        "use": "claim",
        "patient": {"reference": "Patient/p1"},
        "created": created,
        "insurer": {"reference": payer},
        "provider": {"reference": "Organization/practice"},
        "priority": {"coding": [{"code": "normal"}]},
        "insurance": [{"sequence": 1, "focal": True, "coverage": {"reference": "Coverage/c1"}}],
        "item": [
            {
                "sequence": seq,
                "productOrService": {"coding": [{"system": CPT, "code": code}]},
                "net": {"value": net, "currency": "USD"},
            }
            for seq, code, net in items
        ],
    }
    if related:
        resource["related"] = [
            {"claim": {"reference": f"Claim/{related}"}, "relationship": {"coding": [{"code": relationship}]}}
        ]
    return resource


def _adjudication(
    submitted: float, benefit: float, reason: str | None, remark: str | None
) -> list[dict[str, Any]]:
    benefit_adj: dict[str, Any] = {
        "category": {"coding": [{"system": ADJ, "code": "benefit"}]},
        "amount": {"value": benefit, "currency": "USD"},
    }
    codings = []
    if reason:
        codings.append({"system": CARC, "code": reason})
    if remark:
        codings.append({"system": RARC, "code": remark})
    if codings:
        benefit_adj["reason"] = {"coding": codings}
    return [
        {"category": {"coding": [{"system": ADJ, "code": "submitted"}]}, "amount": {"value": submitted}},
        benefit_adj,
    ]


#: (sequence, submitted, benefit, CARC or None[, RARC])
Line = tuple[Any, ...]


def response(
    rid: str,
    claim_id: str,
    created: str,
    lines: list[Line],
    *,
    payer: str = "Organization/payer-a",
    updated: str | None = None,
) -> dict[str, Any]:
    return {
        "resourceType": "ClaimResponse",
        "id": rid,
        "meta": _meta(updated or created),
        "status": "active",
        "type": CLAIM_TYPE,
        "use": "claim",
        "patient": {"reference": "Patient/p1"},
        "created": created,
        "insurer": {"reference": payer},
        "request": {"reference": f"Claim/{claim_id}"},
        "outcome": "complete",
        "item": [
            {"itemSequence": line[0], "adjudication": _adjudication(line[1], line[2], line[3], _remark(line))}
            for line in lines
        ],
    }


def _remark(line: Line) -> str | None:
    return line[4] if len(line) > 4 else None


def eob(
    rid: str,
    claim_id: str,
    created: str,
    lines: list[Line],
    *,
    payer: str = "Organization/payer-a",
    claim_response: str | None = None,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "ExplanationOfBenefit",
        "id": rid,
        "meta": _meta(created),
        "status": "active",
        "type": CLAIM_TYPE,
        "use": "claim",
        "patient": {"reference": "Patient/p1"},
        "created": created,
        "insurer": {"reference": payer},
        "provider": {"reference": "Organization/practice"},
        "claim": {"reference": f"Claim/{claim_id}"},
        "outcome": "complete",
        "insurance": [{"focal": True, "coverage": {"reference": "Coverage/c1"}}],
        "item": [
            {
                "sequence": line[0],
                "productOrService": {"coding": [{"system": CPT, "code": "97110"}]},
                "adjudication": _adjudication(line[1], line[2], line[3], _remark(line)),
            }
            for line in lines
        ],
    }
    if claim_response:
        resource["claimResponse"] = {"reference": f"ClaimResponse/{claim_response}"}
    return resource


def test_builders_make_valid_r4_resources() -> None:
    from mappings.validate import validate

    validate(claim("c", "2026-09-01T00:00:00Z", [(1, "97110", 100.0)], related="b"))
    validate(response("r", "c", "2026-09-02T00:00:00Z", [(1, 100.0, 0.0, "CO-197", "N115")]))
    validate(eob("e", "c", "2026-09-02T00:00:00Z", [(1, 100.0, 80.0, None)], claim_response="r"))
