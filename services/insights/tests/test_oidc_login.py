"""Staff sign in to the dashboard through their municipality's OpenID Connect provider (DESIGN §3).

Everything is real, as in the other insights tests (the service in-process on SQLite or
PostgreSQL with a real NATS), and so is the provider: ``civicsignals.admin.devissuer`` on
loopback, speaking the authorization code flow with PKCE. A test plays the browser: it asks the
dashboard's start route (its in-process client keeps the cookies), follows the redirect to the
issuer's ``/authorize`` over real HTTP, and brings the issuer's redirect back to the callback with
the same client, so the flow cookie goes with it, as a browser's would.

The tenant maps the provider's group ``analisten`` to ``insights:read``; ``kcc`` gives a scope
the dashboard does not open for.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from civicsignals.admin.devissuer import DevIssuer, set_tenant_oidc
from civicsignals.common.auth import Principal
from civicsignals.common.oidc import OidcVerifier
from civicsignals.common.web_login import sign_person
from civicsignals.insights.pages import STAFF_WORDS
from civicsignals.insights.web_auth import COOKIE, OIDC, OIDC_CALLBACK, SCOPE

from .conftest import Insights

pytestmark = pytest.mark.timeout(120)

BASE = "http://insights"  # the in-process client's base URL (conftest's ``insights`` fixture)
CALLBACK = f"{BASE}{OIDC_CALLBACK}"
WEB_CLIENT = "insights-dashboard-gouda"
NEXT = "/dashboard?topic=afval"
SUBJECT = "medewerker-17"
EMAIL = "j.de.vries@gouda.example"  # a claim of the access token that must never show up
FLOW_COOKIE = OIDC.flow_cookie
NL, EN = STAFF_WORDS["nl"], STAFF_WORDS["en"]


@pytest.fixture(scope="module")
def issuer() -> Iterator[DevIssuer]:
    with DevIssuer() as running:
        yield running


def oidc_block(issuer: DevIssuer | str, **extra: Any) -> dict[str, Any]:
    """The tenant's ``oidc`` block for ``issuer``; ``web_client_id=None`` leaves it out."""
    block: dict[str, Any] = {
        "issuer": issuer if isinstance(issuer, str) else issuer.issuer,
        "audience": "civicsignals",
        "groups_claim": "groups",
        "group_scopes": {"analisten": [SCOPE], "kcc": ["cases:read"]},
        "web_client_id": WEB_CLIENT,
    }
    block.update(extra)
    return {name: value for name, value in block.items() if value is not None}


def set_oidc(insights: Insights, block: dict[str, Any] | None, folder: Any = None) -> None:
    """Write ``block`` as the ``oidc`` of the tenant's ``tenant.yaml`` (None: none) and have the
    service read it now."""
    set_tenant_oidc(folder or insights.tenant_key.folder, block)
    registry = insights.app.state.tenants
    registry.refresh(force=True)
    assert registry.errors == {}, registry.errors


@pytest.fixture
def staff(insights: Insights, issuer: DevIssuer) -> Insights:
    """The service, with Gouda letting its staff sign in through the loopback provider, which
    signs in an analyst (whose token also carries an e-mail address)."""
    set_oidc(insights, oidc_block(issuer))
    insights.app.state.tenants.oidc = OidcVerifier(min_refresh_interval_s=0)
    issuer.add_web_client(WEB_CLIENT, redirect_uris=[CALLBACK])
    issuer.sign_in_as(SUBJECT, groups=["analisten"], email=EMAIL)
    return insights


# -- playing the browser ---------------------------------------------------------------------------


def _start_link(tenant: str = "gouda", next_url: str = NEXT, lang: str | None = None) -> str:
    query = {"tenant": tenant, "next": next_url, **({"lang": lang} if lang else {})}
    return f"/dashboard/login/oidc?{urlencode(query)}"


async def _to_provider(client: httpx.AsyncClient, link: str) -> str:
    """Follow the login page's link: the dashboard's 303 to the provider's ``/authorize``."""
    started = await client.get(link)
    assert started.status_code == 303, started.text
    return str(started.headers["location"])


async def _at_provider(authorize_url: str) -> str:
    """The provider signs the person in (or not) and sends the browser back: its 302's target."""
    async with httpx.AsyncClient(follow_redirects=False) as browser:
        answer = await browser.get(authorize_url)
    assert answer.status_code == 302, answer.text
    location = str(answer.headers["location"])
    assert location.startswith(f"{CALLBACK}?"), location
    return location


async def _back(client: httpx.AsyncClient, callback_url: str) -> httpx.Response:
    """The browser arrives at the dashboard's callback (with its cookies, the flow cookie too)."""
    parts = urlsplit(callback_url)
    return await client.get(f"{parts.path}?{parts.query}")


async def _sign_in(client: httpx.AsyncClient, link: str | None = None) -> httpx.Response:
    """The whole flow, from the login page's link to the callback's answer."""
    return await _back(client, await _at_provider(await _to_provider(client, link or _start_link())))


def _set_cookies(answer: httpx.Response) -> dict[str, str]:
    """The cookies an answer sets or deletes, by name, with their whole header."""
    return {header.split("=", 1)[0]: header for header in answer.headers.get_list("set-cookie")}


def _no_login(answer: httpx.Response) -> None:
    """The answer sets no login cookie and ends the flow (its cookie deleted)."""
    cookies = _set_cookies(answer)
    assert COOKIE not in cookies, cookies
    assert "Max-Age=0" in cookies.get(FLOW_COOKIE, ""), cookies
    assert answer.headers["cache-control"] == "no-store"


def _error(answer: httpx.Response) -> str:
    found = re.search(r'<p class="error" role="alert">(.*?)</p>', answer.text, re.S)
    assert found, answer.text
    return html.unescape(found.group(1))


def _providers(page: str) -> list[tuple[str, str]]:
    """(href, words) of the login page's links to the providers."""
    return [
        (html.unescape(href), html.unescape(words))
        for href, words in re.findall(r'<a class="provider" href="([^"]*)">([^<]*)</a>', page)
    ]


async def _signed_out(client: httpx.AsyncClient) -> None:
    """The dashboard sends this browser to the login."""
    answer = await client.get("/dashboard")
    assert answer.status_code == 303 and urlsplit(answer.headers["location"]).path == "/dashboard/login"


def _browser(insights: Insights, cookies: dict[str, str] | None = None) -> httpx.AsyncClient:
    """Another browser on the same service, with only ``cookies``."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=insights.app), base_url=BASE, cookies=cookies)


# -- the tests --------------------------------------------------------------------------------------


async def test_a_person_signs_in_through_the_provider_and_sees_the_dashboard(
    staff: Insights, issuer: DevIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    """Login page → the dashboard's start route → the provider's ``/authorize`` (PKCE S256, the
    registered redirect URI) → the callback: a person's login cookie (HttpOnly, SameSite=Strict,
    no e-mail address in it), the flow cookie gone, and on to the page asked for. The dashboard,
    its signal list and its exports then open for the person as they do for a key."""
    client = staff.client
    page = await client.get("/dashboard/login", params={"next": NEXT})
    assert _providers(page.text) == [(_start_link(), "Inloggen via Gouda")]
    assert 'action="/dashboard/login"' in page.text  # the key form stays, for scripts and services

    started = await client.get(_start_link())
    assert started.status_code == 303
    authorize = urlsplit(started.headers["location"])
    assert f"{authorize.scheme}://{authorize.netloc}{authorize.path}" == f"{issuer.url}/authorize"
    asked = parse_qs(authorize.query)
    assert asked["client_id"] == [WEB_CLIENT] and asked["redirect_uri"] == [CALLBACK]
    assert asked["response_type"] == ["code"] and asked["code_challenge_method"] == ["S256"]
    assert asked["state"][0] and asked["code_challenge"][0] and "code_verifier" not in asked
    flow = _set_cookies(started)[FLOW_COOKIE]
    assert "HttpOnly" in flow and "SameSite=lax" in flow and "Path=/dashboard" in flow

    with caplog.at_level(logging.INFO, logger="civicsignals.insights.pages"):
        done = await _back(client, await _at_provider(started.headers["location"]))
    # Signed in; on to the page asked for by a page of the dashboard's own (the login cookie is
    # SameSite=Strict, which a redirect of a navigation the provider started would not carry).
    assert done.status_code == 200, done.text
    assert done.headers["refresh"] == f"0; url={NEXT}"
    assert f'<a href="{html.escape(NEXT)}">{NL["oidc_continue"]}</a>' in done.text
    assert done.headers["cache-control"] == "no-store"
    cookies = _set_cookies(done)
    login = cookies[COOKIE]
    assert "HttpOnly" in login and "SameSite=strict" in login and "Path=/dashboard" in login
    assert "Max-Age=0" in cookies[FLOW_COOKIE]
    value = client.cookies[COOKIE]
    claims = json.loads(base64.urlsafe_b64decode(value.split(".")[1] + "=="))
    assert claims["t"] == "gouda" and claims["s"] == SUBJECT and claims["sc"] == [SCOPE]
    assert EMAIL not in json.dumps(claims) and EMAIL not in login
    assert [r.getMessage() for r in caplog.records if "signed in" in r.getMessage()] == [
        f"dashboard: person:{SUBJECT} of gouda signed in through their provider"
    ]
    assert all(EMAIL not in record.getMessage() for record in caplog.records)

    dashboard = await client.get(done.headers["refresh"].split("url=", 1)[1])
    assert dashboard.status_code == 200, dashboard.text
    assert "<title>Gouda · Civic Signals inzichten</title>" in dashboard.text
    assert "Afmelden" in dashboard.text and EMAIL not in dashboard.text
    assert (await client.get("/dashboard/signals")).status_code == 200
    export = await client.get("/dashboard/exports/topics.csv")
    assert export.status_code == 200 and export.text.startswith("topic,count")

    out = await client.post("/dashboard/logout")  # on by the provider (see the sign-out test)
    assert out.status_code == 200 and out.headers["refresh"].startswith(f"0; url={issuer.url}/logout?")
    await _signed_out(client)


async def test_the_page_asked_for_and_its_language_travel_through_the_provider(
    staff: Insights, issuer: DevIssuer
) -> None:
    """An English page asked for without a login: the login page offers "Sign in with Gouda",
    the flow keeps the page and its language, and so does a failed sign-in's page."""
    client = staff.client
    anonymous = await client.get("/dashboard", params={"topic": "afval", "lang": "en"})
    login = await client.get(anonymous.headers["location"])
    english_next = f"{NEXT}&lang=en"
    assert _providers(login.text) == [(_start_link(next_url=english_next, lang="en"), "Sign in with Gouda")]

    done = await _sign_in(client, _providers(login.text)[0][0])
    assert done.status_code == 200 and done.headers["refresh"] == f"0; url={english_next}"
    assert EN["oidc_continue"] in done.text and '<html lang="en">' in done.text
    page = await client.get(english_next)
    assert page.status_code == 200 and "Signals over time" in page.text and "topic: Waste" in page.text

    # Chosen on the login page: English given as lang, the page asked for Dutch.
    client.cookies.clear()
    issuer.sign_in_as(None)
    refused = await _sign_in(client, _start_link(lang="en"))
    assert refused.status_code == 401 and '<html lang="en">' in refused.text
    assert _error(refused).startswith(EN["oidc_failed"].format(detail=""))
    assert f'name="next" value="{html.escape(english_next)}"' in refused.text
    assert _providers(refused.text) == [(_start_link(next_url=english_next, lang="en"), "Sign in with Gouda")]
    switch = re.search(r'<a class="other-language" href="([^"]*)"', refused.text)
    assert switch and html.unescape(switch.group(1)).startswith("/dashboard/login?")


async def test_the_login_page_offers_a_provider_only_where_the_tenant_names_a_web_client(
    insights: Insights, issuer: DevIssuer, make_tenant: Any
) -> None:
    """No ``oidc`` block, or one for API tokens only (no ``web_client_id``): no button, and the
    start route is a 404. With ``web_client_id``: the button, in Dutch and English. A tenant whose
    provider cannot be reached is offered, and its start is a 502 saying so."""
    client = insights.client
    for block in (None, oidc_block(issuer, web_client_id=None)):
        set_oidc(insights, block)
        page = await client.get("/dashboard/login")
        assert page.status_code == 200 and _providers(page.text) == []
        assert NL["login_oidc_intro"] not in page.text and NL["login_with_key"] not in page.text
        refused = await client.get(_start_link())
        assert refused.status_code == 404 and _error(refused) == NL["oidc_not_offered"]
        assert FLOW_COOKIE not in _set_cookies(refused)

    set_oidc(insights, oidc_block(issuer))
    page = await client.get("/dashboard/login")
    assert _providers(page.text) == [(_start_link(next_url="/dashboard"), "Inloggen via Gouda")]
    assert NL["login_oidc_intro"] in page.text and NL["login_with_key"] in page.text
    english = await client.get("/dashboard/login", params={"lang": "en"})
    assert _providers(english.text) == [(_start_link(next_url="/dashboard", lang="en"), "Sign in with Gouda")]
    unknown = await client.get(_start_link(tenant="nergens", lang="en"))
    assert unknown.status_code == 404 and _error(unknown) == EN["oidc_not_offered"]

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    alphen = make_tenant("alphen", scopes=[SCOPE], name="Alphen aan den Rijn")
    set_oidc(insights, oidc_block(closed), folder=alphen.folder)
    page = await client.get("/dashboard/login")
    assert [words for _, words in _providers(page.text)] == [
        "Inloggen via Alphen aan den Rijn",
        "Inloggen via Gouda",
    ]
    unreachable = await client.get(_start_link(tenant="alphen"))
    assert unreachable.status_code == 502 and "niet bereikbaar" in _error(unreachable)  # in Dutch
    assert FLOW_COOKIE not in _set_cookies(unreachable)


async def test_a_person_without_the_scope_gets_403_and_no_login(staff: Insights, issuer: DevIssuer) -> None:
    issuer.sign_in_as("medewerker-18", groups=["kcc"])
    answer = await _sign_in(staff.client)
    assert answer.status_code == 403
    assert _error(answer) == NL["person_lacks_scope"].format(scope=SCOPE)
    assert f'name="next" value="{html.escape(NEXT)}"' in answer.text
    _no_login(answer)
    await _signed_out(staff.client)


async def test_when_the_provider_does_not_sign_the_person_in_there_is_no_login(
    staff: Insights, issuer: DevIssuer
) -> None:
    issuer.sign_in_as(None)
    callback_url = await _at_provider(await _to_provider(staff.client, _start_link()))
    assert parse_qs(urlsplit(callback_url).query)["error"] == ["access_denied"]
    answer = await _back(staff.client, callback_url)
    assert answer.status_code == 401
    assert _error(answer) == NL["oidc_failed"].format(
        detail="de inlogdienst heeft u niet ingelogd (access_denied)"
    )
    _no_login(answer)
    await _signed_out(staff.client)


async def test_an_answer_for_another_browser_or_another_flow_is_refused(staff: Insights) -> None:
    """The callback belongs to the browser that started the flow (its flow cookie) and to that
    flow (its state). Another browser given the callback URL is refused without the code being
    spent, so the browser that started it still signs in; a changed state is refused."""
    started_here = await _at_provider(await _to_provider(staff.client, _start_link()))
    async with _browser(staff) as elsewhere:
        stolen = await _back(elsewhere, started_here)
        assert stolen.status_code == 401 and "niet in deze browser begonnen" in _error(stolen)
        assert COOKIE not in _set_cookies(stolen)
        await _signed_out(elsewhere)
    assert (await _back(staff.client, started_here)).status_code == 200
    assert (await staff.client.get("/dashboard")).status_code == 200

    staff.client.cookies.clear()
    callback_url = await _at_provider(await _to_provider(staff.client, _start_link()))
    parts = urlsplit(callback_url)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    forged = f"{CALLBACK}?{urlencode({**query, 'state': query['state'][::-1]})}"
    answer = await _back(staff.client, forged)
    assert answer.status_code == 401 and "niet in deze browser begonnen" in _error(answer)
    _no_login(answer)
    await _signed_out(staff.client)
    # The flow is over: its own answer, arriving afterwards, is refused too.
    late = await _back(staff.client, callback_url)
    assert late.status_code == 401 and COOKIE not in _set_cookies(late)


async def test_a_code_is_redeemed_once(staff: Insights) -> None:
    """The callback URL replayed, even with the flow cookie it came with: the provider does not
    redeem its code twice, and no second login is made."""
    callback_url = await _at_provider(await _to_provider(staff.client, _start_link()))
    flow = staff.client.cookies[FLOW_COOKIE]
    first = await _back(staff.client, callback_url)
    assert first.status_code == 200 and COOKIE in _set_cookies(first)

    async with _browser(staff, {FLOW_COOKIE: flow}) as replaying:
        again = await _back(replaying, callback_url)
        assert again.status_code == 401, again.text
        assert "niet bevestigd" in _error(again)
        _no_login(again)
        await _signed_out(replaying)
    # And in the browser that signed in (its flow cookie gone): refused, its login untouched.
    replayed = await _back(staff.client, callback_url)
    assert replayed.status_code == 401 and COOKIE not in _set_cookies(replayed)
    assert (await staff.client.get("/dashboard")).status_code == 200


async def test_sign_ins_check_the_id_token_with_the_services_cached_key_set_and_follow_a_rotation(
    staff: Insights, issuer: DevIssuer
) -> None:
    """The access token and the ID token of every sign-in are checked against one cached key set:
    two sign-ins ask the provider for it once. A provider that rotates its key (the old one
    dropped) signs the next person in with the new one, which is fetched for its unknown key id."""
    verifier = staff.app.state.tenants.oidc
    before = issuer.jwks_requests
    for _ in range(2):
        async with _browser(staff) as browser:
            done = await _sign_in(browser)
            assert done.status_code == 200 and COOKIE in _set_cookies(done), done.text
    assert (verifier.fetches, issuer.jwks_requests - before) == (1, 1)

    issuer.rotate(drop_old=True)
    async with _browser(staff) as browser:
        done = await _sign_in(browser)
        assert done.status_code == 200 and COOKIE in _set_cookies(done), done.text
    assert (verifier.fetches, issuer.jwks_requests - before) == (2, 2)


async def test_removing_the_web_client_or_changing_the_issuer_ends_a_persons_login(
    staff: Insights, issuer: DevIssuer
) -> None:
    assert (await _sign_in(staff.client)).status_code == 200
    assert (await staff.client.get("/dashboard")).status_code == 200
    async with _browser(staff) as key_login:
        signed = await key_login.post("/dashboard/login", data={"api_key": staff.key, "next": "/dashboard"})
        assert signed.status_code == 303

        set_oidc(staff, oidc_block(issuer, web_client_id=None))  # API tokens only from now on
        await _signed_out(staff.client)
        assert (await key_login.get("/dashboard")).status_code == 200  # keys are not affected
        page = await staff.client.get("/dashboard/login")
        assert _providers(page.text) == []

    # Staff sign in again with the provider; then the tenant moves to another issuer.
    set_oidc(staff, oidc_block(issuer))
    assert (await _sign_in(staff.client)).status_code == 200
    assert (await staff.client.get("/dashboard")).status_code == 200
    set_oidc(staff, oidc_block(f"{issuer.issuer}/other-realm"))
    await _signed_out(staff.client)


async def test_a_tampered_or_foreign_person_cookie_is_refused(staff: Insights, issuer: DevIssuer) -> None:
    """The person's cookie is signed: more scopes, another tenant or subject, a later expiry, a
    changed signature, or a cookie signed with another key: each is no login. The cookie as
    issued still is one (so the refusals are the cookie's, not the browser's)."""
    issuer.sign_in_as(SUBJECT, groups=["kcc", "analisten"])
    assert (await _sign_in(staff.client)).status_code == 200
    issued = staff.client.cookies[COOKIE]
    mark, payload, expires, mac = issued.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))

    def with_claims(**changed: Any) -> str:
        encoded = base64.urlsafe_b64encode(json.dumps({**claims, **changed}).encode()).decode().rstrip("=")
        return f"{mark}.{encoded}.{expires}.{mac}"

    principal = Principal(
        tenant="gouda", key_id="", scopes=frozenset({SCOPE}), subject_kind="person", subject=SUBJECT
    )
    tampered = {
        "more scopes": with_claims(sc=sorted([*claims["sc"], "admin"])),
        "another tenant": with_claims(t="alphen"),
        "another subject": with_claims(s="medewerker-99"),
        "a later expiry": f"{mark}.{payload}.{int(expires) + 3600}.{mac}",
        "another signature": f"{mark}.{payload}.{expires}.{mac[::-1]}",
        "another key": sign_person(b"not the service's key", principal, issuer.issuer, 3600),
        "a key login's shape": f"gouda.{payload}.{expires}.{mac}",
    }
    for what, value in tampered.items():
        async with _browser(staff, {COOKIE: value}) as browser:
            answer = await browser.get("/dashboard")
            assert answer.status_code == 303, what
    async with _browser(staff, {COOKIE: issued}) as browser:
        assert (await browser.get("/dashboard")).status_code == 200


async def test_a_persons_bearer_token_opens_the_dashboard_as_it_opens_the_api(
    staff: Insights, issuer: DevIssuer
) -> None:
    """Scripts send ``Authorization: Bearer``; a person's token from the provider is taken there as
    the API takes it (the scope mapped from the groups), not only API keys."""
    analyst = {"Authorization": f"Bearer {issuer.issue(SUBJECT, groups=['analisten'])}"}
    assert (await staff.client.get("/dashboard", headers=analyst)).status_code == 200
    assert (await staff.client.get("/v1/exports", headers=analyst)).status_code == 200
    clerk = {"Authorization": f"Bearer {issuer.issue('medewerker-18', groups=['kcc'])}"}
    assert (await staff.client.get("/dashboard", headers=clerk)).status_code == 403
    forged = {"Authorization": f"Bearer {issuer.issue(SUBJECT, groups=['analisten'], audience='other')}"}
    assert (await staff.client.get("/dashboard", headers=forged)).status_code == 401


async def test_signing_out_ends_the_session_at_the_provider_too(staff: Insights, issuer: DevIssuer) -> None:
    """RP-Initiated Logout: at a shared desk, the next person to click "sign in with Gouda" must
    not be signed in as the one before. Signing out sends the browser to the provider's
    ``end_session_endpoint`` with the ID token kept at sign-in as the hint, the client id and the
    login page to come back to; the provider ends its session and sends the browser back; the
    next sign-in finds nobody signed in there (``login_required``), not the person before."""
    login_page = f"{BASE}/dashboard/login"
    issuer.add_web_client(WEB_CLIENT, redirect_uris=[CALLBACK], post_logout_redirect_uris=[login_page])
    seen = len(issuer.logouts)
    client = staff.client
    done = await _sign_in(client)
    assert done.status_code == 200, done.text
    kept = _set_cookies(done)[OIDC.id_token_cookie]
    assert "HttpOnly" in kept and "SameSite=strict" in kept and "Path=/dashboard" in kept
    id_token = client.cookies[OIDC.id_token_cookie]
    assert id_token.count(".") == 2  # the provider's JWT, as it gave it

    out = await client.post("/dashboard/logout", params={"lang": "en"})
    # A page that moves on to the provider by itself (the pages' CSP, form-action 'self', would
    # stop a form post's redirect to another site), with a link there too.
    assert out.status_code == 200 and out.headers["cache-control"] == "no-store"
    going = out.headers["refresh"].removeprefix("0; url=")
    assert f'href="{html.escape(going)}"' in out.text and "Sign out at Gouda" in out.text
    target = urlsplit(going)
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{issuer.url}/logout"
    asked = parse_qs(target.query)
    assert asked["client_id"] == [WEB_CLIENT] and asked["post_logout_redirect_uri"] == [login_page]
    assert asked["ui_locales"] == ["en"] and asked["id_token_hint"] == [id_token]
    cookies = _set_cookies(out)
    assert "Max-Age=0" in cookies[COOKIE] and "Max-Age=0" in cookies[OIDC.id_token_cookie]

    async with httpx.AsyncClient(follow_redirects=False) as browser:
        at_provider = await browser.get(going)
    assert at_provider.status_code == 302 and at_provider.headers["location"] == login_page
    assert issuer.logouts[seen:] == [{"client_id": WEB_CLIENT, "hinted": True}]
    client.cookies.clear()  # the browser applied the deletions
    await _signed_out(client)
    again = await _sign_in(client)
    assert again.status_code == 401 and "login_required" in _error(again)
    _no_login(again)


async def test_a_provider_without_an_end_session_endpoint_and_a_keys_login_sign_out_here_only(
    staff: Insights, issuer: DevIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    issuer.offers_logout = False
    try:
        staff.app.state.tenants.oidc = OidcVerifier(min_refresh_interval_s=0)  # reads discovery afresh
        client = staff.client
        assert (await _sign_in(client)).status_code == 200
        with caplog.at_level(logging.INFO, logger="civicsignals.common.web_oidc"):
            out = await client.post("/dashboard/logout")
        assert out.status_code == 303 and out.headers["location"] == "/dashboard/login"
        assert "Max-Age=0" in _set_cookies(out)[COOKIE]
        assert any("offers no end_session_endpoint" in r.getMessage() for r in caplog.records)
    finally:
        issuer.offers_logout = True
    key_login = await staff.client.post("/dashboard/login", data={"api_key": staff.key, "next": "/dashboard"})
    assert key_login.status_code == 303, key_login.text
    out = await staff.client.post("/dashboard/logout")
    assert out.status_code == 303 and out.headers["location"] == "/dashboard/login"
