"""The privacy desk: the privacy API (``/v1/privacy/access`` and ``/v1/privacy/erasure``) as web
pages, for the municipality's privacy officer, who is not going to use curl.

The officer signs in through the municipality's OpenID Connect provider, where the tenant offers
it (:mod:`civicsignals.common.web_oidc`: ``oidc.web_client_id`` in ``tenant.yaml``; their groups
must give ``privacy:admin``), or with an API key holding ``privacy:admin`` (or ``admin``), as the
API needs. The login is :mod:`civicsignals.common.web_login`'s cookie, scoped to ``/privacy``; the
key form has its throttle of failed sign-ins per client address (the desk downloads and erases a
person's data, so its form must not be a place to guess keys at leisure). A person signed in is a
:class:`Principal` like a key (``subject_kind="person"``, no key id): every audit record names
``principal.actor``, ``person:<subject>`` or ``key:<id>``. Then: find a person by exactly one of
e-mail address, phone number and tracking code (the erasure's dry run, which changes nothing),
download their access document, or erase their data after an explicit confirmation. Each step
calls exactly what the API calls, so the audit records and the ``signal.erased`` events are the
API's.

The person is personal data, so it only ever travels in a POST's body: every result is the answer
to a POST (no redirect carries the person), and every answer says ``Cache-Control: no-store``.
Every form carries a token bound to the login (an HMAC of the cookie), checked before anything is
read or changed: SameSite=Strict is the first defence against a forged form, the token the second.

An erasure cannot be undone, and a desk left signed in (on a shared counter PC, or hours after
the sign-in) must not erase for whoever finds it: the erasure asks for proof that the officer is
at the keyboard now (a step-up). An officer signed in with a key types it again in the erase form
(checked against the login's key, a wrong one counting as a failed sign-in for the throttle). An
officer signed in through the provider must have signed in there within
``erasure_reauth_max_age_s`` (the ID token's ``auth_time``, kept at sign-in:
:meth:`WebOidc.keep_auth_time`); else the erase button erases nothing and sends them to the
provider to sign in again (``max_age``, :class:`~civicsignals.common.web_oidc.StepUp`), with the
search to come back to sealed in the flow. Back from the provider, they see the confirmation page
of that search again, with the list as it is then, and tick and submit once more: nothing is
erased on the way back. The search travels encrypted (AES-GCM under a key derived from the desk's
signing key), in the flow cookie and then in a short-lived cookie for ``/privacy/erase`` only
(:class:`ErasureResume`), which also lets that one erasure go ahead within
:data:`RESUMED_CONFIRM_WINDOW_S` of the new sign-in, however small the setting is (with 0, every
erasure would otherwise ask again for ever).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import parse_qs, urlencode, urlsplit
from zoneinfo import ZoneInfo

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from starlette.datastructures import FormData

from civicsignals.common.auth import Principal, get_registry
from civicsignals.common.oidc import b64url
from civicsignals.common.problems import Problem
from civicsignals.common.ratelimit import client_address
from civicsignals.common.web_login import (
    SignedIn,
    SignInLacksScope,
    SignInRefused,
    SignInThrottled,
    WebLogin,
)
from civicsignals.common.web_oidc import (
    FLOW_TTL_S,
    OidcSignedIn,
    SignInFailed,
    StepUp,
    WebOidc,
    refresh_to,
)
from civicsignals.common.wording import DEFAULT_LANGUAGE, format_date, language_of, timezone_of
from civicsignals.intake import accessparts, flows, privacy, privacy_views
from civicsignals.intake.models import PersonSelection
from civicsignals.intake.pages import PAGE_HEADERS, TEMPLATES
from civicsignals.intake.privacy_desk_words import INVALID_FIELD, WORDS
from civicsignals.intake.settings import IntakeSettings

LOGIN = WebLogin(
    cookie="civic_privacy_desk",
    scope=privacy_views.PRIVACY_SCOPE,
    signing_key_file="intake-session-secret",
    path="/privacy",
)
#: Signing in through the tenant's OpenID Connect provider; the callback is under the login's
#: path, so the flow cookie (path ``/privacy``) goes with it.
OIDC = WebOidc(LOGIN, "/privacy/login/oidc/callback")
PERSON_FIELDS: tuple[privacy.PersonSelector, ...] = ("email", "phone", "tracking_code")
HEADERS = {name: value for name, value in PAGE_HEADERS.items() if name != "Vary"}
#: The cookie that brings an officer back from signing in again to the erasure they asked for
#: (:class:`ErasureResume`, encrypted); only ``/privacy/erase`` sees it.
ERASURE_RESUME_COOKIE = f"{LOGIN.cookie}_erasure"
ERASURE_PATH = "/privacy/erase"
#: How long after signing in again for an erasure the officer may confirm that erasure, when
#: ``erasure_reauth_max_age_s`` is shorter: time to read the list again before ticking the box.
RESUMED_CONFIRM_WINDOW_S = 180

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)


def _context(request: Request) -> flows.IntakeContext:
    context: flows.IntakeContext = request.app.state.intake
    return context


def _secret(request: Request) -> bytes:
    """The cookie-signing key, loaded once per app (configured, else kept in the data directory)."""
    state = request.app.state
    secret: bytes | None = getattr(state, "privacy_desk_secret", None)
    if secret is None:
        settings = _context(request).settings
        secret = state.privacy_desk_secret = LOGIN.load_secret(settings.session_secret, settings.data_dir)
    return secret


def _with_lang(path: str, lang: str) -> str:
    return path if lang == DEFAULT_LANGUAGE else f"{path}?{urlencode({'lang': lang})}"


def _render(
    request: Request, template: str, lang: str, status_code: int = 200, **values: Any
) -> HTMLResponse:
    other = "en" if lang == "nl" else "nl"
    html = TEMPLATES.get_template(template).render(
        lang=lang,
        t=WORDS[lang],
        other_link=_with_lang("/privacy", other),
        other_lang=other,
        scope=privacy_views.PRIVACY_SCOPE,
        **values,
    )
    return HTMLResponse(html, status_code=status_code, headers=HEADERS)


def _officer(request: Request) -> Principal | None:
    """The signed-in privacy officer, or None (no login, a revoked key, a key without the scope)."""
    principal = LOGIN.principal(request, _secret(request))
    return principal if principal is not None and principal.allows(privacy_views.PRIVACY_SCOPE) else None


def _to_login(lang: str) -> RedirectResponse:
    return RedirectResponse(_with_lang("/privacy/login", lang), status_code=303, headers=HEADERS)


def _municipality(request: Request, tenant: str) -> str:
    found = get_registry(request).get(tenant)
    return found.name if found else tenant


async def _form(request: Request) -> FormData:
    return await request.form()


def _lang(form: Mapping[str, Any], request: Request) -> str:
    return language_of(str(form.get("lang") or request.query_params.get("lang") or "") or None)


# -- login ---------------------------------------------------------------------------------------


def _login_page(
    request: Request, lang: str, status_code: int = 200, error: str | None = None, **values: Any
) -> HTMLResponse:
    """The login form, with a link "Inloggen via <municipality>" for every tenant that lets its
    staff sign in through its provider here, and ``error`` when the last attempt failed (or, with
    ``continue_to``, the note that the officer is signed in, with the link on to the desk)."""
    providers = [
        {"name": name, "href": _oidc_start_url(code, lang)} for code, name in WebOidc.tenants(request)
    ]
    values.setdefault("continue_to", None)
    values.setdefault("signing_out", None)
    return _render(
        request, "privacy_login.html", lang, status_code, error=error, providers=providers, **values
    )


def _oidc_start_url(tenant: str, lang: str) -> str:
    query = {"tenant": tenant} if lang == DEFAULT_LANGUAGE else {"tenant": tenant, "lang": lang}
    return f"/privacy/login/oidc?{urlencode(query)}"


@router.get("/privacy/login")
async def login_form(request: Request, lang: str | None = None) -> Response:
    return _login_page(request, language_of(lang))


@router.post("/privacy/login")
async def login(request: Request) -> Response:
    """Signs in with the key typed, throttled per client address (:meth:`WebLogin.sign_in`): once
    an address's failed sign-ins are used up, the form comes back with 429 and ``Retry-After``
    and the key is not even looked at."""
    form = await _form(request)
    lang = _lang(form, request)
    key = str(form.get("api_key") or "").strip()
    settings = _context(request).settings
    outcome = await LOGIN.sign_in(request, key, settings)
    if isinstance(outcome, SignInThrottled):
        message = WORDS[lang]["too_many_failures"].format(seconds=outcome.retry_after_s)
        throttled = _login_page(request, lang, 429, message)
        throttled.headers.update(outcome.headers)
        return throttled
    if isinstance(outcome, SignInRefused):
        return _login_page(request, lang, 401, WORDS[lang]["key_refused"])
    if isinstance(outcome, SignInLacksScope):
        return _login_page(request, lang, 403, WORDS[lang]["key_lacks_scope"])
    response = RedirectResponse(_with_lang("/privacy", lang), status_code=303, headers=HEADERS)
    LOGIN.start_session(
        response,
        _secret(request),
        outcome.principal,
        ttl_s=settings.session_ttl_s,
        secure=settings.cookie_secure,
    )
    return response


@router.get("/privacy/login/oidc")
async def oidc_start(request: Request, tenant: str = "", lang: str | None = None) -> Response:
    """To the tenant's provider (303), with the flow cookie; back at the callback afterwards. A
    tenant that does not let its staff sign in here (unknown, no ``oidc.web_client_id``) gets the
    login form with 404; a provider that cannot be reached (or whose discovery document does not
    fit), the form with 502 and why."""
    language = language_of(lang)
    settings = _context(request).settings
    started = await OIDC.start(
        request,
        _secret(request),
        tenant,
        _with_lang("/privacy", language),
        secure=settings.cookie_secure,
    )
    if isinstance(started, SignInFailed):
        if tenant not in dict(WebOidc.tenants(request)):
            return _login_page(request, language, 404, WORDS[language]["oidc_not_offered"])
        return _login_page(
            request, language, 502, WORDS[language]["oidc_failed"].format(detail=started.says(language))
        )
    started.headers.update(HEADERS)
    return started


def _desk_page(next_url: str) -> str:
    """Where a sign-in leads: the desk's start page (in the language chosen), nothing else."""
    return next_url if next_url == "/privacy" or next_url.startswith("/privacy?") else "/privacy"


@router.get("/privacy/login/oidc/callback")
async def oidc_callback(request: Request) -> Response:
    """Where the provider sends the officer back: signed in (on to the desk, the login cookie as a
    key's, for ``session_ttl_s``), signed in without ``privacy:admin`` (the form, 403, no login)
    or not signed in (the form, 401, why). The flow cookie goes in every case.

    Signed in, the answer is a page that moves on to the desk itself (``Refresh: 0``, and a link),
    not a redirect: the way here from the provider's pages is a navigation another site started,
    and a redirect would stay part of it, so the browser would not send the login cookie
    (``SameSite=Strict``) with the request for the desk, which would send the officer back to the
    login form. The page's own move to the desk is this site's, and takes the cookie along.

    Every answer is in the language the officer started in (the desk's page the flow was to lead
    to, which the flow cookie carries; Dutch without one)."""
    secret = _secret(request)
    settings = _context(request).settings
    target = _desk_page(OIDC.flow_next(request, secret))
    lang = language_of(parse_qs(urlsplit(target).query).get("lang", [""])[0] or None)
    asked_again = OIDC.flow_step_up(request, secret)
    outcome = await OIDC.finish(request, secret)
    response: Response
    if asked_again is not None:
        response = _back_from_signing_in_again(request, lang, outcome)
    elif isinstance(outcome, OidcSignedIn):
        target = _desk_page(outcome.next_url)
        municipality = _municipality(request, outcome.principal.tenant)
        response = _login_page(request, lang, continue_to=target, municipality=municipality)
        response.headers["Refresh"] = f"0; url={target}"
        _start_oidc_session(response, secret, settings, outcome)
    elif isinstance(outcome, SignInLacksScope):
        municipality = _municipality(request, outcome.principal.tenant)
        message = WORDS[lang]["person_lacks_scope"].format(municipality=municipality)
        response = _login_page(request, lang, 403, message)
    else:
        response = _login_page(
            request, lang, 401, WORDS[lang]["oidc_failed"].format(detail=outcome.says(lang))
        )
    OIDC.end_flow(response)
    return response


def _start_oidc_session(
    response: Response, secret: bytes, settings: IntakeSettings, outcome: OidcSignedIn
) -> None:
    """A new login for a person the provider signed in: the session, their ID token (for signing
    out at the provider) and when they last really signed in (for the erasure's step-up)."""
    ttl_s, secure = settings.session_ttl_s, settings.cookie_secure
    LOGIN.start_session(
        response, secret, outcome.principal, ttl_s=ttl_s, secure=secure, issuer=outcome.issuer
    )
    OIDC.keep_id_token(response, outcome, ttl_s=ttl_s, secure=secure)
    OIDC.keep_auth_time(response, secret, outcome, ttl_s=ttl_s, secure=secure)


def _back_from_signing_in_again(
    request: Request, lang: str, outcome: OidcSignedIn | SignInLacksScope | SignInFailed
) -> Response:
    """The callback's answer to a sign-in asked again before an erasure (:func:`erase`).

    Signed in again (the same person, ``auth_time`` within the age asked: :meth:`WebOidc.finish`
    checked both), the officer gets a new login, like any sign-in, and a page that moves on by
    itself (a navigation of this site, which takes the ``SameSite=Strict`` cookies along) to the
    confirmation page of the search they were erasing (:func:`erase_again`), which the cookie
    :data:`ERASURE_RESUME_COOKIE` names: nothing is erased on the way. Not signed in again, they
    get a page that says why and that nothing was erased; their login stays, unless someone else
    signed in at the provider or the person no longer has ``privacy:admin`` there: then whoever is
    at the keyboard is not the officer the login names, and the login ends."""
    secret = _secret(request)
    settings = _context(request).settings
    if isinstance(outcome, OidcSignedIn):
        municipality = _municipality(request, outcome.principal.tenant)
        resume = _resume_opened(secret, outcome.step_up.resume if outcome.step_up else "", "resume")
        if resume is not None and not resume.is_for(outcome.principal):
            resume = None  # finish() checked the person; this cannot be, but never resume another's
        back_to = _with_lang(ERASURE_PATH if resume is not None else "/privacy", lang)
        response = _step_up_page(request, lang, back_to=back_to, municipality=municipality)
        response.headers["Refresh"] = f"0; url={back_to}"
        _start_oidc_session(response, secret, settings, outcome)
        if resume is not None:
            window = max(settings.erasure_reauth_max_age_s, RESUMED_CONFIRM_WINDOW_S)
            ticket = replace(
                resume, authenticated_at=outcome.authenticated_at, expires=outcome.authenticated_at + window
            )
            _keep_resume(response, secret, ticket, secure=settings.cookie_secure)
        log.info("privacy desk: %s signed in again to erase", outcome.principal.actor)
        return response
    signed_out = isinstance(outcome, SignInLacksScope) or outcome.reason == "other_person"
    if isinstance(outcome, SignInLacksScope):
        municipality = _municipality(request, outcome.principal.tenant)
        refused = WORDS[lang]["person_lacks_scope"].format(municipality=municipality)
    else:
        refused = WORDS[lang]["reauth_failed"].format(detail=outcome.says(lang))
        log.info("privacy desk: signing in again to erase failed: %s", outcome.detail)
    response = _step_up_page(
        request, lang, 403 if signed_out else 401, refused=refused, signed_out=signed_out
    )
    if signed_out:
        _end_login(response)
    return response


def _step_up_page(request: Request, lang: str, status_code: int = 200, **values: Any) -> HTMLResponse:
    """The page of a sign-in again before an erasure: on the way to the provider (``going_to``),
    back from it (``back_to``), or why it did not prove one (``refused``, ``signed_out``)."""
    for name in ("going_to", "back_to", "refused", "municipality"):
        values.setdefault(name, None)
    values.setdefault("signed_out", False)
    return _render(request, "privacy_step_up.html", lang, status_code, **values)


def _end_login(response: Response) -> None:
    """Delete every cookie of the desk's login: the login, the kept ID token and sign-in time,
    and an erasure to come back to."""
    LOGIN.end_session(response)
    OIDC.forget_id_token(response)
    OIDC.forget_auth_time(response)
    response.delete_cookie(ERASURE_RESUME_COOKIE, path=ERASURE_PATH)


@router.post("/privacy/logout")
async def logout(request: Request) -> Response:
    form = await _form(request)
    lang = _lang(form, request)
    officer = _officer(request)
    if officer is not None and not LOGIN.form_token_matches(
        request, _secret(request), str(form.get("csrf") or "")
    ):
        return _forbidden(request, lang)
    # An officer signed in through the municipality's provider ends that session there too, and
    # comes back to the login page (registered at the provider as a post-logout redirect URI).
    login_page = str(request.base_url).rstrip("/") + "/privacy/login"
    at_provider = await OIDC.end_session_url(request, officer, login_page, language=lang)
    response: Response
    if at_provider and officer is not None:
        # A page that moves on by itself, not a redirect: the desk's CSP (form-action 'self') stops
        # a form post that redirects to another site, as the provider is.
        municipality = _municipality(request, officer.tenant)
        response = _login_page(request, lang, signing_out=at_provider, municipality=municipality)
        response.headers["Refresh"] = refresh_to(at_provider)
    else:
        response = _to_login(lang)
    _end_login(response)
    return response


# -- the desk ------------------------------------------------------------------------------------


def _page(
    request: Request, officer: Principal, template: str, lang: str, status_code: int = 200, **values: Any
) -> HTMLResponse:
    """A page of the signed-in desk: the municipality's name and the form token beside ``values``."""
    return _render(
        request,
        template,
        lang,
        status_code,
        municipality=_municipality(request, officer.tenant),
        csrf=LOGIN.form_token(request, _secret(request)),
        **values,
    )


def _forbidden(request: Request, lang: str) -> HTMLResponse:
    return _render(request, "privacy_forbidden.html", lang, 403)


@router.get("/privacy")
async def desk(request: Request, lang: str | None = None) -> Response:
    language = language_of(lang)
    officer = _officer(request)
    if officer is None:
        return _to_login(language)
    return _page(request, officer, "privacy_find.html", language, typed=_typed({}), errors={})


def _typed(form: Mapping[str, Any]) -> dict[str, str]:
    return {field: str(form.get(field) or "").strip() for field in PERSON_FIELDS}


def read_person(
    form: Mapping[str, Any], lang: str
) -> tuple[tuple[privacy.PersonSelector, str] | None, dict[str, str]]:
    """The person a form names, validated as the API's ``PersonSelection`` (a field left empty is
    not given): the selector and its value, or the message for each field at fault."""
    typed = {field: value for field, value in _typed(form).items() if value}
    words = WORDS[lang]
    try:
        selection = PersonSelection.model_validate(typed)
    except ValidationError as exc:
        fields = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
        return None, {field: words[INVALID_FIELD[field]] for field in PERSON_FIELDS if field in fields}
    try:
        return privacy_views.person_of(selection), {}
    except Problem as not_one:  # none or more than one: the API's 422, its fields in the page's words
        return None, {error["pointer"].lstrip("/"): words["exactly_one"] for error in not_one.errors or []}


@dataclass(frozen=True)
class Posted:
    """A desk form that passed the checks: who posted it, its fields, its language, the person."""

    officer: Principal
    form: FormData
    lang: str
    person: tuple[privacy.PersonSelector, str]


async def _checked(request: Request) -> Posted | Response:
    """A desk form posted, checked in this order: a login (else to the login form), the form's
    token (else 403, nothing read), the person (else the form again with its mistakes, 422)."""
    form = await _form(request)
    lang = _lang(form, request)
    officer = _officer(request)
    if officer is None:
        return _to_login(lang)
    if not LOGIN.form_token_matches(request, _secret(request), str(form.get("csrf") or "")):
        return _forbidden(request, lang)
    person, errors = read_person(form, lang)
    if person is None:
        return _page(request, officer, "privacy_find.html", lang, 422, typed=_typed(form), errors=errors)
    return Posted(officer, form, lang, person)


async def _found_page(
    request: Request,
    officer: Principal,
    lang: str,
    person: tuple[privacy.PersonSelector, str],
    status_code: int = 200,
    confirm_error: str | None = None,
    access_error: str | None = None,
    outcome: privacy.PersonErasure | None = None,
    key_error: str | None = None,
    notice: str | None = None,
) -> HTMLResponse:
    """The signals the erasure would erase (its dry run: nothing changes, unless ``outcome`` is the
    list an erasure found already), with the buttons. The erase form carries their ids: the
    erasure erases exactly the signals shown (:func:`privacy.erase_person`'s ``confirmed``). For
    an officer signed in with a key it asks for the key again (``key_error`` beside it when the
    last one was not right); for one signed in through the provider it says when the erasure will
    ask them to sign in again."""
    by, value = person
    if outcome is None:
        outcome = await privacy_views.erase_person(_context(request), officer, by, value, dry_run=True)
    zone = timezone_of(get_registry(request).get(officer.tenant))
    signals = [
        {
            "signal_id": signal.id,
            "tracking_code": signal.tracking_code,
            "received": _when(signal.received_at, lang, zone),
            "erased_before": _when(signal.erased_at, lang, zone) if signal.erased_at else None,
        }
        for signal in outcome.signals
    ]
    return _page(
        request,
        officer,
        "privacy_found.html",
        lang,
        status_code,
        by=by,
        value=value,
        signals=signals,
        to_erase=len(outcome.signals),
        confirm_error=confirm_error,
        access_error=access_error,
        reconfirm_key=officer.subject_kind != "person",
        key_error=key_error,
        reauth_note=_reauth_note(request, officer, lang),
        notice=notice,
    )


def _reauth_note(request: Request, officer: Principal, lang: str) -> str:
    """What the erase form tells an officer signed in through the provider: when erasing asks
    them to sign in there again ("" for a key's login, which types the key instead)."""
    if officer.subject_kind != "person":
        return ""
    municipality = _municipality(request, officer.tenant)
    max_age_s = _context(request).settings.erasure_reauth_max_age_s
    if max_age_s == 0:
        return WORDS[lang]["reauth_always"].format(municipality=municipality)
    return WORDS[lang]["reauth_after"].format(age=_duration(max_age_s, lang), municipality=municipality)


def _duration(seconds: int, lang: str) -> str:
    """``seconds`` in words: whole minutes as minutes, anything else as seconds."""
    words = WORDS[lang]
    if seconds % 60 == 0:
        minutes = seconds // 60
        return words["one_minute"] if minutes == 1 else words["minutes"].format(count=minutes)
    return words["one_second"] if seconds == 1 else words["seconds"].format(count=seconds)


def _when(value: datetime, lang: str, zone: str) -> str:
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return f"{format_date(aware, lang, zone)}, {aware.astimezone(ZoneInfo(zone)).strftime('%H:%M')}"


@router.post("/privacy/find")
async def find(request: Request) -> Response:
    posted = await _checked(request)
    if isinstance(posted, Response):
        return posted
    return await _found_page(request, posted.officer, posted.lang, posted.person)


@router.post("/privacy/access")
async def download(request: Request) -> Response:
    """The access document as the API answers it, as a file; each signal audited as read. When
    routing cannot be asked for the case notes, or notifier for the mails sent, the found signals
    come back with a message naming which (503), and nothing was audited: no document left intake."""
    posted = await _checked(request)
    if isinstance(posted, Response):
        return posted
    officer, lang = posted.officer, posted.lang
    by, value = posted.person
    try:
        document = await privacy_views.person_document(_context(request), officer, by, value)
    except accessparts.PartUnavailable as missing:
        word = (
            "mail_record_unavailable" if missing.service == accessparts.NOTIFIER else "case_notes_unavailable"
        )
        unavailable = WORDS[lang][word]
        return await _found_page(request, officer, lang, posted.person, 503, access_error=unavailable)
    filename = f"inzageverzoek-{datetime.now(UTC).date().isoformat()}.json"
    return Response(
        json.dumps(document, ensure_ascii=False, indent=2),
        media_type="application/json",
        headers={
            **HEADERS,
            "Content-Disposition": f'attachment; filename="{filename}"',
        },
    )


@router.post(ERASURE_PATH)
async def erase(request: Request) -> Response:
    """Erases as the API does, once the officer confirmed the requester's identity and proved that
    they are at the keyboard now; without the confirmation the found signals come back with the
    box to tick, and nothing is erased. Only the signals the page showed are erased: when the
    person's signals changed since (a new one came in), the new list comes back to be confirmed
    (409), and nothing is erased.

    The proof (the step-up), after the box: an officer signed in with a key types it again
    (:func:`_key_typed_again`); one signed in through the provider must have signed in there
    recently (:func:`_signed_in_recently`), else this erases nothing and answers a page that sends
    them to sign in again (:func:`_ask_to_sign_in_again`)."""
    posted = await _checked(request)
    if isinstance(posted, Response):
        return posted
    officer, lang = posted.officer, posted.lang
    if str(posted.form.get("confirm") or "") != "yes":
        return await _found_page(request, officer, lang, posted.person, 422, WORDS[lang]["confirm_needed"])
    if officer.subject_kind == "person":
        proof = _signed_in_recently(request, officer, posted.person)
        if proof is None:
            return await _ask_to_sign_in_again(request, posted)
    else:
        refused = await _key_typed_again(request, posted)
        if refused is not None:
            return refused
        proof = "the login's key typed again"
    by, value = posted.person
    shown = [str(signal_id) for signal_id in posted.form.getlist("signal_id")]
    outcome = await privacy_views.erase_person(
        _context(request), officer, by, value, dry_run=False, confirmed=shown, proof=f"step-up: {proof}"
    )
    if outcome.changed:
        changed = WORDS[lang]["signals_changed"]
        return await _found_page(request, officer, lang, posted.person, 409, changed, outcome=outcome)
    erased = outcome.erased or privacy.ErasureResult(0, 0, 0)
    # The audit records (privacy.erase_signals) say how the officer proved it was them; so does the log.
    log.info("privacy desk: %s erased %d signal(s) after %s", officer.actor, erased.signals, proof)
    response = _page(
        request,
        officer,
        "privacy_erased.html",
        lang,
        counts={"signals": erased.signals, "contacts": erased.contacts, "files": erased.attachments},
    )
    response.delete_cookie(ERASURE_RESUME_COOKIE, path=ERASURE_PATH)  # the sign-in again is used up
    return response


@router.get(ERASURE_PATH)
async def erase_again(request: Request, lang: str | None = None) -> Response:
    """The confirmation page of the erasure the officer signed in again for (the page the callback
    moves on to): the search from :data:`ERASURE_RESUME_COOKIE`, listed afresh (the dry run: the
    list may have changed while they signed in), with the box unticked. Without that cookie, or
    with one of another officer's or an expired one, the desk's start page."""
    language = language_of(lang)
    officer = _officer(request)
    if officer is None:
        return _to_login(language)
    resume = _resume_opened(_secret(request), request.cookies.get(ERASURE_RESUME_COOKIE) or "", "ticket")
    if resume is None or not resume.is_for(officer) or resume.expires < time.time():
        return RedirectResponse(_with_lang("/privacy", language), status_code=303, headers=HEADERS)
    notice = WORDS[resume.lang]["signed_in_again"]
    return await _found_page(request, officer, resume.lang, resume.person, notice=notice)


# -- the step-up before an erasure ---------------------------------------------------------------


@dataclass(frozen=True)
class ErasureResume:
    """The erasure an officer is sent to sign in again for: whose login asked (``tenant``,
    ``subject``), the search (``by``, ``value``: personal data, so this only ever travels
    encrypted, :func:`_resume_sealed`) and the page's language. On the way to the provider
    (``resume``, inside the flow cookie) ``authenticated_at`` is 0 and ``expires`` the flow's end;
    back from it (``ticket``, :data:`ERASURE_RESUME_COOKIE`) ``authenticated_at`` is the new
    sign-in's ``auth_time`` and ``expires`` when that sign-in no longer lets this erasure go
    ahead."""

    tenant: str
    subject: str
    by: str
    value: str
    lang: str
    authenticated_at: int
    expires: int

    @property
    def person(self) -> tuple[privacy.PersonSelector, str]:
        return cast(privacy.PersonSelector, self.by), self.value

    def is_for(self, officer: Principal) -> bool:
        return (
            officer.subject_kind == "person"
            and officer.tenant == self.tenant
            and officer.subject == self.subject
        )


def _resume_cipher(secret: bytes) -> AESGCM:
    """AES-256-GCM under a key only for this: an HMAC of a label under the desk's signing key."""
    return AESGCM(hmac.new(secret, b"privacy desk: erasure to resume", hashlib.sha256).digest())


def _resume_sealed(secret: bytes, resume: ErasureResume, purpose: str) -> str:
    """``resume`` encrypted for ``purpose`` (``resume`` in the flow, ``ticket`` in the cookie, the
    associated data: the one never passes for the other), as base64url of nonce and ciphertext."""
    nonce = os.urandom(12)
    plaintext = json.dumps(asdict(resume), separators=(",", ":")).encode()
    return b64url(nonce + _resume_cipher(secret).encrypt(nonce, plaintext, purpose.encode()))


def _resume_opened(secret: bytes, sealed: str, purpose: str) -> ErasureResume | None:
    """The :class:`ErasureResume` sealed for ``purpose``; None for anything else."""
    if not sealed:
        return None
    try:
        raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
        plaintext = _resume_cipher(secret).decrypt(raw[:12], raw[12:], purpose.encode())
        resume = ErasureResume(**json.loads(plaintext))
    except (InvalidTag, binascii.Error, ValueError, TypeError):
        return None
    return resume if resume.by in PERSON_FIELDS else None


def _keep_resume(response: Response, secret: bytes, ticket: ErasureResume, *, secure: bool) -> None:
    """The cookie that brings the officer back to the erasure (HttpOnly, SameSite=Strict, for
    ``/privacy/erase`` only, until the ticket expires)."""
    response.set_cookie(
        ERASURE_RESUME_COOKIE,
        _resume_sealed(secret, ticket, "ticket"),
        max_age=max(1, ticket.expires - int(time.time())),
        httponly=True,
        secure=secure,
        samesite="strict",
        path=ERASURE_PATH,
    )


def _signed_in_recently(
    request: Request, officer: Principal, person: tuple[privacy.PersonSelector, str]
) -> str | None:
    """How an officer signed in through the provider proved they are at the keyboard now, or None
    when they did not: their sign-in there (its ``auth_time``, kept at sign-in) is at most
    ``erasure_reauth_max_age_s`` old, or they signed in again for the erasure of exactly this
    search (:data:`ERASURE_RESUME_COOKIE`) and the ticket has not expired. Nothing kept, or
    something not theirs, is not recent."""
    secret = _secret(request)
    max_age_s = _context(request).settings.erasure_reauth_max_age_s
    now = int(time.time())
    authenticated_at = OIDC.authenticated_at(request, secret, officer)
    if authenticated_at is not None and max_age_s > 0 and now - authenticated_at <= max_age_s:
        return f"a sign-in {now - authenticated_at} s old"
    ticket = _resume_opened(secret, request.cookies.get(ERASURE_RESUME_COOKIE) or "", "ticket")
    if ticket is not None and ticket.is_for(officer) and ticket.person == person and ticket.expires >= now:
        return f"signing in again for this erasure {now - ticket.authenticated_at} s ago"
    return None


async def _ask_to_sign_in_again(request: Request, posted: Posted) -> Response:
    """Nothing erased: a page that moves on by itself to the provider (a form post's redirect to
    another site would be stopped by the desk's CSP, ``form-action 'self'``) with an authorization
    request for a sign-in no older than ``erasure_reauth_max_age_s`` (``max_age``; with 0 also
    ``prompt=login``), by the same person, and the flow cookie carrying the search to come back
    to, encrypted. A provider that cannot be asked now: the found signals again with why (502)."""
    officer, lang = posted.officer, posted.lang
    secret = _secret(request)
    settings = _context(request).settings
    by, value = posted.person
    resume = ErasureResume(
        tenant=officer.tenant,
        subject=officer.subject,
        by=by,
        value=value,
        lang=lang,
        authenticated_at=0,
        expires=int(time.time()) + FLOW_TTL_S,
    )
    step_up = StepUp(
        max_age_s=settings.erasure_reauth_max_age_s,
        subject=officer.subject,
        resume=_resume_sealed(secret, resume, "resume"),
    )
    started = await OIDC.authorization(
        request, secret, officer.tenant, _with_lang("/privacy", lang), step_up=step_up
    )
    if isinstance(started, SignInFailed):
        words = WORDS[lang]
        failed = f"{words['reauth_failed'].format(detail=started.says(lang))} {words['nothing_erased']}"
        return await _found_page(request, officer, lang, posted.person, 502, failed)
    municipality = _municipality(request, officer.tenant)
    response = _step_up_page(request, lang, going_to=started.url, municipality=municipality)
    response.headers["Refresh"] = refresh_to(started.url)
    OIDC.set_flow_cookie(response, started, secure=settings.cookie_secure)
    log.info("privacy desk: %s is asked to sign in again before erasing", officer.actor)
    return response


async def _key_typed_again(request: Request, posted: Posted) -> Response | None:
    """None when the key typed into the erase form is the key the officer signed in with (same
    tenant, same key id, still valid and with the scope); else the found signals again with why,
    and nothing erased. The key is checked as the login form checks one, throttle included: a
    wrong key (another valid key too) counts as a failed sign-in of this address, and once the
    address's failures are used up the answer is 429 with ``Retry-After`` without a look at the
    key. An empty field is asked for again and costs nothing: no key was tried."""
    officer, lang = posted.officer, posted.lang
    key = str(posted.form.get("api_key") or "").strip()
    if not key:
        return await _found_page(
            request, officer, lang, posted.person, 422, key_error=WORDS[lang]["key_needed"]
        )
    settings = _context(request).settings
    outcome = await LOGIN.sign_in(request, key, settings)
    if isinstance(outcome, SignInThrottled):
        message = WORDS[lang]["too_many_failures"].format(seconds=outcome.retry_after_s)
        throttled = await _found_page(request, officer, lang, posted.person, 429, key_error=message)
        throttled.headers.update(outcome.headers)
        return throttled
    if isinstance(outcome, SignedIn):
        typed = outcome.principal
        if typed.tenant == officer.tenant and typed.key_id == officer.key_id:
            return None
        # A valid key, but not the login's: sign_in counted it a success; it is a failure here.
        LOGIN.throttle(request.app, settings).admit(client_address(request))
    log.info("privacy desk: %s typed a key that is not the login's; nothing erased", officer.actor)
    return await _found_page(
        request, officer, lang, posted.person, 401, key_error=WORDS[lang]["key_not_the_login"]
    )
