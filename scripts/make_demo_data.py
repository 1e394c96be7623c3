"""Write the bundled demo data set: gzip NDJSON files in connector/demo/data/, one per resource type.

The data is the official HL7 FHIR R4 examples (hl7.fhir.r4.examples 4.0.1, CC0-1.0; read from
../shared/fhir-samples, or --samples) plus generated therapy referrals for a fictional practice:
ServiceRequests for physical, occupational and speech therapy with their Coverage, Appointments,
Encounters, eligibility responses, prior authorizations, claims and remittances, and for each attended
evaluation its episode of care, plan of care, functional goals and note metadata (no note text).
Patients appear only as `Patient/demo-<n>` references: the demo data holds no patient names, addresses or
birth dates. The HL7 examples (dated 2011-2018) are moved by whole days into the generated data's 16 weeks
(see `redate`).

Deterministic: a seeded random generator and a fixed "now" (2026-11-01), and gzip headers without a
timestamp, so re-running the script yields byte-identical files. A handful of ServiceRequests are
invalid on purpose (status "bogus", an R5-shaped code, an impossible date) so the demo shows dead letters.

    .venv/bin/python scripts/make_demo_data.py [--samples DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import random
import re
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from connector.errors import MappingError
from mappings.elements import CPT, ICD10CM, SNOMED
from mappings.validate import validate

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SAMPLES = ROOT.parent / "shared" / "fhir-samples"
DEFAULT_OUT = ROOT / "connector" / "demo" / "data"

NOW = datetime(2026, 11, 1, tzinfo=UTC)  # fixed so the data set never changes
WINDOW = timedelta(weeks=16)
SEED = 20261101
N_PATIENTS = 150
N_REFERRALS = 200

SAMPLE_TYPES = (
    "ServiceRequest",
    "Coverage",
    "Claim",
    "ClaimResponse",
    "ExplanationOfBenefit",
    "Appointment",
    "Encounter",
    "CoverageEligibilityResponse",
    "Practitioner",
    "Organization",
)
# Sample examples carry no meta; those without a date of their own get this stamp (inside WINDOW).
SAMPLE_LAST_UPDATED = "2026-07-20T00:00:00Z"
# The date each sample is re-dated by (the first present): the examples date from 2011-2018, and a demo
# whose report covers WINDOW must not show a denial 4,000 days old.
SAMPLE_ANCHORS: dict[str, tuple[tuple[str, ...], ...]] = {
    "ServiceRequest": (("authoredOn",), ("occurrenceDateTime",), ("occurrencePeriod", "start")),
    "Claim": (("created",),),
    "ClaimResponse": (("created",),),
    "ExplanationOfBenefit": (("created",),),
    "CoverageEligibilityResponse": (("created",),),
    "Appointment": (("start",), ("created",)),
    "Encounter": (("period", "start"),),
    "Coverage": (("period", "start"), ("period", "end")),
}
# Strings that look like dates but are not facts of the visit or claim (a contained patient's birth date).
_NOT_SHIFTED = frozenset({"birthDate", "id", "reference", "display", "div"})
_DATE = re.compile(r"^(\d{4}-\d{2})(-\d{2})?(T.*)?$")

CARC = "https://x12.org/codes/claim-adjustment-reason-codes"
CLAIM_TYPE = "http://terminology.hl7.org/CodeSystem/claim-type"
ADJUDICATION = "http://terminology.hl7.org/CodeSystem/adjudication"
NPI = "http://hl7.org/fhir/sid/us-npi"
LOCAL_TZ = (timezone(timedelta(hours=-5)), timezone(timedelta(hours=-4)), UTC)

DISCIPLINES: dict[str, dict[str, Any]] = {
    "PT": {
        "weight": 0.55,
        "snomed": ("91251008", "Physical therapy procedure"),
        "cpt": [
            ("97161", "PT eval low complexity"),
            ("97162", "PT eval mod complexity"),
            ("97163", "PT eval high complexity"),
        ],
        "reasons": [
            ("M54.50", "Low back pain, unspecified"),
            ("S83.511A", "Sprain of anterior cruciate ligament of right knee, initial encounter"),
            ("M25.561", "Pain in right knee"),
            ("M75.101", "Unspecified rotator cuff tear or rupture of right shoulder, not traumatic"),
            ("Z96.651", "Presence of right artificial knee joint"),
        ],
        "treatment": ("97110", "Therapeutic exercises"),
    },
    "OT": {
        "weight": 0.25,
        "snomed": ("84478008", "Occupational therapy"),
        "cpt": [
            ("97165", "OT eval low complexity"),
            ("97166", "OT eval mod complexity"),
            ("97167", "OT eval high complexity"),
        ],
        "reasons": [
            ("I63.9", "Cerebral infarction, unspecified"),
            ("S62.101A", "Fracture of unspecified carpal bone, right wrist, initial encounter"),
            ("M19.041", "Primary osteoarthritis, right hand"),
            ("G56.01", "Carpal tunnel syndrome, right upper limb"),
        ],
        "treatment": ("97535", "Self care/home management training"),
    },
    "SLP": {
        "weight": 0.20,
        "snomed": ("5154007", "Speech therapy"),
        "cpt": [
            ("92521", "Evaluation of speech fluency"),
            ("92522", "Evaluate speech production"),
            ("92523", "Speech sound lang comprehen"),
            ("92524", "Behavral qualit analys voice"),
        ],
        "reasons": [
            ("R48.8", "Other symbolic dysfunctions"),
            ("R13.10", "Dysphagia, unspecified"),
            ("F80.2", "Mixed receptive-expressive language disorder"),
            ("I69.320", "Aphasia following cerebral infarction"),
            ("R47.01", "Aphasia"),
        ],
        "treatment": ("92507", "Speech/hearing therapy"),
    },
}

REFERRER_PRACTITIONERS = [
    "Dr. Alicia Moreno",
    "Dr. Benjamin Okafor",
    "Dr. Chen Wei",
    "Dr. Dana Whitfield",
    "Dr. Elena Petrova",
    "Dr. Farid Haddad",
    "Dr. Grace Lindqvist",
    "Dr. Hiroshi Tanaka",
    "Dr. Imani Brooks",
    "Dr. Jonas Berg",
]
REFERRER_ORGS = [
    "Riverside Orthopedics",
    "Lakeview Neurology Clinic",
    "Northside Pediatrics",
    "Summit Family Medicine",
    "Harbor Sports Medicine",
]
THERAPISTS = ["Sam Rivera, PT", "Kim Novak, PT, DPT", "Lee Anders, OTR/L", "Pat Quinn, CCC-SLP"]
PAYERS = ["Acme Health Plan", "Blue Valley Insurance", "Medicare (demo)", "State Medicaid (demo)"]
PRACTICE = "Bright Path Therapy (demo)"
GOAL_ACHIEVEMENT = "http://terminology.hl7.org/CodeSystem/goal-achievement"
LOINC = "http://loinc.org"
#: Functional goals a therapist writes, per discipline.
GOALS = {
    "PT": [
        "Walk 500 ft without an assistive device",
        "Climb one flight of stairs with a rail",
        "Return to running 20 minutes without pain",
        "Lift 20 lb from floor to waist",
    ],
    "OT": [
        "Dress the upper body independently",
        "Prepare a simple meal safely",
        "Grip strength enough to open jars",
    ],
    "SLP": [
        "Swallow thin liquids safely",
        "Name 20 common objects",
        "Speak in 5-word sentences",
    ],
}
#: Types only the generator writes (the HL7 samples have none of these).
EPISODE_TYPES = ("EpisodeOfCare", "CarePlan", "Goal", "DocumentReference")


def iso(moment: datetime, tz: timezone = UTC) -> str:
    text = moment.astimezone(tz).isoformat(timespec="seconds")
    return text.replace("+00:00", "Z")


def day(moment: datetime) -> str:
    return moment.date().isoformat()


def meta(version: int, updated: datetime) -> dict[str, str]:
    return {"versionId": str(version), "lastUpdated": iso(min(updated, NOW))}


def concept(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    item = {"system": system, "code": code}
    if display:
        item["display"] = display
    return {"coding": [item]}


def money(value: float) -> dict[str, Any]:
    return {"value": round(value, 2), "currency": "USD"}


class DemoBuilder:
    """Builds the generated part of the data set; one random generator drives every choice."""

    def __init__(self, seed: int = SEED) -> None:
        self.rng = random.Random(seed)
        self.out: dict[str, list[dict[str, Any]]] = {}
        self.invalid_ids: set[str] = set()

    def add(self, resource: dict[str, Any]) -> dict[str, Any]:
        self.out.setdefault(resource["resourceType"], []).append(resource)
        return resource

    # -- directory -------------------------------------------------------------------------------
    def directory(self) -> None:
        self.referrers: list[tuple[str, str]] = []
        for n, name in enumerate(REFERRER_PRACTITIONERS, 1):
            given, family = name.removeprefix("Dr. ").rsplit(" ", 1)
            self.add(
                {
                    "resourceType": "Practitioner",
                    "id": f"demo-referrer-{n}",
                    "meta": meta(1, NOW - WINDOW),
                    "identifier": [{"system": NPI, "value": f"99990{n:05d}"}],
                    "active": True,
                    "name": [{"family": family, "given": [given], "prefix": ["Dr."]}],
                }
            )
            self.referrers.append((f"Practitioner/demo-referrer-{n}", name))
        for n, name in enumerate(REFERRER_ORGS, 1):
            self.add(
                {
                    "resourceType": "Organization",
                    "id": f"demo-referrer-org-{n}",
                    "meta": meta(1, NOW - WINDOW),
                    "active": True,
                    "type": [
                        concept(
                            "http://terminology.hl7.org/CodeSystem/organization-type",
                            "prov",
                            "Healthcare Provider",
                        )
                    ],
                    "name": name,
                }
            )
            self.referrers.append((f"Organization/demo-referrer-org-{n}", name))
        self.therapists: list[tuple[str, str]] = []
        for n, name in enumerate(THERAPISTS, 1):
            full, _, credential = name.partition(", ")
            given, family = full.split(" ", 1)
            self.add(
                {
                    "resourceType": "Practitioner",
                    "id": f"demo-therapist-{n}",
                    "meta": meta(1, NOW - WINDOW),
                    "identifier": [{"system": NPI, "value": f"99991{n:05d}"}],
                    "active": True,
                    "name": [{"family": family, "given": [given], "suffix": credential.split(", ")}],
                }
            )
            self.therapists.append((f"Practitioner/demo-therapist-{n}", name))
        self.payers: list[str] = []
        for n, name in enumerate(PAYERS, 1):
            self.add(
                {
                    "resourceType": "Organization",
                    "id": f"demo-payer-{n}",
                    "meta": meta(1, NOW - WINDOW),
                    "active": True,
                    "type": [
                        concept("http://terminology.hl7.org/CodeSystem/organization-type", "pay", "Payer")
                    ],
                    "name": name,
                }
            )
            self.payers.append(f"Organization/demo-payer-{n}")
        self.add(
            {
                "resourceType": "Organization",
                "id": "demo-practice",
                "meta": meta(1, NOW - WINDOW),
                "active": True,
                "type": [
                    concept(
                        "http://terminology.hl7.org/CodeSystem/organization-type",
                        "prov",
                        "Healthcare Provider",
                    )
                ],
                "name": PRACTICE,
            }
        )

    # -- coverage ----------------------------------------------------------------------------------
    def coverages(self) -> None:
        self.coverage_of: dict[int, tuple[str, str]] = {}  # patient n -> (Coverage ref, payer ref)
        for n in range(1, N_PATIENTS + 1):
            if self.rng.random() < 0.12:  # self-pay patients
                continue
            payer = self.rng.choices(self.payers, weights=[4, 3, 2, 2])[0]
            start = NOW - WINDOW - timedelta(days=self.rng.randint(30, 900))
            cov_id = f"demo-cov-{n}"
            self.add(
                {
                    "resourceType": "Coverage",
                    "id": cov_id,
                    "meta": meta(1, NOW - WINDOW),
                    "status": "active",
                    "type": concept(
                        "http://terminology.hl7.org/CodeSystem/v3-ActCode", "EHCPOL", "extended healthcare"
                    ),
                    "beneficiary": {"reference": f"Patient/demo-{n}"},
                    "relationship": concept(
                        "http://terminology.hl7.org/CodeSystem/subscriber-relationship", "self"
                    ),
                    "period": {"start": day(start)},
                    "payor": [{"reference": payer}],
                    "class": [
                        {
                            "type": concept("http://terminology.hl7.org/CodeSystem/coverage-class", "plan"),
                            "value": f"PLAN-{payer[-1]}{self.rng.randint(1, 3)}",
                        }
                    ],
                }
            )
            self.coverage_of[n] = (f"Coverage/{cov_id}", payer)

    # -- referrals ---------------------------------------------------------------------------------
    def referrals(self) -> None:
        self.referral_facts: list[dict[str, Any]] = []
        names = list(DISCIPLINES)
        weights = [DISCIPLINES[d]["weight"] for d in names]
        for i in range(1, N_REFERRALS + 1):
            discipline = self.rng.choices(names, weights=weights)[0]
            spec = DISCIPLINES[discipline]
            patient = self.rng.randint(1, N_PATIENTS)
            authored = (
                NOW - WINDOW + timedelta(seconds=self.rng.randint(0, int(WINDOW.total_seconds()) - 3600))
            )
            authored = authored.replace(microsecond=0)
            cpt_code, cpt_display = self.rng.choice(spec["cpt"])
            codings = [{"system": CPT, "code": cpt_code, "display": cpt_display}]
            if self.rng.random() < 0.8:  # some EMRs send only the CPT code
                codings.insert(0, {"system": SNOMED, "code": spec["snomed"][0], "display": spec["snomed"][1]})
            reasons = self.rng.sample(spec["reasons"], k=self.rng.choice([1, 1, 2]))
            status = self.rng.choices(
                ["active", "completed", "on-hold", "revoked", "draft"], weights=[60, 25, 5, 5, 5]
            )[0]
            requester_ref, requester_name = self.rng.choice(self.referrers)
            sr_id = f"demo-sr-{i:03d}"
            version = self.rng.choice([1, 1, 2])
            resource: dict[str, Any] = {
                "resourceType": "ServiceRequest",
                "id": sr_id,
                "meta": meta(version, authored + timedelta(minutes=self.rng.randint(1, 60 * 24 * version))),
                "identifier": [{"system": "urn:demo:referral-id", "value": f"REF-{i:05d}"}],
                "status": status,
                "intent": "order",
                "category": [concept(SNOMED, "3457005", "Patient referral")],
                "priority": self.rng.choices(["routine", "urgent"], weights=[85, 15])[0],
                "code": {"coding": codings, "text": f"{discipline} evaluation and treatment"},
                "subject": {"reference": f"Patient/demo-{patient}"},
                "authoredOn": iso(authored, self.rng.choice(LOCAL_TZ)),
                "requester": {"reference": requester_ref, "display": requester_name},
                "reasonCode": [concept(ICD10CM, code, display) for code, display in reasons],
            }
            start = authored + timedelta(days=self.rng.randint(2, 14))
            shape = self.rng.choices(["period", "dateTime", "timing", "none"], weights=[50, 20, 10, 20])[0]
            if shape == "period":
                resource["occurrencePeriod"] = {"start": day(start), "end": day(start + timedelta(days=90))}
            elif shape == "dateTime":
                resource["occurrenceDateTime"] = day(start)
            elif shape == "timing":
                resource["occurrenceTiming"] = {
                    "repeat": {
                        "boundsPeriod": {"start": day(start), "end": day(start + timedelta(weeks=8))},
                        "frequency": self.rng.choice([1, 2, 3]),
                        "period": 1,
                        "periodUnit": "wk",
                    }
                }
            coverage = self.coverage_of.get(patient)
            if coverage and self.rng.random() < 0.92:
                resource["insurance"] = [{"reference": coverage[0]}]
            self.add(resource)
            self.referral_facts.append(
                {
                    "id": sr_id,
                    "patient": patient,
                    "discipline": discipline,
                    "authored": authored,
                    "status": status,
                    "coverage": coverage,
                    "cpt": (cpt_code, cpt_display),
                    "reasons": reasons,
                }
            )

    def invalid_referrals(self) -> None:
        """Referrals a real EMR might send that must end up as dead letters, not rows."""
        base: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "intent": "order",
            "code": concept(SNOMED, "91251008", "Physical therapy procedure"),
            "subject": {"reference": "Patient/demo-1"},
        }
        broken: list[dict[str, Any]] = [
            {"status": "bogus"},
            {"status": "bogus", "priority": "whenever"},
            {"status": "bogus"},
            {"status": "active", "authoredOn": "2026-13-45"},
            # An R5-shaped referral (CodeableReference code, `reason`) sent to an R4 endpoint.
            {
                "status": "active",
                "code": {"concept": concept(SNOMED, "84478008", "Occupational therapy")},
                "reason": [{"concept": concept(ICD10CM, "I63.9")}],
            },
        ]
        for n, changes in enumerate(broken, 1):
            authored = NOW - timedelta(days=self.rng.randint(1, 100))
            resource: dict[str, Any] = {
                "resourceType": "ServiceRequest",
                "id": f"demo-sr-invalid-{n}",
                "meta": meta(1, authored),
            }
            resource |= base | changes
            resource.setdefault("authoredOn", iso(authored))
            self.add(resource)
            self.invalid_ids.add(resource["id"])

    # -- scheduling ---------------------------------------------------------------------------------
    def visits(self) -> None:
        self.encounter_facts: list[dict[str, Any]] = []
        for fact in self.referral_facts:
            if fact["status"] not in ("active", "completed") or self.rng.random() < 0.2:
                continue  # referral leakage: never scheduled
            therapist = (
                self.therapists[3] if fact["discipline"] == "SLP" else self.rng.choice(self.therapists[:3])
            )
            start = (fact["authored"] + timedelta(days=self.rng.randint(3, 21))).replace(
                hour=self.rng.randint(13, 21), minute=self.rng.choice([0, 30]), second=0
            )
            end = start + timedelta(minutes=60)
            if start > NOW:
                status = "booked"
            else:
                status = self.rng.choices(["fulfilled", "noshow", "cancelled"], weights=[75, 12, 13])[0]
            booked_at = fact["authored"] + timedelta(hours=self.rng.randint(2, 48))
            appt_id = f"demo-appt-{fact['id'].removeprefix('demo-sr-')}"
            cpt_code, cpt_display = fact["cpt"]
            self.add(
                {
                    "resourceType": "Appointment",
                    "id": appt_id,
                    "meta": meta(1 if status == "booked" else 2, booked_at if status == "booked" else end),
                    "status": status,
                    # The discipline (SNOMED CT) and the evaluation it is booked for (CPT), so BI can
                    # tell an evaluation from a treatment visit by the appointment alone.
                    "serviceType": [
                        {
                            "coding": [
                                *concept(SNOMED, *DISCIPLINES[fact["discipline"]]["snomed"])["coding"],
                                *concept(CPT, cpt_code, cpt_display)["coding"],
                            ]
                        }
                    ],
                    "appointmentType": concept("http://terminology.hl7.org/CodeSystem/v2-0276", "ROUTINE"),
                    "start": iso(start),
                    "end": iso(end),
                    "minutesDuration": 60,
                    "created": day(booked_at),
                    "basedOn": [{"reference": f"ServiceRequest/{fact['id']}"}],
                    "participant": [
                        {"actor": {"reference": f"Patient/demo-{fact['patient']}"}, "status": "accepted"},
                        {"actor": {"reference": therapist[0], "display": therapist[1]}, "status": "accepted"},
                    ],
                }
            )
            if status != "fulfilled":
                continue
            enc_id = appt_id.replace("appt", "enc")
            self.add(
                {
                    "resourceType": "Encounter",
                    "id": enc_id,
                    "meta": meta(2, end + timedelta(hours=2)),
                    "status": "finished",
                    "class": {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                        "code": "AMB",
                        "display": "ambulatory",
                    },
                    "type": [concept(CPT, cpt_code, cpt_display)],
                    "subject": {"reference": f"Patient/demo-{fact['patient']}"},
                    "basedOn": [{"reference": f"ServiceRequest/{fact['id']}"}],
                    "appointment": [{"reference": f"Appointment/{appt_id}"}],
                    "participant": [{"individual": {"reference": therapist[0], "display": therapist[1]}}],
                    "period": {"start": iso(start), "end": iso(end)},
                    "serviceProvider": {"reference": "Organization/demo-practice"},
                }
            )
            self.encounter_facts.append({**fact, "encounter": enc_id, "start": start, "end": end})

    # -- eligibility -------------------------------------------------------------------------------
    def eligibility(self) -> None:
        checked: set[int] = set()
        for fact in self.referral_facts:
            if not fact["coverage"] or fact["patient"] in checked or self.rng.random() < 0.5:
                continue
            checked.add(fact["patient"])
            created = fact["authored"] + timedelta(hours=self.rng.randint(1, 72))
            cov_ref, payer = fact["coverage"]
            inforce = self.rng.random() > 0.07
            self.add(
                {
                    "resourceType": "CoverageEligibilityResponse",
                    "id": f"demo-elig-{fact['patient']}",
                    "meta": meta(1, created),
                    "status": "active",
                    "purpose": ["validation", "benefits"],
                    "patient": {"reference": f"Patient/demo-{fact['patient']}"},
                    "created": iso(created),
                    "requestor": {"reference": "Organization/demo-practice"},
                    "request": {"reference": f"CoverageEligibilityRequest/demo-elig-{fact['patient']}"},
                    "outcome": "complete",
                    "insurer": {"reference": payer},
                    "insurance": [{"coverage": {"reference": cov_ref}, "inforce": inforce}],
                }
            )

    # -- prior authorization, claims, remittance ------------------------------------------------------
    def _claim(self, claim_id: str, fact: dict[str, Any], use: str, created: datetime, units: int) -> None:
        cov_ref, payer = fact["coverage"]
        cpt_code, cpt_display = fact["cpt"]
        treat_code, treat_display = DISCIPLINES[fact["discipline"]]["treatment"]
        resource: dict[str, Any] = {
            "resourceType": "Claim",
            "id": claim_id,
            "meta": meta(1, created),
            "status": "active",
            "type": concept(CLAIM_TYPE, "professional"),
            "use": use,
            "patient": {"reference": f"Patient/demo-{fact['patient']}"},
            "created": iso(created),
            "insurer": {"reference": payer},
            "provider": {"reference": "Organization/demo-practice"},
            "priority": concept("http://terminology.hl7.org/CodeSystem/processpriority", "normal"),
            "referral": {"reference": f"ServiceRequest/{fact['id']}"},
            "diagnosis": [
                {"sequence": 1, "diagnosisCodeableConcept": concept(ICD10CM, fact["reasons"][0][0])}
            ],
            "insurance": [{"sequence": 1, "focal": True, "coverage": {"reference": cov_ref}}],
            "item": [
                {
                    "sequence": 1,
                    "productOrService": concept(CPT, cpt_code, cpt_display),
                    "quantity": {"value": 1},
                    "unitPrice": money(165),
                    "net": money(165),
                },
                {
                    "sequence": 2,
                    "productOrService": concept(CPT, treat_code, treat_display),
                    "quantity": {"value": units},
                    "unitPrice": money(48),
                    "net": money(48 * units),
                },
            ],
            "total": money(165 + 48 * units),
        }
        if "encounter" in fact:
            resource["item"][0]["encounter"] = [{"reference": f"Encounter/{fact['encounter']}"}]
            resource["billablePeriod"] = {"start": iso(fact["start"]), "end": iso(fact["end"])}
        self.add(resource)

    def _adjudication(
        self, approved: bool, amount: float, reason: tuple[str, str] | None
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = [
            {"category": concept(ADJUDICATION, "submitted"), "amount": money(amount)}
        ]
        if approved:
            items.append({"category": concept(ADJUDICATION, "benefit"), "amount": money(amount * 0.8)})
        elif reason:
            items.append(
                {
                    "category": concept(ADJUDICATION, "benefit"),
                    "amount": money(0),
                    "reason": concept(CARC, reason[0], reason[1]),
                }
            )
        return items

    def prior_authorizations(self) -> None:
        denial_reasons = [
            ("50", "Not medically necessary"),
            ("197", "Precertification/authorization absent"),
            ("B7", "Provider not certified for this procedure"),
        ]
        candidates = [
            f for f in self.referral_facts if f["coverage"] and f["status"] in ("active", "completed")
        ]
        for n, fact in enumerate(self.rng.sample(candidates, k=min(22, len(candidates))), 1):
            created = fact["authored"] + timedelta(days=self.rng.randint(1, 4))
            units = self.rng.choice([8, 12, 16])
            claim_id = f"demo-pa-{n:02d}"
            self._claim(claim_id, fact, "preauthorization", created, units)
            decision = self.rng.choices(["approved", "denied", "pending"], weights=[70, 15, 15])[0]
            if decision == "pending" and created + timedelta(days=10) < NOW:
                decision = "approved"
            responded = created + timedelta(days=self.rng.randint(1, 9))
            if responded > NOW:
                continue  # no answer yet: the demo shows it as pending
            response: dict[str, Any] = {
                "resourceType": "ClaimResponse",
                "id": f"demo-pa-resp-{n:02d}",
                "meta": meta(1, responded),
                "status": "active",
                "type": concept(CLAIM_TYPE, "professional"),
                "use": "preauthorization",
                "patient": {"reference": f"Patient/demo-{fact['patient']}"},
                "created": iso(responded),
                "insurer": {"reference": fact["coverage"][1]},
                "requestor": {"reference": "Organization/demo-practice"},
                "request": {"reference": f"Claim/{claim_id}"},
                "outcome": "queued" if decision == "pending" else "complete",
            }
            if decision == "approved":
                response["preAuthRef"] = f"PA{self.rng.randint(10**7, 10**8 - 1)}"
                response["preAuthPeriod"] = {
                    "start": day(responded),
                    "end": day(responded + timedelta(days=90)),
                }
            if decision != "pending":
                reason = self.rng.choice(denial_reasons) if decision == "denied" else None
                response["item"] = [
                    {
                        "itemSequence": 2,
                        "adjudication": self._adjudication(decision == "approved", 48.0 * units, reason),
                    }
                ]
            self.add(response)

    def claims(self) -> None:
        denial_reasons = [
            ("16", "Claim lacks information needed for adjudication"),
            ("50", "Not medically necessary"),
            ("96", "Non-covered charge(s)"),
            ("197", "Precertification/authorization absent"),
            ("29", "Time limit for filing expired"),
        ]
        billable = [f for f in self.encounter_facts if f["coverage"] and f["end"] + timedelta(days=3) < NOW]
        for n, fact in enumerate(self.rng.sample(billable, k=min(18, len(billable))), 1):
            created = fact["end"] + timedelta(days=self.rng.randint(1, 3))
            claim_id = f"demo-claim-{n:02d}"
            self._claim(claim_id, fact, "claim", created, 1)
            responded = created + timedelta(days=self.rng.randint(7, 30))
            if responded > NOW:
                continue
            denied = self.rng.random() < 0.3
            reason = self.rng.choice(denial_reasons) if denied else None
            common = {
                "meta": meta(1, responded),
                "status": "active",
                "type": concept(CLAIM_TYPE, "professional"),
                "use": "claim",
                "patient": {"reference": f"Patient/demo-{fact['patient']}"},
                "created": iso(responded),
                "insurer": {"reference": fact["coverage"][1]},
                "outcome": "complete",
            }
            items = [
                {"itemSequence": 1, "adjudication": self._adjudication(not denied, 165.0, reason)},
                {"itemSequence": 2, "adjudication": self._adjudication(True, 48.0, None)},
            ]
            self.add(
                {
                    "resourceType": "ClaimResponse",
                    "id": f"demo-claim-resp-{n:02d}",
                    **common,
                    "requestor": {"reference": "Organization/demo-practice"},
                    "request": {"reference": f"Claim/{claim_id}"},
                    "item": items,
                }
            )
            if n % 2 == 0:  # some payers also send an EOB
                self.add(
                    {
                        "resourceType": "ExplanationOfBenefit",
                        "id": f"demo-eob-{n:02d}",
                        **common,
                        "provider": {"reference": "Organization/demo-practice"},
                        "claim": {"reference": f"Claim/{claim_id}"},
                        "claimResponse": {"reference": f"ClaimResponse/demo-claim-resp-{n:02d}"},
                        "insurance": [{"focal": True, "coverage": {"reference": fact["coverage"][0]}}],
                        "item": [
                            {
                                "sequence": 1,
                                "productOrService": concept(CPT, *fact["cpt"]),
                                "adjudication": self._adjudication(not denied, 165.0, reason),
                            },
                        ],
                    }
                )

    # -- the therapy episode ------------------------------------------------------------------------
    def episodes(self) -> None:
        """For each attended evaluation: its episode, plan of care, functional goals and note metadata (no
        note text: the attachments point to Binaries the demo does not hold). A random generator of its
        own, so the rest of the data set stays as it was."""
        rng = random.Random(SEED + 26)
        for n, fact in enumerate(self.encounter_facts, 1):
            sr = {"reference": f"ServiceRequest/{fact['id']}"}
            patient = {"reference": f"Patient/demo-{fact['patient']}"}
            discipline = concept(SNOMED, *DISCIPLINES[fact["discipline"]]["snomed"])
            weeks = rng.choice([4, 6, 8])
            per_week = rng.choice([1, 2, 2, 3])
            end = fact["start"] + timedelta(weeks=weeks)
            finished = end <= NOW and rng.random() < 0.8
            self.add(
                {
                    "resourceType": "EpisodeOfCare",
                    "id": f"demo-ep-{n}",
                    "meta": meta(2 if finished else 1, end if finished else fact["start"]),
                    "status": "finished" if finished else "active",
                    "type": [discipline],
                    "patient": patient,
                    "managingOrganization": {"reference": "Organization/demo-practice"},
                    "period": {"start": iso(fact["start"]), **({"end": iso(end)} if finished else {})},
                    "referralRequest": [sr],
                }
            )
            goal_ids = []
            for g, text in enumerate(rng.sample(GOALS[fact["discipline"]], k=rng.choice([1, 2])), 1):
                goal_id = f"demo-goal-{n}-{g}"
                goal_ids.append(goal_id)
                achieved = (
                    "achieved"
                    if finished and rng.random() < 0.7
                    else rng.choice(["in-progress", "improving"])
                )
                self.add(
                    {
                        "resourceType": "Goal",
                        "id": goal_id,
                        "meta": meta(1, fact["start"]),
                        "lifecycleStatus": "completed" if achieved == "achieved" else "active",
                        "achievementStatus": concept(GOAL_ACHIEVEMENT, achieved),
                        "description": {"text": text},
                        "subject": patient,
                        "startDate": day(fact["start"]),
                        "target": [{"dueDate": day(end)}],
                        "addresses": [sr],
                    }
                )
            self.add(
                {
                    "resourceType": "CarePlan",
                    "id": f"demo-cp-{n}",
                    "meta": meta(1, fact["start"]),
                    "status": "completed" if finished else "active",
                    "intent": "plan",
                    "category": [discipline],
                    "subject": patient,
                    "encounter": {"reference": f"Encounter/{fact['encounter']}"},
                    "period": {"start": day(fact["start"]), "end": day(end)},
                    "goal": [{"reference": f"Goal/{g}"} for g in goal_ids],
                    "activity": [
                        {
                            "reference": sr,
                            "detail": {
                                "status": "completed" if finished else "in-progress",
                                "code": concept(CPT, *DISCIPLINES[fact["discipline"]]["treatment"]),
                                "scheduledTiming": {
                                    "repeat": {
                                        "frequency": per_week,
                                        "period": 1,
                                        "periodUnit": "wk",
                                        "boundsDuration": {"value": weeks, "unit": "wk", "code": "wk"},
                                    }
                                },
                            },
                        }
                    ],
                }
            )
            notes: list[tuple[str, str, str | None, datetime]] = [
                ("eval", f"{fact['discipline']} Initial Evaluation", None, fact["end"])
            ]
            middle = fact["start"] + timedelta(weeks=weeks // 2)
            if middle <= NOW and rng.random() < 0.6:
                notes.append(("progress", "Progress note", "11506-3", middle))
            if finished:
                notes.append(("discharge", "Discharge summary", "18842-5", end))
            for kind, text, loinc, written in notes:
                codes: list[dict[str, Any]] = concept(LOINC, loinc, text)["coding"] if loinc else []
                self.add(
                    {
                        "resourceType": "DocumentReference",
                        "id": f"demo-doc-{n}-{kind}",
                        "meta": meta(1, written),
                        "status": "current",
                        "docStatus": "final",
                        "type": {"coding": codes, "text": text} if codes else {"text": text},
                        "subject": patient,
                        "date": iso(written),
                        "author": [{"reference": "Organization/demo-practice"}],
                        "content": [
                            {
                                "attachment": {
                                    "contentType": "application/pdf",
                                    "url": f"Binary/demo-doc-{n}-{kind}",
                                }
                            }
                        ],
                        "context": {
                            "encounter": [{"reference": f"Encounter/{fact['encounter']}"}]
                            if kind == "eval"
                            else [],
                            "related": [sr],
                        },
                    }
                )

    def build(self) -> dict[str, list[dict[str, Any]]]:
        self.directory()
        self.coverages()
        self.referrals()
        self.invalid_referrals()
        self.visits()
        self.eligibility()
        self.prior_authorizations()
        self.claims()
        self.episodes()
        return self.out


def _shifted(text: str, days: int) -> str:
    match = _DATE.match(text)
    assert match is not None
    month, dom, rest = match.groups()
    moved = date.fromisoformat(f"{month}{dom or '-01'}") + timedelta(days=days)
    return moved.isoformat()[: 10 if dom else 7] + (rest or "")


def _shift(value: Any, days: int, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: v if k in _NOT_SHIFTED else _shift(v, days, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_shift(v, days, key) for v in value]
    if isinstance(value, str) and _DATE.match(value):
        return _shifted(value, days)
    return value


def redate(resource: dict[str, Any]) -> dict[str, Any]:
    """The sample moved by whole days so its anchor date falls inside WINDOW.

    The anchor's day of the window follows from the anchor itself, so examples dated the same day (a Claim,
    its ClaimResponse and EOB of 2014-08-16) stay on one day and keep their order and gaps.
    """
    anchor = None
    for path in SAMPLE_ANCHORS.get(resource["resourceType"], ()):
        value: Any = resource
        for step in path:
            value = value.get(step) if isinstance(value, dict) else None
        match = _DATE.match(value) if isinstance(value, str) else None
        if match:
            anchor = date.fromisoformat(match[1] + (match[2] or "-01"))
            break
    if anchor is None:
        return resource
    first = (NOW - WINDOW).date() + timedelta(days=1)
    target = first + timedelta(days=anchor.toordinal() % (WINDOW.days - 2))
    moved: dict[str, Any] = _shift({k: v for k, v in resource.items() if k != "meta"}, (target - anchor).days)
    # Last updated on its (new) day, so the received date of a referral without authoredOn is in WINDOW too.
    moved["meta"] = {"lastUpdated": f"{target.isoformat()}T12:00:00Z", **resource.get("meta", {})}
    return moved


def read_samples(folder: Path) -> dict[str, list[dict[str, Any]]]:
    samples: dict[str, list[dict[str, Any]]] = {}
    for rtype in SAMPLE_TYPES:
        path = folder / f"{rtype}.ndjson"
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        rows = [redate(row) for row in rows]
        for row in rows:
            row.setdefault("meta", {}).setdefault("lastUpdated", SAMPLE_LAST_UPDATED)
            row["meta"].setdefault("versionId", "1")
        samples[rtype] = rows
    return samples


def check(resources: Iterable[dict[str, Any]], invalid_ids: set[str]) -> None:
    """Every generated resource must validate, and every deliberately invalid one must not."""
    for resource in resources:
        try:
            validate(resource)
        except MappingError as exc:
            if resource["id"] not in invalid_ids:
                raise SystemExit(f"generated resource does not validate: {exc}") from None
        else:
            if resource["id"] in invalid_ids:
                raise SystemExit(f"{resource['resourceType']}/{resource['id']} was meant to be invalid")


def write_gzip_ndjson(path: Path, resources: list[dict[str, Any]]) -> int:
    buffer = io.BytesIO()
    # mtime=0 and no file name in the header: the same data gives the same bytes.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as gz:
        for resource in resources:
            gz.write(orjson.dumps(resource) + b"\n")
    path.write_bytes(buffer.getvalue())
    return len(buffer.getvalue())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--samples", type=Path, default=DEFAULT_SAMPLES, help="folder of HL7 R4 example NDJSON"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write <Type>.ndjson.gz")
    args = parser.parse_args(argv)

    builder = DemoBuilder()
    generated = builder.build()
    check((r for rows in generated.values() for r in rows), builder.invalid_ids)
    samples = read_samples(args.samples)
    check((r for rows in samples.values() for r in rows), set())

    args.out.mkdir(parents=True, exist_ok=True)
    counts: Counter[str] = Counter()
    total_bytes = 0
    for rtype in (*SAMPLE_TYPES, *EPISODE_TYPES):
        rows = samples.get(rtype, []) + generated.get(rtype, [])
        total_bytes += write_gzip_ndjson(args.out / f"{rtype}.ndjson.gz", rows)
        counts[rtype] = len(rows)
    for rtype, count in sorted(counts.items()):
        print(f"{rtype:30} {count:5}  (samples {len(samples.get(rtype, [])):3})")
    size = f"{total_bytes / 1024:.1f} KiB"
    print(f"{'total':30} {sum(counts.values()):5}  {size}, {len(builder.invalid_ids)} invalid on purpose")


if __name__ == "__main__":
    main()
