"""The privacy officer signs in to the privacy desk through the municipality's OpenID Connect
provider (DESIGN §3), on the real databases and NATS, against a real provider: the loopback
``DevIssuer``, whose ``/authorize`` and ``/token`` the desk's sign-in really calls (the
authorization code flow with PKCE). Nothing of the flow is mocked; the browser's part (following
the redirects, carrying the cookies) is done by hand with two HTTP clients, as a browser would.

The person's login is a :class:`Principal` like a key's: the desk finds, downloads and erases as
for a key, and its audit records name ``person:<subject>``."""

from __future__ import annotations

import asyncio
import html
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from civicsignals.admin.devissuer import DevIssuer, set_tenant_oidc
from civicsignals.common.oidc import OidcVerifier, pseudonymous_subject
from civicsignals.devstack.browser import chromium, find_chromium, served
from civicsignals.intake.models import Contact, Signal
from civicsignals.intake.privacy_desk_words import WORDS

from .conftest import Intake
from .test_access_case_notes import RoutingStandIn, routing_stand_in
from .test_access_request import _people
from .test_privacy_desk import JAN_EMAIL, _audit, _codes, _shown_ids, _token

pytestmark = pytest.mark.timeout(90)

CLIENT_ID = "privacyloket"
#: The redirect URI the provider has registered: the desk's callback as the test client reaches it.
CALLBACK = "http://intake/privacy/login/oidc/callback"
#: Where the provider may send the browser back after signing the officer out.
LOGIN_PAGE = "http://intake/privacy/login"
OFFICER = "medewerker-42"


@pytest.fixture
def issuer() -> Iterator[DevIssuer]:
    with DevIssuer() as running:
        running.add_web_client(CLIENT_ID, redirect_uris=[CALLBACK], post_logout_redirect_uris=[LOGIN_PAGE])
        yield running


@pytest.fixture
async def stand_in(tmp_path: Path) -> AsyncIterator[RoutingStandIn]:
    """Routing's case API and notifier's mail record, for the access document."""
    async with routing_stand_in(tmp_path / "data") as server:
        yield server


@pytest.fixture
def intake_settings_overrides(stand_in: RoutingStandIn) -> dict[str, Any]:
    return {"routing_url": stand_in.url, "notifier_url": stand_in.url}


def oidc_block(issuer: DevIssuer, *, web_client_id: str | None = CLIENT_ID) -> dict[str, Any]:
    """Gouda trusts the loopback provider: group ``privacyteam`` gives ``privacy:admin``, ``kcc``
    only ``cases:read``; ``web_client_id`` lets its staff sign in on the services' pages."""
    block: dict[str, Any] = {
        "issuer": issuer.issuer,
        "audience": "civicsignals",
        "groups_claim": "groups",
        "group_scopes": {"privacyteam": ["privacy:admin"], "kcc": ["cases:read"]},
    }
    if web_client_id is not None:
        block["web_client_id"] = web_client_id
    return block


def set_oidc(intake: Intake, block: dict[str, Any] | None) -> None:
    """Write gouda's ``oidc:`` block (None: remove it) and have the registry read it now."""
    set_tenant_oidc(intake.gouda.folder, block)
    registry = intake.app.state.tenants
    registry.refresh(force=True)
    assert "gouda" not in registry.errors, registry.errors


@pytest.fixture
def desk(intake: Intake, issuer: DevIssuer) -> Intake:
    """Intake with gouda's staff signing in through the loopback provider."""
    set_oidc(intake, oidc_block(issuer))
    intake.app.state.tenants.oidc = OidcVerifier(min_refresh_interval_s=0)
    return intake


async def _to_provider(intake: Intake, lang: str | None = None) -> httpx.Response:
    """The desk's start of the sign-in (the answer: 303 to the provider, with the flow cookie)."""
    params = {"tenant": "gouda", **({"lang": lang} if lang else {})}
    started = await intake.client.get("/privacy/login/oidc", params=params)
    assert started.status_code == 303, started.text
    return started


async def _at_provider(started: httpx.Response) -> str:
    """The browser at the provider's ``/authorize`` (a real HTTP server): the path and query of the
    callback it sends the browser back to."""
    async with httpx.AsyncClient(follow_redirects=False) as browser:
        answer = await browser.get(started.headers["location"])
    assert answer.status_code == 302, answer.text
    back = urlsplit(answer.headers["location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == CALLBACK
    return f"{back.path}?{back.query}"


async def _sign_in_with_provider(intake: Intake, lang: str | None = None) -> httpx.Response:
    """The whole flow on the fixture's client; returns the callback's answer."""
    callback = await _at_provider(await _to_provider(intake, lang))
    return await intake.client.get(callback)


def _logs_in(answer: httpx.Response) -> bool:
    """Whether an answer sets the desk's login cookie (not merely deletes the flow cookie)."""
    for cookie in answer.headers.get_list("set-cookie"):
        name, _, rest = cookie.partition("=")
        if name == "civic_privacy_desk" and not rest.startswith('""') and "Max-Age=0" not in rest:
            return True
    return False


def _ends_flow(answer: httpx.Response) -> bool:
    return any(
        cookie.startswith("civic_privacy_desk_oidc=") and ("Max-Age=0" in cookie or 'oidc=""' in cookie)
        for cookie in answer.headers.get_list("set-cookie")
    )


def _signed_in(answer: httpx.Response) -> str:
    """The desk's answer to a successful sign-in: the login cookie, and a page that moves on to the
    desk by itself (``Refresh``) with a link there; returns where it moves on to."""
    assert answer.status_code == 200, answer.text
    assert _logs_in(answer) and _ends_flow(answer)
    delay, _, target = answer.headers["refresh"].partition("; url=")
    assert delay == "0" and f'href="{html.escape(target)}"' in answer.text
    return target


def _assert_desk_headers(answer: httpx.Response) -> None:
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]


# -- the whole flow ---------------------------------------------------------------------------------


async def test_an_officer_signs_in_with_the_provider_and_the_desk_audits_them_as_the_person(
    desk: Intake, issuer: DevIssuer, wait_until: Any
) -> None:
    photo, rated, piet = await _people(desk)
    issuer.sign_in_as(OFFICER, groups=["privacyteam"])
    form = await desk.client.get("/privacy/login")
    assert 'href="/privacy/login/oidc?tenant=gouda"' in form.text and "Inloggen via Gouda" in form.text

    started = await _to_provider(desk)
    _assert_desk_headers(started)
    authorize = urlsplit(started.headers["location"])
    assert f"{authorize.scheme}://{authorize.netloc}{authorize.path}" == f"{issuer.url}/authorize"
    asked = parse_qs(authorize.query)
    assert asked["client_id"] == [CLIENT_ID] and asked["redirect_uri"] == [CALLBACK]
    assert asked["code_challenge_method"] == ["S256"] and asked["response_type"] == ["code"]
    flow_cookie = started.headers["set-cookie"]
    assert flow_cookie.startswith("civic_privacy_desk_oidc=") and "Path=/privacy" in flow_cookie
    assert "SameSite=lax" in flow_cookie and "HttpOnly" in flow_cookie
    assert not _logs_in(started)

    back = await desk.client.get(await _at_provider(started))

    assert _signed_in(back) == "/privacy"
    assert "U bent ingelogd via Gouda." in back.text
    _assert_desk_headers(back)
    login_cookie = next(c for c in back.headers.get_list("set-cookie") if c.startswith("civic_privacy_desk="))
    assert (
        "HttpOnly" in login_cookie and "SameSite=strict" in login_cookie and "Path=/privacy" in login_cookie
    )
    page = await desk.client.get("/privacy")
    assert page.status_code == 200, page.text
    assert "Persoon zoeken" in page.text and "Gouda" in page.text
    token = _token(page.text)

    # Finding by tracking code, as with a key: the dry run lists the signal and records nothing.
    found = await desk.client.post(
        "/privacy/find", data={"csrf": token, "tracking_code": photo["tracking_code"]}
    )
    assert found.status_code == 200, found.text
    assert _codes(found.text) == [photo["tracking_code"]]
    assert await _audit(desk, "person.access") == [] and await _audit(desk, "person.erase") == []

    # The access document, each signal's read audited under the person.
    download = await desk.client.post("/privacy/access", data={"csrf": token, "email": JAN_EMAIL})
    assert download.status_code == 200, download.text
    assert [part["signal_id"] for part in json.loads(download.content)["signals"]] == [
        photo["id"],
        rated["id"],
    ]
    reads = await _audit(desk, "person.access")
    assert sorted(r.object for r in reads) == sorted([f"signal:{photo['id']}", f"signal:{rated['id']}"])
    assert {r.actor for r in reads} == {f"person:{OFFICER}"}

    # The erasure, behind its confirmation, audited under the person.
    person = {"csrf": token, "email": JAN_EMAIL}
    shown = _shown_ids((await desk.client.post("/privacy/find", data=person)).text)
    done = await desk.client.post("/privacy/erase", data={**person, "confirm": "yes", "signal_id": shown})
    assert done.status_code == 200, done.text
    assert "Verwijderd: 2 melding(en)" in done.text
    erasures = await _audit(desk, "person.erase")
    assert sorted(r.object for r in erasures) == sorted([f"signal:{photo['id']}", f"signal:{rated['id']}"])
    assert {r.actor for r in erasures} == {f"person:{OFFICER}"}
    assert (await desk.get(Signal, photo["id"])).erased_at is not None
    assert await desk.get(Contact, piet["id"]) is not None
    assert len(await desk.events(".signal.erased", wait_until, count=2)) == 2

    # Signing out ends the person's login as it ends a key's, and their session at the provider
    # (RP-Initiated Logout, with the ID token kept at sign-in as the hint), which sends the
    # browser back to the login page; the next sign-in there finds nobody signed in.
    out = await desk.client.post("/privacy/logout", data={"csrf": token, "lang": "nl"})
    assert out.status_code == 200 and "Uitloggen bij Gouda" in out.text  # moves on by itself
    going = out.headers["refresh"].removeprefix("0; url=")
    target = urlsplit(going)
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{issuer.url}/logout"
    asked = parse_qs(target.query)
    assert asked["post_logout_redirect_uri"] == [LOGIN_PAGE] and asked["client_id"] == [CLIENT_ID]
    assert asked["ui_locales"] == ["nl"] and asked["id_token_hint"][0].count(".") == 2
    assert (await desk.client.get("/privacy")).status_code == 303
    async with httpx.AsyncClient(follow_redirects=False) as browser:
        at_provider = await browser.get(going)
    assert at_provider.status_code == 302 and at_provider.headers["location"] == LOGIN_PAGE
    assert issuer.logouts == [{"client_id": CLIENT_ID, "hinted": True}]
    again = await _sign_in_with_provider(desk)
    assert again.status_code == 401 and "login_required" in again.text and not _logs_in(again)


async def test_the_officer_comes_back_in_the_language_they_started_in_and_no_email_shows(
    desk: Intake, issuer: DevIssuer
) -> None:
    """A provider whose subject is an e-mail address: the login and the audit name a pseudonym."""
    email_subject = "p.devries@gouda.example"
    issuer.sign_in_as(email_subject, groups=["privacyteam"])
    english = await desk.client.get("/privacy/login", params={"lang": "en"})
    assert 'href="/privacy/login/oidc?tenant=gouda&amp;lang=en"' in english.text
    assert "Sign in with Gouda" in english.text

    back = await _sign_in_with_provider(desk, lang="en")

    assert _signed_in(back) == "/privacy?lang=en"
    assert "You are signed in with Gouda." in back.text
    page = await desk.client.get("/privacy?lang=en")
    assert page.status_code == 200 and "Find a person" in page.text
    assert email_subject not in page.text and "gouda.example" not in page.text
    assert email_subject not in json.dumps(back.headers.get_list("set-cookie"))
    await _people(desk)
    token = _token(page.text)
    download = await desk.client.post("/privacy/access", data={"csrf": token, "email": JAN_EMAIL})
    assert download.status_code == 200, download.text
    actors = {r.actor for r in await _audit(desk, "person.access")}
    assert actors == {f"person:{pseudonymous_subject(issuer.issuer, email_subject)}"}
    assert email_subject not in next(iter(actors))


# -- the login page ---------------------------------------------------------------------------------


async def test_the_login_page_offers_the_provider_only_when_the_tenant_sets_web_client_id(
    intake: Intake, issuer: DevIssuer
) -> None:
    """Gouda trusts the provider for API tokens, but offers no sign-in here without
    ``web_client_id``: no link, and starting one anyway answers 404 without a cookie."""
    set_oidc(intake, oidc_block(issuer, web_client_id=None))
    form = await intake.client.get("/privacy/login")
    assert form.status_code == 200 and "/privacy/login/oidc" not in form.text
    assert "Inloggen via" not in form.text and 'name="api_key"' in form.text
    refused = await intake.client.get("/privacy/login/oidc", params={"tenant": "gouda"})
    assert refused.status_code == 404 and "set-cookie" not in refused.headers
    assert WORDS["nl"]["oidc_not_offered"] in html.unescape(refused.text)
    _assert_desk_headers(refused)

    set_oidc(intake, oidc_block(issuer))
    form = await intake.client.get("/privacy/login")
    assert form.text.count('class="provider"') == 1  # gouda's; utrecht has no provider
    assert 'href="/privacy/login/oidc?tenant=gouda"' in form.text and "Inloggen via Gouda" in form.text
    assert 'name="api_key"' in form.text  # the key form stays
    for tenant in ("utrecht", "nergens", ""):
        unknown = await intake.client.get("/privacy/login/oidc", params={"tenant": tenant, "lang": "en"})
        assert unknown.status_code == 404 and "set-cookie" not in unknown.headers
        assert WORDS["en"]["oidc_not_offered"] in unknown.text


async def test_a_provider_that_cannot_be_reached_brings_the_form_back_with_502(
    intake: Intake, issuer: DevIssuer
) -> None:
    set_oidc(intake, oidc_block(issuer))
    issuer.stop()  # nothing answers at the issuer's address any more
    answer = await intake.client.get("/privacy/login/oidc", params={"tenant": "gouda"})
    assert answer.status_code == 502 and "set-cookie" not in answer.headers
    assert "niet bereikbaar" in answer.text and "Inloggen via de inlogdienst" in answer.text


# -- refusals ---------------------------------------------------------------------------------------


async def test_a_person_without_privacy_admin_gets_403_and_no_login(desk: Intake, issuer: DevIssuer) -> None:
    issuer.sign_in_as("medewerker-7", groups=["kcc"])

    back = await _sign_in_with_provider(desk)

    assert back.status_code == 403, back.text
    assert WORDS["nl"]["person_lacks_scope"].format(municipality="Gouda") in html.unescape(back.text)
    assert "lacks the scope" not in back.text and 'name="api_key"' in back.text
    assert not _logs_in(back) and _ends_flow(back)
    _assert_desk_headers(back)
    assert (await desk.client.get("/privacy")).status_code == 303


async def test_when_the_provider_refuses_no_one_is_signed_in(desk: Intake, issuer: DevIssuer) -> None:
    """Also in the language the officer started in."""
    issuer.sign_in_as(None)

    back = await _sign_in_with_provider(desk)

    assert back.status_code == 401, back.text
    shown = html.unescape(back.text)
    assert "Inloggen via de inlogdienst van de gemeente is mislukt" in shown and "access_denied" in shown
    english = await _sign_in_with_provider(desk, lang="en")
    assert english.status_code == 401 and '<html lang="en">' in english.text
    assert "Signing in through the municipality's sign-in service failed" in html.unescape(english.text)
    assert not _logs_in(english) and _ends_flow(english)
    assert not _logs_in(back) and _ends_flow(back)
    _assert_desk_headers(back)
    assert (await desk.client.get("/privacy")).status_code == 303


async def test_a_callback_without_the_flow_cookie_or_with_another_state_is_refused(
    desk: Intake, issuer: DevIssuer
) -> None:
    issuer.sign_in_as(OFFICER, groups=["privacyteam"])
    callback = await _at_provider(await _to_provider(desk))

    # Another browser (no flow cookie: say, the link sent to someone else) gets no login.
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=desk.app), base_url="http://intake"
    ) as elsewhere:
        stranger = await elsewhere.get(callback)
        assert stranger.status_code == 401 and not _logs_in(stranger)
        assert "niet in deze browser begonnen" in stranger.text
        assert (await elsewhere.get("/privacy")).status_code == 303

    # This browser, but the answer of another sign-in than its own (a second start replaced the
    # flow cookie; the first answer's state is not the cookie's).
    second = await _at_provider(await _to_provider(desk))
    first_state = parse_qs(urlsplit(callback).query)["state"][0]
    assert first_state != parse_qs(urlsplit(second).query)["state"][0]
    crossed = await desk.client.get(callback)
    assert crossed.status_code == 401 and not _logs_in(crossed) and _ends_flow(crossed)
    assert "niet in deze browser begonnen" in crossed.text
    assert (await desk.client.get("/privacy")).status_code == 303

    # The right answer with the right cookie signs in (the refusals above were not for another reason).
    assert _signed_in(await _sign_in_with_provider(desk)) == "/privacy"
    assert (await desk.client.get("/privacy")).status_code == 200


async def test_removing_web_client_id_ends_a_persons_login(desk: Intake, issuer: DevIssuer) -> None:
    issuer.sign_in_as(OFFICER, groups=["privacyteam"])
    _signed_in(await _sign_in_with_provider(desk))
    page = await desk.client.get("/privacy")
    assert page.status_code == 200
    token = _token(page.text)
    await _people(desk)

    set_oidc(desk, oidc_block(issuer, web_client_id=None))

    assert (await desk.client.get("/privacy")).status_code == 303
    erase = await desk.client.post(
        "/privacy/erase", data={"csrf": token, "email": JAN_EMAIL, "confirm": "yes"}
    )
    assert erase.status_code == 303 and erase.headers["location"] == "/privacy/login"
    assert await desk.count(Contact) == 3 and await _audit(desk, "person.erase") == []


# -- in a browser -----------------------------------------------------------------------------------

CHROMIUM = find_chromium()


def _provider_page() -> Starlette:
    """A provider's own page, as a real one shows before it signs someone in (a password form):
    the browser leaves it for ``/authorize`` by a link on it, so that the way back to the desk is
    a navigation another site started."""

    async def login(request: Request) -> HTMLResponse:
        to = html.escape(request.query_params["to"])
        return HTMLResponse(f'<!doctype html><title>IdP</title><a id="go" href="{to}">Inloggen</a>')

    return Starlette(routes=[Route("/login", login)])


async def _landed(page: Any, expected: str) -> str:
    """Where the page ended up once its redirects settled (its path and text)."""
    where = ""
    for _ in range(200):
        try:
            where = await page.evaluate("location.pathname + ' ' + (document.body?.innerText ?? '')")
        except (AssertionError, RuntimeError):  # the page went away under the script
            where = ""
        if expected in where:
            break
        await asyncio.sleep(0.05)
    return str(where)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make browser)")
async def test_in_chromium_the_provider_sends_the_officer_back_to_the_desk_signed_in(
    desk: Intake, issuer: DevIssuer, tmp_path: Path
) -> None:
    """A real browser, where the provider is another site than the desk (its ``127.0.0.1``
    against the desk's ``localhost``) and shows a page of its own: the way back from it is a
    navigation another site started, which a ``SameSite=Strict`` cookie does not accompany; the
    desk must open all the same."""
    assert CHROMIUM is not None
    issuer.sign_in_as(OFFICER, groups=["privacyteam"])
    async with (
        served(desk.app) as base,
        served(_provider_page()) as provider,
        chromium(CHROMIUM, tmp_path / "profile") as browser,
    ):
        desk_url = base.replace("127.0.0.1", "localhost")
        issuer.add_web_client(CLIENT_ID, redirect_uris=[f"{desk_url}/privacy/login/oidc/callback"])
        page = await browser.new_page()
        await page.goto(f"{desk_url}/privacy/login")
        # Follow the desk's link to the start, but stop at the provider's door: the flow cookie
        # is the browser's; the provider's page (another site) sends it on to /authorize.
        async with httpx.AsyncClient() as plain:
            started = await plain.get(f"{desk_url}/privacy/login/oidc", params={"tenant": "gouda"})
        assert started.status_code == 303, started.text
        flow = started.cookies["civic_privacy_desk_oidc"]
        await page.send(
            "Network.setCookie",
            {
                "name": "civic_privacy_desk_oidc",
                "value": flow,
                "url": f"{desk_url}/privacy",
                "path": "/privacy",
                "httpOnly": True,
                "sameSite": "Lax",
            },
        )
        await page.goto(f"{provider}/login?{urlencode({'to': started.headers['location']})}")
        await page.submit("document.querySelector('#go').click();")
        where = await _landed(page, "Persoon zoeken")
        assert where.startswith("/privacy ") and "Persoon zoeken" in where, where
        assert "Gouda" in where
        desk_errors = [error for error in page.errors if provider not in error]  # not its favicon
        assert desk_errors == [], page.errors

        # Signing out goes by the provider, which ends its session and sends the browser back to
        # the desk's login page (registered there as the client's post-logout redirect URI).
        issuer.add_web_client(
            CLIENT_ID,
            redirect_uris=[f"{desk_url}/privacy/login/oidc/callback"],
            post_logout_redirect_uris=[f"{desk_url}/privacy/login"],
        )
        await page.submit("document.querySelector('form[action=\"/privacy/logout\"] button').click();")
        where = await _landed(page, WORDS["nl"]["login_heading"])
        assert where.startswith("/privacy/login ") and WORDS["nl"]["login_heading"] in where, where
        assert issuer.logouts == [{"client_id": CLIENT_ID, "hinted": True}]
        await page.goto(f"{desk_url}/privacy")
        assert (await _landed(page, WORDS["nl"]["login_heading"])).startswith("/privacy/login ")
