"""One declarative spec per FHIR resource type: everything the connector knows about a type, in one place.

Pure data, no I/O. Every other registry is derived from `SPECS`: the types config accepts and syncs by
default (`connector.config`), the streams and their date parameters (`connector.streams`), the elements
`validation = "mapped"` checks (`mappings.validate_mapped`), the required code bindings
(`mappings.validate`), the mappers and the tables they write (`mappings.registry`) and the SMART scopes
push-back needs. CONTRIBUTING.md ("Adding a resource type") lists the files a new type touches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from mappings.adjudication import map_adjudication
from mappings.claim import map_claim
from mappings.eligibility import map_coverage, map_eligibility_response
from mappings.episode import map_care_plan, map_clinical_note, map_episode, map_goal
from mappings.patient import map_patient
from mappings.prior_auth import map_preauth_claim, map_preauth_response
from mappings.referral import map_appointment, map_encounter, map_referral_source, map_service_request
from mappings.types import Mapper

#: stream: searched (or exported) on its own; directory: a referral source, brought by a referral's
#: `_include` from a server and read as a stream of its own from a folder; pushed: written back, never read.
Role = Literal["stream", "directory", "pushed"]


def _codes(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _frozen(mapping: Mapping[str, str] | None = None) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, slots=True)
class ResourceSpec:
    resource_type: str
    role: Role = "stream"
    #: Synced when an endpoint's `resources` is not set.
    default: bool = False
    #: Date search parameter -> the element it compares (FHIR R4 search specs), for servers without
    #: `_lastUpdated`; an endpoint's `date_params` picks one of these.
    date_params: Mapping[str, str] = field(default_factory=_frozen)
    #: The parameter used when `date_params` names none for this type.
    date_param: str | None = None
    #: Search `_include`s fetched with the stream (resources referenced by the matches).
    includes: tuple[str, ...] = ()
    #: Top-level elements the mappers (and the pipeline) read, with every variant of a read choice element
    #: and the `_x` extension sibling of every read primitive: what `validation = "mapped"` checks.
    read_elements: tuple[str, ...] = ()
    #: Required bindings (FHIR R4 value sets) of top-level code elements the warehouse reports on; a value
    #: outside the set makes the resource invalid (the pydantic models do not check bindings).
    required_codes: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))
    #: Mappers, run in this order on each valid resource; none: validated and kept in raw_resource only.
    mappers: tuple[Mapper, ...] = ()
    #: Tables the mappers write.
    tables: tuple[str, ...] = ()
    #: The endpoint switch (a setting or property) that makes push-back write this type.
    pushed_by: str | None = None

    def __post_init__(self) -> None:
        if self.date_param is not None and self.date_param not in self.date_params:
            raise ValueError(f"{self.resource_type}: date_param {self.date_param!r} is not in date_params")
        if bool(self.mappers) != bool(self.tables):
            raise ValueError(f"{self.resource_type}: mappers and tables go together")


_FM_STATUS = _codes("active cancelled draft entered-in-error")
_CLAIM_USE = _codes("claim preauthorization predetermination")
_RESPONSE_OUTCOME = _codes("queued complete error partial")
_REQUEST_STATUS = _codes("draft active on-hold revoked completed entered-in-error unknown")
_ORDER_INTENTS = "plan order original-order reflex-order filler-order instance-order option"
_REQUEST_INTENT = _codes(f"proposal directive {_ORDER_INTENTS}")
_REQUEST_PRIORITY = _codes("routine urgent asap stat")
_FM = MappingProxyType({"status": _FM_STATUS})
_FM_USE = MappingProxyType({"status": _FM_STATUS, "use": _CLAIM_USE})
_FM_USE_OUTCOME = MappingProxyType({"status": _FM_STATUS, "use": _CLAIM_USE, "outcome": _RESPONSE_OUTCOME})
_CREATED = _frozen({"created": "created"})

SPECS: tuple[ResourceSpec, ...] = (
    ResourceSpec(
        "ServiceRequest",
        default=True,
        date_params=_frozen({"authored": "authoredOn"}),
        date_param="authored",
        includes=("ServiceRequest:requester",),
        # mappings.referral (+ intake, referral_source for a contained requester), pipeline: status
        read_elements=(
            "status", "_status", "intent", "_intent", "priority", "_priority", "category", "code",
            "subject", "requester", "performer", "performerType", "insurance",
            "occurrenceDateTime", "_occurrenceDateTime", "occurrencePeriod", "occurrenceTiming",
            "authoredOn", "_authoredOn", "reasonCode", "reasonReference", "basedOn", "replaces", "note",
            "contained",
        ),
        required_codes=MappingProxyType(
            {"status": _REQUEST_STATUS, "intent": _REQUEST_INTENT, "priority": _REQUEST_PRIORITY}
        ),
        mappers=(map_service_request,),
        tables=("referral", "referral_source"),
    ),
    ResourceSpec(
        "Appointment",
        default=True,
        date_params=_frozen({"date": "start"}),
        date_param="date",
        # mappings.visit
        read_elements=(
            "status", "_status", "participant", "serviceType", "appointmentType", "basedOn",
            "start", "_start", "created", "_created",
        ),
        required_codes=MappingProxyType({"status": _codes(
            "proposed pending booked arrived fulfilled cancelled noshow entered-in-error checked-in waitlist"
        )}),
        mappers=(map_appointment,),
        tables=("visit",),
    ),
    ResourceSpec(
        "Encounter",
        default=True,
        date_params=_frozen({"date": "period.start"}),
        date_param="date",
        read_elements=(
            "status", "_status", "subject", "type", "serviceType", "period", "appointment", "basedOn",
        ),
        required_codes=MappingProxyType({"status": _codes(
            "planned arrived triaged in-progress onleave finished cancelled entered-in-error unknown"
        )}),
        mappers=(map_encounter,),
        tables=("visit",),
    ),
    ResourceSpec(
        "Coverage",
        default=True,
        date_params=_frozen({"period": "period.start"}),
        # mappings.eligibility (payer_fields reads a #contained payor)
        read_elements=(
            "status", "_status", "type", "beneficiary", "subscriberId", "_subscriberId", "relationship",
            "payor", "class", "network", "_network", "order", "_order", "period", "contained",
        ),
        required_codes=_FM,
        mappers=(map_coverage,),
        tables=("eligibility",),
    ),
    ResourceSpec(
        "CoverageEligibilityResponse",
        default=True,
        date_params=_CREATED,
        date_param="created",
        read_elements=(
            "status", "_status", "outcome", "_outcome", "purpose", "_purpose", "patient", "request",
            "insurer", "created", "_created", "disposition", "_disposition", "servicedDate",
            "_servicedDate", "servicedPeriod", "insurance", "error", "contained",
        ),
        required_codes=MappingProxyType({"status": _FM_STATUS, "outcome": _RESPONSE_OUTCOME}),
        mappers=(map_eligibility_response,),
        tables=("eligibility_check",),
    ),
    ResourceSpec(
        "Claim",
        default=True,
        date_params=_CREATED,
        date_param="created",
        # mappings.prior_auth (use = preauthorization) and mappings.claim (use = claim)
        read_elements=(
            "status", "_status", "use", "_use", "type", "priority", "identifier", "patient", "provider",
            "insurer", "insurance", "created", "_created", "billablePeriod", "total", "item", "related",
            "referral", "supportingInfo", "extension", "contained",
        ),
        required_codes=_FM_USE,
        mappers=(map_preauth_claim, map_claim),
        tables=("prior_auth_request", "prior_auth_request_item", "claim", "claim_item"),
    ),
    ResourceSpec(
        "ClaimResponse",
        default=True,
        date_params=_CREATED,
        date_param="created",
        # mappings.prior_auth (use = preauthorization) and mappings.adjudication (use = claim)
        read_elements=(
            "status", "_status", "use", "_use", "outcome", "_outcome", "created", "_created", "request",
            "requestor", "patient", "insurer", "insurance", "payment", "adjudication", "total", "item",
            "addItem", "error", "disposition", "_disposition", "preAuthRef", "_preAuthRef", "preAuthPeriod",
            "extension", "contained",
        ),
        required_codes=_FM_USE_OUTCOME,
        mappers=(map_preauth_response, map_adjudication),
        tables=("prior_auth_response", "prior_auth_response_item", "claim_adjudication", "denial"),
    ),
    ResourceSpec(
        "ExplanationOfBenefit",
        default=True,
        date_params=_CREATED,
        date_param="created",
        # mappings.adjudication; it reads `error` of an ExplanationOfBenefit too, which R4 does not define:
        # listed, so a resource carrying one is invalid (as in strict mode) instead of feeding denial rows.
        read_elements=(
            "status", "_status", "use", "_use", "outcome", "_outcome", "created", "_created", "claim",
            "claimResponse", "patient", "provider", "insurer", "payment", "adjudication", "total", "item",
            "addItem", "disposition", "_disposition", "error",
        ),
        required_codes=_FM_USE_OUTCOME,
        mappers=(map_adjudication,),
        tables=("claim_adjudication", "denial"),
    ),
    # mappings.episode: the therapy episode, linked to its referral
    ResourceSpec(
        "EpisodeOfCare",
        default=True,
        date_params=_frozen({"date": "period"}),
        date_param="date",
        read_elements=(
            "status", "_status", "type", "patient", "careManager", "managingOrganization", "period",
            "referralRequest",
        ),
        required_codes=MappingProxyType({"status": _codes(
            "planned waitlist active onhold finished cancelled entered-in-error"
        )}),
        mappers=(map_episode,),
        tables=("episode",),
    ),
    ResourceSpec(
        "CarePlan",
        default=True,
        date_params=_frozen({"date": "period"}),
        date_param="date",
        read_elements=(
            "status", "_status", "intent", "_intent", "category", "subject", "encounter", "created",
            "_created", "period", "basedOn", "supportingInfo", "activity", "goal",
        ),
        required_codes=MappingProxyType({
            "status": _REQUEST_STATUS, "intent": _codes("proposal plan order option"),
        }),
        mappers=(map_care_plan,),
        tables=("care_plan",),
    ),
    ResourceSpec(
        "Goal",
        default=True,
        date_params=_frozen({"start-date": "startDate", "target-date": "target.dueDate"}),
        date_param="start-date",
        read_elements=(
            "lifecycleStatus", "_lifecycleStatus", "achievementStatus", "description", "category",
            "subject", "startDate", "_startDate", "startCodeableConcept", "target", "statusDate",
            "_statusDate", "addresses",
        ),
        required_codes=MappingProxyType({"lifecycleStatus": _codes(
            "proposed planned accepted active on-hold completed cancelled entered-in-error rejected"
        )}),
        mappers=(map_goal,),
        tables=("goal",),
    ),
    ResourceSpec(
        "DocumentReference",
        default=True,
        date_params=_frozen({"date": "date", "period": "context.period"}),
        date_param="date",
        read_elements=(
            "status", "_status", "docStatus", "_docStatus", "type", "subject", "date", "_date", "author",
            "context",
        ),
        required_codes=MappingProxyType({
            "status": _codes("current superseded entered-in-error"),
            "docStatus": _codes("preliminary final amended entered-in-error"),
        }),
        mappers=(map_clinical_note,),
        tables=("clinical_note",),
        # Also written: the case summary, with `case_summary = "document-reference"`.
        pushed_by="sends_summary_documents",
    ),
    # mappings.referral_source
    ResourceSpec(
        "Practitioner",
        role="directory",
        read_elements=("qualification", "name", "identifier", "active", "_active"),
        mappers=(map_referral_source,),
        tables=("referral_source",),
    ),
    ResourceSpec(
        "PractitionerRole",
        role="directory",
        read_elements=(
            "code", "specialty", "practitioner", "organization", "identifier", "active", "_active",
        ),
        mappers=(map_referral_source,),
        tables=("referral_source",),
    ),
    ResourceSpec(
        "Organization",
        role="directory",
        read_elements=("type", "name", "_name", "partOf", "identifier", "active", "_active"),
        mappers=(map_referral_source,),
        tables=("referral_source",),
    ),
    # mappings.patient: demographics without names, addresses or full birth dates; not synced by default.
    ResourceSpec(
        "Patient",
        read_elements=(
            "active", "_active", "gender", "_gender", "birthDate", "_birthDate", "deceasedBoolean",
            "_deceasedBoolean", "deceasedDateTime", "_deceasedDateTime", "communication",
            "managingOrganization",
        ),
        required_codes=MappingProxyType({"gender": _codes("male female other unknown")}),
        mappers=(map_patient,),
        tables=("patient",),
    ),
    # Written by push-back: validated before they are sent.
    ResourceSpec(
        "Task",
        role="pushed",
        pushed_by="push_acknowledgments",
        required_codes=MappingProxyType({
            "status": _codes(
                "draft requested received accepted rejected ready cancelled in-progress on-hold failed"
                " completed entered-in-error"
            ),
            "intent": _codes(f"unknown proposal {_ORDER_INTENTS}"),
            "priority": _REQUEST_PRIORITY,
        }),
    ),
    ResourceSpec(
        "Communication",
        role="pushed",
        pushed_by="sends_communications",
        required_codes=MappingProxyType({"status": _codes(
            "preparation in-progress not-done on-hold stopped completed entered-in-error unknown"
        )}),
    ),
    ResourceSpec(
        "MeasureReport",
        role="pushed",
        pushed_by="push_metrics",
        required_codes=MappingProxyType({
            "status": _codes("complete pending error"),
            "type": _codes("individual subject-list summary data-collection"),
        }),
    ),
)  # fmt: skip

BY_TYPE: Mapping[str, ResourceSpec] = MappingProxyType({s.resource_type: s for s in SPECS})
if len(BY_TYPE) != len(SPECS):
    raise ValueError("a resource type has two specs")

#: Types an endpoint may list in `resources`, in sync order.
SYNCED_TYPES: tuple[str, ...] = tuple(s.resource_type for s in SPECS if s.role != "pushed")
DEFAULT_TYPES: tuple[str, ...] = tuple(s.resource_type for s in SPECS if s.default)
DIRECTORY_TYPES: tuple[str, ...] = tuple(s.resource_type for s in SPECS if s.role == "directory")
