"""API keys (DESIGN §3) as every service checks them, through a real service app."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends
from sqlalchemy import MetaData

from civicsignals.common.app import create_service_app
from civicsignals.common.auth import Principal, any_scope_dependency
from civicsignals.common.problems import PROBLEM_JSON
from civicsignals.common.runtime import ServiceRuntime
from civicsignals.common.tenants import hash_key

pytestmark = pytest.mark.timeout(30)

SIGNAL = {"text": "kapotte lantaarnpaal", "channel": "web"}


def assert_unauthenticated(response: httpx.Response, detail: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert body["type"] == "https://civicsignals.nl/problems/unauthenticated"
    assert body["detail"] == detail


async def test_a_key_made_with_add_key_works(service: Any, tenant_key: Any) -> None:
    response = await service.client.post("/v1/signals", json=SIGNAL, headers=tenant_key.authorization)
    assert response.status_code == 201, response.text
    assert response.json() == {"tenant": "gouda", "key_id": tenant_key.key_id, "length": len(SIGNAL["text"])}
    assert tenant_key.key not in response.text


async def test_only_the_hash_of_a_key_is_stored(tenant_key: Any) -> None:
    stored = (tenant_key.folder / "keys.yaml").read_text(encoding="utf-8")
    assert tenant_key.key not in stored
    assert hash_key(tenant_key.key) in stored
    # at least 128 random bits: the secret after the id is 256 bits of urlsafe base64
    assert len(tenant_key.key.split(".", 1)[1]) >= 43


async def test_a_missing_key_is_a_401(service: Any) -> None:
    response = await service.client.post("/v1/signals", json=SIGNAL)
    assert_unauthenticated(response, "send an API key as 'Authorization: Bearer <key>'")


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Token cs_abc.def", ""])
async def test_another_scheme_is_a_401(service: Any, header: str) -> None:
    response = await service.client.post("/v1/signals", json=SIGNAL, headers={"Authorization": header})
    assert_unauthenticated(response, "send an API key as 'Authorization: Bearer <key>'")


async def test_the_bearer_scheme_is_case_insensitive(service: Any, tenant_key: Any) -> None:
    response = await service.client.post(
        "/v1/signals", json=SIGNAL, headers={"Authorization": f"bearer {tenant_key.key}"}
    )
    assert response.status_code == 201


@pytest.mark.parametrize(
    "key",
    [
        "not-a-key",
        "cs_.secret",
        "cs_0000000000000000.secret",
    ],
)
async def test_an_invalid_key_is_a_401(service: Any, key: str) -> None:
    response = await service.client.post(
        "/v1/signals", json=SIGNAL, headers={"Authorization": f"Bearer {key}"}
    )
    assert_unauthenticated(response, "the API key is not valid")


async def test_a_known_id_with_a_wrong_secret_is_a_401(service: Any, tenant_key: Any) -> None:
    forged = f"cs_{tenant_key.key_id}.{'A' * 43}"
    response = await service.client.post(
        "/v1/signals", json=SIGNAL, headers={"Authorization": f"Bearer {forged}"}
    )
    assert_unauthenticated(response, "the API key is not valid")


async def test_a_revoked_key_is_a_401_at_once(service: Any, tenant_key: Any) -> None:
    assert (
        await service.client.post("/v1/signals", json=SIGNAL, headers=tenant_key.authorization)
    ).status_code == 201

    tenant_key.revoke()

    response = await service.client.post("/v1/signals", json=SIGNAL, headers=tenant_key.authorization)
    assert_unauthenticated(response, "the API key has been revoked")


async def test_an_expired_key_is_a_401(service: Any, tenant_key: Any) -> None:
    _, expired = tenant_key.add_key(["signals:write"], expires=datetime.now(UTC) - timedelta(minutes=1))
    _, valid = tenant_key.add_key(["signals:write"], expires=datetime.now(UTC) + timedelta(days=1))

    response = await service.client.post(
        "/v1/signals", json=SIGNAL, headers={"Authorization": f"Bearer {expired}"}
    )
    assert_unauthenticated(response, "the API key has expired")
    response = await service.client.post(
        "/v1/signals", json=SIGNAL, headers={"Authorization": f"Bearer {valid}"}
    )
    assert response.status_code == 201


async def test_a_key_without_the_scope_is_a_403(service: Any, tenant_key: Any) -> None:
    _, reader = tenant_key.add_key(["cases:read"])
    headers = {"Authorization": f"Bearer {reader}"}

    response = await service.client.post("/v1/signals", json=SIGNAL, headers=headers)
    assert response.status_code == 403
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert body["type"] == "https://civicsignals.nl/problems/forbidden"
    assert "signals:write" in body["detail"]

    assert (await service.client.get("/v1/cases", headers=headers)).status_code == 200


async def test_the_admin_scope_allows_every_route(service: Any, tenant_key: Any) -> None:
    _, admin = tenant_key.add_key(["admin"])
    headers = {"Authorization": f"Bearer {admin}"}
    assert (await service.client.post("/v1/signals", json=SIGNAL, headers=headers)).status_code == 201
    assert (await service.client.get("/v1/cases", headers=headers)).status_code == 200


async def test_a_key_speaks_for_its_own_tenant(service: Any, make_tenant: Any) -> None:
    make_tenant("gouda")  # the service's default tenant exists already; a second key for it
    other = make_tenant("alphen-aan-den-rijn", ["cases:read"])
    response = await service.client.get("/v1/cases", headers=other.authorization)
    assert response.status_code == 200
    assert response.json()["tenant"] == "alphen-aan-den-rijn"


async def test_authentication_is_checked_before_the_body(service: Any) -> None:
    """A caller without a key learns nothing about what the body should look like."""
    response = await service.client.post("/v1/signals", json={"channel": "fax"})
    assert_unauthenticated(response, "send an API key as 'Authorization: Bearer <key>'")


# -- issue 10: departments, any-of scopes, markers, log hygiene ------------------------------------


AnyReader = Annotated[Principal, Depends(any_scope_dependency("rules:admin", "signals:read"))]


async def _small_app(service_factory: Any, tenant_key: Any) -> Any:
    router = APIRouter()

    @router.get("/v1/whoami")
    async def whoami(principal: AnyReader) -> dict[str, Any]:
        return {
            "tenant": principal.tenant,
            "actor": principal.actor,
            "departments": sorted(principal.departments),
            "sees_wegen": principal.sees_department("wegen"),
        }

    runtime = ServiceRuntime(
        service_factory.settings(tenant_key.tenants_dir), metadata=MetaData(), outbox=False
    )
    runtime.tenants.check_interval_s = 0.0
    app = create_service_app(runtime, title="t", description="t", routers=[router])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t.local")


async def test_any_scope_and_departments_of_a_key(service_factory: Any, tenant_key: Any) -> None:
    async with await _small_app(service_factory, tenant_key) as client:
        _, reader = tenant_key.add_key(["signals:read"])
        _, department_key = tenant_key.add_key(["rules:admin"], description="groen")
        from civicsignals.common.tenants import add_key

        _, bound = add_key(tenant_key.folder, ["signals:read"], departments=["groen"])
        _, neither = tenant_key.add_key(["cases:read"])

        answer = await client.get("/v1/whoami", headers={"Authorization": f"Bearer {reader}"})
        assert answer.status_code == 200
        assert answer.json()["departments"] == [] and answer.json()["sees_wegen"] is True
        assert answer.json()["actor"].startswith("key:")
        assert (
            await client.get("/v1/whoami", headers={"Authorization": f"Bearer {department_key}"})
        ).status_code == 200
        answer = await client.get("/v1/whoami", headers={"Authorization": f"Bearer {bound}"})
        assert answer.json()["departments"] == ["groen"] and answer.json()["sees_wegen"] is False
        answer = await client.get("/v1/whoami", headers={"Authorization": f"Bearer {neither}"})
        assert answer.status_code == 403
        assert "rules:admin" in answer.json()["detail"] and "signals:read" in answer.json()["detail"]


async def test_a_token_shaped_credential_that_is_no_jwt_is_a_401(service: Any) -> None:
    response = await service.client.post(
        "/v1/signals", json=SIGNAL, headers={"Authorization": "Bearer aaa.bbb.ccc"}
    )
    assert response.status_code == 401
    assert response.json()["detail"] == "the bearer token is not a readable JWT"


async def test_scope_dependencies_say_which_scope_they_need() -> None:
    from civicsignals.common.auth import (
        ANY_SCOPE_ATTRIBUTE,
        SCOPE_ATTRIBUTE,
        any_scope_dependency,
        scope_dependency,
    )

    assert getattr(scope_dependency("cases:read"), SCOPE_ATTRIBUTE) == "cases:read"
    assert getattr(any_scope_dependency("a", "b"), ANY_SCOPE_ATTRIBUTE) == frozenset({"a", "b"})


async def test_logs_carry_the_key_id_never_the_key(
    service: Any, tenant_key: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.INFO)
    _, narrow = tenant_key.add_key(["cases:read"])
    await service.client.post("/v1/signals", json=SIGNAL, headers={"Authorization": f"Bearer {narrow}"})
    tenant_key.revoke()
    await service.client.post("/v1/signals", json=SIGNAL, headers=tenant_key.authorization)
    text = caplog.text
    assert tenant_key.key_id in text and narrow.split(".")[0][3:] in text
    assert tenant_key.key not in text and narrow not in text
    assert tenant_key.key.split(".")[1] not in text


def test_a_principal_names_the_partners_it_acts_for() -> None:
    caller = Principal(tenant="gouda", key_id="k", scopes=frozenset({"partner:woonpartners", "cases:read"}))
    assert caller.partners == {"woonpartners"}
    assert Principal(tenant="gouda", key_id="k", scopes=frozenset({"admin"})).partners == frozenset()
