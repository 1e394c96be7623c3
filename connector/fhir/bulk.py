"""FHIR Bulk Data Access ($export): kick-off → poll (Retry-After capped) → download → DELETE.

    async with FhirClient(endpoint) as fhir:
        export = BulkExport(fhir)
        status_url = await export.kick_off(["ServiceRequest", "Coverage"], since=None)
        manifest = await export.wait_for_manifest(status_url, started_at=kicked_off_at)
        async for page in bulk_pages(export, manifest.files_for("Coverage"), "Coverage", page_size=200,
                                     requires_token=manifest.requires_access_token):
            ...
        await export.cancel(status_url)      # DELETE: the server may drop the files

Only this module's caller (`connector.sync.bulk`) stores anything; this module talks HTTP and reads files.

Safety: the status URL and every file URL must be on the endpoint's server, or on a host listed in
`bulk_allowed_hosts` (a storage bucket). Credentials only ever go to the endpoint's own origin, and only when
the manifest says `requiresAccessToken`; redirects are followed by hand, each hop vetted the same way.
Logs and errors carry URL paths, never query strings (signed storage URLs hold secrets there).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import tempfile
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

from connector.errors import (
    AuthError,
    ConfigError,
    FatalFhirError,
    FhirError,
    SourceFileError,
    TransientFhirError,
)
from connector.fhir.client import FHIR_JSON, FhirClient
from connector.fhir.http import (
    RETRYABLE_STATUSES,
    build_retrying,
    describe,
    outcome_text,
    parse_retry_after,
    raise_for_response,
    transport_error,
    url_path,
)
from connector.fhir.ndjson import NdjsonPage, NdjsonSource
from connector.fhir.paging import origin, resolve
from connector.progress import sink
from mappings.elements import fhir_instant
from mappings.fhir_ids import TYPE_RE

logger = logging.getLogger(__name__)

#: Poll this often when a 202 carries no Retry-After (still capped by `bulk_poll_cap_seconds`).
DEFAULT_POLL_SECONDS = 30.0
#: OperationOutcome issue codes with which a status error means "poll again later", not "the export failed"
#: (the IG asks servers to use a code from the transient branch of IssueType for that).
TRANSIENT_ISSUE_CODES = frozenset(
    {"transient", "lock-error", "no-store", "exception", "timeout", "incomplete", "throttled"}
)
#: Redirect hops followed for one file download.
MAX_REDIRECTS = 3
#: X-Progress is free text from the server: keep what is shown short.
_MAX_PROGRESS_CHARS = 100
_GZIP_MAGIC = b"\x1f\x8b"
_NDJSON_HEADERS = {"Accept": "application/fhir+ndjson", "Accept-Encoding": "gzip"}

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], datetime]


class BulkExportError(FatalFhirError):
    """The export failed on the server, was refused or cannot be used; retrying the same one won't help."""


class BulkDeadlineExceeded(BulkExportError):
    """The export was not complete within `bulk_deadline_hours` of its kick-off."""


class BulkUrlRefused(BulkExportError):
    """A status or file URL points at a host that may not be contacted (SSRF guard)."""


class BulkExportGone(BulkExportError):
    """The status URL answers 404/410: the export expired or was deleted; a new one must be kicked off."""


class BulkTypeRefused(BulkExportError):
    """The kick-off was refused (400) because of one requested type, which the message names."""

    def __init__(self, message: str, *, resource_type: str, status: int | None, outcome: str | None) -> None:
        super().__init__(message, status=status, outcome=outcome)
        self.resource_type = resource_type


@dataclass(frozen=True, slots=True)
class ExportFile:
    """One entry of a manifest's output, deleted or error list."""

    type: str
    url: str
    count: int | None = None

    @property
    def key(self) -> str:
        """How the file is remembered in `sync_state.bulk_files_done`: its path, plus a digest of the full
        URL when it has a query string (which may be a storage signature and must not be stored)."""
        parsed = httpx.URL(self.url)
        if not parsed.query:
            return self.url
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        return f"{url_path(parsed)}#{digest}"


@dataclass(frozen=True, slots=True)
class Manifest:
    """The complete-status body of an export."""

    transaction_time: str
    transaction_at: datetime
    requires_access_token: bool
    output: tuple[ExportFile, ...]
    deleted: tuple[ExportFile, ...] = ()
    error: tuple[ExportFile, ...] = ()

    def files_for(self, resource_type: str) -> list[ExportFile]:
        return [f for f in self.output if f.type == resource_type]

    @property
    def all_files(self) -> tuple[ExportFile, ...]:
        return self.output + self.deleted + self.error


@dataclass(frozen=True, slots=True)
class BulkStatus:
    """One in-progress poll, as shown to whoever watches (counts and the server's X-Progress only)."""

    endpoint: str
    polls: int
    progress: str | None
    #: Seconds until the next poll.
    wait_seconds: float
    #: Seconds since the kick-off.
    elapsed_seconds: float


def export_path(level: str, group_id: str | None) -> str:
    """The kick-off path relative to base_url for an export level."""
    if level == "system":
        return "$export"
    if level == "patient":
        return "Patient/$export"
    if level == "group":
        if not group_id:
            raise ConfigError('bulk_level = "group" needs `bulk_group_id`')
        return f"Group/{group_id}/$export"
    raise ConfigError(f"unknown bulk_level {level!r}")


def kickoff_params(resource_types: Sequence[str], since: datetime | None) -> list[tuple[str, str]]:
    params = [("_type", ",".join(resource_types))]
    if since is not None:
        params.append(("_since", fhir_instant(since)))
    return params


def refused_type(exc: FhirError, resource_types: Sequence[str]) -> str | None:
    """The one requested type a 400 kick-off answer blames, e.g. `The requested resource type
    "ServiceRequest" is not available on this server`; None when it names none, or several."""
    if exc.status != 400 or not exc.outcome:
        return None
    named = [t for t in resource_types if re.search(rf"\b{t}\b", exc.outcome)]
    return named[0] if len(named) == 1 else None


def parse_instant(text: Any, what: str) -> datetime:
    if not isinstance(text, str):
        raise BulkExportError(f"the export manifest has no {what}")
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise BulkExportError(f"the export manifest's {what} {text!r} is not an instant") from None
    if value.tzinfo is None:
        raise BulkExportError(f"the export manifest's {what} {text!r} has no time zone")
    return value


def _files(data: dict[str, Any], key: str, base_url: str) -> tuple[ExportFile, ...]:
    items = data.get(key) or []
    if not isinstance(items, list):
        raise BulkExportError(f"the export manifest's {key} is not a list")
    files = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            raise BulkExportError(f"an entry of the export manifest's {key} has no url")
        kind = item["type"] if isinstance(item.get("type"), str) else ""
        count = item.get("count") if isinstance(item.get("count"), int) else None
        files.append(ExportFile(kind, str(resolve(base_url, item["url"])), count))
    return tuple(files)


def parse_manifest(body: bytes, *, base_url: str) -> Manifest:
    """The manifest of a complete export; raises BulkExportError when it is not one."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise TransientFhirError("the export status answered 200 with a body that is not JSON") from None
    if not isinstance(data, dict):
        raise BulkExportError("the export manifest is not a JSON object")
    requires = data.get("requiresAccessToken")
    output = _files(data, "output", base_url)
    # OperationOutcome files listed as output are error reports all the same, not data to load.
    outcomes = tuple(f for f in output if f.type == "OperationOutcome")
    return Manifest(
        transaction_time=str(data.get("transactionTime")),
        transaction_at=parse_instant(data.get("transactionTime"), "transactionTime"),
        # Absent means we cannot tell: send the token (it only ever goes to the endpoint's own server).
        requires_access_token=requires if isinstance(requires, bool) else True,
        output=tuple(f for f in output if f.type != "OperationOutcome"),
        deleted=_files(data, "deleted", base_url),
        error=_files(data, "error", base_url) + outcomes,
    )


def _issue_codes(body: bytes) -> set[str]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return set()
    if not isinstance(data, dict) or data.get("resourceType") != "OperationOutcome":
        return set()
    return {
        issue["code"]
        for issue in data.get("issue") or []
        if isinstance(issue, dict) and isinstance(issue.get("code"), str)
    }


def is_transient_status_error(status: int, body: bytes) -> bool:
    """Whether an error answer to a status poll means "later" (True) or "the export failed" (False)."""
    codes = _issue_codes(body)
    if codes & TRANSIENT_ISSUE_CODES:
        return True
    if status == 500:
        # Without an OperationOutcome a 500 is the database hiccup it usually is; with a non-transient
        # outcome it is the server telling us the export job failed.
        return not codes
    return status in RETRYABLE_STATUSES


class BulkExport:
    """The $export conversation with one endpoint's server, on top of its FhirClient."""

    def __init__(
        self,
        fhir: FhirClient,
        *,
        sleep: Sleep = asyncio.sleep,
        now: Clock | None = None,
        on_status: Callable[[BulkStatus], None] | None = None,
    ) -> None:
        self.fhir = fhir
        self.endpoint = fhir.endpoint
        self.base_url = fhir.base_url
        self._sleep = sleep
        self._now: Clock = now or (lambda: datetime.now(UTC))
        self._on_status = on_status
        self._allowed = {host.lower().rstrip(".") for host in self.endpoint.bulk_allowed_hosts}
        #: Set when a file download answered 404/410: the server dropped the export's files.
        self.files_gone = False
        #: Status URLs deleted (or found gone) in this run: one DELETE each is enough.
        self._ended: set[str] = set()

    # -- URLs ------------------------------------------------------------------------------------------

    def vet_url(self, url: str, *, what: str) -> bool:
        """True for the endpoint's own origin, False for an allowed storage host; raises for anything else.

        Only URLs on the endpoint's origin may receive credentials.
        """
        parsed = httpx.URL(url)
        base = httpx.URL(self.base_url)
        if origin(parsed) == origin(base):
            return True
        scheme_ok = parsed.scheme == "https" or (parsed.scheme == "http" and base.scheme == "http")
        if scheme_ok and parsed.host.lower().rstrip(".") in self._allowed:
            return False
        port = f":{parsed.port}" if parsed.port else ""
        raise BulkUrlRefused(
            f"refusing {what} on {parsed.scheme}://{parsed.host}{port}: not the endpoint's server "
            "(list the host in bulk_allowed_hosts if it is the server's storage)"
        )

    def vet_manifest(self, manifest: Manifest) -> None:
        """Check every file URL before anything is downloaded."""
        for file in manifest.all_files:
            self.vet_url(file.url, what=f"export file {file.type or '(no type)'}")

    # -- kick-off, status, cancel -----------------------------------------------------------------------

    async def kick_off(
        self, resource_types: Sequence[str], since: datetime | None = None, *, path: str | None = None
    ) -> str:
        """Start an export (at the endpoint's level, or at `path`); returns the absolute status URL
        (Content-Location of the 202)."""
        path = path or export_path(self.endpoint.bulk_level, self.endpoint.bulk_group_id)
        try:
            response = await self.fhir.request(
                "GET",
                path,
                headers={"Accept": FHIR_JSON, "Prefer": "respond-async"},
                params=kickoff_params(resource_types, since),
            )
        except FatalFhirError as exc:
            named = refused_type(exc, resource_types)
            if named is None:
                raise
            raise BulkTypeRefused(
                f"the export kick-off was refused because of {named}",
                resource_type=named,
                status=exc.status,
                outcome=exc.outcome,
            ) from exc
        if response.status_code != 202:
            raise BulkExportError(
                f"{describe('GET', response.request.url)} answered {response.status_code}, "
                "not 202 Accepted: the server did not start an asynchronous export"
            )
        location = response.headers.get("Content-Location")
        if not location:
            raise BulkExportError("the export kick-off answered 202 without a Content-Location")
        status_url = str(resolve(self.base_url, location))
        self.vet_url(status_url, what="the export status URL")
        logger.info(
            "%s: export of %d type(s) kicked off%s",
            self.endpoint.name,
            len(resource_types),
            f" (since {fhir_instant(since)})" if since else "",
        )
        return status_url

    async def wait_for_manifest(self, status_url: str, *, started_at: datetime) -> Manifest:
        """Poll until the export is complete and return its manifest.

        Waits follow Retry-After, each capped at `bulk_poll_cap_seconds`; the export as a whole must be
        complete `bulk_deadline_hours` after `started_at` (stored at kick-off, so a resumed run keeps the
        deadline). Raises BulkDeadlineExceeded, BulkExportGone, AuthError, BulkExportError (the export
        failed: the OperationOutcome's text is in the message) or TransientFhirError (the status URL kept
        failing; the export may still be fine). The caller decides whether to cancel.
        """
        ep = self.endpoint
        authenticated = self.vet_url(status_url, what="the export status URL")
        deadline = started_at + timedelta(hours=ep.bulk_deadline_hours)
        cap = ep.bulk_poll_cap_seconds
        polls = 0
        shown = describe("GET", status_url)
        while True:
            if self._now() >= deadline:
                raise BulkDeadlineExceeded(
                    f"the export kicked off at {fhir_instant(started_at)} was not complete after "
                    f"{ep.bulk_deadline_hours:g} h (bulk_deadline_hours); it is cancelled"
                )
            polls += 1
            # A failing status URL (429, a transient 5xx, the connection) is retried by the same policy as
            # every other request: the endpoint's [retry] settings, Retry-After honoured and capped.
            retrying = build_retrying(ep.retry, sleep=self._sleep, what=shown)
            response: httpx.Response = await retrying(self._poll_once, status_url, shown, authenticated)
            status = response.status_code
            if status == 200:
                return parse_manifest(response.content, base_url=self.base_url)
            if status != 202:
                self._raise_for_status(response, shown, status_url)
                raise BulkExportError(f"{shown} answered {status}; expected 202 or 200")
            shown_progress = (response.headers.get("X-Progress") or "").strip()
            progress = shown_progress[:_MAX_PROGRESS_CHARS] or None
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            wait = DEFAULT_POLL_SECONDS if retry_after is None else retry_after
            remaining = (deadline - self._now()).total_seconds()
            wait = max(0.0, min(wait, cap, remaining))
            self._report(
                BulkStatus(ep.name, polls, progress, wait, (self._now() - started_at).total_seconds())
            )
            await self._sleep(wait)

    async def _poll_once(self, status_url: str, shown: str, authenticated: bool) -> httpx.Response:
        """One status request; an answer that means "ask again soon" raises TransientFhirError."""
        response = await self.fhir.send(
            "GET", status_url, headers={"Accept": FHIR_JSON}, authenticated=authenticated
        )
        status = response.status_code
        if status >= 400 and is_transient_status_error(status, response.content):
            raise TransientFhirError(
                f"{shown} failed",
                status=status,
                outcome=outcome_text(response.content),
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        return response

    def _raise_for_status(self, response: httpx.Response, shown: str, status_url: str) -> None:
        status = response.status_code
        outcome = outcome_text(response.content)
        if status in (404, 410):
            self._ended.add(status_url)  # nothing left to DELETE
            raise BulkExportGone(
                f"{shown}: the export is gone (expired or deleted)", status=status, outcome=outcome
            )
        if status in (401, 403):
            raise AuthError(f"{shown} was refused", status=status, outcome=outcome)
        if status >= 400:
            raise BulkExportError("the export failed on the server", status=status, outcome=outcome)

    def _report(self, status: BulkStatus) -> None:
        logger.info(
            "%s: export in progress (poll %d%s), next poll in %.0fs",
            status.endpoint,
            status.polls,
            f", {status.progress}" if status.progress else "",
            status.wait_seconds,
        )
        if self._on_status is not None:
            self._on_status(status)
        # Optional hook: a progress sink that shows exports implements `bulk_progress`.
        show = getattr(sink(), "bulk_progress", None)
        if callable(show):
            show(status.endpoint, status.progress, status.wait_seconds)

    async def cancel(self, status_url: str) -> bool:
        """DELETE the export (done, failed or abandoned) so the server can drop its files; never raises.

        Returns whether the server accepted (2xx, or 404/410: already gone). An export already deleted, or
        whose status URL answered 404/410, in this run is not sent a second DELETE.
        """
        if status_url in self._ended:
            return True
        shown = describe("DELETE", status_url)
        try:
            authenticated = self.vet_url(status_url, what="the export status URL")
            response = await self.fhir.send("DELETE", status_url, authenticated=authenticated)
        except FhirError as exc:
            logger.warning("%s: %s", self.endpoint.name, exc)
            return False
        if response.status_code < 300 or response.status_code in (404, 410):
            self._ended.add(status_url)
            logger.info("%s: export deleted on the server (%d)", self.endpoint.name, response.status_code)
            return True
        logger.warning("%s: %s answered %d", self.endpoint.name, shown, response.status_code)
        return False

    # -- download ---------------------------------------------------------------------------------------

    async def download(self, file: ExportFile, directory: Path, *, requires_token: bool) -> Path:
        """Stream one file to `directory`, retried from the start on transient failures.

        The file is written whole before anything reads it, so a download that breaks half-way loads
        nothing twice. Returns `<type>.ndjson` or `<type>.ndjson.gz` (gzip bodies are recognised by their
        magic bytes; Content-Encoding: gzip is decoded on the fly by httpx).
        """
        retrying = build_retrying(self.endpoint.retry, sleep=self._sleep, what=describe("GET", file.url))
        path: Path = await retrying(self._download_once, file, directory, requires_token)
        return path

    async def _download_once(self, file: ExportFile, directory: Path, requires_token: bool) -> Path:
        part = directory / "download.part"
        url = file.url
        for _hop in range(MAX_REDIRECTS + 1):
            same_origin = self.vet_url(url, what=f"export file {file.type or '(no type)'}")
            authenticated = same_origin and requires_token
            shown = describe("GET", url)
            try:
                async with self.fhir.stream(
                    "GET", url, headers=_NDJSON_HEADERS, authenticated=authenticated
                ) as response:
                    if response.is_redirect and response.headers.get("Location"):
                        url = str(response.url.join(response.headers["Location"]))
                        continue
                    if response.status_code >= 300:
                        await response.aread()
                        self._raise_download_error(response, authenticated)
                    with part.open("wb") as out:
                        async for chunk in response.aiter_bytes():
                            out.write(chunk)
            except (httpx.TransportError, httpx.DecodingError) as exc:
                if isinstance(exc, httpx.DecodingError):
                    raise TransientFhirError(f"{shown} failed: the body could not be decoded") from exc
                raise transport_error(exc, shown) from exc
            with part.open("rb") as stream:
                gzipped = stream.read(2) == _GZIP_MAGIC
            # The name tells the NDJSON reader the type; only a plain type name goes into a path.
            stem = file.type if TYPE_RE.fullmatch(file.type) else "export"
            final = directory / f"{stem}.ndjson{'.gz' if gzipped else ''}"
            part.replace(final)
            return final
        raise BulkExportError(f"export file {file.type}: more than {MAX_REDIRECTS} redirects")

    def _raise_download_error(self, response: httpx.Response, authenticated: bool) -> None:
        if response.status_code in (404, 410):
            self.files_gone = True
        if response.status_code in (401, 403) and not authenticated:
            raise AuthError(
                f"{describe('GET', response.request.url)} was refused without credentials "
                "(they are only sent to the endpoint's own server)",
                status=response.status_code,
            )
        raise_for_response(response)
        raise BulkExportError(f"{describe('GET', response.request.url)} answered {response.status_code}")


async def bulk_pages(
    export: BulkExport,
    files: Sequence[ExportFile],
    resource_type: str,
    *,
    page_size: int,
    requires_token: bool,
    check_count: bool = True,
) -> AsyncGenerator[NdjsonPage, None]:
    """The pages of `resource_type` in `files`: each file is downloaded whole, then read `page_size` lines
    at a time by the NDJSON reader (lines that are not JSON become `bad_lines`, i.e. dead letters).

    A file that cannot be read to its end, or (with `check_count`) whose lines of `resource_type` are not
    the manifest's `count` of it, raises SourceFileError after its last page: its rows stand, the stream
    fails. Meant for `connector.sync.pipeline.run_stream`; close it (`contextlib.aclosing`) to remove the
    temporary copy early when the consumer stops half-way.
    """
    number = 0
    for file in files:
        lines = 0
        with tempfile.TemporaryDirectory(prefix="connector-bulk-") as tmp:
            await export.download(file, Path(tmp), requires_token=requires_token)
            try:
                async for page in NdjsonSource(Path(tmp), page_size).pages(resource_type):
                    if not page.resources and not page.bad_lines:
                        continue
                    number += 1
                    lines += len(page.resources) + len(page.bad_lines)
                    yield replace(page, number=number)
            except SourceFileError as exc:
                raise SourceFileError(f"export file {url_path(file.url)}: {exc}") from None
        if check_count and file.count is not None and lines != file.count:
            # Lines of another type, or a file cut short: the type is not all here.
            raise SourceFileError(
                f"export file {url_path(file.url)} holds {lines} {resource_type} line(s); "
                f"the manifest's count is {file.count}"
            )
    if number == 0:
        yield NdjsonPage([], number=1)
