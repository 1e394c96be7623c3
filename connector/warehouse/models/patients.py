"""Patient demographics that group patients without identifying them (see `mappings.patient`)."""

from __future__ import annotations

from sqlalchemy.orm import Mapped

from connector.warehouse.models.base import Base, ResourceRow

__all__ = ["Patient"]


class Patient(ResourceRow, Base):
    """One row per Patient: no name, address, telecom, identifier or full birth date."""

    __tablename__ = "patient"

    active: Mapped[bool | None]
    #: male / female / other / unknown (administrative gender)
    gender: Mapped[str | None]
    #: NULL when unknown or when the patient is 90 or older (then `age_90_or_over`).
    birth_year: Mapped[int | None]
    age_90_or_over: Mapped[bool | None]
    deceased: Mapped[bool | None]
    #: BCP-47 code of the preferred language (`communication.language`), e.g. `es`.
    language: Mapped[str | None]
    managing_organization_ref: Mapped[str | None]
