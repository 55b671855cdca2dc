"""The development issuer's authorization code flow with PKCE, which the staff pages' sign-in
tests lean on: it must refuse what a real provider refuses, or those tests could pass against a
provider that lets anything through. Driven over HTTP on loopback, as the services reach it."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from joserfc import jwt

from civicsignals.admin.devissuer import DevIssuer

REDIRECT = "http://127.0.0.1:9/dashboard/login/oidc/callback"
VERIFIER = "v" * 43


def challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


@pytest.fixture
def issuer() -> Iterator[DevIssuer]:
    with DevIssuer() as running:
        running.add_web_client("dashboard", [REDIRECT])
        running.sign_in_as("u-17", groups=["analisten"])
        yield running


def authorize(issuer: DevIssuer, **changes: str) -> httpx.Response:
    params = {
        "response_type": "code",
        "client_id": "dashboard",
        "redirect_uri": REDIRECT,
        "scope": "openid",
        "state": "s-1",
        "nonce": "n-1",
        "code_challenge": challenge(VERIFIER),
        "code_challenge_method": "S256",
        **changes,
    }
    return httpx.get(f"{issuer.url}/authorize?{urlencode(params)}", follow_redirects=False)


def answer(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    return {name: values[0] for name, values in parse_qs(location.query).items()}


def redeem(issuer: DevIssuer, code: str, **changes: str) -> httpx.Response:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": "dashboard",
        "code_verifier": VERIFIER,
        **changes,
    }
    return httpx.post(f"{issuer.url}/token", data=form)


def test_a_code_gives_the_persons_access_token_once(issuer: DevIssuer) -> None:
    back = answer(authorize(issuer))
    assert back["state"] == "s-1" and back["iss"] == issuer.issuer
    tokens = redeem(issuer, back["code"])
    assert tokens.status_code == 200, tokens.text
    access = jwt.decode(tokens.json()["access_token"], issuer.keys[-1]).claims
    assert (access["sub"], access["aud"], access["groups"]) == ("u-17", "civicsignals", ["analisten"])
    identity = jwt.decode(tokens.json()["id_token"], issuer.keys[-1]).claims
    assert (identity["aud"], identity["nonce"]) == ("dashboard", "n-1")

    again = redeem(issuer, back["code"])
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    "changes",
    [
        {"code_verifier": "w" * 43},
        {"code_verifier": ""},
        {"redirect_uri": REDIRECT + "x"},
        {"client_id": "other"},
    ],
)
def test_a_code_is_refused_without_its_verifier_redirect_uri_and_client(
    issuer: DevIssuer, changes: dict[str, str]
) -> None:
    back = answer(authorize(issuer))
    refused = redeem(issuer, back["code"], **changes)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"


def test_an_unregistered_redirect_uri_gets_no_redirect(issuer: DevIssuer) -> None:
    for changes in ({"redirect_uri": "http://127.0.0.1:9/elsewhere"}, {"client_id": "unknown"}):
        response = authorize(issuer, **changes)
        assert response.status_code == 400 and "location" not in response.headers


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": ""}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "profile"}, "invalid_scope"),
    ],
)
def test_a_request_without_pkce_s256_or_openid_is_answered_with_an_error(
    issuer: DevIssuer, changes: dict[str, str], error: str
) -> None:
    back = answer(authorize(issuer, **changes))
    assert back["error"] == error and "code" not in back and back["state"] == "s-1"


def test_nobody_signed_in_is_access_denied(issuer: DevIssuer) -> None:
    issuer.sign_in_as(None)
    back = answer(authorize(issuer))
    assert back["error"] == "access_denied" and "code" not in back


LOGGED_OUT = "http://127.0.0.1:9/dashboard/login"


def end_session(issuer: DevIssuer, **params: str) -> httpx.Response:
    return httpx.get(f"{issuer.url}/logout?{urlencode(params)}", follow_redirects=False)


def test_logout_ends_the_session_and_sends_back_only_a_hinted_client_to_a_registered_uri(
    issuer: DevIssuer,
) -> None:
    """RP-Initiated Logout as the specification asks of a provider: the session ends whatever is
    asked, and the browser goes back to ``post_logout_redirect_uri`` only when it is registered for
    the client and a valid ID token of that client comes as ``id_token_hint``."""
    issuer.add_web_client("dashboard", [REDIRECT], post_logout_redirect_uris=[LOGGED_OUT])
    discovered = httpx.get(f"{issuer.url}/.well-known/openid-configuration").json()
    assert discovered["end_session_endpoint"] == f"{issuer.url}/logout"
    id_token = redeem(issuer, answer(authorize(issuer))["code"]).json()["id_token"]
    forged = issuer.issue("u-17", audience="dashboard", issuer="https://elsewhere.example")

    refused = [
        {"client_id": "dashboard", "post_logout_redirect_uri": LOGGED_OUT},  # no hint
        {"id_token_hint": forged, "post_logout_redirect_uri": LOGGED_OUT},  # not this issuer's
        {"id_token_hint": id_token, "client_id": "other", "post_logout_redirect_uri": LOGGED_OUT},
        {"id_token_hint": id_token, "post_logout_redirect_uri": "https://evil.example/"},
    ]
    for params in refused:
        issuer.sign_in_as("u-17", groups=["analisten"])
        stayed = end_session(issuer, **params)
        assert stayed.status_code == 200 and stayed.json() == {"signed_out": True, "redirect": False}, params
        assert answer(authorize(issuer)).get("error") == "login_required"  # signed out all the same

    back = end_session(
        issuer, id_token_hint=id_token, client_id="dashboard", post_logout_redirect_uri=LOGGED_OUT, state="z"
    )
    assert back.status_code == 302 and back.headers["location"] == f"{LOGGED_OUT}?state=z"
    assert issuer.logouts[-1] == {"client_id": "dashboard", "hinted": True}
    issuer.offers_logout = False
    assert "end_session_endpoint" not in httpx.get(f"{issuer.url}/.well-known/openid-configuration").json()
    assert end_session(issuer).status_code == 404


def test_make_runs_issuer_signs_the_developer_in_again_after_logout(issuer: DevIssuer) -> None:
    """``make run`` sets ``sign_in_again_after_logout``: the issuer has no password form, so after
    a sign-out the next ``/authorize`` signs the same person in, as if they typed their password."""
    issuer.sign_in_again_after_logout = True
    assert end_session(issuer, client_id="dashboard").status_code == 200
    assert "code" in answer(authorize(issuer)) and issuer.logouts[-1]["client_id"] == "dashboard"
