"""Claim facts: claims, denials and the denial work queue."""

from __future__ import annotations

from connector.warehouse.models.base import Base

__all__ = ["Base"]
