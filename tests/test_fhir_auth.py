"""Basic, Bearer and SMART Backend Services auth through FhirClient on a respx router."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from connector.config import AuthSettings, EndpointSettings, Settings
from connector.errors import AuthError, ConfigError
from connector.fhir.auth import BearerAuth, SmartBackendAuth, build_auth, jwk_thumbprint
from connector.fhir.client import FhirClient

BASE = "https://emr.example.org/fhir/R4"
TOKEN_URL = "https://emr.example.org/oauth2/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


async def no_wait(_: float) -> None:
    return None


def pem_pair(algorithm: str) -> tuple[str, Any]:
    """A fresh private key (PEM) and its public key object, made for this test run."""
    key: Any
    if algorithm == "RS384":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return pem, key.public_key()


_RSA_PEM, _RSA_PUBLIC = pem_pair("RS384")


def smart_endpoint(pem: str = _RSA_PEM, **auth: Any) -> EndpointSettings:
    settings: dict[str, Any] = {
        "type": "smart-backend",
        "client_id": "connector-client",
        "token_url": TOKEN_URL,
        "private_key": pem,
        "scope": "system/Coverage.read",
    }
    settings.update(auth)
    return EndpointSettings.model_validate({"name": "clinic", "base_url": BASE, "auth": settings})


def token_response(token: str, expires_in: int = 3600) -> httpx.Response:
    return httpx.Response(200, json={"access_token": token, "token_type": "bearer", "expires_in": expires_in})


def form(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.content.decode()).items()}


def get_many(settings: EndpointSettings, count: int = 1, *, concurrent: bool = False) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        async with FhirClient(settings, sleep=no_wait) as client:
            if concurrent:
                return list(
                    await asyncio.gather(*(client.request("GET", "Coverage/c1") for _ in range(count)))
                )
            return [await client.request("GET", "Coverage/c1") for _ in range(count)]

    return asyncio.run(run())


# -- basic and bearer ------------------------------------------------------------------------------------


def test_basic_auth_header() -> None:
    settings = EndpointSettings.model_validate(
        {"name": "c", "base_url": BASE, "auth": {"type": "basic", "username": "etl", "password": "pa:ss"}}
    )
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        route = router.get("/Coverage/c1").respond(json={})
        get_many(settings)
    expected = "Basic " + base64.b64encode(b"etl:pa:ss").decode()
    assert route.calls.last.request.headers["Authorization"] == expected


def test_bearer_auth_header_and_repr_hides_token() -> None:
    settings = EndpointSettings.model_validate(
        {"name": "c", "base_url": BASE, "auth": {"type": "bearer", "token": "tok-123"}}
    )
    with respx.mock(base_url=BASE, assert_all_called=True) as router:
        route = router.get("/Coverage/c1").respond(json={})
        get_many(settings)
    assert route.calls.last.request.headers["Authorization"] == "Bearer tok-123"
    auth = build_auth(settings.auth)
    assert isinstance(auth, BearerAuth)
    assert "tok-123" not in repr(auth)


def test_build_auth_none() -> None:
    assert build_auth(AuthSettings()) is None


# -- SMART Backend Services ------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["RS384", "ES384"])
def test_smart_token_request_and_signed_assertion(algorithm: str) -> None:
    pem, public = (_RSA_PEM, _RSA_PUBLIC) if algorithm == "RS384" else pem_pair("ES384")
    settings = smart_endpoint(pem, algorithm=algorithm, key_id="key-2026")
    with respx.mock(assert_all_called=True) as router:
        token = router.post(TOKEN_URL).mock(return_value=token_response("access-1"))
        fhir = router.get(BASE + "/Coverage/c1").respond(json={"resourceType": "Coverage"})
        before = time.time()
        get_many(settings)

    sent = form(token.calls.last.request)
    assert sent["grant_type"] == "client_credentials"
    assert sent["scope"] == "system/Coverage.read"
    assert sent["client_assertion_type"] == ASSERTION_TYPE
    assertion = sent["client_assertion"]
    header = jwt.get_unverified_header(assertion)
    assert header["alg"] == algorithm
    assert header["kid"] == "key-2026"
    # Verifies the signature with the public half of the test key, and the audience.
    claims = jwt.decode(assertion, public, algorithms=[algorithm], audience=TOKEN_URL)
    assert claims["iss"] == claims["sub"] == "connector-client"
    assert 0 < claims["exp"] - before <= 300
    assert claims["jti"]
    assert fhir.calls.last.request.headers["Authorization"] == "Bearer access-1"


def test_jwk_thumbprint_is_rfc_7638_example() -> None:
    # RFC 7638 §3.1: the RSA key of RFC 7517 Appendix A.1 and its thumbprint, as the RFC prints them.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWK"
        "RXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAt"
        "aSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XP"
        "ksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    jwk = {"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def _b64url_uint(value: int, size: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes(size, "big")).rstrip(b"=").decode()


@pytest.mark.parametrize("algorithm", ["RS384", "ES384"])
def test_smart_without_key_id_sends_the_key_thumbprint_as_kid(algorithm: str) -> None:
    # SMART requires `kid`; the reference server refused assertions without it. The expected thumbprint is
    # built here from the key's numbers, independently of the JWK export the connector uses.
    pem, public = (_RSA_PEM, _RSA_PUBLIC) if algorithm == "RS384" else pem_pair("ES384")
    numbers = public.public_numbers()
    if algorithm == "RS384":
        size = (numbers.n.bit_length() + 7) // 8
        members = f'{{"e":"AQAB","kty":"RSA","n":"{_b64url_uint(numbers.n, size)}"}}'
    else:
        x, y = _b64url_uint(numbers.x, 48), _b64url_uint(numbers.y, 48)
        members = f'{{"crv":"P-384","kty":"EC","x":"{x}","y":"{y}"}}'
    expected = base64.urlsafe_b64encode(hashlib.sha256(members.encode()).digest()).rstrip(b"=").decode()
    with respx.mock(assert_all_called=True) as router:
        token = router.post(TOKEN_URL).mock(return_value=token_response("access-1"))
        router.get(BASE + "/Coverage/c1").respond(json={})
        get_many(smart_endpoint(pem, algorithm=algorithm))
    assertion = form(token.calls.last.request)["client_assertion"]
    assert jwt.get_unverified_header(assertion)["kid"] == expected
    jwt.decode(assertion, public, algorithms=[algorithm], audience=TOKEN_URL)


def _smart(name: str, **extra: Any) -> dict[str, Any]:
    auth = {"type": "smart-backend", "client_id": "c", "token_url": TOKEN_URL, "private_key": _RSA_PEM}
    auth.update(extra.pop("auth", {}))
    return {"name": name, "base_url": BASE, "auth": auth, **extra}


def test_default_scope_reads_the_configured_streams_only() -> None:
    # With push-back off, asking for Task.write made the reference server refuse the token (invalid_scope).
    settings = Settings.model_validate({"endpoints": [_smart("emr", resources=["Coverage", "Claim"])]})
    assert settings.endpoints[0].auth.scope == "system/Coverage.read system/Claim.read"


def test_default_scope_adds_directory_reads_with_referrals_and_writes_what_is_pushed_here() -> None:
    owner = "Organization/p1"
    settings = Settings.model_validate(
        {
            "endpoints": [
                _smart("emr", resources=["ServiceRequest"], push_acknowledgments=True, owner=owner),
                _smart("payer", resources=["Coverage"], push_metrics=True, push_endpoint="emr", owner=owner),
            ]
        }
    )
    emr, payer = settings.endpoints
    assert emr.auth.scope is not None
    assert emr.auth.scope.split() == [
        "system/ServiceRequest.read",
        "system/Practitioner.read",
        "system/PractitionerRole.read",
        "system/Organization.read",
        "system/Task.read",
        "system/Task.write",
        "system/Communication.read",  # the case summaries (case_summary = "communication", the default)
        "system/Communication.write",
        "system/MeasureReport.read",
        "system/MeasureReport.write",
    ]
    # payer's metrics go to emr: payer's own token asks for nothing to write.
    assert payer.auth.scope == "system/Coverage.read"


def test_default_scope_in_smart_v2_syntax() -> None:
    endpoint = _smart("emr", resources=["Coverage"], push_acknowledgments=True, owner="Organization/p1")
    endpoint["auth"]["scope_version"] = "v2"
    settings = Settings.model_validate({"endpoints": [endpoint]})
    assert settings.endpoints[0].auth.scope == "system/Coverage.rs system/Task.crus system/Communication.crus"
    # Summaries filed as documents write DocumentReference instead; with them off, the Task alone.
    endpoint["case_summary"] = "document-reference"
    settings = Settings.model_validate({"endpoints": [endpoint]})
    assert (
        settings.endpoints[0].auth.scope
        == "system/Coverage.rs system/DocumentReference.crus system/Task.crus"
    )
    endpoint["case_summary"] = "off"
    settings = Settings.model_validate({"endpoints": [endpoint]})
    assert settings.endpoints[0].auth.scope == "system/Coverage.rs system/Task.crus"


def test_configured_scope_wins_and_is_what_the_token_request_sends() -> None:
    settings = Settings.model_validate(
        {"endpoints": [_smart("emr", resources=["Coverage"], auth={"scope": "system/*.read"})]}
    )
    with respx.mock(assert_all_called=True) as router:
        token = router.post(TOKEN_URL).mock(return_value=token_response("access-1"))
        router.get(BASE + "/Coverage/c1").respond(json={})
        get_many(settings.endpoints[0])
    assert form(token.calls.last.request)["scope"] == "system/*.read"


def test_endpoint_without_settings_derives_its_scope_too() -> None:
    # An EndpointSettings used on its own (no Settings around it) still sends its derived scope.
    endpoint = EndpointSettings.model_validate(_smart("emr", resources=["Encounter"]))
    with respx.mock(assert_all_called=True) as router:
        token = router.post(TOKEN_URL).mock(return_value=token_response("access-1"))
        router.get(BASE + "/Coverage/c1").respond(json={})
        get_many(endpoint)
    assert form(token.calls.last.request)["scope"] == "system/Encounter.read"


def test_smart_token_is_cached_across_requests() -> None:
    with respx.mock(assert_all_called=True) as router:
        token = router.post(TOKEN_URL).mock(return_value=token_response("access-1", expires_in=3600))
        fhir = router.get(BASE + "/Coverage/c1").respond(json={})
        get_many(smart_endpoint(), count=3)
    assert token.call_count == 1
    assert fhir.call_count == 3
    assert {c.request.headers["Authorization"] for c in fhir.calls} == {"Bearer access-1"}


def test_smart_concurrent_requests_share_one_token_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    # The token answer waits until every request has asked whether the token is fresh: 5 asks before the
    # lock, and the first request's second ask inside it. The 30 s only turns a hang into a failure.
    checks = 0
    asked = asyncio.Event()  # bound to get_many's loop when first awaited
    is_fresh = SmartBackendAuth._token_is_fresh

    def counted(self: SmartBackendAuth) -> bool:
        nonlocal checks
        checks += 1
        if checks >= 6:
            asked.set()
        return is_fresh(self)

    async def slow_token(request: httpx.Request) -> httpx.Response:
        await asyncio.wait_for(asked.wait(), timeout=30)
        return token_response("access-1")

    monkeypatch.setattr(SmartBackendAuth, "_token_is_fresh", counted)
    with respx.mock(assert_all_called=True) as router:
        token = router.post(TOKEN_URL).mock(side_effect=slow_token)
        fhir = router.get(BASE + "/Coverage/c1").respond(json={})
        get_many(smart_endpoint(), count=5, concurrent=True)
    assert token.call_count == 1
    assert fhir.call_count == 5


def test_smart_token_refreshed_within_margin_with_new_jti() -> None:
    # expires_in below refresh_margin_seconds: the cached token is never fresh enough to reuse.
    with respx.mock(assert_all_called=True) as router:
        token = router.post(TOKEN_URL).mock(
            side_effect=[token_response("access-1", expires_in=30), token_response("access-2", expires_in=30)]
        )
        fhir = router.get(BASE + "/Coverage/c1").respond(json={})
        get_many(smart_endpoint(refresh_margin_seconds=60), count=2)
    assert token.call_count == 2
    assert [c.request.headers["Authorization"] for c in fhir.calls] == ["Bearer access-1", "Bearer access-2"]
    jtis = [
        jwt.decode(
            form(c.request)["client_assertion"], _RSA_PUBLIC, algorithms=["RS384"], audience=TOKEN_URL
        )["jti"]
        for c in token.calls
    ]
    assert len(set(jtis)) == 2


def test_smart_401_refreshes_once_and_retries() -> None:
    with respx.mock(assert_all_called=True) as router:
        token = router.post(TOKEN_URL).mock(side_effect=[token_response("stale"), token_response("fresh")])
        fhir = router.get(BASE + "/Coverage/c1").mock(
            side_effect=[httpx.Response(401), httpx.Response(200, json={"resourceType": "Coverage"})]
        )
        (response,) = get_many(smart_endpoint())
    assert response.status_code == 200
    assert token.call_count == 2
    assert [c.request.headers["Authorization"] for c in fhir.calls] == ["Bearer stale", "Bearer fresh"]


def test_smart_second_401_is_auth_error() -> None:
    with respx.mock(assert_all_called=True) as router:
        token = router.post(TOKEN_URL).mock(side_effect=[token_response("tok-a"), token_response("tok-b")])
        fhir = router.get(BASE + "/Coverage/c1").respond(401)
        with pytest.raises(AuthError) as info:
            get_many(smart_endpoint())
    assert info.value.status == 401
    assert token.call_count == 2
    assert fhir.call_count == 2  # one retry after the refresh, then no more
    assert "tok-a" not in str(info.value)
    assert "tok-b" not in str(info.value)


def test_smart_token_endpoint_refusal_is_auth_error_without_secrets() -> None:
    body = {"error": "invalid_client", "error_description": "Unknown key for client connector-client"}
    with respx.mock(assert_all_called=True) as router:
        token = router.post(TOKEN_URL).respond(400, json=body)
        with pytest.raises(AuthError) as info:
            get_many(smart_endpoint())
    message = str(info.value)
    assert "invalid_client" in message
    assert "Unknown key for client connector-client" in message
    assert "HTTP 400" in message
    assert token.call_count == 1  # refusals are not retried
    assertion = form(token.calls.last.request)["client_assertion"]
    assert assertion not in message
    assert assertion.split(".")[2] not in message
    assert "PRIVATE KEY" not in message


def test_smart_token_endpoint_outage_is_retried() -> None:
    with respx.mock(assert_all_called=True) as router:
        token = router.post(TOKEN_URL).mock(side_effect=[httpx.Response(503), token_response("access-1")])
        fhir = router.get(BASE + "/Coverage/c1").respond(json={})
        get_many(smart_endpoint())
    assert token.call_count == 2
    assert fhir.calls.last.request.headers["Authorization"] == "Bearer access-1"


def test_smart_token_response_without_access_token() -> None:
    with respx.mock(assert_all_called=True) as router:
        router.post(TOKEN_URL).respond(200, json={"token_type": "bearer"})
        with pytest.raises(AuthError, match="no access_token"):
            get_many(smart_endpoint())


def test_smart_key_that_cannot_sign_the_algorithm_is_config_error() -> None:
    # An RSA key configured for ES384: the error names the problem, never the key.
    auth = build_auth(smart_endpoint(algorithm="ES384").auth)
    assert isinstance(auth, SmartBackendAuth)
    with pytest.raises(ConfigError) as info:
        auth.client_assertion()
    assert "ES384" in str(info.value)
    assert "PRIVATE KEY" not in str(info.value)
    assert "PRIVATE KEY" not in repr(auth)


def test_smart_key_is_read_from_file_once(tmp_path: Any) -> None:
    key_file = tmp_path / "client.pem"
    key_file.write_text(_RSA_PEM)
    settings = smart_endpoint(private_key=None, private_key_file=str(key_file))
    auth = build_auth(settings.auth)
    assert isinstance(auth, SmartBackendAuth)
    first = auth.client_assertion()
    key_file.unlink()  # a cached key keeps working when the secret file is rotated away mid-run
    second = auth.client_assertion()
    assert (
        jwt.decode(first, _RSA_PUBLIC, algorithms=["RS384"], audience=TOKEN_URL)["sub"] == "connector-client"
    )
    assert first != second
