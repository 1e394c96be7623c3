"""Which patients a per-patient crawl has searched, per stream: a patient not here yet is crawled in full."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Mapped, mapped_column

from connector.warehouse.models.base import Base


class PatientCrawl(Base):
    """One row per endpoint, stream and patient whose search by `patient` has completed once."""

    __tablename__ = "patient_crawl"

    endpoint: Mapped[str] = mapped_column(primary_key=True)
    resource_type: Mapped[str] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(primary_key=True)
    #: When the stream's first complete run with this patient finished.
    crawled_at: Mapped[datetime]
