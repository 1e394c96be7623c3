"""Referral facts: referrals (ServiceRequest), referral sources (who referred) and visits (what followed)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped

from connector.warehouse.models.base import Base, ResourceRow


class Referral(ResourceRow, Base):
    """One row per ServiceRequest: a referral to the practice."""

    __tablename__ = "referral"
    __table_args__ = (
        sa.Index(None, "authored_on"),
        sa.Index(None, "requester_ref"),
        sa.Index(None, "source_ref"),
    )

    status: Mapped[str | None]
    intent: Mapped[str | None]
    priority: Mapped[str | None]
    category_code: Mapped[str | None]
    authored_on: Mapped[datetime | None]
    requested_start: Mapped[datetime | None]
    patient_ref: Mapped[str | None]
    requester_ref: Mapped[str | None]
    requester_display: Mapped[str | None]
    service_system: Mapped[str | None]
    service_code: Mapped[str | None]
    service_display: Mapped[str | None]
    #: "system|code" strings of reasonCode.
    reason_codes: Mapped[list[str]]
    #: The first insurance reference; all of them are in `coverage_refs`.
    coverage_ref: Mapped[str | None]
    coverage_refs: Mapped[list[str]]
    #: `Type/id` of reasonReference (Conditions, Observations).
    reason_refs: Mapped[list[str] | None]
    #: PT / OT / SLP / other, from the service and performer-type codes (NULL only before 0002 re-maps).
    discipline: Mapped[str | None]
    #: The first performer reference.
    performer_ref: Mapped[str | None]
    based_on_refs: Mapped[list[str] | None]
    replaces_refs: Mapped[list[str] | None]
    #: `referral_source.source_ref` of the requester; NULL for self-referrals and without a requester.
    source_ref: Mapped[str | None]
    #: `self` / `unknown` / a contained requester's type; otherwise NULL (see the joined referral_source).
    source_type: Mapped[str | None]
    #: Required intake items the referral lacks (JSON list, in the configured order).
    intake_missing: Mapped[list[str] | None]
    intake_complete: Mapped[bool | None]


class ReferralSource(ResourceRow, Base):
    """One row per Practitioner, PractitionerRole or Organization that may refer (and per contained one)."""

    __tablename__ = "referral_source"
    __table_args__ = (sa.Index(None, "endpoint", "source_ref"),)

    #: "<resource_type>/<resource_id>", what `referral.source_ref` points at.
    source_ref: Mapped[str]
    name: Mapped[str | None]
    #: physician / clinic / hospital / school / case_manager / other
    source_type: Mapped[str]
    npi: Mapped[str | None]
    practitioner_ref: Mapped[str | None]
    organization_ref: Mapped[str | None]
    #: A PractitionerRole's `practitioner.display` / `organization.display`: the names `v_source_names`
    #: falls back on where that Practitioner or Organization is not synced.
    practitioner_display: Mapped[str | None]
    organization_display: Mapped[str | None]
    #: "system|code" of the codes the type was read from.
    type_codes: Mapped[list[str]]
    active: Mapped[bool | None]


class Visit(ResourceRow, Base):
    """One row per Appointment or Encounter of a patient; linked to its referral when basedOn one."""

    __tablename__ = "visit"
    __table_args__ = (
        sa.Index(None, "endpoint", "referral_ref"),
        sa.Index(None, "endpoint", "patient_ref"),
        sa.Index(None, "start_at"),
    )

    #: "ServiceRequest/<id>": the first basedOn ServiceRequest, else the referral inferred by
    #: `mappings.visit_links` (patient + discipline + window); NULL when neither.
    referral_ref: Mapped[str | None]
    #: How `referral_ref` was found: basedOn, inferred; NULL without a referral.
    referral_link: Mapped[str | None]
    patient_ref: Mapped[str]
    #: evaluation / treatment / other
    kind: Mapped[str]
    #: Which rule decided `kind`: code (the shipped code map), config (the endpoint's evaluation codes or
    #: words), inferred (the first visit after the referral; `mappings.visit_links`); NULL when none did.
    kind_source: Mapped[str | None]
    #: PT / OT / SLP / other, from the visit's codes.
    discipline: Mapped[str]
    #: booked / fulfilled / noshow / cancelled / other
    status: Mapped[str]
    fhir_status: Mapped[str | None]
    start_at: Mapped[datetime | None]
    #: When the appointment was made (Appointment.created); NULL for Encounters.
    booked_at: Mapped[datetime | None]
    #: Encounter.appointment: the Appointment this Encounter took place for.
    appointment_ref: Mapped[str | None]
    type_codes: Mapped[list[str]]
