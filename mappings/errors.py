"""The mapping layer's one error. `mappings` imports nothing from `connector`, so it lives here;
`connector.errors` re-exports it beside its own hierarchy, and every place that reports connector errors
to a person catches it too. Not a ValueError: a mapper tripping over a shape raises ValueError, which the
pipeline tells apart from a resource the mappers refused."""

from __future__ import annotations


class MappingError(Exception):
    """A resource failed validation or mapping; the message is one line and holds no resource values."""
