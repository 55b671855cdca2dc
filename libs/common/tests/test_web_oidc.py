"""What the staff pages say when a sign-in through the provider fails
(:class:`civicsignals.common.web_oidc.SignInFailed`): in the page's language, with the provider's
own error code for support. The flow itself is proven end to end against a real issuer by the
services' tests (insights' test_oidc_login, intake's test_privacy_desk_oidc)."""

from __future__ import annotations

from civicsignals.common.web_oidc import FAILURE_WORDS, SignInFailed


def test_every_reason_is_said_in_dutch_and_english() -> None:
    assert set(FAILURE_WORDS["nl"]) == set(FAILURE_WORDS["en"])
    for reason in FAILURE_WORDS["nl"]:
        failed = SignInFailed("details for the log", reason)
        assert failed.says("nl") == FAILURE_WORDS["nl"][reason]
        assert failed.says("en") == FAILURE_WORDS["en"][reason] != failed.says("nl")
        assert "details for the log" not in failed.says("nl")


def test_the_providers_error_code_is_shown_and_an_unknown_language_or_reason_falls_back() -> None:
    refused = SignInFailed("did not sign you in (access_denied)", "refused", "access_denied")
    assert refused.says("nl") == "de inlogdienst heeft u niet ingelogd (access_denied)"
    assert refused.says("de") == "the sign-in service did not sign you in (access_denied)"
    assert SignInFailed("x", "no-such-reason").says("en") == FAILURE_WORDS["en"]["refused"]
