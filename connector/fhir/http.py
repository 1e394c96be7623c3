"""The one place that decides whether a FHIR HTTP failure is worth retrying, and how long to wait.

Everything here is about *classification* and *policy*; sending requests lives in `client.py`.
Error messages name the method, the URL path (never the query string, which may hold patient
identifiers) and the OperationOutcome text; they never contain request headers or tokens.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from connector.config import RetrySettings
from connector.errors import AuthError, FatalFhirError, TransientFhirError
from mappings.elements import object_at

logger = logging.getLogger(__name__)

#: Statuses worth retrying. 500 is on the list on purpose: many FHIR servers (HAPI, vendor EMRs)
#: answer 500 to transient database trouble such as lock timeouts or a failed-over replica.
RETRYABLE_STATUSES: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})

#: Transport errors that will not get better by trying again (a bad URL scheme, our own bug).
_NON_RETRYABLE_TRANSPORT: tuple[type[httpx.TransportError], ...] = (
    httpx.UnsupportedProtocol,
    httpx.LocalProtocolError,
)

#: Keep error messages readable when a server returns a huge OperationOutcome.
_MAX_OUTCOME_CHARS = 500

Sleep = Callable[[float], Awaitable[None]]


def url_path(url: httpx.URL | str) -> str:
    """The URL without query string or fragment: what we allow in logs and error messages."""
    parsed = httpx.URL(url) if isinstance(url, str) else url
    return str(parsed.copy_with(query=None, fragment=None))


def describe(method: str, url: httpx.URL | str) -> str:
    """`GET https://host/fhir/Patient`: a request as it may appear in a log line or error."""
    return f"{method.upper()} {url_path(url)}"


def outcome_text(body: bytes) -> str | None:
    """The human text of an OperationOutcome body (diagnostics, details), or None if it is not one."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("resourceType") != "OperationOutcome":
        return None
    texts: list[str] = []
    for issue in data.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        details = object_at(issue, "details")
        candidates = [issue.get("diagnostics"), details.get("text")]
        candidates += [c.get("display") for c in details.get("coding") or [] if isinstance(c, dict)]
        for text in candidates:
            if isinstance(text, str) and text.strip() and text.strip() not in texts:
                texts.append(text.strip())
    if not texts:
        return None
    joined = "; ".join(texts)
    return joined if len(joined) <= _MAX_OUTCOME_CHARS else joined[: _MAX_OUTCOME_CHARS - 1] + "…"


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date; None if absent/invalid."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT
        when = when.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


def raise_for_response(response: httpx.Response) -> None:
    """Raise the connector error for a non-success response; return quietly on 1xx-3xx.

    The response body must already be read (non-streaming send).
    """
    status = response.status_code
    if status < 400:
        return
    what = describe(response.request.method, response.request.url)
    outcome = outcome_text(response.content)
    if status in RETRYABLE_STATUSES:
        raise TransientFhirError(
            f"{what} failed",
            status=status,
            outcome=outcome,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    if status in (401, 403):
        raise AuthError(f"{what} was refused", status=status, outcome=outcome)
    raise FatalFhirError(f"{what} failed", status=status, outcome=outcome)


def transport_error(exc: httpx.TransportError, what: str) -> TransientFhirError | FatalFhirError:
    """Map an httpx transport exception onto our hierarchy (the caller raises it `from exc`)."""
    # Only the class name: httpx messages are safe today, but they are not ours to vouch for.
    reason = type(exc).__name__
    if isinstance(exc, _NON_RETRYABLE_TRANSPORT):
        return FatalFhirError(f"{what} failed: {reason}")
    return TransientFhirError(f"{what} failed: {reason}")


def backoff_seconds(settings: RetrySettings, attempt: int, *, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform(0, min(max, initial * 2**(attempt-1)))."""
    ceiling = min(settings.max_backoff_seconds, settings.initial_backoff_seconds * 2 ** (attempt - 1))
    return (rng or random).uniform(0.0, ceiling)


def build_retrying(
    settings: RetrySettings,
    *,
    sleep: Sleep,
    what: str,
    rng: random.Random | None = None,
) -> AsyncRetrying:
    """The tenacity policy for one logical request; only `TransientFhirError` is retried.

    Stops after `max_attempts`, or when the next wait would push the total waited past
    `max_total_wait_seconds`; then raises a `TransientFhirError` carrying the last status.
    """

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TransientFhirError) and exc.retry_after is not None:
            # The server knows best when it will be back, but a hostile or buggy value must not stall us.
            return min(exc.retry_after, settings.retry_after_cap_seconds)
        return backoff_seconds(settings, state.attempt_number, rng=rng)

    def stop(state: RetryCallState) -> bool:
        # tenacity computes the wait before asking stop, so upcoming_sleep is the wait about to happen.
        if state.attempt_number >= settings.max_attempts:
            return True
        return state.idle_for + state.upcoming_sleep > settings.max_total_wait_seconds

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        status = getattr(exc, "status", None)
        logger.warning(
            "%s: %s, retrying in %.1fs (attempt %d of %d)",
            what,
            f"HTTP {status}" if status is not None or exc is None else type(exc.__cause__ or exc).__name__,
            state.upcoming_sleep,
            state.attempt_number,
            settings.max_attempts,
        )

    def give_up(state: RetryCallState) -> Any:
        exc = state.outcome.exception() if state.outcome else None
        assert isinstance(exc, TransientFhirError)
        reason = "" if exc.status is not None else f" ({type(exc.__cause__ or exc).__name__})"
        raise TransientFhirError(
            f"{what} still failing after {state.attempt_number} attempt(s){reason}",
            status=exc.status,
            outcome=exc.outcome,
            retry_after=exc.retry_after,
        ) from exc

    return AsyncRetrying(
        sleep=sleep,
        stop=stop,
        wait=wait,
        retry=retry_if_exception_type(TransientFhirError),
        before_sleep=before_sleep,
        retry_error_callback=give_up,
    )
