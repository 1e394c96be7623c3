"""The async FHIR R4 client: one httpx.AsyncClient per endpoint per run, retried and authenticated.

    async with FhirClient(endpoint) as fhir:
        cap = await fhir.capabilities()
        async for page in fhir.search("ServiceRequest", {"_lastUpdated": "ge2026-01-01T00:00:00Z"}):
            ...

Logs carry counts, page numbers, status codes and URL paths; never query strings, headers or resources.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from functools import cache
from types import TracebackType
from typing import Any

import httpx
import orjson

from connector import __version__
from connector.config import EndpointSettings, requested_scope
from connector.errors import ConfigError, FatalFhirError
from connector.fhir.auth import build_auth
from connector.fhir.http import build_retrying, describe, raise_for_response, transport_error
from connector.fhir.page import Page
from connector.fhir.paging import NextLinkGuard, check_same_origin, read_page
from mappings.fhir_ids import TYPE_RE

# httpx logs every request with its full URL (query string included) at INFO: search parameters can
# hold patient identifiers, so keep those loggers quiet whatever the root level is.
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)

logger = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
USER_AGENT = f"therapy-fhir-connector/{__version__}"


Params = Mapping[str, str] | Sequence[tuple[str, str]]


@cache
def _verifying_context() -> ssl.SSLContext:
    """The TLS context that verifies servers (the CA bundle httpx uses), built once per process: loading
    the bundle takes ~40 ms, and every stream of every run opens a client."""
    return httpx.create_ssl_context(verify=True)


class FhirClient:
    """Talks to one FHIR server; use as `async with FhirClient(endpoint) as fhir: ...`."""

    def __init__(
        self,
        endpoint: EndpointSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if endpoint.base_url is None:
            raise ConfigError(f"endpoint {endpoint.name!r} has no base_url (it reads NDJSON files)")
        self.endpoint = endpoint
        self.base_url: str = endpoint.base_url.rstrip("/")
        self._transport = transport
        self._sleep = sleep
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> FhirClient:
        ep = self.endpoint
        t = ep.timeouts
        if not ep.verify_tls:
            # On every run, so a setting left over from a test install does not go unnoticed.
            logger.warning(
                "endpoint %s: TLS certificate verification is OFF (verify_tls = false); "
                "anyone on the network path can read and alter its traffic, credentials included",
                ep.name,
            )
        self._client = httpx.AsyncClient(
            auth=build_auth(
                ep.auth, default_scope=requested_scope(ep, [ep] if ep.push_endpoint is None else [])
            ),
            headers={"Accept": FHIR_JSON, "User-Agent": USER_AGENT},
            timeout=httpx.Timeout(connect=t.connect, read=t.read, write=t.write, pool=t.pool),
            limits=httpx.Limits(
                max_connections=ep.max_connections, max_keepalive_connections=ep.max_connections
            ),
            verify=_verifying_context() if ep.verify_tls else False,
            transport=self._transport,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("FhirClient is not open; use `async with FhirClient(endpoint) as fhir:`")
        return self._client

    # -- public API ------------------------------------------------------------------------------------

    async def capabilities(self) -> dict[str, Any]:
        """GET [base]/metadata: the server's CapabilityStatement."""
        url = httpx.URL(f"{self.base_url}/metadata")
        response = await self._with_retries("GET", url)
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict) or data.get("resourceType") != "CapabilityStatement":
            raise FatalFhirError(
                f"GET {url} did not return a CapabilityStatement; is base_url the FHIR R4 root?",
                status=response.status_code,
            )
        return data

    async def search(self, resource_type: str, params: Params) -> AsyncGenerator[Page, None]:
        """GET [base]/{type}?params, then follow Bundle.link[next] verbatim, one Page at a time.

        `_count` is set from `page_size` (within the profile's limit) unless the caller gave one. Pages
        keep their entries unparsed (`Page.body`): they are parsed where the page is mapped, once.
        """
        if not TYPE_RE.fullmatch(resource_type):
            raise ValueError(f"not a FHIR resource type: {resource_type!r}")
        items = list(params.items()) if isinstance(params, Mapping) else list(params)
        if not any(key == "_count" for key, _ in items):
            items.append(("_count", str(self.endpoint.search_count())))
        url = httpx.URL(f"{self.base_url}/{resource_type}", params=items)
        guard = NextLinkGuard(self.base_url)
        number = 1
        fetched = 0
        while True:
            guard.visit(url)
            page, link = await self._with_retries("GET", url, page=number)
            fetched += page.counts[0]
            outcomes = page.counts[2]
            if outcomes:
                logger.warning(
                    "%s search page %d carries %d OperationOutcome warning(s)",
                    resource_type,
                    number,
                    outcomes,
                )
            yield page
            if link is None:
                break
            following = guard.next_url(link, page_number=number)
            if following is None:
                break
            url = following
            number += 1
        logger.info("%s search: %d page(s), %d resource(s)", resource_type, number, fetched)

    async def request(
        self,
        method: str,
        url_or_path: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        params: Params | None = None,
    ) -> httpx.Response:
        """An authenticated, retried request (write-back of Task / MeasureReport).

        Relative paths resolve against base_url; absolute URLs must be on the endpoint's server.
        Returns the response for 1xx-3xx; raises FatalFhirError / AuthError / TransientFhirError otherwise.
        POSTs are retried too: write-back uses conditional create, so a repeat does not duplicate.
        """
        url = self._absolute(url_or_path)
        if params is not None:
            url = url.copy_merge_params(params if isinstance(params, Mapping) else list(params))
        send_headers = dict(headers or {})
        content: bytes | None = None
        if json is not None:
            content = orjson.dumps(json)
            if not any(k.lower() == "content-type" for k in send_headers):
                send_headers["Content-Type"] = FHIR_JSON
        response: httpx.Response = await self._with_retries(
            method.upper(), url, content=content, headers=send_headers
        )
        return response

    async def send(
        self,
        method: str,
        url_or_path: str,
        *,
        headers: Mapping[str, str] | None = None,
        authenticated: bool = True,
    ) -> httpx.Response:
        """One request, neither retried nor classified: the caller reads the status (Bulk status polls,
        where 202, 429 and a 500 with a transient OperationOutcome all mean "ask again later").

        Authenticated requests must stay on the endpoint's server; unauthenticated ones may go to another
        host the caller has vetted (they never carry the Authorization header). Redirects are not followed.
        Transport failures raise TransientFhirError / FatalFhirError.
        """
        url = (
            self._with_fixed_params(self._absolute(url_or_path)) if authenticated else httpx.URL(url_or_path)
        )
        try:
            return await self._http.request(
                method,
                url,
                headers=headers,
                follow_redirects=False,
                auth=httpx.USE_CLIENT_DEFAULT if authenticated else None,
            )
        except httpx.TransportError as exc:
            raise transport_error(exc, describe(method, url)) from exc

    def stream(
        self,
        method: str,
        url_or_path: str,
        *,
        headers: Mapping[str, str] | None = None,
        authenticated: bool = True,
    ) -> AbstractAsyncContextManager[httpx.Response]:
        """A streaming request (Bulk file downloads), as `send`: not retried, not classified, no redirects.

        Use as `async with fhir.stream("GET", url) as response: async for chunk in response.aiter_bytes()`.
        """
        url = self._absolute(url_or_path) if authenticated else httpx.URL(url_or_path)
        return self._http.stream(
            method,
            url,
            headers=headers,
            follow_redirects=False,
            auth=httpx.USE_CLIENT_DEFAULT if authenticated else None,
        )

    # -- internals -------------------------------------------------------------------------------------

    def _absolute(self, url_or_path: str) -> httpx.URL:
        url = httpx.URL(url_or_path)
        if url.is_absolute_url:
            # Credentials go with every request: never to another server.
            check_same_origin(self.base_url, url, what="a request")
            return url
        return httpx.URL(f"{self.base_url}/{url_or_path.lstrip('/')}")

    def _with_fixed_params(self, url: httpx.URL) -> httpx.URL:
        """The URL with the profile's parameters for every request (athenahealth's `ah-practice`); a next
        link that carries them already is left as it is."""
        missing = {k: v for k, v in self.endpoint.fixed_params() if k not in url.params}
        return url.copy_merge_params(missing) if missing else url

    async def _with_retries(self, method: str, url: httpx.URL, **kwargs: Any) -> Any:
        url = self._with_fixed_params(url)
        retrying = build_retrying(self.endpoint.retry, sleep=self._sleep, what=describe(method, url))
        return await retrying(self._send_once, method, url, **kwargs)

    async def _send_once(
        self,
        method: str,
        url: httpx.URL,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        page: int | None = None,
    ) -> Any:
        """One attempt: send, classify, and (for search page number `page`) read the page and its next
        link, so a broken page is refetched."""
        try:
            response = await self._http.request(
                method,
                url,
                content=content,
                headers=headers,
                # GETs may follow redirects (httpx drops Authorization across origins); writes must not.
                follow_redirects=method == "GET",
            )
        except httpx.TransportError as exc:
            raise transport_error(exc, describe(method, url)) from exc
        raise_for_response(response)
        if page is not None:
            return read_page(response.content, url=url, number=page)
        return response
