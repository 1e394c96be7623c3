"""The therapy episode: episodes of care, plans of care, functional goals and clinical-note metadata (see
`mappings.episode`). Each row names its referral: from the resource (`referral_link` `reference`), or as
`connector.warehouse.episode_links` infers it after a sync."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from connector.warehouse.models.base import Base, ResourceRow

__all__ = ["CarePlan", "ClinicalNote", "Episode", "Goal"]


class _Linked:
    """The patient, discipline and referral every episode row carries."""

    discipline: Mapped[str]
    patient_ref: Mapped[str | None]
    #: `ServiceRequest/<id>` of the referral the row belongs to.
    referral_ref: Mapped[str | None]
    #: reference (the resource names it) | care_plan | encounter | episode | inferred (patient + discipline)
    referral_link: Mapped[str | None]


class Episode(_Linked, ResourceRow, Base):
    """One row per EpisodeOfCare: a therapy episode."""

    __tablename__ = "episode"
    __table_args__ = (sa.Index(None, "endpoint", "referral_ref"),)

    #: planned | waitlist | active | onhold | finished | cancelled | entered-in-error
    status: Mapped[str | None]
    care_manager_ref: Mapped[str | None]
    managing_organization_ref: Mapped[str | None]
    period_start: Mapped[datetime | None]
    period_end: Mapped[datetime | None]


class CarePlan(_Linked, ResourceRow, Base):
    """One row per CarePlan: the plan of care, without its description or notes."""

    __tablename__ = "care_plan"
    __table_args__ = (sa.Index(None, "endpoint", "referral_ref"),)

    #: draft | active | on-hold | revoked | completed | entered-in-error | unknown
    status: Mapped[str | None]
    intent: Mapped[str | None]
    encounter_ref: Mapped[str | None]
    created_at: Mapped[datetime | None]
    period_start: Mapped[datetime | None]
    period_end: Mapped[datetime | None]
    #: Visits a week of the first activity with a schedule (`scheduledTiming.repeat`).
    visits_per_week: Mapped[float | None] = mapped_column(sa.Float())
    #: Weeks of that schedule (`repeat.boundsDuration`).
    plan_weeks: Mapped[float | None] = mapped_column(sa.Float())
    activities: Mapped[int]
    goal_refs: Mapped[list[str]]


class Goal(_Linked, ResourceRow, Base):
    """One row per Goal: a functional goal and how far the patient got."""

    __tablename__ = "goal"
    __table_args__ = (sa.Index(None, "endpoint", "referral_ref"),)

    lifecycle_status: Mapped[str | None]
    #: goal-achievement code: in-progress | improving | worsening | no-change | achieved | ...
    achievement_status: Mapped[str | None]
    #: The goal in a line (its text or code display, at most 200 characters).
    description: Mapped[str | None]
    description_code: Mapped[str | None]
    start_date: Mapped[datetime | None]
    target_date: Mapped[datetime | None]
    status_date: Mapped[datetime | None]


class ClinicalNote(_Linked, ResourceRow, Base):
    """One row per DocumentReference: which note was written when; never its text or attachments."""

    __tablename__ = "clinical_note"
    __table_args__ = (sa.Index(None, "endpoint", "referral_ref"),)

    #: current | superseded | entered-in-error
    status: Mapped[str | None]
    doc_status: Mapped[str | None]
    type_system: Mapped[str | None]
    type_code: Mapped[str | None]
    #: evaluation | progress | discharge | plan-of-care | other
    note_kind: Mapped[str]
    author_ref: Mapped[str | None]
    encounter_ref: Mapped[str | None]
    note_date: Mapped[datetime | None]
