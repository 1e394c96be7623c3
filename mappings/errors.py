"""The mapping layer's one error. `mappings` imports nothing from `connector`, so it lives here;
`connector.errors` re-exports it beside its own hierarchy, and every place that reports connector errors
to a person catches it too."""

from __future__ import annotations


class MappingError(ValueError):
    """A resource failed validation or mapping; the message is one line and holds no resource values."""
