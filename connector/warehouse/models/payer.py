"""Payer facts: eligibility (Coverage), eligibility checks and prior authorizations."""

from __future__ import annotations

from connector.warehouse.models.base import Base

__all__ = ["Base"]
