"""People sign in with the municipality's OpenID Connect provider (issue 10, DESIGN §3).

The provider here is real: ``civicsignals.admin.devissuer`` serves a discovery document, a JWKS and
a token endpoint on loopback and signs RS256 tokens with joserfc. Nothing of our checks is mocked:
the service under test fetches the key set over HTTP and verifies every token itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.requests import Request

from civicsignals.admin.devissuer import DevIssuer, set_tenant_oidc
from civicsignals.common.auth import Principal
from civicsignals.common.oidc import OidcVerifier, TokenError, looks_like_jwt, pseudonymous_subject
from civicsignals.common.tenants import TenantRegistry
from civicsignals.common.web_login import WebLogin
from civicsignals.common.web_oidc import StepUp, WebOidc, _auth_time, _step_up_refused

pytestmark = pytest.mark.timeout(60)

SIGNAL = {"text": "kapotte lantaarnpaal", "channel": "web"}


@pytest.fixture(scope="module")
def issuer() -> Iterator[DevIssuer]:
    with DevIssuer() as running:
        yield running


def oidc_block(issuer: DevIssuer, **extra: Any) -> dict[str, Any]:
    block: dict[str, Any] = {
        "issuer": issuer.issuer,
        "audience": "civicsignals",
        "groups_claim": "groups",
        "departments_claim": "departments",
        "group_scopes": {"kcc": ["cases:read"], "portaal": ["signals:write"], "auditors": ["audit:read"]},
        "group_departments": {"kcc": ["klantcontact"]},
    }
    block.update(extra)
    return block


set_oidc = set_tenant_oidc


@pytest.fixture
def oidc_service(service: Any, tenant_key: Any, issuer: DevIssuer) -> Any:
    """The test service, with tenant gouda trusting the loopback issuer."""
    set_oidc(tenant_key.folder, oidc_block(issuer))
    service.runtime.tenants.refresh(force=True)
    assert "gouda" not in service.runtime.tenants.errors
    service.runtime.tenants.oidc = OidcVerifier(min_refresh_interval_s=0)
    return service


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_token_from_the_token_endpoint_lets_a_person_in(oidc_service: Any, issuer: DevIssuer) -> None:
    secret = issuer.add_client("portaal-beheerder", {"sub": "medewerker-17", "groups": ["portaal"]})
    async with httpx.AsyncClient() as client:
        answer = await client.post(
            f"{issuer.url}/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "portaal-beheerder",
                "client_secret": secret,
            },
        )
    assert answer.status_code == 200, answer.text
    token = answer.json()["access_token"]
    assert looks_like_jwt(token)

    response = await oidc_service.client.post("/v1/signals", json=SIGNAL, headers=bearer(token))
    assert response.status_code == 201, response.text
    assert response.json()["tenant"] == "gouda"
    assert response.json()["key_id"] == ""  # a person has no key id
    # the groups claim gave signals:write and nothing else
    response = await oidc_service.client.get("/v1/cases", headers=bearer(token))
    assert response.status_code == 403


async def test_groups_map_to_scopes_and_departments(tenant_key: Any, issuer: DevIssuer) -> None:
    set_oidc(tenant_key.folder, oidc_block(issuer))
    registry = TenantRegistry(tenant_key.tenants_dir)
    verifier = OidcVerifier()
    token = issuer.issue(
        "medewerker-3",
        groups=["kcc", "onbekend"],
        departments=["wegen"],
        scope="openid profile insights:read",
    )
    identity = await verifier.verify(token, registry)
    assert identity.tenant == "gouda"
    assert identity.subject == "medewerker-3"
    # 'openid' and 'profile' are no scopes of ours and are dropped; unknown groups give nothing
    assert identity.scopes == frozenset({"cases:read", "insights:read"})
    assert identity.departments == frozenset({"klantcontact", "wegen"})

    principal = Principal(
        tenant=identity.tenant,
        key_id="",
        scopes=identity.scopes,
        departments=identity.departments,
        subject_kind="person",
        subject=identity.subject,
    )
    assert principal.actor == "person:medewerker-3"
    assert principal.sees_department("wegen") and not principal.sees_department("afval")


@pytest.mark.parametrize(
    ("claims", "detail"),
    [
        ({"audience": "another-app"}, "not valid here"),
        ({"expires_in": -120}, "the token has expired"),
        ({"issuer": "http://127.0.0.1:9/elsewhere"}, "no tenant trusts the issuer"),
    ],
)
async def test_a_token_for_another_audience_expired_or_from_elsewhere_is_a_401(
    oidc_service: Any, issuer: DevIssuer, claims: dict[str, Any], detail: str
) -> None:
    token = issuer.issue("medewerker-1", groups=["portaal"], **claims)
    response = await oidc_service.client.post("/v1/signals", json=SIGNAL, headers=bearer(token))
    assert response.status_code == 401, response.text
    assert detail in response.json()["detail"]
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_forged_token_is_a_401(oidc_service: Any, issuer: DevIssuer) -> None:
    published = issuer.keys[-1]
    # signed with another key under the published key's id
    stranger = RSAKey.generate_key(2048, parameters={"kid": published.kid})
    forged = issuer.issue("medewerker-1", groups=["portaal"], key=stranger)
    response = await oidc_service.client.post("/v1/signals", json=SIGNAL, headers=bearer(forged))
    assert response.status_code == 401
    assert "signature" in response.json()["detail"]

    # a valid token whose claims were changed after signing
    header, payload, signature = issuer.issue("medewerker-1", groups=["kcc"]).split(".")
    genuine = jwt.decode(".".join((header, payload, signature)), issuer.keys[-1]).claims
    tampered_claims = {**genuine, "groups": ["portaal", "auditors"]}
    import base64
    import json

    tampered_payload = base64.urlsafe_b64encode(json.dumps(tampered_claims).encode()).rstrip(b"=").decode()
    response = await oidc_service.client.post(
        "/v1/signals", json=SIGNAL, headers=bearer(f"{header}.{tampered_payload}.{signature}")
    )
    assert response.status_code == 401

    # HS256 with the public key as the secret (algorithm confusion) and alg none are refused
    # (joserfc itself refuses to build such a token, so it is signed by hand)
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(json.dumps({"alg": "HS256", "kid": published.kid}).encode()) + "." + payload
    mac = hmac.new(published.as_pem(private=False), signing_input.encode(), hashlib.sha256).digest()
    confused = f"{signing_input}.{b64(mac)}"
    response = await oidc_service.client.post("/v1/signals", json=SIGNAL, headers=bearer(confused))
    assert response.status_code == 401
    none_header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    response = await oidc_service.client.post(
        "/v1/signals", json=SIGNAL, headers=bearer(f"{none_header}.{payload}.")
    )
    assert response.status_code == 401


async def test_the_key_set_is_cached_and_refreshed_when_the_provider_rotates(
    tenant_key: Any, issuer: DevIssuer
) -> None:
    set_oidc(tenant_key.folder, oidc_block(issuer))
    registry = TenantRegistry(tenant_key.tenants_dir)
    now = [0.0]
    verifier = OidcVerifier(min_refresh_interval_s=30, clock=lambda: now[0])

    for _ in range(3):
        await verifier.verify(issuer.issue("medewerker-1"), registry)
    assert verifier.fetches == 1

    issuer.rotate()
    rotated = issuer.issue("medewerker-1")
    # an unknown key id within the refresh interval does not make us fetch again
    with pytest.raises(TokenError, match="does not publish"):
        await verifier.verify(rotated, registry)
    assert verifier.fetches == 1

    now[0] += 31
    identity = await verifier.verify(rotated, registry)
    assert identity.subject == "medewerker-1"
    assert verifier.fetches == 2

    # a key the provider no longer publishes stops working once the cache is refreshed
    old_key = issuer.keys[0]
    issuer.rotate(drop_old=True)
    now[0] += 10_000  # past the cache's lifetime
    with pytest.raises(TokenError):
        await verifier.verify(issuer.issue("medewerker-1", key=old_key), registry)


async def test_tenants_sharing_a_provider_are_told_apart_by_a_claim(
    make_tenant: Any, issuer: DevIssuer
) -> None:
    gouda = make_tenant("gouda")
    alphen = make_tenant("alphen")
    set_oidc(gouda.folder, oidc_block(issuer, tenant_claim="municipality"))
    set_oidc(alphen.folder, oidc_block(issuer, tenant_claim="municipality", tenant_value="0484"))
    registry = TenantRegistry(gouda.tenants_dir)
    assert registry.errors == {}
    verifier = OidcVerifier()

    assert (await verifier.verify(issuer.issue("p1", municipality="gouda"), registry)).tenant == "gouda"
    assert (await verifier.verify(issuer.issue("p2", municipality="0484"), registry)).tenant == "alphen"
    with pytest.raises(TokenError, match="which municipality"):
        await verifier.verify(issuer.issue("p3"), registry)
    with pytest.raises(TokenError, match="which municipality"):
        await verifier.verify(issuer.issue("p4", municipality="leiden"), registry)


async def test_the_jwks_url_can_be_given_and_discovery_is_used_otherwise(
    tenant_key: Any, issuer: DevIssuer
) -> None:
    set_oidc(tenant_key.folder, oidc_block(issuer, jwks_url=issuer.jwks_url))
    registry = TenantRegistry(tenant_key.tenants_dir)
    verifier = OidcVerifier()
    assert await verifier.jwks_url(registry.get("gouda").oidc) == issuer.jwks_url  # type: ignore[union-attr]
    set_oidc(tenant_key.folder, oidc_block(issuer))
    registry = TenantRegistry(tenant_key.tenants_dir)
    assert await verifier.jwks_url(registry.get("gouda").oidc) == issuer.jwks_url  # type: ignore[union-attr]


def test_a_provider_must_be_reached_over_https_except_on_loopback(tenant_key: Any) -> None:
    set_oidc(tenant_key.folder, {"issuer": "http://idp.example.nl", "audience": "x"})
    registry = TenantRegistry(tenant_key.tenants_dir)
    config = registry.get("gouda").oidc  # type: ignore[union-attr]
    import asyncio

    with pytest.raises(TokenError, match="https"):
        asyncio.run(OidcVerifier().jwks_url(config))  # type: ignore[arg-type]


def test_an_email_address_as_subject_becomes_a_pseudonym() -> None:
    pseudonym = pseudonymous_subject("https://idp.example.nl", "jan.jansen@gouda.nl")
    assert "@" not in pseudonym and "jansen" not in pseudonym
    assert pseudonym == pseudonymous_subject("https://idp.example.nl", "jan.jansen@gouda.nl")
    assert pseudonymous_subject("https://idp.example.nl", "a1b2c3-opaque") == "a1b2c3-opaque"


def test_an_invalid_oidc_block_is_refused_with_its_line(tenant_key: Any) -> None:
    set_oidc(tenant_key.folder, {"issuer": "https://idp.example.nl", "audience": "x", "group_scope": {}})
    registry = TenantRegistry(tenant_key.tenants_dir)
    assert registry.get("gouda") is None
    assert "tenant.yaml line" in registry.errors["gouda"]
    assert "group_scope" in registry.errors["gouda"]


# -- the staff pages' ID token and the step-up before an erasure (web_oidc) ----------------------


def _page_request(registry: TenantRegistry) -> Request:
    """A request to a staff page of an app whose tenants are ``registry`` (what web_oidc reads)."""
    app = SimpleNamespace(state=SimpleNamespace(tenants=registry))
    return Request({"type": "http", "method": "GET", "path": "/", "headers": [], "app": app})


async def test_an_id_token_is_taken_only_when_it_is_for_this_client_and_this_sign_in(
    tenant_key: Any, issuer: DevIssuer
) -> None:
    """Its ``auth_time`` decides whether an erasure needs a new sign-in, so the ID token is
    validated as OpenID Connect Core 1.0 §3.1.3.7 asks, against the provider's real key set."""
    set_oidc(tenant_key.folder, oidc_block(issuer, web_client_id="privacyloket"))
    registry = TenantRegistry(tenant_key.tenants_dir)
    registry.oidc = OidcVerifier()
    config = registry.get("gouda").oidc  # type: ignore[union-attr]
    web = WebOidc(WebLogin(cookie="desk", scope="privacy:admin", signing_key_file="k"), "/callback")
    request = _page_request(registry)

    def id_token(**changes: Any) -> str:
        claims: dict[str, Any] = {"audience": "privacyloket", "header_typ": "JWT", "nonce": "n-1"}
        claims.update(changes)
        return issuer.issue("medewerker-1", auth_time=int(time.time()) - 5, **claims)

    claims = await web._id_token_claims(request, config, id_token(), "n-1")  # type: ignore[arg-type]
    assert claims["sub"] == "medewerker-1" and isinstance(claims["auth_time"], int)
    stranger = RSAKey.generate_key(2048, parameters={"kid": issuer.keys[-1].kid})
    refused = {
        "another sign-in's nonce": id_token(nonce="n-2"),
        "a nonce of null": id_token(nonce=None),
        "another client": id_token(audience="dashboard"),
        "the services' audience (an access token's)": id_token(audience="civicsignals"),
        "another authorised party": id_token(azp="dashboard"),
        "an access token's type": id_token(header_typ="at+jwt"),
        "expired": id_token(expires_in=-120),
        "another issuer": id_token(issuer="http://127.0.0.1:9/elsewhere"),
        "a foreign key": id_token(key=stranger),
    }
    for what, token in refused.items():
        with pytest.raises(TokenError) as refusal:
            await web._id_token_claims(request, config, token, "n-1")  # type: ignore[arg-type]
        assert getattr(refusal.value, "reason", "") == "token", what


def test_a_step_up_is_proven_only_by_the_same_person_signed_in_within_max_age() -> None:
    """OpenID Connect Core 1.0: ``auth_time`` is REQUIRED when ``max_age`` was asked (§2), and
    the client checks it (§3.1.3.7, item 13); the tenant's leeway covers the provider's clock."""
    officer = Principal(
        tenant="gouda", key_id="", scopes=frozenset({"privacy:admin"}), subject_kind="person", subject="m-42"
    )
    colleague = Principal(
        tenant="gouda", key_id="", scopes=frozenset({"privacy:admin"}), subject_kind="person", subject="m-7"
    )
    asked = StepUp(max_age_s=300, subject="m-42")
    now = 1_800_000_000

    assert _step_up_refused(asked, officer, now - 10, now, 30) is None
    assert _step_up_refused(asked, officer, now - 329, now, 30) is None  # within the leeway
    assert _step_up_refused(StepUp(0, "m-42"), officer, now - 20, now, 30) is None
    refusals = {
        "other_person": _step_up_refused(asked, colleague, now - 10, now, 30),
        "no_auth_time": _step_up_refused(asked, officer, None, now, 30),
        "not_recent": _step_up_refused(asked, officer, now - 331, now, 30),
    }
    for reason, refused in refusals.items():
        assert refused is not None and refused.reason == reason
    assert _step_up_refused(StepUp(0, "m-42"), officer, now - 31, now, 30) is not None
    assert (_auth_time({"auth_time": 17.9}), _auth_time({}), _auth_time({"auth_time": True})) == (
        17,
        None,
        None,
    )
    assert _auth_time({"auth_time": "1800000000"}) is None and _auth_time({"auth_time": -1}) is None
