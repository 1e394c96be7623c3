"""Denials subject: Claim (use = claim) -> claim, ClaimResponse / ExplanationOfBenefit -> denial."""

from __future__ import annotations

from mappings.types import Mapper

#: Resource type -> mappers of this subject (gathered by `mappings.registry`).
MAPPERS: dict[str, tuple[Mapper, ...]] = {}
TARGET_TABLES: dict[str, tuple[str, ...]] = {}
