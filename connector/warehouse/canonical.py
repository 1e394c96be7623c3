"""The canonical JSON of a resource and its hash: what tells two versions of a resource apart."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson


def content_hash(resource: dict[str, Any]) -> str:
    """sha256 hex of the resource as JSON with sorted keys, so key order does not matter."""
    return hashlib.sha256(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)).hexdigest()
