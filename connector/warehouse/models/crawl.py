"""Which patients a per-patient crawl has searched, per stream: a patient not here yet is crawled in full."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Mapped, mapped_column

from connector.warehouse.models.base import Base


class PatientCrawl(Base):
    """One row per endpoint, stream and patient searched in full by `patient`."""

    __tablename__ = "patient_crawl"

    endpoint: Mapped[str] = mapped_column(primary_key=True)
    resource_type: Mapped[str] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(primary_key=True)
    #: When the patient was first searched in full.
    crawled_at: Mapped[datetime]
    #: The run that searched the patient in full, until it succeeds (then NULL: the patient is crawled
    #: from the watermark from then on). A failed run leaves it set, so the next one searches them in full.
    pending_run: Mapped[str | None]
