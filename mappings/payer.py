"""Payer subject: Coverage -> eligibility, CoverageEligibilityResponse -> eligibility_check,
pre-authorization Claim / ClaimResponse -> prior authorizations.

CoverageEligibilityRequest has no mapper: it is validated and kept in `raw_resource` only, because the
response carries everything the metrics need (coverage, patient, date, outcome).
"""

from __future__ import annotations

from mappings.eligibility import map_coverage, map_eligibility_response
from mappings.prior_auth import map_preauth_claim, map_preauth_response
from mappings.types import Mapper

#: Resource type -> mappers of this subject (gathered by `mappings.registry`).
MAPPERS: dict[str, tuple[Mapper, ...]] = {
    "Coverage": (map_coverage,),
    "CoverageEligibilityResponse": (map_eligibility_response,),
    "Claim": (map_preauth_claim,),
    "ClaimResponse": (map_preauth_response,),
}
TARGET_TABLES: dict[str, tuple[str, ...]] = {
    "Coverage": ("eligibility",),
    "CoverageEligibilityResponse": ("eligibility_check",),
    "Claim": ("prior_auth_request", "prior_auth_request_item"),
    "ClaimResponse": ("prior_auth_response", "prior_auth_response_item"),
}
