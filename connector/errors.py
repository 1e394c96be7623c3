"""The one exception hierarchy of the connector.

Messages never contain request headers, secrets or resource content: they are shown to IT staff,
logged, and stored in `sync_run.error`.
"""

from __future__ import annotations

# The pure mapping layer's error: `mappings` imports nothing from `connector`, so it cannot derive from
# ConnectorError; it is re-exported here, and every place that reports errors to a person catches both.
from mappings.errors import MappingError

__all__ = [
    "AuthError",
    "ConfigError",
    "ConnectorError",
    "FatalFhirError",
    "FhirError",
    "MappingError",
    "SourceFileError",
    "TransientFhirError",
    "WarehouseError",
]


class ConnectorError(Exception):
    """Base of every error the connector raises on purpose."""


class ConfigError(ConnectorError):
    """The configuration file is wrong; the message names the file and the key."""


class FhirError(ConnectorError):
    """A FHIR server answered with an error or something that is not FHIR."""

    def __init__(self, message: str, *, status: int | None = None, outcome: str | None = None) -> None:
        self.status = status
        self.outcome = outcome
        detail = message
        if status is not None:
            detail = f"{detail} (HTTP {status})"
        if outcome:
            detail = f"{detail}: {outcome}"
        super().__init__(detail)


class TransientFhirError(FhirError):
    """Worth retrying: timeouts, connection errors, 408/429/5xx, truncated or malformed pages."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        outcome: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, outcome=outcome)
        self.retry_after = retry_after


class FatalFhirError(FhirError):
    """Retrying will not help: 4xx other than 408/429, an unsafe next link, an unsupported server."""


class AuthError(FatalFhirError):
    """Authentication or authorization failed (token endpoint refused, 401 after a refresh, 403)."""


class SourceFileError(ConnectorError):
    """An NDJSON file (a folder's, or a downloaded export file) cannot be read to its end: a truncated
    gzip stream, corrupt compression. The message names the file, never its content."""


class WarehouseError(ConnectorError):
    """The warehouse cannot be used (unreachable, schema out of date, constraint failure).

    `transient` marks failures a retry may cure (connection lost, database locked); a missing table or a
    constraint violation fails the same way every time.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
