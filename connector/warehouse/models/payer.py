"""Payer facts: eligibility (Coverage), eligibility checks and prior authorizations.

A pre-authorization request (Claim) and its decision (ClaimResponse) live in separate tables keyed by their
own resources, so the order they arrive in cannot matter; the `prior_authorization` view joins them.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from connector.warehouse.models.base import Base, ResourceRow

__all__ = [
    "Eligibility",
    "EligibilityCheck",
    "PriorAuthRequest",
    "PriorAuthRequestItem",
    "PriorAuthResponse",
    "PriorAuthResponseItem",
]


class Eligibility(ResourceRow, Base):
    """One row per Coverage."""

    __tablename__ = "eligibility"
    __table_args__ = (sa.Index(None, "patient_ref"), sa.Index(None, "payer_key"))

    status: Mapped[str | None]
    type_code: Mapped[str | None]
    patient_ref: Mapped[str | None]
    #: sha256 hex of subscriberId: for matching, the id itself is not stored unless configured.
    subscriber_id_hash: Mapped[str | None]
    subscriber_id: Mapped[str | None]
    relationship: Mapped[str | None]
    #: 'self-pay', the payor reference, else its identifier ("system|value"), else its display.
    payer_key: Mapped[str | None]
    payor_ref: Mapped[str | None]
    payor_type: Mapped[str | None]
    payor_display: Mapped[str | None]
    payor_identifier: Mapped[str | None]
    payor_refs: Mapped[list[str]]
    plan_value: Mapped[str | None]
    plan_name: Mapped[str | None]
    group_value: Mapped[str | None]
    group_name: Mapped[str | None]
    #: "class type|value" of every Coverage.class.
    classes: Mapped[list[str]]
    network: Mapped[str | None]
    coverage_order: Mapped[int | None]
    period_start: Mapped[datetime | None]
    period_end: Mapped[datetime | None]


class EligibilityCheck(ResourceRow, Base):
    """One row per CoverageEligibilityResponse."""

    __tablename__ = "eligibility_check"
    __table_args__ = (sa.Index(None, "coverage_ref"), sa.Index(None, "patient_ref", "verified_at"))

    status: Mapped[str | None]
    outcome: Mapped[str | None]
    purpose: Mapped[list[str]]
    patient_ref: Mapped[str | None]
    coverage_ref: Mapped[str | None]
    coverage_refs: Mapped[list[str]]
    request_ref: Mapped[str | None]
    insurer_ref: Mapped[str | None]
    insurer_display: Mapped[str | None]
    disposition: Mapped[str | None] = mapped_column(sa.Text())
    inforce: Mapped[bool | None]
    verified_at: Mapped[datetime]
    serviced_at: Mapped[datetime | None]
    pt_allowed_visits: Mapped[int | None]
    pt_used_visits: Mapped[int | None]
    ot_allowed_visits: Mapped[int | None]
    ot_used_visits: Mapped[int | None]
    st_allowed_visits: Mapped[int | None]
    st_used_visits: Mapped[int | None]
    authorization_required: Mapped[bool | None]
    error_codes: Mapped[list[str]]


class PriorAuthRequest(ResourceRow, Base):
    """One row per Claim with use = preauthorization."""

    __tablename__ = "prior_auth_request"
    __table_args__ = (sa.Index(None, "requested_at"),)

    status: Mapped[str | None]
    priority: Mapped[str | None]
    patient_ref: Mapped[str | None]
    coverage_ref: Mapped[str | None]
    payer_key: Mapped[str | None]
    insurer_ref: Mapped[str | None]
    insurer_display: Mapped[str | None]
    insurer_identifier: Mapped[str | None]
    provider_ref: Mapped[str | None]
    referral_ref: Mapped[str | None]
    requested_at: Mapped[datetime]
    items_requested: Mapped[int]
    units_requested: Mapped[float] = mapped_column(sa.Float())
    service_codes: Mapped[list[str]]


class PriorAuthRequestItem(ResourceRow, Base):
    """One row per Claim.item of a pre-authorization request."""

    __tablename__ = "prior_auth_request_item"

    sequence: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    service_system: Mapped[str | None]
    service_code: Mapped[str | None]
    units: Mapped[float] = mapped_column(sa.Float())


class PriorAuthResponse(ResourceRow, Base):
    """One row per ClaimResponse with use = preauthorization."""

    __tablename__ = "prior_auth_response"
    __table_args__ = (sa.Index(None, "request_ref"), sa.Index(None, "pre_auth_end"))

    status: Mapped[str | None]
    outcome: Mapped[str | None]
    #: approved / modified / partial / denied / not_required / pending / cancelled / error / unknown
    decision: Mapped[str]
    review_actions: Mapped[list[str]]
    request_ref: Mapped[str | None]
    patient_ref: Mapped[str | None]
    coverage_ref: Mapped[str | None]
    payer_key: Mapped[str | None]
    insurer_ref: Mapped[str | None]
    insurer_display: Mapped[str | None]
    insurer_identifier: Mapped[str | None]
    responded_at: Mapped[datetime]
    pre_auth_ref: Mapped[str | None]
    pre_auth_start: Mapped[datetime | None]
    pre_auth_end: Mapped[datetime | None]
    disposition: Mapped[str | None] = mapped_column(sa.Text())
    items_decided: Mapped[int]
    items_approved: Mapped[int]
    error_codes: Mapped[list[str]]


class PriorAuthResponseItem(ResourceRow, Base):
    """One row per ClaimResponse.item / addItem of a pre-authorization response."""

    __tablename__ = "prior_auth_response_item"

    line: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    item_sequence: Mapped[int | None]
    added: Mapped[bool]
    service_system: Mapped[str | None]
    service_code: Mapped[str | None]
    review_action: Mapped[str | None]
    decision: Mapped[str | None]
    units_authorized: Mapped[float | None] = mapped_column(sa.Float())
    covered_amount: Mapped[float | None] = mapped_column(sa.Float())
