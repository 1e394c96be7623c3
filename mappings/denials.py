"""Denials subject: Claim (use = claim) -> claim, ClaimResponse / ExplanationOfBenefit -> denial.

The mappers live in `mappings.claim` (claims and their items) and `mappings.adjudication` (the payer's
decisions and their denied lines); this module lists them for `mappings.registry`.
"""

from __future__ import annotations

from mappings.adjudication import map_adjudication
from mappings.claim import map_claim
from mappings.types import Mapper

#: Resource type -> mappers of this subject (gathered by `mappings.registry`).
MAPPERS: dict[str, tuple[Mapper, ...]] = {
    "Claim": (map_claim,),
    "ClaimResponse": (map_adjudication,),
    "ExplanationOfBenefit": (map_adjudication,),
}
TARGET_TABLES: dict[str, tuple[str, ...]] = {
    "Claim": ("claim", "claim_item"),
    "ClaimResponse": ("claim_adjudication", "denial"),
    "ExplanationOfBenefit": ("claim_adjudication", "denial"),
}
