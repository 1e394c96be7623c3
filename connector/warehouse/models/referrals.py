"""Referral facts: referrals (ServiceRequest); referral sources and visits arrive with the referrals issue."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from connector.warehouse.models.base import Base


class Referral(Base):
    """One row per ServiceRequest: a referral to the practice."""

    __tablename__ = "referral"
    __table_args__ = (
        sa.Index(None, "authored_on"),
        sa.Index(None, "requester_ref"),
    )

    endpoint: Mapped[str] = mapped_column(primary_key=True)
    resource_type: Mapped[str] = mapped_column(primary_key=True)
    resource_id: Mapped[str] = mapped_column(primary_key=True)
    version_id: Mapped[str | None]
    last_updated: Mapped[datetime | None]
    content_hash: Mapped[str]
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
    loaded_at: Mapped[datetime]
