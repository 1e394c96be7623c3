"""httpx authentication for FHIR endpoints: none, Basic, Bearer and SMART Backend Services.

SMART tokens are fetched with the client_credentials grant and a signed JWT assertion. The token
request is yielded from the auth flow, so it travels through the same AsyncClient and transport as
the FHIR requests (one connection pool, and test mocks see it). No token, assertion or key is ever
put into a log line or an error message.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from typing import Any

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from connector.config import AuthSettings
from connector.errors import AuthError, ConfigError, TransientFhirError
from connector.fhir.http import RETRYABLE_STATUSES, url_path

logger = logging.getLogger(__name__)

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: SMART allows at most five minutes; a little less leaves room for clock skew with the server.
ASSERTION_LIFETIME_SECONDS = 270
#: Used when a token response omits expires_in (SMART requires it, some servers forget).
DEFAULT_TOKEN_LIFETIME_SECONDS = 300


class BearerAuth(httpx.Auth):
    """A static bearer token from the configuration."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def __repr__(self) -> str:
        return "BearerAuth(token=***)"

    def auth_flow(self, request: httpx.Request) -> Any:
        request.headers["Authorization"] = self._header
        yield request


class SmartBackendAuth(httpx.Auth):
    """SMART Backend Services: client_credentials grant with a JWT client assertion.

    The access token is cached until `refresh_margin_seconds` before it expires. A 401 from the FHIR
    server triggers one refresh and one retry; a second 401 is returned to the caller (-> AuthError).
    """

    def __init__(
        self,
        *,
        client_id: str,
        token_url: str,
        private_key: Callable[[], str],
        algorithm: str = "RS384",
        key_id: str | None = None,
        scope: str | None = None,
        refresh_margin_seconds: float = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client_id = client_id
        self._token_url = token_url
        self._load_key = private_key
        self._key: str | None = None
        self._algorithm = algorithm
        self._key_id = key_id
        self._scope = scope
        self._margin = refresh_margin_seconds
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        # Concurrent requests share one token; the lock stops them all fetching one at the same time.
        self._lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"SmartBackendAuth(client_id={self._client_id!r}, token_url={url_path(self._token_url)!r})"

    # -- the auth flow ---------------------------------------------------------------------------------

    def sync_auth_flow(self, request: httpx.Request) -> Any:
        raise RuntimeError("SmartBackendAuth works with httpx.AsyncClient only")

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if self._lock is None:
            self._lock = asyncio.Lock()
        if not self._token_is_fresh():
            async with self._lock:
                if not self._token_is_fresh():  # another request may have refreshed while we waited
                    token_response = yield self._token_request()
                    await self._store_token(token_response)
        token = self._token
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code != 401:
            return
        # The server may have revoked the token early or restarted: refresh once, retry once.
        logger.info("FHIR server answered 401; refreshing the SMART access token once")
        async with self._lock:
            if self._token == token:  # nobody else has refreshed it yet
                self._token = None
                token_response = yield self._token_request()
                await self._store_token(token_response)
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request  # a second 401 goes back to the caller, which raises AuthError

    # -- tokens ----------------------------------------------------------------------------------------

    def _token_is_fresh(self) -> bool:
        return self._token is not None and self._clock() < self._expires_at - self._margin

    def client_assertion(self) -> str:
        """A freshly signed JWT assertion (new jti each time, as SMART requires)."""
        if self._key is None:
            self._key = self._load_key()
        now = int(self._clock())
        claims = {
            "iss": self._client_id,
            "sub": self._client_id,
            "aud": self._token_url,
            "exp": now + ASSERTION_LIFETIME_SECONDS,
            "jti": str(uuid.uuid4()),
        }
        try:
            if self._key_id is None:
                self._key_id = key_thumbprint(self._key)
            headers = {"kid": self._key_id}
            return jwt.encode(claims, self._key, algorithm=self._algorithm, headers=headers)
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            # Name the problem, never the key.
            raise ConfigError(
                f"auth private key cannot sign {self._algorithm} assertions ({type(exc).__name__}); "
                "use an RSA key for RS384 and a P-384 EC key for ES384"
            ) from None

    def _token_request(self) -> httpx.Request:
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": self.client_assertion(),
        }
        if self._scope:
            form["scope"] = self._scope
        return httpx.Request("POST", self._token_url, data=form, headers={"Accept": "application/json"})

    async def _store_token(self, response: httpx.Response) -> None:
        await response.aread()
        what = f"token request to {url_path(self._token_url)}"
        if response.status_code in RETRYABLE_STATUSES:
            raise TransientFhirError(f"{what} failed", status=response.status_code)
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            data = {}
        if response.status_code >= 400:
            raise AuthError(f"{what} was refused", status=response.status_code, outcome=_oauth_error(data))
        token = data.get("access_token")
        if not isinstance(token, str) or not token:
            raise AuthError(f"{what} returned no access_token", status=response.status_code)
        try:
            lifetime = float(data.get("expires_in", DEFAULT_TOKEN_LIFETIME_SECONDS))
        except (TypeError, ValueError):  # some servers send junk or a string; be conservative
            lifetime = DEFAULT_TOKEN_LIFETIME_SECONDS
        self._token = token
        self._expires_at = self._clock() + lifetime
        logger.info("obtained a SMART access token valid for %ds", int(lifetime))


#: The members of a public JWK that its RFC 7638 thumbprint hashes, per key type (§3.2).
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK, base64url without padding."""
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    # Required members only, sorted, no whitespace: the canonical form RFC 7638 §3.3 hashes.
    canonical = orjson.dumps(members, option=orjson.OPT_SORT_KEYS)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def key_thumbprint(private_key_pem: str) -> str:
    """The `kid` sent when none is configured: the thumbprint of the key's public half.

    SMART Backend Services requires a `kid`; servers that take a JWKS or a registered public key
    commonly name it by this thumbprint (the SMART reference server and many JWKS tools do).
    """
    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        return jwk_thumbprint(orjson.loads(RSAAlgorithm.to_jwk(public)))
    if isinstance(public, ec.EllipticCurvePublicKey):
        return jwk_thumbprint(orjson.loads(ECAlgorithm.to_jwk(public)))
    raise ValueError("only RSA and EC keys sign SMART assertions")


def _oauth_error(data: dict[str, Any]) -> str | None:
    """`error: error_description` from an OAuth error body (RFC 6749 §5.2), the only parts we show."""
    parts = [str(data[key]) for key in ("error", "error_description") if data.get(key)]
    return ": ".join(parts)[:500] or None


def build_auth(
    settings: AuthSettings, *, default_scope: str | None = None, clock: Callable[[], float] = time.time
) -> httpx.Auth | None:
    """The httpx auth for an endpoint's `[auth]` table; None when the endpoint needs none.

    `default_scope` is asked for when the table names no `scope` (Settings derives one for each endpoint).
    """
    if settings.type == "none":
        return None
    if settings.type == "basic":
        # AuthSettings has already checked that the fields of the chosen type are present.
        assert settings.username is not None
        assert settings.password is not None
        return httpx.BasicAuth(settings.username, settings.password.get_secret_value())
    if settings.type == "bearer":
        assert settings.token is not None
        return BearerAuth(settings.token.get_secret_value())
    assert settings.client_id is not None
    assert settings.token_url is not None
    return SmartBackendAuth(
        client_id=settings.client_id,
        token_url=settings.token_url,
        private_key=settings.load_private_key,
        algorithm=settings.algorithm,
        key_id=settings.key_id,
        scope=settings.scope if settings.scope is not None else default_scope,
        refresh_margin_seconds=settings.refresh_margin_seconds,
        clock=clock,
    )
