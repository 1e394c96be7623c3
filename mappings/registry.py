"""The explicit list of mapped resource types: adding a type is adding one entry to each dict."""

from __future__ import annotations

from mappings.referral import map_service_request
from mappings.types import Mapper

MAPPERS: dict[str, Mapper] = {
    "ServiceRequest": map_service_request,
}

# Tables each mapper writes, so the writer knows which tables a stream touches before the first row.
TARGET_TABLES: dict[str, tuple[str, ...]] = {
    "ServiceRequest": ("referral",),
}
