"""The privacy desk asks for proof that the officer is at the keyboard now before it erases (a
step-up), on the real databases and NATS, against a real provider (the loopback ``DevIssuer``,
whose ``/authorize`` honours ``max_age`` and ``prompt=login`` as a provider with a password form
does). Nothing is mocked; the browser's part is played by hand, as in ``test_privacy_desk_oidc``.

An officer signed in through the provider longer ago than ``erasure_reauth_max_age_s`` is sent
there to sign in again (``max_age``), comes back to the confirmation page of the same search and
must tick and submit once more; a provider answer without ``auth_time``, with one too old, or for
another person erases nothing. An officer signed in with a key types it again in the erase form:
a wrong one erases nothing and counts as a failed sign-in."""

from __future__ import annotations

import base64
import html
import json
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest

from civicsignals.admin.devissuer import DevIssuer
from civicsignals.common.tenants import add_key
from civicsignals.common.web_oidc import FAILURE_WORDS
from civicsignals.devstack.browser import chromium, find_chromium, served
from civicsignals.intake.models import Contact, Signal
from civicsignals.intake.privacy_desk import ERASURE_RESUME_COOKIE, OIDC
from civicsignals.intake.privacy_desk_words import WORDS

from .conftest import Intake
from .test_access_request import _people
from .test_privacy_desk import JAN_EMAIL, JAN_PHONE, _audit, _codes, _shown_ids, _sign_in_with_key, _token
from .test_privacy_desk_oidc import (
    CALLBACK,
    CLIENT_ID,
    OFFICER,
    _assert_desk_headers,
    _ends_flow,
    _landed,
    _logs_in,
    _sign_in_with_provider,
    _signed_in,
    desk,
    issuer,
)

__all__ = ["desk", "issuer"]  # the fixtures, shared with the sign-in tests

pytestmark = pytest.mark.timeout(90)

LONG_AGO = 3600  # seconds: a sign-in at the provider from an hour ago
ALWAYS_ASK = {"erasure_reauth_max_age_s": 0}


@pytest.fixture
def intake_settings_overrides() -> dict[str, Any]:
    """The default setting (300 s); tests that need another parametrize this."""
    return {}


# -- playing the browser ----------------------------------------------------------------------------


async def _desk_signed_in(intake: Intake, issuer: DevIssuer, **sign_in: Any) -> str:
    """The officer signed in through the provider (``sign_in``: :meth:`DevIssuer.sign_in_as`'s
    keywords, e.g. an old ``authenticated_at``); returns the desk's form token."""
    issuer.sign_in_as(OFFICER, groups=["privacyteam"], **sign_in)
    _signed_in(await _sign_in_with_provider(intake))
    page = await intake.client.get("/privacy")
    assert page.status_code == 200, page.text
    return _token(page.text)


async def _confirm_erasure(intake: Intake, token: str, email: str = JAN_EMAIL) -> httpx.Response:
    """Find the person, tick the box for the signals listed and press "erase"."""
    person = {"csrf": token, "email": email}
    found = await intake.client.post("/privacy/find", data=person)
    assert found.status_code == 200, found.text
    return await intake.client.post(
        "/privacy/erase", data={**person, "confirm": "yes", "signal_id": _shown_ids(found.text)}
    )


def _sent_to_provider(answer: httpx.Response, issuer: DevIssuer) -> dict[str, list[str]]:
    """Checks that ``answer`` erased nothing and is the page that moves on to the provider's
    ``/authorize`` by itself (``Refresh``, and a link), with the flow cookie; returns the query of
    the authorization request."""
    assert answer.status_code == 200, answer.text
    _assert_desk_headers(answer)
    going = answer.headers["refresh"].removeprefix("0; url=")
    assert f'href="{html.escape(going)}"' in answer.text
    target = urlsplit(going)
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{issuer.url}/authorize"
    flow = [c for c in answer.headers.get_list("set-cookie") if c.startswith(f"{OIDC.flow_cookie}=")]
    assert len(flow) == 1 and "HttpOnly" in flow[0] and "Path=/privacy" in flow[0], flow
    asked = parse_qs(target.query)
    assert asked["client_id"] == [CLIENT_ID] and asked["redirect_uri"] == [CALLBACK]
    return asked


def _readable(value: str) -> bytes:
    """What anyone who reads a cookie's value reads: the value, and what its base64url parts
    (and the base64url strings in a JSON part) decode to. The flow cookie is signed, not
    encrypted; the search inside it must be."""
    seen = [value.encode()]
    for part in value.replace('"', ".").replace(",", ".").replace(":", ".").split("."):
        try:
            seen.append(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        except ValueError:
            continue
    decoded = b" ".join(seen)
    nested = [_readable(part.decode("utf-8", "replace")) for part in seen[1:] if part.startswith(b"{")]
    return b" ".join([decoded, *nested])


def _assert_no_person(value: str) -> None:
    for personal in (JAN_EMAIL.encode(), b"example.org", b"Jansen"):
        assert personal not in _readable(value), value


async def _at_provider(answer: httpx.Response) -> str:
    """The browser follows the page to the provider's ``/authorize``; returns the path and query
    of the callback the provider sends it back to."""
    async with httpx.AsyncClient(follow_redirects=False) as browser:
        at = await browser.get(answer.headers["refresh"].removeprefix("0; url="))
    assert at.status_code == 302, at.text
    back = urlsplit(at.headers["location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == CALLBACK
    return f"{back.path}?{back.query}"


async def _nothing_erased(intake: Intake) -> None:
    assert await intake.count(Contact) == 3 and await _audit(intake, "person.erase") == []


def _refused(answer: httpx.Response, reason: str, status: int = 401, lang: str = "nl") -> None:
    """The callback's page for a sign-in again that did not prove one: why, and nothing erased."""
    assert answer.status_code == status, answer.text
    shown = html.unescape(answer.text)
    assert WORDS[lang]["reauth_failed_title"] in shown and WORDS[lang]["nothing_erased"] in shown
    assert FAILURE_WORDS[lang][reason] in shown, shown
    assert "refresh" not in answer.headers and _ends_flow(answer)
    for cookie in answer.headers.get_list("set-cookie"):  # no erasure to come back to
        assert not cookie.startswith(f"{ERASURE_RESUME_COOKIE}=") or "Max-Age=0" in cookie, cookie
    _assert_desk_headers(answer)


# -- through the provider ---------------------------------------------------------------------------


async def test_a_sign_in_older_than_the_setting_is_asked_again_and_the_erasure_confirmed_after(
    desk: Intake, issuer: DevIssuer
) -> None:
    photo, rated, piet = await _people(desk)
    token = await _desk_signed_in(desk, issuer, authenticated_at=time.time() - LONG_AGO)
    found = await desk.client.post("/privacy/find", data={"csrf": token, "email": JAN_EMAIL})
    note = WORDS["nl"]["reauth_after"].format(age="5 minuten", municipality="Gouda")
    assert note in html.unescape(found.text) and 'name="api_key"' not in found.text

    asked_again = await _confirm_erasure(desk, token)

    asked = _sent_to_provider(asked_again, issuer)
    assert asked["max_age"] == ["300"] and "prompt" not in asked and asked["nonce"][0]
    assert WORDS["nl"]["reauth_going"].format(municipality="Gouda") in html.unescape(asked_again.text)
    await _nothing_erased(desk)
    # The search to come back to travels with the flow, encrypted: not in any URL, nor readable.
    assert JAN_EMAIL not in unquote(asked_again.headers["refresh"]) and "example.org" not in asked_again.text
    assert b'"u":{"m":300' in _readable(desk.client.cookies[OIDC.flow_cookie])  # the decoding works
    _assert_no_person(desk.client.cookies[OIDC.flow_cookie])

    # At the provider the session is an hour old: the officer is asked to sign in again.
    callback = await _at_provider(asked_again)
    assert issuer.sign_in_prompts == ["max_age"]
    back = await desk.client.get(callback)

    assert back.status_code == 200, back.text
    assert back.headers["refresh"] == "0; url=/privacy/erase"
    assert 'href="/privacy/erase"' in back.text
    assert WORDS["nl"]["reauth_done"].format(municipality="Gouda") in html.unescape(back.text)
    assert _logs_in(back) and _ends_flow(back)
    resume = [c for c in back.headers.get_list("set-cookie") if c.startswith(f"{ERASURE_RESUME_COOKIE}=")]
    assert len(resume) == 1 and "Path=/privacy/erase" in resume[0] and "SameSite=strict" in resume[0]
    assert "HttpOnly" in resume[0] and "example.org" not in back.text
    _assert_no_person(desk.client.cookies[ERASURE_RESUME_COOKIE])
    await _nothing_erased(desk)

    # Back at the confirmation page of the same search: the list afresh, the box to tick again.
    again = await desk.client.get("/privacy/erase")
    assert again.status_code == 200, again.text
    _assert_desk_headers(again)
    assert _codes(again.text) == [photo["tracking_code"], rated["tracking_code"]]
    assert WORDS["nl"]["signed_in_again"] in html.unescape(again.text)
    assert '<input type="checkbox" name="confirm" value="yes" id="confirm">' in again.text  # unticked
    await _nothing_erased(desk)
    new_token = _token(again.text)  # of the new login
    unticked = await desk.client.post(
        "/privacy/erase", data={"csrf": new_token, "email": JAN_EMAIL, "signal_id": _shown_ids(again.text)}
    )
    assert unticked.status_code == 422 and "refresh" not in unticked.headers
    await _nothing_erased(desk)

    done = await desk.client.post(
        "/privacy/erase",
        data={"csrf": new_token, "email": JAN_EMAIL, "confirm": "yes", "signal_id": _shown_ids(again.text)},
    )

    assert done.status_code == 200, done.text
    assert "Verwijderd: 2 melding(en)" in done.text
    erasures = await _audit(desk, "person.erase")
    assert sorted(r.object for r in erasures) == sorted([f"signal:{photo['id']}", f"signal:{rated['id']}"])
    assert {r.actor for r in erasures} == {f"person:{OFFICER}"}
    # Each record says how the officer proved it was them: the sign-in just made, in seconds.
    assert all(re.fullmatch(r"step-up: a sign-in \d+ s old", r.detail or "") for r in erasures), erasures
    assert await desk.get(Contact, piet["id"]) is not None
    ended = [c for c in done.headers.get_list("set-cookie") if c.startswith(f"{ERASURE_RESUME_COOKIE}=")]
    assert len(ended) == 1 and "Max-Age=0" in ended[0]  # the sign-in again is used up
    assert issuer.sign_in_prompts == ["max_age"]  # asked once, the new sign-in sufficed
    assert (await desk.client.get("/privacy/erase")).status_code == 303


@pytest.mark.parametrize("intake_settings_overrides", [ALWAYS_ASK])
async def test_with_the_setting_at_0_every_erasure_asks_for_a_sign_in_with_prompt_login(
    desk: Intake, issuer: DevIssuer
) -> None:
    """A sign-in of a moment ago is not enough: ``max_age=0`` and ``prompt=login``. The sign-in
    again lets the erasure of that search go ahead, once; the next person's asks again."""
    photo, rated, piet = await _people(desk)
    token = await _desk_signed_in(desk, issuer)
    found = await desk.client.post("/privacy/find", data={"csrf": token, "email": JAN_EMAIL})
    always = WORDS["nl"]["reauth_always"].format(municipality="Gouda")
    assert always in html.unescape(found.text)

    asked_again = await _confirm_erasure(desk, token)

    asked = _sent_to_provider(asked_again, issuer)
    assert asked["max_age"] == ["0"] and asked["prompt"] == ["login"]
    await _nothing_erased(desk)
    back = await desk.client.get(await _at_provider(asked_again))
    assert back.status_code == 200 and issuer.sign_in_prompts == ["prompt=login"]
    again = await desk.client.get("/privacy/erase")
    assert _codes(again.text) == [photo["tracking_code"], rated["tracking_code"]]
    token = _token(again.text)
    # The sign-in again was for Jan's erasure: Piet's is not covered by it.
    piets = await _confirm_erasure(desk, token, email="piet@example.org")
    _sent_to_provider(piets, issuer)
    assert await desk.get(Contact, piet["id"]) is not None
    done = await desk.client.post(
        "/privacy/erase",
        data={"csrf": token, "email": JAN_EMAIL, "confirm": "yes", "signal_id": _shown_ids(again.text)},
    )
    assert done.status_code == 200 and "Verwijderd: 2 melding(en)" in done.text

    # The next erasure (Piet's) asks again; so would Jan's, were there anything left.
    next_one = await _confirm_erasure(desk, token, email="piet@example.org")
    assert _sent_to_provider(next_one, issuer)["prompt"] == ["login"]
    assert await desk.get(Contact, piet["id"]) is not None
    assert (await desk.client.get("/privacy/erase")).status_code == 303  # no erasure to come back to


async def test_a_provider_that_sends_no_auth_time_counts_from_the_sign_in_here(
    desk: Intake, issuer: DevIssuer
) -> None:
    """Without ``auth_time`` the sign-in's own time is when the officer last signed in: a sign-in
    of a moment ago erases directly, as before."""
    issuer.includes_auth_time = False
    await _people(desk)
    token = await _desk_signed_in(desk, issuer, authenticated_at=time.time() - LONG_AGO)

    done = await _confirm_erasure(desk, token)

    assert done.status_code == 200 and "Verwijderd: 2 melding(en)" in done.text
    assert issuer.sign_in_prompts == []


@pytest.mark.parametrize("intake_settings_overrides", [ALWAYS_ASK])
async def test_an_answer_to_max_age_without_auth_time_is_refused_and_erases_nothing(
    desk: Intake, issuer: DevIssuer
) -> None:
    """OpenID Connect: ``auth_time`` is REQUIRED in the ID token when ``max_age`` was asked."""
    await _people(desk)
    issuer.includes_auth_time = False
    token = await _desk_signed_in(desk, issuer)
    asked_again = await _confirm_erasure(desk, token)
    _sent_to_provider(asked_again, issuer)

    back = await desk.client.get(await _at_provider(asked_again))

    _refused(back, "no_auth_time")
    assert not _logs_in(back)
    await _nothing_erased(desk)
    assert (await desk.client.get("/privacy")).status_code == 200  # still signed in, to try again
    assert (await desk.client.get("/privacy/erase")).status_code == 303


async def test_a_provider_that_ignores_max_age_and_answers_with_the_old_sign_in_is_refused(
    desk: Intake, issuer: DevIssuer
) -> None:
    """The provider answers from its hour-old session without asking (it ignores ``max_age``):
    its ``auth_time`` says so, and the desk does not take it for a new sign-in."""
    await _people(desk)
    issuer.honours_max_age = False
    token = await _desk_signed_in(desk, issuer, authenticated_at=time.time() - LONG_AGO)
    asked_again = await _confirm_erasure(desk, token)
    assert _sent_to_provider(asked_again, issuer)["max_age"] == ["300"]

    back = await desk.client.get(await _at_provider(asked_again))

    _refused(back, "not_recent")
    assert issuer.sign_in_prompts == []
    await _nothing_erased(desk)
    # Asked again, the same: nothing erased however often the button is pressed.
    found = await desk.client.post("/privacy/find", data={"csrf": token, "email": JAN_EMAIL})
    retried = await desk.client.post(
        "/privacy/erase",
        data={"csrf": token, "email": JAN_EMAIL, "confirm": "yes", "signal_id": _shown_ids(found.text)},
    )
    _sent_to_provider(retried, issuer)
    await _nothing_erased(desk)


@pytest.mark.parametrize("intake_settings_overrides", [ALWAYS_ASK])
async def test_someone_else_signing_in_at_the_provider_erases_nothing_and_ends_the_login(
    desk: Intake, issuer: DevIssuer
) -> None:
    """A colleague at the counter PC signs in as themselves when the desk asks: the person at the
    keyboard is not the officer the login names, so nothing is erased and the login ends."""
    await _people(desk)
    token = await _desk_signed_in(desk, issuer)
    asked_again = await _confirm_erasure(desk, token, email=JAN_EMAIL)
    _sent_to_provider(asked_again, issuer)
    issuer.sign_in_as("medewerker-7", groups=["privacyteam"])

    back = await desk.client.get(await _at_provider(asked_again))

    _refused(back, "other_person", 403)
    assert WORDS["nl"]["reauth_signed_out"] in html.unescape(back.text)
    assert 'href="/privacy/login"' in back.text
    cookies = back.headers.get_list("set-cookie")
    assert any(c.startswith("civic_privacy_desk=") and "Max-Age=0" in c for c in cookies)
    await _nothing_erased(desk)
    desk.client.cookies.clear()  # the browser applied the deletions
    assert (await desk.client.get("/privacy")).status_code == 303


async def test_an_officer_who_does_not_sign_in_again_erases_nothing_and_keeps_the_login(
    desk: Intake, issuer: DevIssuer
) -> None:
    """The officer cancels at the provider's password form: the answer in the language the desk
    was in, nothing erased, the login (for finding and downloading) as it was."""
    await _people(desk)
    issuer.signs_in_again_when_asked = False
    token = await _desk_signed_in(desk, issuer, authenticated_at=time.time() - LONG_AGO)
    person = {"csrf": token, "email": JAN_EMAIL, "lang": "en"}
    found = await desk.client.post("/privacy/find", data=person)
    asked_again = await desk.client.post(
        "/privacy/erase", data={**person, "confirm": "yes", "signal_id": _shown_ids(found.text)}
    )
    assert WORDS["en"]["reauth_going"].format(municipality="Gouda") in html.unescape(asked_again.text)

    back = await desk.client.get(await _at_provider(asked_again))

    _refused(back, "refused", lang="en")
    assert "access_denied" in back.text and 'href="/privacy?lang=en"' in back.text
    assert issuer.sign_in_prompts == ["max_age"]
    await _nothing_erased(desk)
    assert (await desk.client.get("/privacy")).status_code == 200


async def test_the_way_back_to_an_erasure_is_only_for_the_officer_who_signed_in_again(
    desk: Intake, issuer: DevIssuer
) -> None:
    """The confirmation page to come back to opens for the officer who signed in again, in that
    browser: not for another login, not without the cookie, and never erases by itself."""
    await _people(desk)
    token = await _desk_signed_in(desk, issuer, authenticated_at=time.time() - LONG_AGO)
    asked_again = await _confirm_erasure(desk, token)
    assert (await desk.client.get(await _at_provider(asked_again))).status_code == 200
    resume = desk.client.cookies[ERASURE_RESUME_COOKIE]

    _, key = add_key(desk.gouda.folder, ["privacy:admin"], description="colleague")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=desk.app), base_url="http://intake"
    ) as colleague:
        assert (await colleague.post("/privacy/login", data={"api_key": key})).status_code == 303
        colleague.cookies.set(ERASURE_RESUME_COOKIE, resume, path="/privacy/erase")
        other = await colleague.get("/privacy/erase")
        assert other.status_code == 303 and other.headers["location"] == "/privacy"
        colleague.cookies.set(ERASURE_RESUME_COOKIE, resume[::-1], path="/privacy/erase")
        assert (await colleague.get("/privacy/erase")).status_code == 303
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=desk.app), base_url="http://intake"
    ) as stranger:
        stranger.cookies.set(ERASURE_RESUME_COOKIE, resume, path="/privacy/erase")
        anonymous = await stranger.get("/privacy/erase")
        assert anonymous.status_code == 303 and anonymous.headers["location"] == "/privacy/login"
    for _ in range(2):  # opening it twice erases nothing either
        assert (await desk.client.get("/privacy/erase")).status_code == 200
    await _nothing_erased(desk)


# -- with a key -------------------------------------------------------------------------------------


async def test_a_key_officer_types_the_key_again_and_a_wrong_one_erases_nothing(intake: Intake) -> None:
    photo, rated, piet = await _people(intake)
    officer = await _sign_in_with_key(intake)
    _, colleagues_key = add_key(intake.gouda.folder, ["privacy:admin"], description="colleague")
    person = {"csrf": officer.token, "email": JAN_EMAIL}
    found = await intake.client.post("/privacy/find", data=person)
    assert 'id="erase_api_key" name="api_key" type="password"' in found.text
    confirmed = {**person, "confirm": "yes", "signal_id": _shown_ids(found.text)}

    for typed, status, message in (
        ("", 422, "key_needed"),
        ("cs_nope.nope", 401, "key_not_the_login"),
        (colleagues_key, 401, "key_not_the_login"),  # valid, but not the key of this login
        (officer.key + "x", 401, "key_not_the_login"),
    ):
        refused = await intake.client.post("/privacy/erase", data={**confirmed, "api_key": typed})
        assert refused.status_code == status, (typed, refused.text)
        _assert_desk_headers(refused)
        error = (
            f'<span class="field-error" id="erase_api_key-error">{html.escape(WORDS["nl"][message])}</span>'
        )
        assert error in refused.text, refused.text
        assert _codes(refused.text) == [photo["tracking_code"], rated["tracking_code"]]
        assert officer.key not in refused.text and colleagues_key not in refused.text
        assert await intake.count(Contact) == 3 and await _audit(intake, "person.erase") == []
    assert (await intake.get(Signal, photo["id"])).erased_at is None

    done = await intake.client.post("/privacy/erase", data={**confirmed, "api_key": officer.key})

    assert done.status_code == 200, done.text
    assert "Verwijderd: 2 melding(en)" in done.text
    erasures = await _audit(intake, "person.erase")
    assert {(r.actor, r.detail) for r in erasures} == {
        (f"key:{officer.key_id}", "step-up: the login's key typed again")
    }
    assert await intake.get(Contact, piet["id"]) is not None


@pytest.mark.parametrize(
    "intake_settings_overrides", [{"login_failures_burst": 2, "login_failures_per_minute": 1}]
)
async def test_wrong_keys_in_the_erase_form_count_as_failed_sign_ins(intake: Intake) -> None:
    """The erase form checks keys as the login form does, with its throttle: two wrong keys (the
    burst here) and the right one gets 429 with ``Retry-After``, unchecked, in the page's language,
    and so does the login form from that address."""
    await _people(intake)
    officer = await _sign_in_with_key(intake)
    person = {"csrf": officer.token, "phone": JAN_PHONE, "lang": "en"}
    found = await intake.client.post("/privacy/find", data=person)
    confirmed = {**person, "confirm": "yes", "signal_id": _shown_ids(found.text)}
    for _ in range(2):
        wrong = await intake.client.post("/privacy/erase", data={**confirmed, "api_key": "cs_nope.nope"})
        assert wrong.status_code == 401, wrong.text

    throttled = await intake.client.post("/privacy/erase", data={**confirmed, "api_key": officer.key})

    assert throttled.status_code == 429, throttled.text
    seconds = int(throttled.headers["retry-after"])
    assert WORDS["en"]["too_many_failures"].format(seconds=seconds) in html.unescape(throttled.text)
    assert await intake.count(Contact) == 3 and await _audit(intake, "person.erase") == []
    login = await intake.client.post("/privacy/login", data={"api_key": officer.key})
    assert login.status_code == 429
    assert json.dumps(throttled.headers.get_list("set-cookie")).count("civic_privacy_desk=") == 0


@pytest.mark.parametrize("intake_settings_overrides", [ALWAYS_ASK])
async def test_a_key_officer_is_not_sent_to_a_provider_whatever_the_setting(intake: Intake) -> None:
    """The setting is about sign-ins through the provider; a key's login types the key."""
    await _people(intake)
    officer = await _sign_in_with_key(intake)
    done = await _confirm_erasure_with_key(intake, officer.token, officer.key)
    assert done.status_code == 200 and "refresh" not in done.headers
    assert "Verwijderd: 2 melding(en)" in done.text


async def _confirm_erasure_with_key(intake: Intake, token: str, key: str) -> httpx.Response:
    person = {"csrf": token, "email": JAN_EMAIL}
    found = await intake.client.post("/privacy/find", data=person)
    return await intake.client.post(
        "/privacy/erase",
        data={**person, "confirm": "yes", "signal_id": _shown_ids(found.text), "api_key": key},
    )


async def test_a_person_who_lost_privacy_admin_at_the_provider_erases_nothing_and_is_signed_out(
    desk: Intake, issuer: DevIssuer
) -> None:
    await _people(desk)
    token = await _desk_signed_in(desk, issuer, authenticated_at=time.time() - LONG_AGO)
    asked_again = await _confirm_erasure(desk, token)
    issuer.sign_in_as(OFFICER, groups=["kcc"])  # moved to another team meanwhile

    back = await desk.client.get(await _at_provider(asked_again))

    assert back.status_code == 403, back.text
    shown = html.unescape(back.text)
    assert WORDS["nl"]["person_lacks_scope"].format(municipality="Gouda") in shown
    assert WORDS["nl"]["nothing_erased"] in shown and WORDS["nl"]["reauth_signed_out"] in shown
    assert not _logs_in(back) and _ends_flow(back)
    await _nothing_erased(desk)
    desk.client.cookies.clear()  # the browser applied the deletions
    assert (await desk.client.get("/privacy")).status_code == 303


# -- in a browser -----------------------------------------------------------------------------------

CHROMIUM = find_chromium()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make browser)")
async def test_in_chromium_the_officer_signs_in_again_and_confirms_the_erasure_on_the_page_it_brings_back(
    desk: Intake, issuer: DevIssuer, tmp_path: Path
) -> None:
    """A real browser, the provider another site than the desk (its ``127.0.0.1`` against the
    desk's ``localhost``): the erase button's page moves on to the provider (a form post could
    not redirect there under the desk's CSP), the provider's answer comes back to the callback (a
    navigation another site started), whose page moves on to the confirmation page with the
    ``SameSite=Strict`` cookies it set; ticking and submitting there erases."""
    assert CHROMIUM is not None
    photo, rated, _ = await _people(desk)
    issuer.sign_in_as(OFFICER, groups=["privacyteam"], authenticated_at=time.time() - LONG_AGO)
    async with served(desk.app) as base, chromium(CHROMIUM, tmp_path / "profile") as browser:
        desk_url = base.replace("127.0.0.1", "localhost")
        issuer.add_web_client(CLIENT_ID, redirect_uris=[f"{desk_url}/privacy/login/oidc/callback"])
        page = await browser.new_page()
        await page.goto(f"{desk_url}/privacy/login/oidc?tenant=gouda")
        assert (await _landed(page, "Persoon zoeken")).startswith("/privacy ")
        await page.submit(
            f"document.querySelector('#email').value = {json.dumps(JAN_EMAIL)};"
            "document.querySelector('form[action=\"/privacy/find\"]').submit();"
        )
        # A load event of a page before (the sign-in's pages move on by themselves) may end the
        # wait for the next one early: wait for what the page says instead.
        assert "2 melding(en) gevonden." in await _landed(page, "2 melding(en) gevonden.")
        await page.submit(
            "document.querySelector('#confirm').checked = true;"
            "document.querySelector('form[action=\"/privacy/erase\"]').submit();"
        )

        where = await _landed(page, WORDS["nl"]["signed_in_again"])

        assert where.startswith("/privacy/erase "), where
        assert photo["tracking_code"] in where and rated["tracking_code"] in where
        assert issuer.sign_in_prompts == ["max_age"]
        await _nothing_erased(desk)
        await page.submit(
            "document.querySelector('#confirm').checked = true;"
            "document.querySelector('form[action=\"/privacy/erase\"]').submit();"
        )
        done = await _landed(page, "Verwijderd: 2 melding(en)")
        assert "Verwijderd: 2 melding(en)" in done, done
        desk_errors = [error for error in page.errors if issuer.url not in error]  # its favicon
        assert desk_errors == [], page.errors
    assert {r.actor for r in await _audit(desk, "person.erase")} == {f"person:{OFFICER}"}
