"""The types every mapper shares."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, TypeAlias

#: The standard referral intake items (issue: intake checklist); an endpoint may require fewer or others.
DEFAULT_INTAKE_ITEMS: tuple[str, ...] = (
    "diagnosis",
    "referral_reason",
    "payer",
    "requested_start",
    "referrer",
    "patient",
)


@dataclass(frozen=True, slots=True)
class MappingOptions:
    """Per-endpoint mapping choices from the config (`[endpoints.mapping]`); frozen and picklable."""

    #: Extra "system|code" -> discipline (PT / OT / SLP / other), on top of the shipped code map.
    discipline_codes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: Intake items a referral must have to count as complete.
    intake_required: tuple[str, ...] = DEFAULT_INTAKE_ITEMS
    #: Keep Coverage.subscriberId in clear text; by default only its hash is stored.
    keep_subscriber_id: bool = False
    #: "strict": the whole resource is validated (fhir.resources R4B); "mapped": only what the mappers
    #: read, plus resourceType, id and meta (see `mappings.validate_mapped`).
    validation: str = "strict"
    #: The endpoint's own evaluation visits (`[endpoints.visits]`): codes ("system|code", or a bare code
    #: of any system) and words of the visit's type text (lower case), used where the shipped code map
    #: does not decide.
    evaluation_codes: tuple[str, ...] = ()
    evaluation_text: tuple[str, ...] = ()

    def __reduce__(self) -> tuple[Any, ...]:
        # MappingProxyType does not pickle; rebuild from a plain dict.
        return (
            MappingOptions,
            (
                dict(self.discipline_codes),
                self.intake_required,
                self.keep_subscriber_id,
                self.validation,
                self.evaluation_codes,
                self.evaluation_text,
            ),
        )


@dataclass(frozen=True, slots=True)
class MapContext:
    """What a mapper needs besides the resource, passed in so mappers stay pure (no clock, no config)."""

    endpoint: str
    synced_at: datetime
    options: MappingOptions = field(default_factory=MappingOptions)
    #: The content hash of the resource being mapped, when the caller has it already (the pipeline takes
    #: it for the stored payload): `mappings.referral.resource_hash` then does not take it again.
    resource_hash: str | None = None
    #: The resource as canonical JSON, when the caller has it (the pipeline, for the stored payload):
    #: validation reads the resource's nesting depth from it instead of serializing it again.
    resource_json: bytes | None = None


MappedRecords: TypeAlias = dict[str, list[dict[str, Any]]]
"""Table name -> rows for that table."""

Mapper: TypeAlias = Callable[[dict[str, Any], MapContext], MappedRecords]
"""A mapper gets a resource that `mappings.validate.validate` already accepted."""
