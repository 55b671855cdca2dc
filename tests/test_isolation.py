"""Tenant isolation, proven route by route (issue 10, DESIGN §3).

Every service's app is built in-process (``create_app(Settings(...))``, its lifespan running, NATS
unreachable on purpose: the runtime connects in the background and nothing here needs the bus).
Its routes are enumerated from the app itself, so a route another change adds later is covered
without editing this file. For every route:

(a) no credentials: 401, unless the route is listed below as public or as authenticated otherwise
    (a route that answers without credentials and is listed nowhere fails the suite);
(b) an API key of another tenant holding every scope, and
(d) an OpenID Connect token (from a real issuer on loopback) of another tenant with every scope:
    never a 2xx on another tenant's object; for a route with an object id, the answer for the
    other tenant's existing object and for an id that exists nowhere must be the same (status and
    problem type), so that nobody learns whether the object exists; a route without an id may
    answer the caller's own tenant, but never with the first tenant's objects in it;
(c) a key and a token of the right tenant but without the route's scope: 403.

Objects of the first tenant (a signal, a case, a partner …) are made through the services' own
code before the checks, so "existing" is real.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import shutil
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts

from civicsignals.admin.devissuer import DevIssuer
from civicsignals.common.auth import ANY_SCOPE_ATTRIBUTE, SCOPE_ATTRIBUTE
from civicsignals.common.settings import ServiceSettings
from civicsignals.common.tenants import ALL_SCOPES, add_key

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("intake", "classifier", "routing", "notifier", "insights")
OWNER, STRANGER = "gouda", "alphen"
MISSING_ID = "01JZZZZZZZZZZZZZZZZZZZZZZZ"

#: Routes anyone may call: health and documentation, and what residents and the public see.
PUBLIC: dict[tuple[str, str], str] = {
    ("GET", "/livez"): "liveness",
    ("GET", "/readyz"): "readiness",
    ("GET", "/metrics"): "Prometheus metrics (no tenant data)",
    ("GET", "/openapi.json"): "API description",
    ("GET", "/docs"): "API description",
    ("GET", "/docs/oauth2-redirect"): "API description",
    ("GET", "/redoc"): "API description",
    ("GET", "/v1/tracking/{tracking_code}"): "a resident's status page, opened by the tracking code",
    ("POST", "/v1/tracking/{tracking_code}/feedback"): "a resident's feedback, by the tracking code",
    ("GET", "/v1/tracking/{tracking_code}/feedback"): "the feedback form a resident's e-mail links to",
    ("POST", "/v1/tracking/{tracking_code}/updates"): "a resident's own move, by the tracking code",
    ("POST", "/v1/tracking/{tracking_code}/attachments"): "a resident's photo, by the tracking code",
    ("GET", "/open311/discovery.{fmt}"): "Open311 GeoReport v2: public reads",
    ("GET", "/open311/v2/services.{fmt}"): "Open311 GeoReport v2: public reads",
    ("GET", "/open311/v2/services/{service_code}.{fmt}"): "Open311 GeoReport v2: public reads",
    ("GET", "/open311/v2/requests.{fmt}"): "Open311 GeoReport v2: public reads",
    ("GET", "/open311/v2/requests/{service_request_id}.{fmt}"): "Open311 GeoReport v2: public reads",
    ("GET", "/open311/v2/tokens/{token}.{fmt}"): "Open311 GeoReport v2: public reads",
    ("GET", "/open311/v2/servicerequestupdates.{fmt}"): "Open311 servicerequestupdates: public reads",
    ("GET", "/transparency/{tenant}"): "the public 'you said, we did' page",
    ("GET", "/transparency/{tenant}/{filename}"): "the public 'you said, we did' page",
    ("GET", "/dashboard/login"): "the dashboard's sign-in page",
    ("POST", "/dashboard/login"): "the dashboard's sign-in (it takes a key or a token in the form)",
    ("GET", "/privacy/login"): "the privacy desk's sign-in page",
    ("POST", "/privacy/login"): "the privacy desk's sign-in (it takes a key in the form)",
    (
        "GET",
        "/dashboard/login/oidc",
    ): "the dashboard's sign-in through the municipality's provider (a redirect there)",
    (
        "GET",
        "/dashboard/login/oidc/callback",
    ): "the provider's answer to that sign-in (checked against its flow cookie)",
    ("GET", "/privacy/login/oidc"): "the privacy desk's sign-in through the municipality's provider",
    (
        "GET",
        "/privacy/login/oidc/callback",
    ): "the provider's answer to that sign-in (checked against its flow cookie)",
}

#: Routes that authenticate by other means than the ``Authorization`` header; without credentials
#: they must still answer no 2xx.
OTHER_AUTHENTICATION: dict[tuple[str, str], str] = {
    ("POST", "/open311/v2/requests.{fmt}"): "Open311 api_key in the form",
    ("POST", "/open311/v2/servicerequestupdates.{fmt}"): "Open311 api_key in the form",
    ("POST", "/dashboard/logout"): "the dashboard's session cookie",
    ("GET", "/dashboard"): "the dashboard's session cookie",
    ("GET", "/dashboard/signals"): "the dashboard's session cookie",
    ("GET", "/dashboard/exports/{filename}"): "the dashboard's session cookie",
    ("GET", "/privacy"): "the privacy desk's session cookie",
    ("POST", "/privacy/logout"): "the privacy desk's session cookie",
    ("POST", "/privacy/find"): "the privacy desk's session cookie and form token",
    ("POST", "/privacy/access"): "the privacy desk's session cookie and form token",
    ("POST", "/privacy/erase"): "the privacy desk's session cookie and form token",
    (
        "GET",
        "/privacy/erase",
    ): "the privacy desk's session cookie and its erasure cookie (after a fresh sign-in)",
}

#: Scopes of routes that check credentials themselves rather than with ``scope_dependency``.
CUSTOM_SCOPES: dict[tuple[str, str], set[str]] = {
    ("POST", "/v1/cases/{case_id}/updates"): {"cases:write", "partner:*"},
    ("GET", "/v1/signals/{signal_id}/attachments"): {"cases:read", "signals:read", "partner:*"},
    ("GET", "/v1/signals/{signal_id}/attachments/{attachment_id}"): {
        "cases:read",
        "signals:read",
        "partner:*",
    },
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Credentials:
    """Every credential the checks use, made once for the whole module."""

    tenants_dir: Path
    issuer: DevIssuer
    owner_key: str = ""
    stranger_key: str = ""
    narrow_keys: dict[str, str] = field(default_factory=dict)

    def narrow_key(self, scopes: set[str]) -> str:
        """A key of the owner holding every scope but ``scopes`` (and but admin)."""
        granted = sorted(set(ALL_SCOPES) - scopes - {"admin"})
        name = ",".join(granted)
        if name not in self.narrow_keys:
            self.narrow_keys[name] = add_key(self.tenants_dir / OWNER, granted, description="narrow")[1]
        return self.narrow_keys[name]

    def token(self, tenant: str, scopes: set[str] | None = None) -> str:
        granted = sorted(set(ALL_SCOPES) - {"admin"} if scopes is None else scopes)
        return self.issuer.issue(f"medewerker-{tenant}", municipality=tenant, scope=" ".join(granted))

    def narrow_token(self, scopes: set[str]) -> str:
        return self.token(OWNER, set(ALL_SCOPES) - scopes - {"admin"})


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Credentials]:
    tenants_dir = tmp_path_factory.mktemp("isolation") / "tenants"
    with DevIssuer() as issuer:
        creds = Credentials(tenants_dir=tenants_dir, issuer=issuer)
        for tenant in (OWNER, STRANGER):
            folder = tenants_dir / tenant
            shutil.copytree(
                REPO / "config" / "tenants" / "demo", folder, ignore=shutil.ignore_patterns("keys.yaml")
            )
            settings = yaml.safe_load((folder / "tenant.yaml").read_text(encoding="utf-8"))
            settings["name"] = tenant.capitalize()
            settings["oidc"] = {
                "issuer": issuer.issuer,
                "audience": issuer.audience,
                "tenant_claim": "municipality",
            }
            (folder / "tenant.yaml").write_text(
                yaml.safe_dump(settings, allow_unicode=True), encoding="utf-8"
            )
            (folder / "keys.yaml").write_text("keys: []\n", encoding="utf-8")
        creds.owner_key = add_key(tenants_dir / OWNER, list(ALL_SCOPES), description="owner")[1]
        creds.stranger_key = add_key(tenants_dir / STRANGER, list(ALL_SCOPES), description="stranger")[1]
        yield creds


def settings_class(service: str) -> type[ServiceSettings]:
    module = importlib.import_module(f"civicsignals.{service}.settings")
    classes = [
        value
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, ServiceSettings) and value is not ServiceSettings
    ]
    assert classes, f"civicsignals.{service}.settings has no settings class"
    return classes[0]


@contextlib.asynccontextmanager
async def running(
    service: str, credentials: Credentials, tmp_path: Path
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app_module = importlib.import_module(f"civicsignals.{service}.app")
    settings = settings_class(service)(
        data_dir=tmp_path / service,
        database_url=f"sqlite+aiosqlite:///{tmp_path / f'{service}.db'}",
        tenants_dir=credentials.tenants_dir,
        nats_url=f"nats://127.0.0.1:{free_port()}",  # nothing listens: the bus is not needed here
    )
    app: FastAPI = app_module.create_app(settings)
    app.state.tenants.check_interval_s = 0.0
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://isolation.local") as client,
    ):
        yield app, client


# -- the routes of an app ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    scopes: frozenset[str]
    body_example: Any

    @property
    def key(self) -> tuple[str, str]:
        return (self.method, self.path)

    @property
    def params(self) -> list[str]:
        return re.findall(r"{([^}:]+)(?::[^}]*)?}", self.path)


def _scopes(dependant: Any) -> set[str]:
    found: set[str] = set()
    for sub in getattr(dependant, "dependencies", []) or []:
        scope = getattr(sub.call, SCOPE_ATTRIBUTE, None)
        if scope:
            found.add(scope)
        found |= set(getattr(sub.call, ANY_SCOPE_ATTRIBUTE, None) or ())
        found |= _scopes(sub)
    return found


def _example(openapi: dict[str, Any], path: str, method: str) -> Any:
    """The request body's example from the OpenAPI document, so the request reaches the handler."""
    operation = openapi.get("paths", {}).get(path, {}).get(method.lower(), {})
    content = operation.get("requestBody", {}).get("content", {})
    for media in content.values():
        if "example" in media:
            return media["example"]
        if media.get("examples"):
            first = next(iter(media["examples"].values()))
            return first.get("value", first)
        schema = media.get("schema", {})
        ref = schema.get("$ref", "")
        if ref:
            schema = openapi["components"]["schemas"][ref.rsplit("/", 1)[-1]]
        if schema.get("examples"):
            return schema["examples"][0]
        if "example" in schema:
            return schema["example"]
    return {} if content else None


def routes_of(app: FastAPI) -> list[Route]:
    openapi = app.openapi()
    found = []
    for context in iter_route_contexts(app.routes):
        methods = getattr(context, "methods", None) or set()
        path = getattr(context, "path", None)
        if path is None:
            continue  # a mount (static files)
        dependant = getattr(context, "dependant", None)
        for method in sorted(methods - {"HEAD", "OPTIONS"}):
            scopes = _scopes(dependant) or CUSTOM_SCOPES.get((method, path), set())
            found.append(Route(method, path, frozenset(scopes), _example(openapi, path, method)))
    return found


# -- objects of the owner ------------------------------------------------------------------------------


async def seed(
    service: str, app: FastAPI, client: httpx.AsyncClient, credentials: Credentials
) -> dict[str, str]:
    """Objects of the owner, by the name of the path parameter that would address them."""
    owner = {"Authorization": f"Bearer {credentials.owner_key}"}
    objects: dict[str, str] = {}
    if service == "intake":
        response = await client.post(
            "/v1/signals",
            json={
                "text": "De lantaarnpaal in de Kleiweg is kapot",
                "channel": "web",
                "reporter": {"email": "bewoner@example.nl", "consent": True},
            },
            headers=owner,
        )
        assert response.status_code == 201, response.text
        objects["signal_id"] = response.json()["id"]
        objects["tracking_code"] = response.json()["tracking_code"]
    elif service == "routing":
        from civicsignals.common.events import SignalClassified, make_event
        from civicsignals.common.ids import new_id
        from civicsignals.routing import flows
        from civicsignals.routing import service as routing_service

        signal_id = new_id()
        data = SignalClassified(
            signal_id=signal_id,
            topic="afval",
            confidence=0.93,
            alternatives=[],
            kind="report",
            needs_review=False,
            model_version="isolation",
        )
        await flows.route_signal(app.state.routing, make_event(tenant=OWNER, service="classifier", data=data))
        async with app.state.runtime.sessions() as session:
            case = await routing_service.case_for_signal(session, signal_id)
        assert case is not None
        objects["case_id"] = case.id
    elif service == "notifier":
        response = await client.post(
            "/v1/partners", json={"code": "woonpartners-gouda", "name": "Woonpartners"}, headers=owner
        )
        if response.status_code in (200, 201):
            objects["partner"] = response.json().get("code", "woonpartners-gouda")
    return objects


def fill(path: str, values: dict[str, str], default: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "fmt":
            return "json"
        return values.get(name, default)

    return re.sub(r"{([^}:]+)(?::[^}]*)?}", replace, path)


def problem_type(response: httpx.Response) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return str(response.json().get("type", ""))
    return ""


async def call(client: httpx.AsyncClient, route: Route, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = route.body_example if route.method in ("POST", "PUT", "PATCH") else None
    if body is None and route.method in ("POST", "PUT", "PATCH"):
        body = {}
    return await client.request(route.method, path, json=body, headers=headers)


# -- the checks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
async def test_every_route_keeps_tenants_apart(
    service: str, credentials: Credentials, tmp_path: Path
) -> None:
    try:
        importlib.import_module(f"civicsignals.{service}.app")
    except ImportError:
        pytest.skip(f"{service} has no app yet")
    failures: list[str] = []
    checked = 0
    async with running(service, credentials, tmp_path) as (app, client):
        objects = await seed(service, app, client, credentials)
        leaks = [value for value in objects.values() if len(value) >= 8]
        for route in routes_of(app):
            where = f"{route.method} {route.path}"
            missing_path = fill(route.path, {}, MISSING_ID)
            anonymous = await call(client, route, missing_path, None)
            if route.key in PUBLIC:
                continue
            if anonymous.status_code != 401:
                # (a) no credentials: only what is listed may answer
                if route.key in OTHER_AUTHENTICATION:
                    if anonymous.is_success:
                        failures.append(f"{where}: answered {anonymous.status_code} without credentials")
                    continue
                failures.append(
                    f"{where}: answered {anonymous.status_code} without credentials; list it as public or fix it"
                )
                continue
            checked += 1
            owned_path = fill(route.path, objects, MISSING_ID)
            has_owned_object = route.params and owned_path != missing_path
            # (b) a key and (d) a token of another tenant, with every scope
            for label, credential in (
                ("another tenant's key", credentials.stranger_key),
                ("another tenant's token", credentials.token(STRANGER)),
            ):
                if label.endswith("token"):
                    probe = await call(client, route, missing_path, credential)
                    if probe.status_code == 401:
                        failures.append(
                            f"{where}: refuses every OpenID Connect token (401: {probe.json().get('detail')}); "
                            "authenticate with scope_dependency, any_scope_dependency or authenticate_bearer"
                        )
                        continue
                if route.params:
                    foreign = await call(client, route, owned_path, credential)
                    nowhere = await call(client, route, missing_path, credential)
                    for answer in (foreign, nowhere):
                        if answer.is_success:
                            failures.append(
                                f"{where}: {label} got {answer.status_code} for {answer.request.url.path}"
                            )
                    if has_owned_object and (foreign.status_code, problem_type(foreign)) != (
                        nowhere.status_code,
                        problem_type(nowhere),
                    ):
                        failures.append(
                            f"{where}: {label} tells an existing object ({foreign.status_code} "
                            f"{problem_type(foreign)}) from a missing one ({nowhere.status_code} {problem_type(nowhere)})"
                        )
                    if foreign.status_code not in (403, 404, 405, 409, 422):
                        failures.append(f"{where}: {label} got {foreign.status_code}, expected 403 or 404")
                else:
                    answer = await call(client, route, missing_path, credential)
                    if answer.status_code in (401, 500):
                        failures.append(f"{where}: {label} got {answer.status_code}")
                    for value in leaks:
                        if value in answer.text:
                            failures.append(f"{where}: {label} sees the other tenant's {value}")
            # (c) the right tenant, a scope too narrow
            if route.scopes and not any(scope.endswith("*") for scope in route.scopes):
                for label, credential in (
                    ("a key without the scope", credentials.narrow_key(set(route.scopes))),
                    ("a token without the scope", credentials.narrow_token(set(route.scopes))),
                ):
                    answer = await call(client, route, owned_path, credential)
                    if answer.status_code != 403:
                        failures.append(f"{where}: {label} got {answer.status_code}, expected 403")
            elif route.scopes:  # a partner:* route: a key with neither its scopes nor a partner scope
                named = {scope for scope in route.scopes if not scope.endswith("*")}
                answer = await call(client, route, owned_path, credentials.narrow_key(named))
                if answer.status_code != 403:
                    failures.append(f"{where}: a key without {sorted(route.scopes)} got {answer.status_code}")
    assert not failures, f"{service}: {len(failures)} isolation failure(s):\n" + "\n".join(failures)
    assert checked > 0, f"{service}: no authenticated route was checked"


def test_the_public_lists_name_only_what_is_meant_to_be_public() -> None:
    """A route in both lists, or an authenticated-looking path among the public ones, is a mistake."""
    assert not set(PUBLIC) & set(OTHER_AUTHENTICATION)
    for _method, path in PUBLIC:
        assert not path.startswith(
            ("/v1/cases", "/v1/signals", "/v1/partners", "/v1/deliveries", "/v1/audit")
        ), path
