"""The canonical JSON of a resource and its hash: what tells two versions of a resource apart."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson


def canonical_json(resource: dict[str, Any]) -> bytes:
    """The resource as JSON with sorted keys: what is stored, and what its hash is taken of."""
    return orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)


def digest(canonical: bytes) -> str:
    return hashlib.sha256(canonical).hexdigest()


def content_hash(resource: dict[str, Any]) -> str:
    """sha256 hex of the resource as JSON with sorted keys, so key order does not matter."""
    return digest(canonical_json(resource))
