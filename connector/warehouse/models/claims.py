"""Claim facts: claims and their items, the payer's decisions (ClaimResponse / EOB) and denied lines.

Line tables (`claim_item`, `denial`) hold several rows per resource, keyed by the resource key plus the
line; the writer replaces a resource's lines when a newer version arrives. The views also only count a
line whose `content_hash` equals its header row's (`claim`, `claim_adjudication`), as a second guard.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from connector.warehouse.models.base import Base, ResourceRow

#: Money as numeric(12, 2), read back as float (SQLite has no decimal type).
Money = sa.Numeric(12, 2, asdecimal=False)

__all__ = ["Claim", "ClaimAdjudication", "ClaimItem", "Denial"]


class Claim(ResourceRow, Base):
    """One row per Claim of use `claim`: what the practice billed."""

    __tablename__ = "claim"
    __table_args__ = (
        sa.Index(None, "created"),
        sa.Index(None, "identifier"),
        sa.Index(None, "related_claim_ref"),
    )

    status: Mapped[str | None]
    claim_type: Mapped[str | None]
    #: The first business identifier as "system|value" (responses may name the claim by it).
    identifier: Mapped[str | None]
    patient_ref: Mapped[str | None]
    provider_ref: Mapped[str | None]
    insurer_ref: Mapped[str | None]
    #: insurer reference, else its identifier "system|value", else its display.
    payer_key: Mapped[str | None]
    coverage_ref: Mapped[str | None]
    created: Mapped[datetime]
    billable_start: Mapped[datetime | None]
    billable_end: Mapped[datetime | None]
    total_amount: Mapped[float | None] = mapped_column(Money)
    currency: Mapped[str | None]
    item_count: Mapped[int]
    #: "system|code" of every item's service (CPT / HCPCS preferred).
    service_codes: Mapped[list[str]]
    service_request_ref: Mapped[str | None]
    #: The claim this one replaces or corrects (`related.claim`, relationship `prior` first).
    related_claim_ref: Mapped[str | None]
    related_relationship: Mapped[str | None]


class ClaimItem(ResourceRow, Base):
    """One row per Claim item (billed line)."""

    __tablename__ = "claim_item"
    __table_args__ = (sa.Index(None, "product_code"),)

    item_sequence: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    product_system: Mapped[str | None]
    product_code: Mapped[str | None]
    product_display: Mapped[str | None]
    modifiers: Mapped[list[str]]
    quantity: Mapped[float | None] = mapped_column(sa.Float())
    unit_price: Mapped[float | None] = mapped_column(Money)
    net_amount: Mapped[float | None] = mapped_column(Money)
    serviced_date: Mapped[datetime | None]


class ClaimAdjudication(ResourceRow, Base):
    """One row per ClaimResponse or ExplanationOfBenefit of use `claim`: one payer decision."""

    __tablename__ = "claim_adjudication"
    __table_args__ = (
        sa.Index(None, "endpoint", "claim_key"),
        sa.Index(None, "created"),
    )

    status: Mapped[str | None]
    #: queued / complete / error / partial: a processing status, not the payment decision.
    outcome: Mapped[str | None]
    disposition: Mapped[str | None]
    claim_ref: Mapped[str | None]
    claim_identifier: Mapped[str | None]
    #: claim_ref, else "Claim?identifier=system|value", else this response's own Type/id.
    claim_key: Mapped[str]
    claim_response_ref: Mapped[str | None]
    patient_ref: Mapped[str | None]
    insurer_ref: Mapped[str | None]
    payer_key: Mapped[str | None]
    provider_ref: Mapped[str | None]
    created: Mapped[datetime]
    payment_type: Mapped[str | None]
    payment_date: Mapped[datetime | None]
    payment_amount: Mapped[float | None] = mapped_column(Money)
    submitted_amount: Mapped[float | None] = mapped_column(Money)
    benefit_amount: Mapped[float | None] = mapped_column(Money)
    denied_amount: Mapped[float | None] = mapped_column(Money)
    line_count: Mapped[int]
    denied_line_count: Mapped[int]
    paid_in_full: Mapped[bool]


class Denial(ResourceRow, Base):
    """One row per denied or reduced line of a ClaimResponse / EOB (line_key "claim" for the header)."""

    __tablename__ = "denial"
    __table_args__ = (
        sa.Index(None, "endpoint", "claim_key"),
        sa.Index(None, "decided_at"),
        sa.Index(None, "category"),
    )

    #: item-<sequence>, addItem-<position> or claim.
    line_key: Mapped[str] = mapped_column(primary_key=True)
    item_sequence: Mapped[int | None]
    product_code: Mapped[str | None]
    claim_ref: Mapped[str | None]
    claim_identifier: Mapped[str | None]
    claim_key: Mapped[str]
    payer_key: Mapped[str | None]
    outcome: Mapped[str | None]
    disposition: Mapped[str | None]
    #: denied / reduced
    line_outcome: Mapped[str]
    submitted_amount: Mapped[float | None] = mapped_column(Money)
    eligible_amount: Mapped[float | None] = mapped_column(Money)
    benefit_amount: Mapped[float | None] = mapped_column(Money)
    denied_amount: Mapped[float | None] = mapped_column(Money)
    reason_system: Mapped[str | None]
    reason_code: Mapped[str | None]
    group_code: Mapped[str | None]
    reason_known: Mapped[bool]
    reason_codes: Mapped[list[str]]
    remark_codes: Mapped[list[str]]
    category: Mapped[str]
    next_action: Mapped[str]
    decided_at: Mapped[datetime]
