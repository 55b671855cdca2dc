"""The development issuer's ``auth_time``, ``max_age`` and ``prompt``, which the privacy desk's
step-up before an erasure leans on: its ID tokens say when the person last really signed in,
and it has them sign in again when ``max_age`` is exceeded or ``prompt=login`` asks, as a provider
with a password form does. Driven over HTTP on loopback, as the services reach it."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from joserfc import jwt

from civicsignals.admin.devissuer import DevIssuer

from .test_devissuer_code_flow import answer, authorize, issuer, redeem

__all__ = ["issuer"]  # the fixture, shared with the code flow's tests

HOUR_AGO = 3600


def id_token_of(issuer: DevIssuer, **changes: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Authorize (with ``changes`` to the request), redeem the code: the ID token's header and claims."""
    back = answer(authorize(issuer, **changes))
    assert "code" in back, back
    tokens = redeem(issuer, back["code"])
    assert tokens.status_code == 200, tokens.text
    decoded = jwt.decode(tokens.json()["id_token"], issuer.keys[-1])
    return dict(decoded.header), dict(decoded.claims)


def test_the_id_token_says_when_the_person_signed_in_not_when_the_code_was_made(issuer: DevIssuer) -> None:
    signed_in_at = time.time() - 120
    issuer.sign_in_as("u-17", groups=["analisten"], authenticated_at=signed_in_at)

    header, claims = id_token_of(issuer)

    assert claims["auth_time"] == int(signed_in_at) and claims["iat"] - claims["auth_time"] >= 119
    assert header["typ"] == "JWT"  # an ID token, not an access token (at+jwt)
    assert (claims["aud"], claims["nonce"], claims["sub"]) == ("dashboard", "n-1", "u-17")
    assert issuer.sign_in_prompts == []
    again = time.time()
    issuer.sign_in_as("u-17", groups=["analisten"])
    assert id_token_of(issuer)[1]["auth_time"] >= int(again)


def test_a_sign_in_older_than_max_age_is_asked_again(issuer: DevIssuer) -> None:
    issuer.sign_in_as("u-17", groups=["analisten"], authenticated_at=time.time() - HOUR_AGO)

    within = id_token_of(issuer, max_age=str(2 * HOUR_AGO))[1]
    assert within["auth_time"] < time.time() - HOUR_AGO + 5 and issuer.sign_in_prompts == []

    before = int(time.time())
    exceeded = id_token_of(issuer, max_age="300")[1]

    assert issuer.sign_in_prompts == ["max_age"]
    assert exceeded["auth_time"] >= before  # they signed in again just now
    # The new sign-in is the session's from now on: within max_age, not asked again.
    assert id_token_of(issuer, max_age="300")[1]["auth_time"] == exceeded["auth_time"]
    assert issuer.sign_in_prompts == ["max_age"]


def test_prompt_login_asks_for_a_sign_in_however_recent(issuer: DevIssuer) -> None:
    first = id_token_of(issuer)[1]["auth_time"]
    time.sleep(1.05)  # auth_time is whole seconds: make the new one differ

    again = id_token_of(issuer, prompt="login")[1]["auth_time"]

    assert issuer.sign_in_prompts == ["prompt=login"] and again > first
    assert id_token_of(issuer, max_age="0")[1]["auth_time"] >= again  # max_age=0 asks too
    assert issuer.sign_in_prompts == ["prompt=login", "max_age"]


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"prompt": "none", "max_age": "0"}, "login_required"),  # a sign-in is needed but not allowed
        ({"prompt": "none login"}, "invalid_request"),
        ({"max_age": "-1"}, "invalid_request"),
        ({"max_age": "five minutes"}, "invalid_request"),
    ],
)
def test_prompt_none_or_a_malformed_max_age_gets_no_code(
    issuer: DevIssuer, changes: dict[str, str], error: str
) -> None:
    back = answer(authorize(issuer, **changes))
    assert back["error"] == error and "code" not in back and back["state"] == "s-1"
    assert issuer.sign_in_prompts == []


def test_prompt_none_within_max_age_signs_in_without_asking(issuer: DevIssuer) -> None:
    assert "code" in answer(authorize(issuer, prompt="none", max_age="300"))
    assert issuer.sign_in_prompts == []


def test_a_person_who_does_not_sign_in_again_gets_no_code(issuer: DevIssuer) -> None:
    issuer.signs_in_again_when_asked = False
    back = answer(authorize(issuer, prompt="login"))
    assert back["error"] == "access_denied" and "code" not in back
    assert issuer.sign_in_prompts == ["prompt=login"]
    assert "code" in answer(authorize(issuer))  # without asking, the session still signs in


def test_a_provider_that_leaves_out_auth_time_or_ignores_max_age_can_be_played(issuer: DevIssuer) -> None:
    """What a client must catch: tests turn the issuer into such a provider."""
    issuer.sign_in_as("u-17", groups=["analisten"], authenticated_at=time.time() - HOUR_AGO)
    issuer.honours_max_age = False
    ignored = id_token_of(issuer, max_age="300", prompt="login")[1]
    assert ignored["auth_time"] <= time.time() - HOUR_AGO and issuer.sign_in_prompts == []
    issuer.includes_auth_time = False
    assert "auth_time" not in id_token_of(issuer, max_age="300")[1]


def test_discovery_advertises_only_what_the_issuer_does(issuer: DevIssuer) -> None:
    discovered = httpx.get(f"{issuer.url}/.well-known/openid-configuration").json()
    assert discovered["response_types_supported"] == ["code"]  # /authorize answers nothing else
    assert discovered["code_challenge_methods_supported"] == ["S256"]
    # Nothing it does not do: no claims parameter, request objects, or prompt values of other specs.
    for unsupported in (
        "claims_parameter_supported",
        "request_parameter_supported",
        "prompt_values_supported",
    ):
        assert unsupported not in discovered
