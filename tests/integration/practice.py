"""A seeded, realistic therapy practice to load into a real FHIR server, and what a sync must find.

Everything is generated from one `random.Random(seed)`, so two runs produce the same resources with the
same ids. Patients carry no names or addresses (only what R4 allows to be empty is left out); referrers
are clinicians and organizations, whose names are business facts, not PHI.

Resources are loaded with transaction Bundles of `PUT Type/id` entries so the ids are ours and the tests
know them; the incremental step also uses `POST` (server-assigned ids), read back from the response.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx

SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
NPI = "http://hl7.org/fhir/sid/us-npi"
CARC = "https://x12.org/codes/claim-adjustment-reason-codes"
ADJUDICATION = "http://terminology.hl7.org/CodeSystem/adjudication"
CLAIM_TYPE = "http://terminology.hl7.org/CodeSystem/claim-type"
PROCESS_PRIORITY = "http://terminology.hl7.org/CodeSystem/processpriority"
MRN = "urn:oid:2.16.840.1.113883.3.9999.1"
MEMBER = "urn:oid:2.16.840.1.113883.3.9999.2"
CLAIM_ID = "urn:oid:2.16.840.1.113883.3.9999.3"

#: The therapy services referred for (SNOMED CT procedures), with their discipline.
SERVICES: tuple[tuple[str, str, str], ...] = (
    ("91251008", "Physical therapy procedure", "PT"),
    ("84478008", "Occupational therapy", "OT"),
    ("5154007", "Speech therapy", "SLP"),
)
REASONS: tuple[tuple[str, str], ...] = (
    ("M54.50", "Low back pain, unspecified"),
    ("M25.561", "Pain in right knee"),
    ("S83.511A", "Sprain of anterior cruciate ligament of right knee"),
    ("I69.320", "Aphasia following cerebral infarction"),
    ("F80.2", "Mixed receptive-expressive language disorder"),
    ("M75.101", "Rotator cuff tear, right shoulder"),
)
#: CARC codes a therapy practice sees on denials.
DENIAL_REASONS: tuple[tuple[str, str], ...] = (
    ("197", "Precertification/authorization/notification absent"),
    ("50", "These are non-covered services because this is not deemed a medical necessity"),
    ("16", "Claim/service lacks information or has submission/billing error(s)"),
    ("29", "The time limit for filing has expired"),
    ("119", "Benefit maximum for this time period or occurrence has been reached"),
)
PAYERS: tuple[tuple[str, str], ...] = (
    ("payer-aetna", "Aetna"),
    ("payer-bcbs", "Blue Cross Blue Shield"),
    ("payer-medicare", "Medicare Part B"),
)

#: Counts of the generated practice (the issue asks for ~2,000 referrals from 40 referrers).
N_REFERRALS = 2000
N_PATIENTS = 600
N_PRACTITIONER_REFERRERS = 14
N_ROLE_REFERRERS = 14
N_ORGANIZATION_REFERRERS = 12
BATCH_SIZE = 300

#: The practice's "now": referrals are authored in the year before it (fixed, so data is reproducible).
PRACTICE_NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def ref(resource_type: str, rid: str) -> dict[str, str]:
    return {"reference": f"{resource_type}/{rid}"}


def concept(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding: dict[str, str] = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Practice:
    """The generated resources by type (id -> resource), plus the facts the tests compare against."""

    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    #: Requester reference per ServiceRequest id ("Practitioner/x", "PractitionerRole/y", ...).
    requesters: list[str] = field(default_factory=list)

    def add(self, resource: dict[str, Any]) -> dict[str, Any]:
        self.resources.setdefault(resource["resourceType"], {})[resource["id"]] = resource
        return resource

    def all(self) -> Iterator[dict[str, Any]]:
        for by_id in self.resources.values():
            yield from by_id.values()

    def of(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return self.resources.get(resource_type, {})

    def counts(self) -> Counter[str]:
        return Counter({rt: len(by_id) for rt, by_id in self.resources.items()})

    def included_referrers(self) -> Counter[str]:
        """Directory resources a ServiceRequest search with `_include=ServiceRequest:requester` returns.

        Only direct requesters: the Practitioner and Organization behind a PractitionerRole need
        `:iterate`, which the connector does not ask for.
        """
        keys = {
            tuple(sr["requester"]["reference"].split("/", 1))
            for sr in self.of("ServiceRequest").values()
            if "requester" in sr
        }
        return Counter(rt for rt, _ in keys)


def generate(seed: int = 7) -> Practice:
    """The whole practice, deterministically from `seed`."""
    rng = random.Random(seed)
    practice = Practice()
    payers = [
        practice.add(
            {
                "resourceType": "Organization",
                "id": pid,
                "active": True,
                "type": [concept("http://terminology.hl7.org/CodeSystem/organization-type", "pay")],
                "name": name,
            }
        )
        for pid, name in PAYERS
    ]
    # The therapy practice itself: the billing provider of its claims.
    practice.add(
        {
            "resourceType": "Organization",
            "id": "practice",
            "active": True,
            "identifier": [{"system": NPI, "value": "1999999999"}],
            "type": [concept("http://terminology.hl7.org/CodeSystem/organization-type", "prov")],
            "name": "Riverside Therapy Partners",
        }
    )
    referrers = _referrers(practice, rng)

    patients = []
    for n in range(N_PATIENTS):
        born = date(1940, 1, 1) + timedelta(days=rng.randrange(0, 365 * 80))
        patients.append(
            practice.add(
                {
                    "resourceType": "Patient",
                    "id": f"pat-{n:04d}",
                    "identifier": [{"system": MRN, "value": f"MRN{100000 + n}"}],
                    "gender": rng.choice(("female", "male", "female", "male", "other")),
                    "birthDate": born.isoformat(),
                }
            )
        )
    coverages: dict[str, dict[str, Any]] = {}
    for n, patient in enumerate(patients):
        payer = rng.choice(payers)
        start = date(2026, 1, 1) - timedelta(days=rng.randrange(0, 700))
        coverages[patient["id"]] = practice.add(
            {
                "resourceType": "Coverage",
                "id": f"cov-{n:04d}",
                "status": "active",
                "subscriberId": f"M{rng.randrange(10**8, 10**9)}",
                "beneficiary": ref("Patient", patient["id"]),
                "relationship": concept(
                    "http://terminology.hl7.org/CodeSystem/subscriber-relationship", "self"
                ),
                "period": {"start": start.isoformat()},
                "payor": [ref("Organization", payer["id"])],
                "class": [
                    {
                        "type": concept("http://terminology.hl7.org/CodeSystem/coverage-class", "plan"),
                        "value": rng.choice(("PPO-500", "HMO-20", "PARTB")),
                    }
                ],
            }
        )
        if n % 3 != 2:  # two thirds of patients had eligibility verified
            practice.add(_eligibility(f"cer-{n:04d}", patient["id"], coverages[patient["id"]], rng))

    claim_n = 0
    for n in range(N_REFERRALS):
        patient = rng.choice(patients)
        requester = rng.choice(referrers)
        sr = practice.add(_service_request(f"sr-{n:04d}", patient["id"], requester, coverages, rng))
        practice.requesters.append(requester)
        if n % 20 < 9:  # 45 %: evaluation booked
            practice.add(_appointment(f"appt-{n:04d}", sr, rng))
        if n % 7 == 0:  # therapy plans that need a prior authorization
            claim_n += 1
            _claim_pair(practice, f"pa-{claim_n:04d}", sr, coverages, payers, rng, use="preauthorization")
        if n % 20 < 6 and sr["status"] != "revoked":  # billed visits
            claim_n += 1
            _claim_pair(practice, f"cl-{claim_n:04d}", sr, coverages, payers, rng, use="claim")
    return practice


def _referrers(practice: Practice, rng: random.Random) -> list[str]:
    """40 referral sources: practitioners, practitioner roles (with their own practitioner and clinic),
    and organizations; returns the references ServiceRequest.requester points at."""
    families = ("Okafor", "Lindqvist", "Moreau", "Tanaka", "Alvarez", "Novak", "Haddad", "Kowalski", "Reyes")
    givens = ("Amara", "Jonas", "Claire", "Kenji", "Lucia", "Petr", "Rania", "Marek", "Sofia")
    specialties = (
        ("394802001", "General medicine"),
        ("394801008", "Trauma and orthopaedics"),
        ("394591006", "Neurology"),
        ("394537008", "Paediatric specialty"),
    )
    out: list[str] = []

    def practitioner(pid: str, npi: int) -> dict[str, Any]:
        return practice.add(
            {
                "resourceType": "Practitioner",
                "id": pid,
                "identifier": [{"system": NPI, "value": f"{npi}"}],
                "active": True,
                "name": [{"family": rng.choice(families), "given": [rng.choice(givens)], "prefix": ["Dr."]}],
            }
        )

    def clinic(oid: str, n: int) -> dict[str, Any]:
        return practice.add(
            {
                "resourceType": "Organization",
                "id": oid,
                "active": True,
                "identifier": [{"system": NPI, "value": f"{1900000000 + n}"}],
                "type": [concept("http://terminology.hl7.org/CodeSystem/organization-type", "prov")],
                "name": f"{rng.choice(families)} {rng.choice(('Orthopedics', 'Family Medicine', 'Neuro'))}",
            }
        )

    for n in range(N_PRACTITIONER_REFERRERS):
        practitioner(f"prac-{n:02d}", 1000000000 + n)
        out.append(f"Practitioner/prac-{n:02d}")
    for n in range(N_ROLE_REFERRERS):
        doc = practitioner(f"prac-r{n:02d}", 1100000000 + n)
        org = clinic(f"org-r{n:02d}", 100 + n)
        code, display = rng.choice(specialties)
        practice.add(
            {
                "resourceType": "PractitionerRole",
                "id": f"role-{n:02d}",
                "active": True,
                "practitioner": ref("Practitioner", doc["id"]),
                "organization": ref("Organization", org["id"]),
                "specialty": [concept(SNOMED, code, display)],
            }
        )
        out.append(f"PractitionerRole/role-{n:02d}")
    for n in range(N_ORGANIZATION_REFERRERS):
        clinic(f"org-{n:02d}", n)
        out.append(f"Organization/org-{n:02d}")
    return out


def _service_request(
    rid: str, patient_id: str, requester: str, coverages: dict[str, dict[str, Any]], rng: random.Random
) -> dict[str, Any]:
    code, display, _ = rng.choice(SERVICES)
    reason, reason_text = rng.choice(REASONS)
    authored = PRACTICE_NOW - timedelta(days=rng.randrange(0, 365), minutes=rng.randrange(0, 600))
    status = rng.choices(("active", "completed", "revoked", "on-hold"), weights=(55, 35, 6, 4))[0]
    return {
        "resourceType": "ServiceRequest",
        "id": rid,
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.3.9999.4", "value": rid.upper()}],
        "status": status,
        "intent": "order",
        "priority": rng.choices(("routine", "urgent"), weights=(85, 15))[0],
        "category": [concept(SNOMED, "386053000", "Evaluation procedure")],
        "code": concept(SNOMED, code, display),
        "subject": ref("Patient", patient_id),
        "authoredOn": _instant(authored),
        "occurrenceDateTime": _instant(authored + timedelta(days=rng.randrange(3, 21))),
        "requester": {"reference": requester},
        "reasonCode": [concept(ICD10, reason, reason_text)],
        "insurance": [ref("Coverage", coverages[patient_id]["id"])],
    }


def _eligibility(rid: str, patient_id: str, coverage: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    created = PRACTICE_NOW - timedelta(days=rng.randrange(0, 365))
    inforce = rng.random() > 0.08
    return {
        "resourceType": "CoverageEligibilityResponse",
        "id": rid,
        "status": "active",
        "purpose": ["validation", "benefits"],
        "patient": ref("Patient", patient_id),
        "created": _instant(created),
        # The request lives in the payer's system; a logical reference is all the practice has.
        "request": {"identifier": {"system": MEMBER, "value": f"REQ-{rid}"}},
        "outcome": "complete",
        "insurer": coverage["payor"][0],
        "insurance": [{"coverage": ref("Coverage", coverage["id"]), "inforce": inforce}],
    }


def _appointment(rid: str, sr: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    start = datetime.fromisoformat(sr["occurrenceDateTime"].replace("Z", "+00:00"))
    status = rng.choices(("booked", "fulfilled", "noshow", "cancelled"), weights=(30, 55, 8, 7))[0]
    return {
        "resourceType": "Appointment",
        "id": rid,
        "status": status,
        "serviceType": [sr["code"]],
        "start": _instant(start),
        "end": _instant(start + timedelta(minutes=60)),
        "basedOn": [ref("ServiceRequest", sr["id"])],
        "participant": [{"actor": sr["subject"], "status": "accepted"}],
    }


def _claim_pair(
    practice: Practice,
    rid: str,
    sr: dict[str, Any],
    coverages: dict[str, dict[str, Any]],
    payers: list[dict[str, Any]],
    rng: random.Random,
    *,
    use: str,
) -> None:
    patient_id = sr["subject"]["reference"].split("/", 1)[1]
    coverage = coverages[patient_id]
    insurer = coverage["payor"][0]
    created = datetime.fromisoformat(sr["authoredOn"].replace("Z", "+00:00")) + timedelta(
        days=rng.randrange(1, 30)
    )
    units = rng.randrange(4, 13) if use == "preauthorization" else 1
    amount = round(units * rng.uniform(90, 160), 2)
    claim = practice.add(
        {
            "resourceType": "Claim",
            "id": rid,
            "identifier": [{"system": CLAIM_ID, "value": rid.upper()}],
            "status": "active",
            "type": concept(CLAIM_TYPE, "professional"),
            "use": use,
            "patient": ref("Patient", patient_id),
            "created": _instant(created),
            "insurer": insurer,
            "provider": ref("Organization", "practice"),
            "priority": concept(PROCESS_PRIORITY, "normal"),
            "referral": ref("ServiceRequest", sr["id"]),
            "insurance": [{"sequence": 1, "focal": True, "coverage": ref("Coverage", coverage["id"])}],
            "item": [
                {
                    "sequence": 1,
                    "productOrService": concept(
                        "http://www.ama-assn.org/go/cpt", rng.choice(("97161", "97110", "97530", "92507"))
                    ),
                    "quantity": {"value": units},
                    "net": {"value": amount, "currency": "USD"},
                }
            ],
            "total": {"value": amount, "currency": "USD"},
        }
    )
    denied = rng.random() < 0.22
    adjudication: list[dict[str, Any]] = [
        {
            "category": concept(ADJUDICATION, "submitted"),
            "amount": {"value": amount, "currency": "USD"},
        }
    ]
    response: dict[str, Any] = {
        "resourceType": "ClaimResponse",
        "id": f"{rid}-resp",
        "status": "active",
        "type": claim["type"],
        "use": use,
        "patient": claim["patient"],
        "created": _instant(created + timedelta(days=rng.randrange(2, 25))),
        "insurer": insurer,
        "request": ref("Claim", claim["id"]),
        "outcome": "complete",
    }
    if denied:
        code, display = rng.choice(DENIAL_REASONS)
        adjudication.append(
            {
                "category": concept(ADJUDICATION, "denied"),
                "reason": concept(CARC, code, display),
                "amount": {"value": amount, "currency": "USD"},
            }
        )
        response["disposition"] = "Denied"
    else:
        adjudication.append(
            {
                "category": concept(ADJUDICATION, "benefit"),
                "amount": {"value": round(amount * 0.8, 2), "currency": "USD"},
            }
        )
        response["disposition"] = "Approved" if use == "preauthorization" else "Paid"
        if use == "preauthorization":
            response["preAuthRef"] = f"PA{rng.randrange(10**6, 10**7)}"
            start = datetime.fromisoformat(response["created"].replace("Z", "+00:00")).date()
            response["preAuthPeriod"] = {
                "start": start.isoformat(),
                "end": (start + timedelta(days=90)).isoformat(),
            }
    response["item"] = [{"itemSequence": 1, "adjudication": adjudication}]
    practice.add(response)


# ------------------------------------------------------------------------------------------- loading


def transaction(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def put_entry(resource: dict[str, Any]) -> dict[str, Any]:
    path = f"{resource['resourceType']}/{resource['id']}"
    return {"fullUrl": path, "resource": resource, "request": {"method": "PUT", "url": path}}


def post_entry(resource: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in resource.items() if k != "id"}
    return {
        "fullUrl": f"urn:uuid:{uuid.UUID(int=random.Random(str(resource)).getrandbits(128))}",
        "resource": body,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }


def post_transaction(client: httpx.Client, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """POST one transaction Bundle; returns the response entries (raises with the outcome on failure)."""
    response = client.post("", json=transaction(entries), headers={"Content-Type": "application/fhir+json"})
    if response.status_code != 200:
        raise AssertionError(f"transaction failed: HTTP {response.status_code}: {response.text[:2000]}")
    result: list[dict[str, Any]] = response.json()["entry"]
    bad = [e["response"]["status"] for e in result if not e["response"]["status"].startswith(("200", "201"))]
    assert not bad, f"transaction entries failed: {bad[:5]}"
    return result


def load(client: httpx.Client, practice: Practice, *, batch_size: int = BATCH_SIZE) -> int:
    """PUT every resource with its own id, in transaction Bundles of `batch_size`; returns the count."""
    resources = list(practice.all())
    for start in range(0, len(resources), batch_size):
        post_transaction(client, [put_entry(r) for r in resources[start : start + batch_size]])
    return len(resources)
