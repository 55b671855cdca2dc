"""The staff pages' login cookie, form token and sign-in throttle
(:mod:`civicsignals.common.web_login`): what a cookie holds, when it stops being valid, where its
signing key comes from, that a form's token belongs to one login, and the throttle's arithmetic
on a clock the test moves. The cookie against the key registry (a revoked key ends the login) and
the throttle in front of it are proven through the services' pages: insights' test_api and
test_login_throttle, intake's test_privacy_desk."""

from __future__ import annotations

import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi import Response
from pydantic import ValidationError

from civicsignals.common.auth import Principal
from civicsignals.common.ratelimit import client_key
from civicsignals.common.web_login import (
    PERSON_MARK,
    SignInThrottle,
    SignInThrottleSettings,
    WebLogin,
    form_token,
    form_token_matches,
    load_secret,
    sign,
    sign_person,
    verify,
    verify_person,
)

SECRET = b"s" * 32
NOW = 1_800_000_000.0


def test_a_cookie_names_tenant_and_key_and_holds_until_it_expires() -> None:
    token = sign(SECRET, "gouda", "k1", 3600, now=NOW)

    assert token.startswith(f"gouda.k1.{int(NOW) + 3600}.")
    assert verify(SECRET, token, now=NOW) == ("gouda", "k1")
    assert verify(SECRET, token, now=NOW + 3600) == ("gouda", "k1")
    assert verify(SECRET, token, now=NOW + 3601) is None


def test_a_cookie_changed_or_signed_with_another_key_is_refused() -> None:
    token = sign(SECRET, "gouda", "k1", 3600, now=NOW)
    tenant, key_id, expires, mac = token.split(".")

    assert verify(b"other" * 8, token, now=NOW) is None
    assert verify(SECRET, f"utrecht.{key_id}.{expires}.{mac}", now=NOW) is None
    assert verify(SECRET, f"{tenant}.k2.{expires}.{mac}", now=NOW) is None
    assert verify(SECRET, f"{tenant}.{key_id}.{int(expires) + 1}.{mac}", now=NOW) is None
    for broken in ("", "gouda.k1", f"{token}.x", f"{tenant}.{key_id}.later.{mac}"):
        assert verify(SECRET, broken, now=NOW) is None


def test_the_signing_key_is_the_configured_one_or_one_kept_private_in_the_data_directory(
    tmp_path: Path,
) -> None:
    assert load_secret("configured", tmp_path, "x-secret") == b"configured"
    assert not (tmp_path / "x-secret").exists()

    made = load_secret("", tmp_path, "x-secret")
    assert len(made) >= 32 and (tmp_path / "x-secret").read_bytes() == made
    assert stat.S_IMODE((tmp_path / "x-secret").stat().st_mode) == 0o600
    assert load_secret("", tmp_path, "x-secret") == made  # a restart keeps the logins
    login = WebLogin(cookie="c", scope="s", signing_key_file="y-secret")
    assert login.load_secret("", tmp_path) != made  # each service its own


def test_a_form_token_belongs_to_one_login() -> None:
    one = sign(SECRET, "gouda", "k1", 3600, now=NOW)
    other = sign(SECRET, "gouda", "k2", 3600, now=NOW)
    token = form_token(SECRET, one)

    assert form_token_matches(SECRET, one, token)
    assert not form_token_matches(SECRET, other, token)
    assert not form_token_matches(b"other" * 8, one, token)
    assert not form_token_matches(SECRET, one, "")
    assert not form_token_matches(SECRET, None, token)
    assert token not in one and one.split(".")[-1] != token


# -- the sign-in throttle ---------------------------------------------------------------------------


def _fail(throttle: SignInThrottle, client: str, times: int) -> list[int]:
    """``times`` attempts with a wrong key: what :meth:`SignInThrottle.admit` said to each."""
    return [throttle.admit(client) for _ in range(times)]


def test_a_client_may_fail_a_burst_of_times_then_waits_for_the_refill(manual_clock: Any) -> None:
    clock = manual_clock
    throttle = SignInThrottle(burst=3, per_minute=5, clock=clock)  # one failure back every 12 s

    assert _fail(throttle, "10.0.0.1", 3) == [0, 0, 0]
    assert throttle.admit("10.0.0.1") == 12
    clock.now += 0.5
    assert throttle.admit("10.0.0.1") == 12  # 11.5 s left: whole seconds, rounded up
    clock.now += 11.2
    assert throttle.admit("10.0.0.1") == 1  # 0.3 s left: never "0", which would mean "go ahead"
    clock.now += 0.3
    assert throttle.admit("10.0.0.1") == 0  # one failure refilled: one more attempt
    assert throttle.admit("10.0.0.1") == 12


def test_refused_attempts_spend_nothing_and_a_long_wait_refills_no_more_than_the_burst(
    manual_clock: Any,
) -> None:
    clock = manual_clock
    throttle = SignInThrottle(burst=2, per_minute=6, clock=clock)  # 10 s a failure
    _fail(throttle, "a", 2)

    assert _fail(throttle, "a", 50) == [10] * 50  # hammering does not push the wait further out
    clock.now += 10
    assert throttle.admit("a") == 0
    clock.now += 3600
    assert _fail(throttle, "a", 3) == [0, 0, 10]


def test_a_successful_sign_in_costs_nothing(manual_clock: Any) -> None:
    clock = manual_clock
    throttle = SignInThrottle(burst=3, per_minute=5, clock=clock)

    for _ in range(20):  # far more sign-ins than the burst, at the same instant
        assert throttle.admit("a") == 0
        throttle.succeeded("a")
    assert _fail(throttle, "a", 2) == [0, 0]
    assert throttle.admit("a") == 0
    throttle.succeeded("a")  # the third attempt was the right key: the last failure is still there
    assert _fail(throttle, "a", 2) == [0, 12]

    assert throttle.admit("b") == 0
    clock.now += 3600  # a slow sign-in: the allowance refilled meanwhile
    throttle.succeeded("b")
    assert _fail(throttle, "b", 4) == [0, 0, 0, 12]  # and giving back did not raise it past the burst

    _fail(throttle, "c", 2)
    assert throttle.admit("c") == 0  # the right key, its check slow
    clock.now += 6  # half a failure refilled meanwhile
    throttle.succeeded("c")
    assert _fail(throttle, "c", 2) == [0, 6]  # and kept: the next one is 6 s away, not 12


def test_attempts_in_flight_at_once_cannot_spend_more_than_the_allowance(manual_clock: Any) -> None:
    """Each attempt takes its failure before its key is checked: two checked at the same time
    with one failure left cannot both go ahead."""
    throttle = SignInThrottle(burst=2, per_minute=5, clock=manual_clock)
    assert throttle.admit("a") == 0

    first, second = throttle.admit("a"), throttle.admit("a")

    assert (first, second) == (0, 12)
    throttle.succeeded("a")  # the first was the right key: its failure comes back
    assert throttle.admit("a") == 0


def test_every_address_has_its_own_allowance(manual_clock: Any) -> None:
    clock = manual_clock
    throttle = SignInThrottle(burst=2, per_minute=5, clock=clock)
    _fail(throttle, "192.0.2.7", 2)

    assert throttle.admit("192.0.2.7") == 12
    assert _fail(throttle, "192.0.2.8", 2) == [0, 0]
    assert _fail(throttle, "2001:db8::1", 2) == [0, 0]
    assert throttle.admit("192.0.2.8") == 12 and throttle.admit("192.0.2.7") == 12


def test_the_memory_bound_forgets_the_least_recent_clients_in_their_favour(manual_clock: Any) -> None:
    """Past ``max_clients`` the least recent client's count is forgotten: it starts full again,
    and a success reported for a forgotten client changes nothing."""
    throttle = SignInThrottle(burst=1, per_minute=1, clock=manual_clock, max_clients=2)
    assert throttle.admit("a") == 0
    _fail(throttle, "b", 1)
    _fail(throttle, "c", 1)  # "a" forgotten, its attempt still in flight

    throttle.succeeded("a")

    assert throttle.admit("a") == 0 and throttle.admit("a") == 60
    assert throttle.admit("c") == 60


def test_a_throttle_needs_a_positive_burst_and_rate() -> None:
    for burst, per_minute in ((0, 5.0), (10, 0.0), (10, -1.0)):
        with pytest.raises(ValueError, match="positive rate"):
            SignInThrottle(burst=burst, per_minute=per_minute)


@pytest.mark.parametrize("per_minute", [5, 7, 0.5, 13, 60])
def test_a_client_that_waits_exactly_the_retry_after_it_was_told_gets_through(
    per_minute: float, manual_clock: Any
) -> None:
    """Even when the wait passes in steps whose floating-point sum falls a hair short of it."""
    clock = manual_clock
    throttle = SignInThrottle(burst=10, per_minute=per_minute, clock=clock)
    _fail(throttle, "a", 10)
    retry_after = throttle.admit("a")
    steps = 7
    for _ in range(steps):
        assert throttle.admit("a") > 0
        clock.now += retry_after / steps

    assert throttle.admit("a") == 0


def test_the_throttle_settings_must_be_positive() -> None:
    assert SignInThrottleSettings().model_dump() == {
        "login_failures_burst": 10,
        "login_failures_per_minute": 5.0,
    }
    for wrong in (
        {"login_failures_burst": 0},
        {"login_failures_per_minute": 0},
        {"login_failures_per_minute": -1},
    ):
        with pytest.raises(ValidationError):
            SignInThrottleSettings(**wrong)


@pytest.mark.parametrize(
    ("host", "counted_as"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("testclient", "testclient"),
        (None, "unknown"),
        ("", "unknown"),
    ],
)
def test_an_ipv6_client_is_counted_by_its_64_network(host: str | None, counted_as: str) -> None:
    """One IPv6 host can take any address of its /64: counted one by one, each would get a full
    allowance of failed sign-ins (and of the public rate limit)."""
    assert client_key(host) == counted_as


async def test_addresses_of_one_ipv6_network_share_one_allowance(manual_clock: Any) -> None:
    throttle = SignInThrottle(burst=2, per_minute=1, clock=manual_clock)
    one, same_network, other_network = "2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "2001:db8:1:3::1"
    assert throttle.admit(client_key(one)) == 0
    assert throttle.admit(client_key(same_network)) == 0
    assert throttle.admit(client_key(one)) > 0 and throttle.admit(client_key(same_network)) > 0
    assert throttle.admit(client_key(other_network)) == 0


def test_a_refused_address_is_logged_once_until_it_is_let_through_again(manual_clock: Any) -> None:
    throttle = SignInThrottle(burst=1, per_minute=6, clock=manual_clock)  # one failure back every 10 s
    assert throttle.admit("a") == 0
    assert throttle.admit("a") > 0 and throttle.first_refusal("a")
    assert throttle.admit("a") > 0 and not throttle.first_refusal("a")
    assert throttle.admit("b") == 0 and throttle.admit("b") > 0 and throttle.first_refusal("b")
    manual_clock.now += 10
    assert throttle.admit("a") == 0  # let through: a later refusal is news again
    assert throttle.admit("a") > 0 and throttle.first_refusal("a")


def test_a_persons_cookie_holds_what_their_token_said_and_holds_until_it_expires() -> None:
    person = Principal(
        tenant="gouda",
        key_id="",
        scopes=frozenset({"insights:read", "cases:read"}),
        departments=frozenset({"wonen"}),
        subject_kind="person",
        subject="u-123",
    )
    token = sign_person(SECRET, person, "https://login.gouda.nl/realms/g", 3600, now=NOW)

    assert token.startswith(f"{PERSON_MARK}.") and "u-123" not in token  # base64url, not readable text
    claims = verify_person(SECRET, token, now=NOW + 3600)
    assert claims == {
        "t": "gouda",
        "s": "u-123",
        "sc": ["cases:read", "insights:read"],
        "d": ["wonen"],
        "i": "https://login.gouda.nl/realms/g",
    }
    assert verify_person(SECRET, token, now=NOW + 3601) is None
    assert verify(SECRET, token, now=NOW) is None  # never taken for a key's cookie


def test_a_persons_cookie_changed_or_signed_with_another_key_is_refused() -> None:
    person = Principal(
        tenant="gouda", key_id="", scopes=frozenset({"insights:read"}), subject_kind="person", subject="u-1"
    )
    token = sign_person(SECRET, person, "https://idp", 3600, now=NOW)
    mark, claims, expires, mac = token.split(".")
    more = sign_person(SECRET, replace(person, scopes=frozenset({"admin"})), "https://idp", 3600, now=NOW)

    assert verify_person(b"other" * 8, token, now=NOW) is None
    assert verify_person(SECRET, f"{mark}.{more.split('.')[1]}.{expires}.{mac}", now=NOW) is None
    assert verify_person(SECRET, f"{mark}.{claims}.{int(expires) + 1}.{mac}", now=NOW) is None
    assert verify_person(SECRET, f"gouda.{claims}.{expires}.{mac}", now=NOW) is None
    for broken in ("", f"{mark}.{claims}", f"{token}.x", f"{mark}.{claims}.later.{mac}"):
        assert verify_person(SECRET, broken, now=NOW) is None


def test_a_persons_login_needs_the_provider_that_signed_them_in() -> None:
    login = WebLogin(cookie="c", scope="s", signing_key_file="f")
    person = Principal(
        tenant="gouda", key_id="", scopes=frozenset({"s"}), subject_kind="person", subject="u-1"
    )
    with pytest.raises(ValueError, match="issuer"):
        login.start_session(Response(), SECRET, person, ttl_s=60, secure=False)
