"""The staff pages' login cookie and form token (:mod:`civicsignals.common.web_login`): what a
cookie holds, when it stops being valid, where its signing key comes from, and that a form's
token belongs to one login. The cookie against the key registry (a revoked key ends the login)
is proven through the services' pages: insights' test_api and intake's test_privacy_desk."""

from __future__ import annotations

import stat
from pathlib import Path

from civicsignals.common.web_login import WebLogin, form_token, form_token_matches, load_secret, sign, verify

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
