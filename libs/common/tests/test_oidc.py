"""People sign in with the municipality's OpenID Connect provider (issue 10, DESIGN §3).

The provider here is real: ``civicsignals.admin.devissuer`` serves a discovery document, a JWKS and
a token endpoint on loopback and signs RS256 tokens with joserfc. Nothing of our checks is mocked:
the service under test fetches the key set over HTTP and verifies every token itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from civicsignals.admin.devissuer import DevIssuer, set_tenant_oidc
from civicsignals.common.auth import Principal
from civicsignals.common.oidc import OidcVerifier, TokenError, looks_like_jwt, pseudonymous_subject
from civicsignals.common.tenants import TenantRegistry

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
