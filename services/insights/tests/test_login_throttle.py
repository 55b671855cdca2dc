"""The dashboard's login form throttles failed sign-ins per client address
(:meth:`civicsignals.common.web_login.WebLogin.sign_in`), in-process on the real database and
NATS as the other login tests: after the allowance of wrong keys even the right key gets 429 with
``Retry-After``, in the page's language, without a cookie and without the key being looked up;
another address signs in meanwhile; the form lets the address in again once the allowance has
refilled (on a clock the test moves); a successful sign-in costs nothing."""

from __future__ import annotations

import html
import logging
import re
from typing import Any

import httpx
import pytest

from civicsignals.common.web_login import SignInThrottle
from civicsignals.insights.pages import STAFF_WORDS
from civicsignals.insights.settings import InsightsSettings
from civicsignals.insights.web_auth import LOGIN

from .conftest import Insights

WRONG_KEY = "cs_nope.nope"
NEXT = "/dashboard?topic=afval"
KEY_FIELD = re.compile(r'<input id="api_key"[^>]*>')


async def _sign_in(client: httpx.AsyncClient, api_key: str, lang: str = "nl") -> httpx.Response:
    return await client.post("/dashboard/login", data={"api_key": api_key, "next": NEXT, "lang": lang})


def _login_form_refusing(answer: httpx.Response, lang: str) -> None:
    """Checks that ``answer`` is the dashboard's 429: the login form again, in ``lang``, with the
    message and the page asked for kept, its key field empty, and no cookie."""
    assert answer.status_code == 429, answer.text
    assert "set-cookie" not in answer.headers
    assert f'<html lang="{lang}">' in answer.text and 'action="/dashboard/login"' in answer.text
    assert 'name="next" value="/dashboard?topic=afval"' in answer.text
    field = KEY_FIELD.search(answer.text)
    assert field is not None and "value=" not in field.group(0)
    retry_after = int(answer.headers["retry-after"])
    message = STAFF_WORDS[lang]["too_many_failures"].format(seconds=retry_after)
    assert message in html.unescape(answer.text)


async def test_once_an_address_has_failed_too_often_even_the_right_key_gets_429_and_others_sign_in(
    insights: Insights,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    count_key_lookups: Any,
) -> None:
    """The settings' burst of wrong keys (4 here, set before the first sign-in makes the
    throttle), then the right key: refused with 429 and ``Retry-After`` before the key store is
    asked, with a warning that names neither key nor address. Another address signs in."""
    insights.ctx.settings.login_failures_burst = 4
    insights.ctx.settings.login_failures_per_minute = 3
    for _ in range(4):
        wrong = await _sign_in(insights.client, WRONG_KEY)
        assert wrong.status_code == 401 and "Deze API-sleutel is niet geldig." in wrong.text
    lookups = count_key_lookups(insights.app.state.tenants)

    with caplog.at_level(logging.WARNING, logger="civicsignals.common.web_login"):
        refused = await _sign_in(insights.client, insights.key)
        english = await _sign_in(insights.client, insights.key, lang="en")

    _login_form_refusing(refused, "nl")
    _login_form_refusing(english, "en")
    assert 1 <= int(refused.headers["retry-after"]) <= 20  # a failure refills every 20 s at 3 a minute
    assert lookups.calls == 0  # the key was not even looked up
    assert (await insights.client.get("/dashboard")).status_code == 303  # not signed in
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "/dashboard/login" in warnings[0], warnings  # once an address
    assert f"retry after {refused.headers['retry-after']} s" in warnings[0]
    key_parts = {insights.key[start : start + 6] for start in range(len(insights.key) - 5)}  # "any part"
    for warning in warnings:
        assert [part for part in key_parts if part in warning] == [], warning
        assert "127.0.0.1" not in warning

    colleague = httpx.ASGITransport(app=insights.app, client=("192.0.2.44", 50123))
    async with httpx.AsyncClient(transport=colleague, base_url="http://insights") as elsewhere:
        signed_in = await _sign_in(elsewhere, insights.key)
        assert signed_in.status_code == 303 and signed_in.headers["location"] == NEXT
        assert "civic_insights=" in signed_in.headers["set-cookie"]
        assert (await elsewhere.get("/dashboard")).status_code == 200
    assert lookups.calls > 0


async def test_the_dashboard_lets_an_address_in_again_once_its_failures_refilled_and_success_costs_nothing(
    insights: Insights, manual_clock: Any
) -> None:
    """The app's throttle, made from the settings (10 failures, 5 a minute), on a clock the test
    moves: signing in costs nothing however often; after 10 wrong keys the next attempt waits
    12 s; after those 12 s the right key signs in."""
    clock = manual_clock
    settings = insights.ctx.settings
    LOGIN.use_throttle(
        insights.app,
        SignInThrottle(settings.login_failures_burst, settings.login_failures_per_minute, clock=clock),
    )
    for _ in range(settings.login_failures_burst + 5):
        assert (await _sign_in(insights.client, insights.key)).status_code == 303
    insights.client.cookies.clear()

    for _ in range(settings.login_failures_burst):
        assert (await _sign_in(insights.client, WRONG_KEY)).status_code == 401
    refused = await _sign_in(insights.client, insights.key)
    _login_form_refusing(refused, "nl")
    assert refused.headers["retry-after"] == "12"
    clock.now += 11.5
    almost = await _sign_in(insights.client, insights.key, lang="en")
    _login_form_refusing(almost, "en")
    assert almost.headers["retry-after"] == "1"

    clock.now += 0.5
    again = await _sign_in(insights.client, insights.key)
    assert again.status_code == 303 and again.headers["location"] == NEXT
    assert "civic_insights=" in again.headers["set-cookie"]
    assert (await insights.client.get("/dashboard")).status_code == 200
    # The refilled failure is still there after that success, and only the one.
    assert (await _sign_in(insights.client, WRONG_KEY)).status_code == 401
    assert (await _sign_in(insights.client, insights.key)).status_code == 429


def test_the_throttle_settings_are_read_under_the_services_own_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Their checks are ``SignInThrottleSettings``' (libs/common); here, that this service reads them."""
    monkeypatch.setenv("CIVIC_INSIGHTS_LOGIN_FAILURES_BURST", "4")
    monkeypatch.setenv("CIVIC_INSIGHTS_LOGIN_FAILURES_PER_MINUTE", "0.5")
    settings = InsightsSettings()
    assert (settings.login_failures_burst, settings.login_failures_per_minute) == (4, 0.5)
