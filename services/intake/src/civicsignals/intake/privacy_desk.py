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
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from starlette.datastructures import FormData

from civicsignals.common.auth import Principal, get_registry
from civicsignals.common.problems import Problem
from civicsignals.common.web_login import SignInLacksScope, SignInRefused, SignInThrottled, WebLogin
from civicsignals.common.web_oidc import OidcSignedIn, SignInFailed, WebOidc, refresh_to
from civicsignals.common.wording import DEFAULT_LANGUAGE, format_date, language_of, timezone_of
from civicsignals.intake import accessparts, flows, privacy, privacy_views
from civicsignals.intake.models import PersonSelection
from civicsignals.intake.pages import PAGE_HEADERS, TEMPLATES
from civicsignals.intake.privacy_desk_words import INVALID_FIELD, WORDS

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
    outcome = await OIDC.finish(request, secret)
    response: Response
    if isinstance(outcome, OidcSignedIn):
        target = _desk_page(outcome.next_url)
        municipality = _municipality(request, outcome.principal.tenant)
        response = _login_page(request, lang, continue_to=target, municipality=municipality)
        response.headers["Refresh"] = f"0; url={target}"
        LOGIN.start_session(
            response,
            secret,
            outcome.principal,
            ttl_s=settings.session_ttl_s,
            secure=settings.cookie_secure,
            issuer=outcome.issuer,
        )
        OIDC.keep_id_token(response, outcome, ttl_s=settings.session_ttl_s, secure=settings.cookie_secure)
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
    LOGIN.end_session(response)
    OIDC.forget_id_token(response)
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
) -> HTMLResponse:
    """The signals the erasure would erase (its dry run: nothing changes, unless ``outcome`` is the
    list an erasure found already), with the buttons. The erase form carries their ids: the
    erasure erases exactly the signals shown (:func:`privacy.erase_person`'s ``confirmed``)."""
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
    )


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


@router.post("/privacy/erase")
async def erase(request: Request) -> Response:
    """Erases as the API does, once the officer confirmed the requester's identity; without the
    confirmation the found signals come back with the box to tick, and nothing is erased. Only
    the signals the page showed are erased: when the person's signals changed since (a new one
    came in), the new list comes back to be confirmed (409), and nothing is erased."""
    posted = await _checked(request)
    if isinstance(posted, Response):
        return posted
    officer, lang = posted.officer, posted.lang
    if str(posted.form.get("confirm") or "") != "yes":
        return await _found_page(request, officer, lang, posted.person, 422, WORDS[lang]["confirm_needed"])
    by, value = posted.person
    shown = [str(signal_id) for signal_id in posted.form.getlist("signal_id")]
    outcome = await privacy_views.erase_person(
        _context(request), officer, by, value, dry_run=False, confirmed=shown
    )
    if outcome.changed:
        changed = WORDS[lang]["signals_changed"]
        return await _found_page(request, officer, lang, posted.person, 409, changed, outcome=outcome)
    erased = outcome.erased or privacy.ErasureResult(0, 0, 0)
    return _page(
        request,
        officer,
        "privacy_erased.html",
        lang,
        counts={"signals": erased.signals, "contacts": erased.contacts, "files": erased.attachments},
    )
