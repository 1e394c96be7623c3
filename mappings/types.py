"""The types every mapper shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias


@dataclass(frozen=True, slots=True)
class MapContext:
    """What a mapper needs besides the resource; passed in so mappers stay pure (no clock, no config)."""

    endpoint: str
    synced_at: datetime


MappedRecords: TypeAlias = dict[str, list[dict[str, Any]]]
"""Table name -> rows for that table."""

Mapper: TypeAlias = Callable[[dict[str, Any], MapContext], MappedRecords]
