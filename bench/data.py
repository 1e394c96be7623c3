"""Deterministic synthetic therapy data: ServiceRequest, Coverage and Claim, round-robin, in server order.

Resource `i` (0-based) is a ServiceRequest when `i % 3 == 0`, a Coverage when 1, a Claim when 2. Its
`meta.lastUpdated` is 2026-01-01T00:00:00.000Z plus 37 ms per resource and its `meta.versionId` is the
server's change number `i + 1` (some servers number versions globally), so both strictly increase over
the whole data set. One seeded generator draws every choice in that order and nothing depends on the
size asked for: the first k resources of any data set are exactly the k-resource data set.

The pools grow with the data: one new patient per 8 resources (so a data set of N resources has about
N/8 patients), 300 practitioners, 20 payers, 4 referring clinics and the practice. Coverage `c` covers
patient `c * 3 // 8 + 1`; referrals and claims name an earlier Coverage and its patient, so references
agree with each other. The shapes follow `scripts/make_demo_data.py` and the codes the connector knows
(`mappings/data/therapy_codes.csv`); every resource is valid FHIR R4 (fhir.resources R4B) and maps.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

SEED = 20260101
START = datetime(2026, 1, 1, tzinfo=UTC)
STEP_MS = 37
#: authoredOn is written the way a US EMR sends it, with a local offset.
_EASTERN = timezone(timedelta(hours=-5))
TYPES: tuple[str, ...] = ("ServiceRequest", "Coverage", "Claim")
ID_PREFIX = {"ServiceRequest": "sr", "Coverage": "cov", "Claim": "claim"}

SNOMED = "http://snomed.info/sct"
CPT = "http://www.ama-assn.org/go/cpt"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
CLAIM_TYPE = "http://terminology.hl7.org/CodeSystem/claim-type"
XHTML = "http://www.w3.org/1999/xhtml"

N_PRACTITIONERS = 300
PAYERS = (
    "Acme Health Plan",
    "Blue Valley Insurance",
    "Medicare Part B",
    "State Medicaid",
    "Cascade Mutual",
    "Prairie Health Alliance",
    "Summit Care Plans",
    "Coastal Benefit Trust",
    "Evergreen Health Co-op",
    "Great Lakes Assurance",
    "Harbor Point Health",
    "Keystone Family Plans",
    "Liberty Senior Advantage",
    "Meridian Workers Comp",
    "North Star Health",
    "Pioneer Employee Benefits",
    "Redwood Health Partners",
    "Silver Creek Insurance",
    "Tri-County Health Plan",
    "Union Trades Benefit Fund",
)
CLINICS = (
    "Riverside Orthopedics",
    "Lakeview Neurology Clinic",
    "Northside Pediatrics",
    "Harbor Sports Medicine",
)
PRACTICE = ("Organization/org-practice", "Bright Path Therapy")
GIVEN = (
    "Alicia",
    "Benjamin",
    "Chen",
    "Dana",
    "Elena",
    "Farid",
    "Grace",
    "Hiroshi",
    "Imani",
    "Jonas",
    "Keiko",
    "Luis",
    "Maya",
    "Nikolai",
    "Olivia",
    "Priya",
    "Quentin",
    "Rosa",
    "Samir",
    "Tessa",
)
FAMILY = (
    "Moreno",
    "Okafor",
    "Wei",
    "Whitfield",
    "Petrova",
    "Haddad",
    "Lindqvist",
    "Tanaka",
    "Brooks",
    "Berg",
    "Adeyemi",
    "Novak",
    "Castillo",
    "Fischer",
    "Gallagher",
    "Ibrahim",
    "Jensen",
    "Kowalski",
)

# discipline -> (SNOMED procedure, evaluation CPT codes, treatment CPT codes, ICD-10-CM reasons, weight)
DISCIPLINES: dict[str, dict[str, Any]] = {
    "PT": {
        "snomed": ("91251008", "Physical therapy procedure"),
        "eval": (
            ("97161", "PT eval low complexity"),
            ("97162", "PT eval mod complexity"),
            ("97163", "PT eval high complexity"),
        ),
        "treat": (
            ("97110", "Therapeutic exercises"),
            ("97140", "Manual therapy techniques"),
            ("97112", "Neuromuscular reeducation"),
            ("97116", "Gait training"),
        ),
        "reasons": (
            ("M54.50", "Low back pain, unspecified"),
            ("M25.561", "Pain in right knee"),
            ("S83.511A", "Sprain of ACL of right knee, initial encounter"),
            ("M75.101", "Rotator cuff tear of right shoulder, not traumatic"),
            ("Z96.651", "Presence of right artificial knee joint"),
        ),
        "weight": 55,
    },
    "OT": {
        "snomed": ("84478008", "Occupational therapy"),
        "eval": (
            ("97165", "OT eval low complexity"),
            ("97166", "OT eval mod complexity"),
            ("97167", "OT eval high complexity"),
        ),
        "treat": (("97535", "Self care/home management training"), ("97530", "Therapeutic activities")),
        "reasons": (
            ("I63.9", "Cerebral infarction, unspecified"),
            ("G56.01", "Carpal tunnel syndrome, right"),
            ("M19.041", "Primary osteoarthritis, right hand"),
            ("S62.101A", "Fracture of right carpal bone, initial encounter"),
        ),
        "weight": 25,
    },
    "SLP": {
        "snomed": ("5154007", "Speech therapy"),
        "eval": (
            ("92521", "Evaluation of speech fluency"),
            ("92522", "Evaluate speech production"),
            ("92523", "Speech sound lang comprehen"),
            ("92610", "Evaluate swallowing function"),
        ),
        "treat": (("92507", "Speech/hearing therapy"), ("92526", "Oral function therapy")),
        "reasons": (
            ("R13.10", "Dysphagia, unspecified"),
            ("F80.2", "Mixed receptive-expressive disorder"),
            ("I69.320", "Aphasia following cerebral infarction"),
            ("R47.01", "Aphasia"),
        ),
        "weight": 20,
    },
}
for _spec in DISCIPLINES.values():
    _spec["eval_codes"] = frozenset(code for code, _ in _spec["eval"])
_DISCIPLINE_NAMES = tuple(DISCIPLINES)
_DISCIPLINE_WEIGHTS = tuple(DISCIPLINES[d]["weight"] for d in _DISCIPLINE_NAMES)
_NOTES = (
    "Please evaluate and treat. Home exercise program requested.",
    "Patient prefers morning appointments; interpreter not needed.",
    "Post-operative protocol attached; weight bearing as tolerated.",
    "Re-evaluate after 6 weeks and send progress note to referring provider.",
    "Fall risk: please include balance assessment.",
)


def instant(i: int) -> str:
    """meta.lastUpdated of resource `i`: an instant with milliseconds and Z."""
    return _instant(START + timedelta(milliseconds=STEP_MS * i))


def instant_ms(i: int) -> int:
    """meta.lastUpdated of resource `i` as milliseconds since the epoch."""
    return int(START.timestamp() * 1000) + STEP_MS * i


def _instant(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def resource_id(i: int) -> str:
    """The id of resource `i`: `sr-000123`, `cov-000123`, `claim-000123` (numbered per type)."""
    return f"{ID_PREFIX[TYPES[i % 3]]}-{i // 3:06d}"


def coverage_patient(c: int) -> int:
    """The patient number Coverage `cov-{c}` covers (about 2.7 coverages per patient over time)."""
    return c * 3 // 8 + 1


def _concept(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def _money(value: float) -> dict[str, Any]:
    amount = round(value, 2)
    return {"value": int(amount) if amount.is_integer() else amount, "currency": "USD"}


def _narrative(text: str) -> dict[str, str]:
    return {"status": "generated", "div": f'<div xmlns="{XHTML}">{text}</div>'}


def _day(moment: datetime) -> str:
    return moment.date().isoformat()


class _Generator:
    """Draws resource after resource from one seeded generator; the state is only the position."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def practitioner(self) -> tuple[str, str]:
        k = self.rng.randrange(N_PRACTITIONERS)
        name = f"Dr. {GIVEN[k % len(GIVEN)]} {FAMILY[(k * 7) % len(FAMILY)]}"
        return f"Practitioner/prac-{k + 1:04d}", name

    def payer(self, c: int) -> tuple[int, str]:
        # A coverage's payer follows from its number, so every resource naming it agrees.
        k = (c * 7919) % len(PAYERS)
        return k + 1, PAYERS[k]

    def earlier_coverage(self, i: int) -> int | None:
        existing = (i + 1) // 3  # Coverages 0 .. existing-1 come before resource i
        return self.rng.randrange(existing) if existing else None

    def resource(self, i: int) -> dict[str, Any]:
        rtype = TYPES[i % 3]
        meta = {"versionId": str(i + 1), "lastUpdated": instant(i)}
        updated = START + timedelta(milliseconds=STEP_MS * i)
        if rtype == "ServiceRequest":
            return self.service_request(i, meta, updated)
        if rtype == "Coverage":
            return self.coverage(i, meta, updated)
        return self.claim(i, meta, updated)

    def service_request(self, i: int, meta: dict[str, str], updated: datetime) -> dict[str, Any]:
        rng = self.rng
        n = i // 3
        discipline = rng.choices(_DISCIPLINE_NAMES, weights=_DISCIPLINE_WEIGHTS)[0]
        spec = DISCIPLINES[discipline]
        eval_code, _ = rng.choice(spec["eval"])
        reasons = rng.sample(spec["reasons"], k=rng.choice((1, 1, 2)))
        cov = self.earlier_coverage(i)
        patient = coverage_patient(cov) if cov is not None else rng.randrange(i // 8 + 1) + 1
        authored = updated - timedelta(minutes=rng.randrange(5, 60 * 24 * 20))
        status = rng.choices(("active", "completed", "revoked", "on-hold"), weights=(78, 15, 4, 3))[0]
        if rng.random() < 0.8:
            requester = self.practitioner()
        else:
            k = rng.randrange(len(CLINICS))
            requester = (f"Organization/org-clinic-{k + 1:02d}", CLINICS[k])
        resource: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "id": f"sr-{n:06d}",
            "meta": meta,
            "text": _narrative(f"{discipline} referral: {reasons[0][1]}"),
            "identifier": [{"system": "urn:emr:referral", "value": f"REF-{n:07d}"}],
            "status": status,
            "intent": "order",
            "category": [_concept(SNOMED, "3457005", "Patient referral")],
            "priority": rng.choices(("routine", "urgent"), weights=(85, 15))[0],
            "code": {
                "coding": [
                    {"system": SNOMED, "code": spec["snomed"][0], "display": spec["snomed"][1]},
                    {"system": CPT, "code": eval_code},
                ],
                "text": f"{discipline} evaluation and treatment",
            },
            "subject": {"reference": f"Patient/pat-{patient:06d}"},
            "authoredOn": authored.astimezone(_EASTERN).isoformat(timespec="seconds"),
            "requester": {"reference": requester[0], "display": requester[1]},
            "reasonCode": [_concept(ICD10CM, code, display) for code, display in reasons],
        }
        if cov is not None and rng.random() < 0.92:
            resource["insurance"] = [{"reference": f"Coverage/cov-{cov:06d}"}]
        start = authored + timedelta(days=rng.randrange(2, 15))
        if rng.random() < 0.75:
            resource["occurrencePeriod"] = {"start": _day(start), "end": _day(start + timedelta(days=90))}
        else:
            resource["occurrenceTiming"] = {
                "repeat": {
                    "boundsPeriod": {"start": _day(start), "end": _day(start + timedelta(weeks=8))},
                    "frequency": rng.choice((1, 2, 3)),
                    "period": 1,
                    "periodUnit": "wk",
                }
            }
        resource["note"] = [{"text": rng.choice(_NOTES)}]
        return resource

    def coverage(self, i: int, meta: dict[str, str], updated: datetime) -> dict[str, Any]:
        rng = self.rng
        c = i // 3
        patient = coverage_patient(c)
        payer_no, payer_name = self.payer(c)
        start = updated - timedelta(days=rng.randrange(30, 900))
        relationship = rng.choices(("self", "spouse", "child"), weights=(80, 12, 8))[0]
        member = f"W{(c * 104729 + 7) % 10**9:09d}"
        resource: dict[str, Any] = {
            "resourceType": "Coverage",
            "id": f"cov-{c:06d}",
            "meta": meta,
            "text": _narrative(f"{payer_name} coverage, member {member}"),
            "identifier": [{"system": f"urn:oid:2.16.840.1.113883.3.7777.2.{payer_no}", "value": member}],
            "status": rng.choices(("active", "cancelled"), weights=(94, 6))[0],
            "type": _concept(
                "http://terminology.hl7.org/CodeSystem/v3-ActCode", "EHCPOL", "extended healthcare"
            ),
            "subscriberId": member,
            "beneficiary": {"reference": f"Patient/pat-{patient:06d}"},
            "relationship": _concept(
                "http://terminology.hl7.org/CodeSystem/subscriber-relationship", relationship
            ),
            "period": {"start": _day(start), "end": _day(start + timedelta(days=365 * rng.choice((1, 2))))},
            "payor": [{"reference": f"Organization/org-payer-{payer_no:02d}", "display": payer_name}],
            "class": [
                {
                    "type": _concept("http://terminology.hl7.org/CodeSystem/coverage-class", "group"),
                    "value": f"GRP-{rng.randrange(1000, 9999)}",
                    "name": f"{payer_name} employer group",
                },
                {
                    "type": _concept("http://terminology.hl7.org/CodeSystem/coverage-class", "plan"),
                    "value": f"PLAN-{payer_no:02d}{rng.choice('ABC')}",
                    "name": rng.choice(("PPO", "HMO", "EPO", "POS")),
                },
            ],
        }
        if relationship != "self":
            resource["subscriber"] = {"reference": f"RelatedPerson/rp-{patient:06d}"}
        return resource

    def claim(self, i: int, meta: dict[str, str], updated: datetime) -> dict[str, Any]:
        rng = self.rng
        n = i // 3
        cov = self.earlier_coverage(i)
        assert cov is not None  # the first Claim is resource 2, after Coverage 0
        patient = coverage_patient(cov)
        payer_no, _ = self.payer(cov)
        discipline = rng.choices(_DISCIPLINE_NAMES, weights=_DISCIPLINE_WEIGHTS)[0]
        spec = DISCIPLINES[discipline]
        use = "preauthorization" if rng.random() < 0.15 else "claim"
        created = updated - timedelta(minutes=rng.randrange(1, 60 * 24 * 5))
        served = created - timedelta(days=rng.randrange(0, 10))
        codes = [rng.choice(spec["eval"])] if rng.random() < 0.3 else []
        codes += rng.sample(spec["treat"], k=rng.choice((1, 1, 2)))
        items = []
        total = 0.0
        for seq, (code, _display) in enumerate(codes, 1):
            evaluation = code in spec["eval_codes"]
            units = 1 if evaluation else rng.choice((1, 2, 3, 4))
            price = 165.0 if evaluation else 48.0
            item: dict[str, Any] = {
                "sequence": seq,
                "productOrService": _concept(CPT, code),
                "servicedDate": _day(served),
                "quantity": {"value": units},
            }
            if units > 1:  # a single unit's price is its net; EMRs often leave it out
                item["unitPrice"] = _money(price)
            item["net"] = _money(price * units)
            items.append(item)
            total += price * units
        reason = rng.choice(spec["reasons"])
        resource: dict[str, Any] = {
            "resourceType": "Claim",
            "id": f"claim-{n:06d}",
            "meta": meta,
            "status": "active",
            "type": _concept(CLAIM_TYPE, "professional"),
            "use": use,
            "patient": {"reference": f"Patient/pat-{patient:06d}"},
            "created": created.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "insurer": {"reference": f"Organization/org-payer-{payer_no:02d}"},
            "provider": {"reference": PRACTICE[0]},
            "priority": _concept("http://terminology.hl7.org/CodeSystem/processpriority", "normal"),
            "diagnosis": [{"sequence": 1, "diagnosisCodeableConcept": _concept(ICD10CM, reason[0])}],
            "insurance": [
                {"sequence": 1, "focal": True, "coverage": {"reference": f"Coverage/cov-{cov:06d}"}}
            ],
            "item": items,
            "total": _money(total),
        }
        if n > 0 and len(items) < 3 and rng.random() < 0.7:
            resource["referral"] = {"reference": f"ServiceRequest/sr-{rng.randrange(n):06d}"}
        return resource


def iter_resources(n: int, *, seed: int = SEED) -> Iterator[dict[str, Any]]:
    """The first `n` resources of the data set, in `meta.lastUpdated` order."""
    gen = _Generator(seed)
    for i in range(n):
        yield gen.resource(i)


def generate(n: int, *, seed: int = SEED) -> list[dict[str, Any]]:
    """The `n`-resource data set as a list (tests and small sets; the server streams `iter_resources`)."""
    return list(iter_resources(n, seed=seed))
