"""The privacy desk (``/privacy``): the privacy API as web pages for the privacy officer, on the
real databases and NATS. Signing in with a key (and the throttle of failed sign-ins per client
address), finding a person by exactly one detail, the access document as a download (the API's
own), the erasure behind a confirmation, the form token, no person in any URL, ``no-store``
everywhere, tenants apart; and the pages in headless Chromium."""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlmodel import col, select

from civicsignals.common.tenants import add_key
from civicsignals.common.web_login import SignInThrottle
from civicsignals.devstack.browser import chromium, find_chromium, served
from civicsignals.devstack.ports import free_port
from civicsignals.intake.models import AuditRecord, Contact, Signal
from civicsignals.intake.privacy_desk import LOGIN
from civicsignals.intake.privacy_desk_words import WORDS
from civicsignals.intake.settings import IntakeSettings

from .conftest import Intake
from .test_access_case_notes import STAND_IN_HISTORY, RoutingStandIn, routing_stand_in
from .test_access_request import FEEDBACK_TEXT, JAN, PHOTO_TEXT, _people, _photo, _signal
from .test_resident_pages import move_case

JAN_EMAIL = "jan@example.org"
JAN_PHONE = "+31 6 1234 5678"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
SCREENSHOT = Path("/tmp/privacy-desk.png")


async def _audit(intake: Intake, action: str) -> list[AuditRecord]:
    async with intake.runtime.sessions() as session:
        rows = await session.exec(select(AuditRecord).where(col(AuditRecord.action) == action))
        return list(rows.all())


@dataclass(frozen=True)
class KeyOfficer:
    """A privacy officer signed in with a key: its id, the key itself (typed again to erase) and
    the form token of the login."""

    key_id: str
    key: str
    token: str


async def _sign_in_with_key(
    intake: Intake, scopes: list[str] | None = None, folder: Path | None = None
) -> KeyOfficer:
    """A privacy officer signed in with a new key on the fixture's client."""
    key_id, key = add_key(folder or intake.gouda.folder, scopes or ["privacy:admin"], description="desk")
    signed_in = await intake.client.post("/privacy/login", data={"api_key": key})
    assert signed_in.status_code == 303, signed_in.text
    page = await intake.client.get("/privacy")
    assert page.status_code == 200, page.text
    return KeyOfficer(key_id, key, _token(page.text))


async def _sign_in(
    intake: Intake, scopes: list[str] | None = None, folder: Path | None = None
) -> tuple[str, str]:
    """A privacy officer signed in on the fixture's client; returns the key id and the form token."""
    officer = await _sign_in_with_key(intake, scopes, folder)
    return officer.key_id, officer.token


def _token(html: str) -> str:
    found = CSRF.search(html)
    assert found is not None, html
    return found.group(1)


def _codes(html: str) -> list[str]:
    return re.findall(r'<td class="code">([^<]+)</td>', html)


def _field_errors(html: str) -> dict[str, str]:
    return dict(re.findall(r'<span class="field-error" id="([a-z_]+)-error">([^<]+)</span>', html))


# -- signing in -------------------------------------------------------------------------------------


async def test_signing_in_needs_a_valid_key_with_the_scope(intake: Intake) -> None:
    anonymous = await intake.client.get("/privacy")
    assert anonymous.status_code == 303 and anonymous.headers["location"] == "/privacy/login"
    english = await intake.client.get("/privacy", params={"lang": "en"})
    assert english.headers["location"] == "/privacy/login?lang=en"
    form = await intake.client.get("/privacy/login")
    assert form.status_code == 200 and '<html lang="nl">' in form.text
    assert "Inloggen bij het privacyloket" in form.text and "privacy:admin" in form.text
    assert "Sign in to the privacy desk" in (await intake.client.get(english.headers["location"])).text

    wrong = await intake.client.post("/privacy/login", data={"api_key": "cs_nope.nope"})
    assert wrong.status_code == 401 and "Deze sleutel wordt niet geaccepteerd." in wrong.text
    assert "set-cookie" not in wrong.headers
    _, portal_key = add_key(intake.gouda.folder, ["signals:write", "cases:read"], description="portal")
    narrow = await intake.client.post("/privacy/login", data={"api_key": portal_key, "lang": "en"})
    assert narrow.status_code == 403 and "lacks the scope 'privacy:admin'" in html.unescape(narrow.text)
    assert "set-cookie" not in narrow.headers
    assert (await intake.client.get("/privacy")).status_code == 303

    _, key = add_key(intake.gouda.folder, ["privacy:admin"], description="desk")
    good = await intake.client.post("/privacy/login", data={"api_key": key, "lang": "en"})
    assert good.status_code == 303 and good.headers["location"] == "/privacy?lang=en"
    cookie = good.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/privacy" in cookie
    assert key not in cookie and key.split(".")[-1] not in cookie
    desk = await intake.client.get("/privacy")
    assert desk.status_code == 200 and "Persoon zoeken" in desk.text
    assert "<header" in desk.text and "Gouda" in desk.text  # the municipality's name
    assert "Find a person" in (await intake.client.get("/privacy", params={"lang": "en"})).text


async def test_an_admin_key_opens_the_desk_too(intake: Intake) -> None:
    await _sign_in(intake, ["admin"])


async def test_revoking_the_key_or_signing_out_ends_the_login(intake: Intake) -> None:
    key_id, token = await _sign_in(intake)
    intake.gouda.revoke(key_id)
    intake.app.state.tenants.refresh(force=True)
    assert (await intake.client.get("/privacy")).status_code == 303
    await _people(intake)
    find = await intake.client.post("/privacy/find", data={"csrf": token, "email": JAN_EMAIL})
    assert find.status_code == 303 and find.headers["location"] == "/privacy/login"

    intake.client.cookies.clear()
    _, token = await _sign_in(intake)
    forged = await intake.client.post("/privacy/logout", data={"csrf": "nope"})
    assert forged.status_code == 403
    assert (await intake.client.get("/privacy")).status_code == 200
    out = await intake.client.post("/privacy/logout", data={"csrf": token})
    assert out.status_code == 303 and out.headers["location"] == "/privacy/login"
    assert 'civic_privacy_desk=""' in out.headers["set-cookie"] or "Max-Age=0" in out.headers["set-cookie"]
    assert (await intake.client.get("/privacy")).status_code == 303


# -- too many failed sign-ins ----------------------------------------------------------------------

WRONG_KEY = "cs_nope.nope"
KEY_FIELD = re.compile(r'<input id="api_key"[^>]*>')


def _login_page_refusing(answer: httpx.Response, lang: str) -> str:
    """Checks that ``answer`` is the desk's 429 (the login form again, in ``lang``, its key field
    empty, no cookie, not kept by the browser) and returns the message it shows."""
    assert answer.status_code == 429, answer.text
    assert "set-cookie" not in answer.headers
    assert answer.headers["cache-control"] == "no-store"
    assert f'<html lang="{lang}">' in answer.text and 'action="/privacy/login"' in answer.text
    field = KEY_FIELD.search(answer.text)
    assert field is not None and "value=" not in field.group(0)
    retry_after = int(answer.headers["retry-after"])
    message = WORDS[lang]["too_many_failures"].format(seconds=retry_after)
    assert message in html.unescape(answer.text)
    return message


def throttled_count() -> float:
    """The desk's refused sign-ins so far in this process (``civic_web_login_throttled_total``)."""
    return REGISTRY.get_sample_value("civic_web_login_throttled_total", {"path": "/privacy/login"}) or 0.0


@pytest.mark.parametrize(
    "intake_settings_overrides", [{"login_failures_burst": 3, "login_failures_per_minute": 2}]
)
async def test_once_an_address_has_failed_too_often_even_the_right_key_gets_429_and_others_sign_in(
    intake: Intake, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, count_key_lookups: Any
) -> None:
    """The settings' burst of wrong keys (3 here), then the right key: refused with 429 and
    ``Retry-After`` before the key store is asked, with the message in the page's language and a
    warning that names neither key nor address. Another address signs in meanwhile."""
    key_id, key = add_key(intake.gouda.folder, ["privacy:admin"], description="desk")
    for _ in range(3):
        wrong = await intake.client.post("/privacy/login", data={"api_key": WRONG_KEY})
        assert wrong.status_code == 401, wrong.text
    lookups = count_key_lookups(intake.app.state.tenants)
    throttled_before = throttled_count()

    with caplog.at_level(logging.WARNING, logger="civicsignals.common.web_login"):
        refused = await intake.client.post("/privacy/login", data={"api_key": key})
        english = await intake.client.post("/privacy/login", data={"api_key": key, "lang": "en"})

    _login_page_refusing(refused, "nl")
    _login_page_refusing(english, "en")
    assert 1 <= int(refused.headers["retry-after"]) <= 30  # a failure refills every 30 s at 2 a minute
    assert lookups.calls == 0  # the key was not even looked up
    assert (await intake.client.get("/privacy")).status_code == 303  # not signed in
    # Two refusals, one warning: the log hears of a refused address once, the metric counts each.
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "/privacy/login" in warnings[0], warnings
    assert f"retry after {refused.headers['retry-after']} s" in warnings[0]
    assert throttled_count() - throttled_before == 2
    key_parts = {key[start : start + 6] for start in range(len(key) - 5)}  # "any part of it"
    for warning in warnings:
        assert [part for part in key_parts if part in warning] == [], warning
        assert key_id not in warning and "127.0.0.1" not in warning

    colleague = httpx.ASGITransport(app=intake.app, client=("192.0.2.44", 50123))
    async with httpx.AsyncClient(transport=colleague, base_url="http://intake") as elsewhere:
        signed_in = await elsewhere.post("/privacy/login", data={"api_key": key})
        assert signed_in.status_code == 303 and "civic_privacy_desk=" in signed_in.headers["set-cookie"]
        assert (await elsewhere.get("/privacy")).status_code == 200
    assert lookups.calls > 0


async def test_the_desk_lets_an_address_in_again_once_its_failures_refilled_and_success_costs_nothing(
    intake: Intake, manual_clock: Any
) -> None:
    """The app's throttle, made from the settings (10 failures, 5 a minute), on a clock the test
    moves: signing in costs nothing however often; the 11th attempt after 10 wrong keys waits 12 s;
    after those 12 s the right key signs in."""
    clock = manual_clock
    settings = intake.settings
    LOGIN.use_throttle(
        intake.app,
        SignInThrottle(settings.login_failures_burst, settings.login_failures_per_minute, clock=clock),
    )
    _, key = add_key(intake.gouda.folder, ["privacy:admin"], description="desk")
    for _ in range(settings.login_failures_burst + 5):
        signed_in = await intake.client.post("/privacy/login", data={"api_key": key})
        assert signed_in.status_code == 303, signed_in.text
    intake.client.cookies.clear()

    for _ in range(settings.login_failures_burst):
        assert (await intake.client.post("/privacy/login", data={"api_key": WRONG_KEY})).status_code == 401
    refused = await intake.client.post("/privacy/login", data={"api_key": key})
    _login_page_refusing(refused, "nl")
    assert refused.headers["retry-after"] == "12"
    clock.now += 11.5
    almost = await intake.client.post("/privacy/login", data={"api_key": key})
    _login_page_refusing(almost, "nl")
    assert almost.headers["retry-after"] == "1"

    clock.now += 0.5
    again = await intake.client.post("/privacy/login", data={"api_key": key})
    assert again.status_code == 303 and "civic_privacy_desk=" in again.headers["set-cookie"]
    assert (await intake.client.get("/privacy")).status_code == 200
    # The refilled failure is still there after that success, and only the one.
    assert (await intake.client.post("/privacy/login", data={"api_key": WRONG_KEY})).status_code == 401
    assert (await intake.client.post("/privacy/login", data={"api_key": key})).status_code == 429


def test_the_throttle_settings_are_read_under_the_services_own_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Their checks are ``SignInThrottleSettings``' (libs/common); here, that this service reads them."""
    monkeypatch.setenv("CIVIC_INTAKE_LOGIN_FAILURES_BURST", "4")
    monkeypatch.setenv("CIVIC_INTAKE_LOGIN_FAILURES_PER_MINUTE", "0.5")
    settings = IntakeSettings()
    assert (settings.login_failures_burst, settings.login_failures_per_minute) == (4, 0.5)


# -- finding a person -------------------------------------------------------------------------------


async def test_finding_by_email_phone_or_tracking_code_lists_the_signals_and_changes_nothing(
    intake: Intake,
) -> None:
    photo, rated, piet = await _people(intake)
    _, token = await _sign_in(intake)

    by_email = await intake.client.post("/privacy/find", data={"csrf": token, "email": "JAN@example.org"})
    by_phone = await intake.client.post("/privacy/find", data={"csrf": token, "phone": JAN_PHONE})
    by_code = await intake.client.post(
        "/privacy/find", data={"csrf": token, "tracking_code": rated["tracking_code"].lower(), "lang": "en"}
    )

    jan = [photo["tracking_code"], rated["tracking_code"]]
    assert by_email.status_code == 200, by_email.text
    assert _codes(by_email.text) == jan and "2 melding(en) gevonden." in by_email.text
    assert piet["tracking_code"] not in by_email.text
    assert _codes(by_phone.text) == jan
    assert _codes(by_code.text) == [rated["tracking_code"]] and "1 signal(s) found." in by_code.text
    assert 'name="confirm"' in by_email.text and "/privacy/access" in by_email.text
    assert await _audit(intake, "person.access") == [] and await _audit(intake, "person.erase") == []
    assert await intake.count(Contact) == 3

    nobody = await intake.client.post("/privacy/find", data={"csrf": token, "email": "niemand@example.org"})
    assert nobody.status_code == 200 and _codes(nobody.text) == []
    assert "Er zijn geen meldingen" in nobody.text and 'name="confirm"' not in nobody.text


@pytest.mark.parametrize(
    ("form", "errors"),
    [
        ({}, {"email": "exactly_one", "phone": "exactly_one", "tracking_code": "exactly_one"}),
        ({"email": JAN_EMAIL, "phone": "0612345678"}, {"email": "exactly_one", "phone": "exactly_one"}),
        ({"phone": "bel me maar"}, {"phone": "bad_phone"}),
        ({"email": "jan-at-example.org"}, {"email": "bad_email"}),
        ({"tracking_code": "7KQ"}, {"tracking_code": "bad_tracking_code"}),
    ],
)
async def test_a_form_that_does_not_name_one_person_comes_back_with_the_message_at_the_field(
    intake: Intake, form: dict[str, str], errors: dict[str, str]
) -> None:

    await _people(intake)
    _, token = await _sign_in(intake)
    for path in ("/privacy/find", "/privacy/access", "/privacy/erase"):
        answer = await intake.client.post(path, data={"csrf": token, "confirm": "yes", **form})
        assert answer.status_code == 422, (path, answer.text)
        assert _field_errors(answer.text) == {field: WORDS["nl"][key] for field, key in errors.items()}
        for field, value in form.items():
            assert f'name="{field}" type' in answer.text and f'value="{value}"' in answer.text  # kept
    assert await _audit(intake, "person.access") == [] and await _audit(intake, "person.erase") == []
    assert await intake.count(Contact) == 3


# -- the access document ----------------------------------------------------------------------------


@pytest.fixture
async def stand_in(tmp_path: Path) -> AsyncIterator[RoutingStandIn]:
    """Routing's case API, for the access documents of signals with a case (``move_case``)."""
    async with routing_stand_in(tmp_path / "data") as server:
        yield server


@pytest.fixture
def intake_settings_overrides(stand_in: RoutingStandIn) -> dict[str, Any]:
    """The stand-in answers for routing (case notes) and for notifier (the mails sent: none)."""
    return {"routing_url": stand_in.url, "notifier_url": stand_in.url}


async def test_the_download_is_the_apis_document_audited_under_the_officers_key(intake: Intake) -> None:
    photo = await _signal(intake, PHOTO_TEXT, JAN, metadata={"portal_reference": "F-1234"})
    await _photo(intake, photo["id"])
    await move_case(intake, photo, "in_progress", 1)  # case-1 at routing, with an internal note
    second = await _signal(intake, FEEDBACK_TEXT, {**JAN, "email": "JAN@example.org"})
    key_id, token = await _sign_in(intake)

    download = await intake.client.post("/privacy/access", data={"csrf": token, "email": JAN_EMAIL})

    assert download.status_code == 200, download.text
    assert download.headers["cache-control"] == "no-store"
    assert download.headers["content-type"].startswith("application/json")
    today = datetime.now(UTC).date().isoformat()
    assert download.headers["content-disposition"] == f'attachment; filename="inzageverzoek-{today}.json"'
    reads = await _audit(intake, "person.access")
    assert sorted(r.object for r in reads) == sorted([f"signal:{photo['id']}", f"signal:{second['id']}"])
    assert {r.actor for r in reads} == {f"key:{key_id}"}

    _, api_key = add_key(intake.gouda.folder, ["privacy:admin"], description="api")
    api = await intake.client.post(
        "/v1/privacy/access", json={"email": JAN_EMAIL}, headers={"Authorization": f"Bearer {api_key}"}
    )
    assert api.status_code == 200, api.text
    document = json.loads(download.content)
    assert {**document, "generated_at": None} == {**api.json(), "generated_at": None}
    assert document["case_notes_included"] is True
    assert [note["note"] for note in document["signals"][0]["case_notes"]] == [
        step["internal_note"] for step in STAND_IN_HISTORY if step["internal_note"]
    ]
    assert [part["signal_id"] for part in document["signals"]] == [photo["id"], second["id"]]
    assert document["signals"][0]["text"] == PHOTO_TEXT and document["signals"][0]["attachments"]
    assert document["signals"][0]["contact"]["email"] == JAN_EMAIL


async def test_without_routing_the_download_comes_back_with_the_message_and_nothing_is_audited(
    intake: Intake,
) -> None:
    """The case notes cannot be asked for (here: intake has no service key for routing): no
    document without them; the found signals again, with the message, and no read recorded."""
    signal = await _signal(intake, PHOTO_TEXT, JAN)
    await move_case(intake, signal, "in_progress", 1)
    (intake.settings.service_keys_dir / "gouda").unlink()
    _, token = await _sign_in(intake)

    answer = await intake.client.post("/privacy/access", data={"csrf": token, "email": JAN_EMAIL})

    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    assert answer.headers["cache-control"] == "no-store"
    assert WORDS["nl"]["case_notes_unavailable"] in html.unescape(answer.text)
    assert _codes(answer.text) == [signal["tracking_code"]]
    assert await _audit(intake, "person.access") == []


async def test_without_notifier_the_download_says_so_and_nothing_is_audited(intake: Intake) -> None:
    """The mails sent cannot be asked for (nothing listens at notifier's address): the message
    names notifier's part, not routing's, and no read is recorded."""
    signal = await _signal(intake, PHOTO_TEXT, JAN)
    await move_case(intake, signal, "in_progress", 1)
    intake.settings.notifier_url = f"http://127.0.0.1:{free_port()}"
    _, token = await _sign_in(intake)

    answer = await intake.client.post(
        "/privacy/access", params={"lang": "en"}, data={"csrf": token, "email": JAN_EMAIL, "lang": "en"}
    )

    assert answer.status_code == 503, answer.text
    page = html.unescape(answer.text)
    assert WORDS["en"]["mail_record_unavailable"] in page
    assert WORDS["en"]["case_notes_unavailable"] not in page
    assert _codes(answer.text) == [signal["tracking_code"]]
    assert await _audit(intake, "person.access") == []


# -- the erasure ------------------------------------------------------------------------------------


async def test_erasure_needs_the_confirmation_then_erases_and_tells_the_other_services(
    intake: Intake, wait_until: Any
) -> None:
    photo, rated, piet = await _people(intake)
    officer = await _sign_in_with_key(intake)
    key_id, token = officer.key_id, officer.token
    person = {"csrf": token, "email": JAN_EMAIL}

    unconfirmed = await intake.client.post("/privacy/erase", data={**person, "api_key": officer.key})
    assert unconfirmed.status_code == 422, unconfirmed.text
    assert "Vink aan dat u de identiteit" in unconfirmed.text
    assert "wil 2 melding(en) verwijderen" in unconfirmed.text
    assert await intake.count(Contact) == 3 and await _audit(intake, "person.erase") == []
    assert (await intake.get(Signal, photo["id"])).erased_at is None
    shown = _shown_ids(unconfirmed.text)
    assert sorted(shown) == sorted([photo["id"], rated["id"]])

    done = await intake.client.post(
        "/privacy/erase", data={**person, "confirm": "yes", "signal_id": shown, "api_key": officer.key}
    )

    assert done.status_code == 200, done.text
    assert done.headers["cache-control"] == "no-store"
    assert "Verwijderd: 2 melding(en), 2 contactgegeven(s), 1 bijlage(n)." in done.text
    jan = sorted([photo["id"], rated["id"]])
    for signal_id in jan:
        assert await intake.get(Contact, signal_id) is None
        assert (await intake.get(Signal, signal_id)).erased_at is not None
    assert await intake.get(Contact, piet["id"]) is not None
    erasures = await _audit(intake, "person.erase")
    assert sorted(r.object for r in erasures) == [f"signal:{i}" for i in jan]
    assert {(r.actor, r.detail) for r in erasures} == {
        (f"key:{key_id}", "step-up: the login's key typed again")
    }
    events = await intake.events(".signal.erased", wait_until, count=2)
    assert sorted(event["data"]["signal_id"] for event in events) == jan
    assert JAN_EMAIL not in json.dumps(events)

    again = await intake.client.post(
        "/privacy/find", data={"csrf": token, "tracking_code": photo["tracking_code"]}
    )
    assert _codes(again.text) == [photo["tracking_code"]] and "Eerder verwijderd" in again.text
    assert "<td>nee</td>" not in again.text  # the column says when instead


def _shown_ids(page: str) -> list[str]:
    """The ids of the signals an erase form confirms (its hidden ``signal_id`` fields)."""
    return re.findall(r'name="signal_id" value="([^"]+)"', page)


async def test_a_signal_that_came_in_after_the_page_was_shown_stops_the_erasure(intake: Intake) -> None:
    """The officer confirmed the signals the page listed: when the person has another one by the
    time they press the button, nothing is erased and the new list comes back to be confirmed."""
    photo, rated, _ = await _people(intake)
    officer = await _sign_in_with_key(intake)
    person = {"csrf": officer.token, "email": JAN_EMAIL, "api_key": officer.key}
    found = await intake.client.post("/privacy/find", data=person)
    shown = _shown_ids(found.text)
    newer = await _signal(intake, "Nog een melding van Jan over de container.", JAN)

    stale = await intake.client.post("/privacy/erase", data={**person, "confirm": "yes", "signal_id": shown})

    assert stale.status_code == 409, stale.text
    assert WORDS["nl"]["signals_changed"] in html.unescape(stale.text)
    assert sorted(_codes(stale.text)) == sorted(s["tracking_code"] for s in (photo, rated, newer))
    assert await _audit(intake, "person.erase") == [] and await intake.count(Contact) == 4
    again = _shown_ids(stale.text)
    done = await intake.client.post("/privacy/erase", data={**person, "confirm": "yes", "signal_id": again})
    assert done.status_code == 200, done.text
    assert "Verwijderd: 3 melding(en)" in done.text


# -- forged forms -----------------------------------------------------------------------------------


async def test_a_form_without_its_token_or_with_another_changes_nothing(intake: Intake) -> None:
    await _people(intake)
    _, token = await _sign_in(intake)
    other_login = httpx.AsyncClient(transport=httpx.ASGITransport(app=intake.app), base_url="http://intake")
    _, other_key = add_key(intake.gouda.folder, ["privacy:admin"], description="colleague")
    async with other_login:
        await other_login.post("/privacy/login", data={"api_key": other_key})
        others_token = _token((await other_login.get("/privacy")).text)
    assert others_token != token

    person = {"email": JAN_EMAIL, "confirm": "yes"}
    for forged in ({}, {"csrf": ""}, {"csrf": "x" * 43}, {"csrf": others_token}):
        for path in ("/privacy/erase", "/privacy/access", "/privacy/find"):
            answer = await intake.client.post(path, data={**person, **forged})
            assert answer.status_code == 403, (path, forged, answer.text)
            assert "Er is niets gewijzigd" in answer.text and "jan@" not in answer.text
    assert await intake.count(Contact) == 3
    assert await _audit(intake, "person.erase") == [] and await _audit(intake, "person.access") == []

    intake.client.cookies.clear()  # no login at all: to the login form, nothing done
    anonymous = await intake.client.post("/privacy/erase", data={**person, "csrf": token})
    assert anonymous.status_code == 303 and anonymous.headers["location"] == "/privacy/login"
    assert await intake.count(Contact) == 3


# -- no person in a URL, nothing kept by the browser -----------------------------------------------


async def test_no_person_in_any_url_and_every_answer_says_no_store(intake: Intake) -> None:
    photo, rated, _ = await _people(intake)
    answers: list[httpx.Response] = []

    async def keep(response: httpx.Response) -> None:
        answers.append(response)

    intake.client.event_hooks["response"].append(keep)
    officer = await _sign_in_with_key(intake)
    token, key = officer.token, officer.key
    await intake.client.post("/privacy/login", data={"api_key": "cs_nope.nope"})
    for path in ("/privacy/find", "/privacy/access", "/privacy/erase"):
        await intake.client.post(path, data={"csrf": token, "email": JAN_EMAIL})
        await intake.client.post(path, data={"csrf": token, "phone": "bel me maar"})
    await intake.client.post(
        "/privacy/erase",
        data={"csrf": token, "phone": JAN_PHONE, "confirm": "yes", "api_key": "cs_nope.nope"},
    )
    await intake.client.post(
        "/privacy/erase", data={"csrf": token, "phone": JAN_PHONE, "confirm": "yes", "api_key": key}
    )
    await intake.client.post("/privacy/find", data={"csrf": token, "tracking_code": photo["tracking_code"]})
    await intake.client.post("/privacy/logout", data={"csrf": token})
    await intake.client.get("/privacy")

    assert len(answers) >= 14
    personal = ("jan", "example.org", "12345678", "1234 5678", photo["tracking_code"], rated["tracking_code"])
    for answer in answers:
        where = f"{answer.request.method} {answer.request.url} -> {answer.status_code}"
        assert answer.headers.get("cache-control") == "no-store", where
        for value in personal:
            assert value.lower() not in str(answer.request.url).lower(), where
            assert value.lower() not in answer.headers.get("location", "").lower(), where
    assert {answer.status_code for answer in answers} >= {200, 303, 401, 422}


# -- tenants apart ----------------------------------------------------------------------------------


async def test_another_tenants_officer_finds_and_erases_nothing(intake: Intake) -> None:
    photo, _, _ = await _people(intake)
    officer = await _sign_in_with_key(intake, folder=intake.utrecht.folder)
    token = officer.token

    by_email = await intake.client.post("/privacy/find", data={"csrf": token, "email": JAN_EMAIL})
    by_code = await intake.client.post(
        "/privacy/find", data={"csrf": token, "tracking_code": photo["tracking_code"]}
    )
    download = await intake.client.post("/privacy/access", data={"csrf": token, "email": JAN_EMAIL})
    erased = await intake.client.post(
        "/privacy/erase", data={"csrf": token, "email": JAN_EMAIL, "confirm": "yes", "api_key": officer.key}
    )

    assert by_email.status_code == 200 and _codes(by_email.text) == [] and "Utrecht" in by_email.text
    assert _codes(by_code.text) == []
    assert json.loads(download.content)["signals"] == [] and JAN_EMAIL in download.text  # only what was asked
    assert "Verwijderd: 0 melding(en)" in erased.text
    assert await intake.count(Contact) == 3 and await _audit(intake, "person.access") == []


# -- in a browser -----------------------------------------------------------------------------------

CHROMIUM = find_chromium()

PAGE = """(() => ({
  path: location.pathname,
  search: location.search,
  lang: document.documentElement.lang,
  text: document.body.innerText,
  header: getComputedStyle(document.querySelector('header.top')).display,
}))()"""


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make browser)")
async def test_the_desk_in_chromium_signs_in_and_finds_a_person(intake: Intake, tmp_path: Path) -> None:
    assert CHROMIUM is not None
    photo, rated, _ = await _people(intake)
    _, key = add_key(intake.gouda.folder, ["privacy:admin"], description="desk")

    async with served(intake.app) as base, chromium(CHROMIUM, tmp_path / "profile") as browser:
        page = await browser.new_page()
        await page.goto(f"{base}/privacy")
        assert (await page.evaluate("location.pathname")) == "/privacy/login"
        await page.submit(
            f"document.querySelector('#api_key').value = {json.dumps(key)};"
            "document.querySelector('form').submit();"
        )
        desk = await page.evaluate(PAGE)
        assert desk["path"] == "/privacy" and "Persoon zoeken" in desk["text"] and "Gouda" in desk["text"]
        await page.submit(
            f"document.querySelector('#email').value = {json.dumps(JAN_EMAIL)};"
            "document.querySelector('form[action=\"/privacy/find\"]').submit();"
        )
        found = await page.evaluate(PAGE)
        assert found["path"] == "/privacy/find" and found["search"] == "", found
        assert photo["tracking_code"] in found["text"] and rated["tracking_code"] in found["text"]
        assert "2 melding(en) gevonden." in found["text"] and found["header"] == "flex"
        assert found["lang"] == "nl"
        await page.screenshot(SCREENSHOT, width=1100)
        assert page.errors == [], page.errors
    assert SCREENSHOT.stat().st_size > 10_000
