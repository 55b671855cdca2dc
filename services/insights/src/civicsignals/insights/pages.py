"""The HTML pages: the staff dashboard (login required) and the public transparency page.

Server-rendered with Jinja2; the charts are SVG drawn in :mod:`charts`, so the pages need no
JavaScript at all and load nothing from outside the service.

Both speak Dutch unless ``?lang=en`` asks for English: the staff and the residents of a Dutch
municipality read them. The staff pages carry that choice in the URLs they build (``lang=en`` on
every link, form and redirect of an English page; nothing on a Dutch one, Dutch being the default)
rather than in a cookie, just as the public page does: a link copied to a colleague opens in the
language it was copied in, and there is no second cookie to keep, expire or explain.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, parse_qsl, urlencode

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from civicsignals.common.auth import Principal, get_registry
from civicsignals.common.problems import Problem
from civicsignals.common.tenants import Tenant
from civicsignals.common.web_login import SignInLacksScope, SignInRefused, SignInThrottled
from civicsignals.common.web_oidc import OidcSignedIn, SignInFailed, refresh_to
from civicsignals.common.wording import DEFAULT_LANGUAGE, format_date, language_of
from civicsignals.insights import charts, reports, service
from civicsignals.insights.models import DIMENSIONS, UNCLASSIFIED
from civicsignals.insights.names import PlaceNames, TopicNames, default_names, language_name, place_names
from civicsignals.insights.service import Filters
from civicsignals.insights.views import FilterParams, Interval, Split, context, export_response
from civicsignals.insights.web_auth import LOGIN, OIDC, OIDC_CALLBACK, SCOPE, dashboard_principal, safe_next

log = logging.getLogger(__name__)
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
Viewer = Annotated[Principal, Depends(dashboard_principal)]
router = APIRouter(include_in_schema=False)
SECURITY_HEADERS = {
    # Nothing but this service's own styles; no script at all.
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def humanise(code: str) -> str:
    """A code as readable words: what a page shows for a topic the taxonomy gives no name."""
    if code == UNCLASSIFIED:
        return "not yet classified"
    return code.replace("-", " ").capitalize() if code else "(none)"


def link(path: str, filters: Filters, **extra: str) -> str:
    query = {**filters.as_query(), **{k: v for k, v in extra.items() if v}}
    return f"{path}?{urlencode(query)}"


def _render(request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
    response = TEMPLATES.TemplateResponse(request, name, {"humanise": humanise, **values}, status_code=status)
    response.headers.update(SECURITY_HEADERS)
    return response


# -- the staff pages' words ----------------------------------------------------------------------

STAFF_WORDS: dict[str, dict[str, str]] = {
    "nl": {
        "app": "Civic Signals inzichten",
        "section": "inzichten",
        "other_language": "English",
        "none": "(geen)",
        "unclassified": "nog niet ingedeeld",
        "n/a": "n.v.t.",
        # signing in
        "login_title": "Aanmelden",
        "login_heading": "Aanmelden bij het dashboard",
        "login_scope": "Gebruik een API-sleutel van uw gemeente met de scope",
        "login_kept": "De sleutel wordt één keer gecontroleerd; de browser bewaart alleen een "
        "ondertekende aanmelding die een werkdag geldig blijft.",
        "api_key": "API-sleutel",
        "sign_in": "Aanmelden",
        "sign_out": "Afmelden",
        "key_not_valid": "Deze API-sleutel is niet geldig.",
        "key_revoked": "Deze API-sleutel is ingetrokken.",
        "key_expired": "Deze API-sleutel is verlopen.",
        "key_refused": "Deze API-sleutel wordt niet geaccepteerd.",
        "key_lacks_scope": "Deze sleutel heeft de scope '{scope}' niet.",
        "login_oidc_intro": "Medewerkers loggen in met het account van hun gemeente.",
        "login_oidc": "Inloggen via {name}",
        "login_with_key": "Met een API-sleutel",
        "oidc_not_offered": "Voor deze gemeente kunt u hier niet inloggen met het account van de gemeente.",
        "oidc_failed": "Inloggen via de identiteitsprovider van uw gemeente is mislukt: {detail}",
        "person_lacks_scope": "Uw account bij de gemeente heeft de scope '{scope}' niet. Vraag uw "
        "beheerder om toegang tot het dashboard.",
        "oidc_continue": "Verder naar het dashboard",
        "signing_out": "U bent hier afgemeld. U gaat nu naar de inlogdienst van {name} om ook daar af "
        "te melden, zodat wie na u deze computer gebruikt niet als u inlogt.",
        "sign_out_at": "Afmelden bij {name}",
        "too_many_failures": "Te veel mislukte aanmeldpogingen vanaf dit adres. Er is geen sleutel "
        "gecontroleerd. Wacht {seconds} seconde(n) en probeer het dan opnieuw.",
        # the filters
        "from": "Van",
        "to": "Tot en met",
        "per": "Per",
        "show": "Tonen",
        "remove_filter": "dit filter weghalen",
        "hint": "Klik op een label in een grafiek om erop te filteren, op een staaf of een getal om de "
        "meldingen erachter te zien.",
        "interval.day": "dag",
        "interval.week": "week",
        "interval.month": "maand",
        "dimension.topic": "onderwerp",
        "dimension.subtopic": "subonderwerp",
        "dimension.channel": "kanaal",
        "dimension.kind": "soort",
        "dimension.language": "taal",
        "dimension.area": "gebied",
        "dimension.mode": "modus",
        # the values of the closed lists among the dimensions (DESIGN §4); other values are shown as they are
        "channel.web": "web",
        "channel.app": "app",
        "channel.phone": "telefoon",
        "channel.email": "e-mail",
        "channel.chat": "chat",
        "channel.social": "sociale media",
        "channel.survey": "enquête",
        "channel.counter": "balie",
        "channel.open311": "open311",
        "kind.report": "melding",
        "kind.complaint": "klacht",
        "kind.question": "vraag",
        "kind.feedback": "feedback",
        "kind.idea": "idee",
        "kind.compliment": "compliment",
        "mode.active": "actief",
        "mode.passive": "passief",
        "area.unknown": "onbekend",
        "language.nl": "Nederlands",
        "language.en": "Engels",
        "language.other": "andere taal",
        "language.unknown": "onbekend",
        "department.unassigned": "niet toegewezen",
        # the dashboard
        "kpi_signals": "Meldingen",
        "kpi_passive": "Passief (telefoon, chat)",
        "kpi_open": "Openstaande zaken",
        "kpi_sla": "Binnen de termijn",
        "kpi_feedback": "Tevredenheidsreacties",
        "volume": "Meldingen in de tijd",
        "volume_note": "Actieve meldingen komen binnen via portalen, apps en formulieren; passieve zijn "
        "telefoon- en chatgesprekken. Klik op een {interval} om de meldingen ervan te lezen.",
        "volume_chart": "Meldingen per {interval}",
        "series_all": "alle meldingen",
        "series.active": "actief (portalen, apps)",
        "series.passive": "passief (telefoon, chat)",
        "split": "In de tijd per {split}",
        "split_largest": "De zes grootste waarden van",
        "split_chart": "Meldingen per {interval}, de {count} grootste waarden van {split}",
        "bars_chart": "Meldingen per {dimension}",
        "subtopic_of": "Subonderwerp van {topic}",
        "chart_empty": "geen meldingen in deze weergave",
        "heatmap": "Onderwerp per taal",
        "heatmap_cell": "{topic}, taal {language}: {count}",
        "no_signals": "Geen meldingen in deze weergave.",
        "departments": "Afdelingen",
        "departments_note": "Zaken die in de periode zijn geopend. Binnen de termijn: opgelost vóór de "
        "streefdatum, van de zaken die er een hadden en die zijn opgelost of waarvan de streefdatum "
        "voorbij is.",
        "department": "Afdeling",
        "cases": "Zaken",
        "open": "Open",
        "overdue": "Te laat",
        "sla_met": "Binnen termijn",
        "median": "Mediane doorlooptijd",
        "satisfaction": "Tevredenheid",
        "of_judged": "van {count}",
        "hours": "{hours} u",
        "no_cases": "Geen zaken in deze weergave.",
        "satisfaction_heading": "Tevredenheid per onderwerp",
        "satisfaction_chart": "Gemiddelde tevredenheidsscore (1 tot 5) per onderwerp",
        "emerging": "Opkomende kwesties",
        "emerging_note": "Een dag valt op als het aantal onwaarschijnlijk hoog is tegenover dezelfde "
        "weekdag in de {weeks} weken ervoor (exacte voorwaardelijke Poissontoets). Opgegeven kans op "
        "vals alarm: {rate} per reeks per dag; dagen met minder dan {min} meldingen vallen nooit op.",
        "issue_area": "gebied {area}",
        "issue_counts": "{observed} meldingen tegen {expected} verwacht",
        "issue_evidence": "(p = {p}; basislijn {baseline})",
        "no_issues": "Geen in deze periode.",
        "all_signals": "Alle meldingen in deze weergave",
        "transparency": "Openbare transparantiepagina",
        # the list of signals
        "signals_title": "Meldingen",
        "signals_heading": "Meldingen van {start} tot en met {end}",
        "redacted": "Teksten zijn bij binnenkomst ontdaan van persoonsgegevens: contactgegevens en "
        "nummers die een persoon herkenbaar maken, zijn vervangen door plaatshouders.",
        "back": "Terug naar het dashboard",
        "received": "Ontvangen",
        "text": "Tekst",
        "conversation": "(gesprek)",
        "erased": "(tekst gewist op verzoek van de melder)",
        "older": "Oudere meldingen →",
    },
    "en": {
        "app": "Civic Signals insights",
        "section": "insights",
        "other_language": "Nederlands",
        "none": "(none)",
        "unclassified": "not yet classified",
        "n/a": "n/a",
        "login_title": "Sign in",
        "login_heading": "Sign in to the dashboard",
        "login_scope": "Use an API key of your municipality that has the scope",
        "login_kept": "The key is checked once; the browser keeps only a signed login that lasts a "
        "working day.",
        "api_key": "API key",
        "sign_in": "Sign in",
        "sign_out": "Sign out",
        "key_not_valid": "the API key is not valid",
        "key_revoked": "the API key has been revoked",
        "key_expired": "the API key has expired",
        "key_refused": "the API key was refused",
        "key_lacks_scope": "this key lacks '{scope}'",
        "login_oidc_intro": "Staff sign in with their municipality's account.",
        "login_oidc": "Sign in with {name}",
        "login_with_key": "With an API key",
        "oidc_not_offered": "You cannot sign in here with this municipality's account.",
        "oidc_failed": "Signing in through your municipality's identity provider failed: {detail}",
        "person_lacks_scope": "Your municipality's account lacks '{scope}'. Ask your administrator for "
        "access to the dashboard.",
        "oidc_continue": "Continue to the dashboard",
        "signing_out": "You are signed out here. You are now taken to {name}'s sign-in service to sign "
        "out there too, so that whoever uses this computer after you is not signed in as you.",
        "sign_out_at": "Sign out at {name}",
        "too_many_failures": "Too many failed sign-ins from this address. No key was checked. Wait "
        "{seconds} second(s), then try again.",
        "from": "From",
        "to": "To",
        "per": "Per",
        "show": "Show",
        "remove_filter": "remove this filter",
        "hint": "Click a label in a chart to filter by it, a bar or a number to see the signals behind it.",
        "interval.day": "day",
        "interval.week": "week",
        "interval.month": "month",
        "dimension.topic": "topic",
        "dimension.subtopic": "subtopic",
        "dimension.channel": "channel",
        "dimension.kind": "kind",
        "dimension.language": "language",
        "dimension.area": "area",
        "dimension.mode": "mode",
        "channel.web": "web",
        "channel.app": "app",
        "channel.phone": "phone",
        "channel.email": "email",
        "channel.chat": "chat",
        "channel.social": "social",
        "channel.survey": "survey",
        "channel.counter": "counter",
        "channel.open311": "open311",
        "kind.report": "report",
        "kind.complaint": "complaint",
        "kind.question": "question",
        "kind.feedback": "feedback",
        "kind.idea": "idea",
        "kind.compliment": "compliment",
        "mode.active": "active",
        "mode.passive": "passive",
        "area.unknown": "unknown",
        "language.nl": "Dutch",
        "language.en": "English",
        "language.other": "other language",
        "language.unknown": "unknown",
        "department.unassigned": "unassigned",
        "kpi_signals": "Signals",
        "kpi_passive": "Passive (phone, chat)",
        "kpi_open": "Open cases",
        "kpi_sla": "SLA met",
        "kpi_feedback": "Feedback answers",
        "volume": "Signals over time",
        "volume_note": "Active signals come from portals, apps and forms; passive ones are phone and chat "
        "conversations. Click a {interval} to read its signals.",
        "volume_chart": "Signals per {interval}",
        "series_all": "all signals",
        "series.active": "active (portals, apps)",
        "series.passive": "passive (phone, chat)",
        "split": "Over time by {split}",
        "split_largest": "The largest six of",
        "split_chart": "Signals per {interval}, the {count} largest values of {split}",
        "bars_chart": "Signals per {dimension}",
        "subtopic_of": "Subtopic of {topic}",
        "chart_empty": "no signals in this view",
        "heatmap": "Topic by language",
        "heatmap_cell": "{topic} in {language}: {count}",
        "no_signals": "No signals in this view.",
        "departments": "Departments",
        "departments_note": "Cases opened in the period. SLA met: resolved by the due date, among cases "
        "that had one and were resolved or are past it.",
        "department": "Department",
        "cases": "Cases",
        "open": "Open",
        "overdue": "Overdue",
        "sla_met": "SLA met",
        "median": "Median to resolve",
        "satisfaction": "Satisfaction",
        "of_judged": "of {count}",
        "hours": "{hours} h",
        "no_cases": "No cases in this view.",
        "satisfaction_heading": "Satisfaction by topic",
        "satisfaction_chart": "Mean satisfaction score (1 to 5) per topic",
        "emerging": "Emerging issues",
        "emerging_note": "A day is flagged when its count is improbably high against the same weekday in "
        "the preceding {weeks} weeks (exact conditional Poisson test). Stated false-alarm rate: {rate} "
        "per series per day; days under {min} signals are never flagged.",
        "issue_area": "area {area}",
        "issue_counts": "{observed} signals against {expected} expected",
        "issue_evidence": "(p = {p}; baseline {baseline})",
        "no_issues": "None in this period.",
        "all_signals": "All signals in this view",
        "transparency": "Public transparency page",
        "signals_title": "Signals",
        "signals_heading": "Signals {start} to {end}",
        "redacted": "Texts were redacted when they came in: contact details and numbers that identify a "
        "person are placeholders.",
        "back": "Back to the dashboard",
        "received": "Received",
        "text": "Text",
        "conversation": "(conversation)",
        "erased": "(text erased at the reporter's request)",
        "older": "Older signals →",
    },
}
"""The staff pages' words: Dutch, the language of the municipalities' staff, unless ``?lang=en``.
The values of the closed lists (channels, kinds, modes, and the languages the classifier tells
apart: ``nl``, ``en``, ``other``) are translated here too, because a Dutch page that says
"complaint" under "Soort" reads as half translated; so are the read model's own ``unknown`` area
and language and ``unassigned`` department. Topics and subtopics are shown by their names in the
taxonomy, departments and areas by the names in the tenant's ``departments.yaml`` and
``areas.geojson``, other languages a portal declared (``tr``) by their CLDR names
(:mod:`civicsignals.insights.names`); a code nothing names is shown as it is.
The exports and the API keep their English column names and codes: programs read them."""

_KEY_PROBLEMS = {
    "the API key is not valid": "key_not_valid",
    "the API key has been revoked": "key_revoked",
    "the API key has expired": "key_expired",
}
"""The words for what :func:`civicsignals.common.auth.authenticate` says about a refused key. The
English page shows those details themselves, as it always did; one this list does not know is
shown as it is in English and as a general refusal in Dutch."""

_MONTHS_SHORT_NL = ("jan", "feb", "mrt", "apr", "mei", "jun", "jul", "aug", "sep", "okt", "nov", "dec")


def _language_in(url: str | None) -> str | None:
    """The ``lang`` a URL carries (the ``next`` of a login), so that the login speaks like the
    page that sent the browser there."""
    if not url:
        return None
    return dict(parse_qsl(url.partition("?")[2])).get("lang")


def with_language(url: str, language: str) -> str:
    """``url`` with its ``lang`` set to ``language`` (dropped for Dutch, the default), so a redirect
    lands on a page in the language chosen last. Unchanged when it already says so."""
    path, _, query = url.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if k != "lang"]
    wanted = kept if language == DEFAULT_LANGUAGE else [*kept, ("lang", language)]
    if wanted == pairs:
        return url
    return f"{path}?{urlencode(wanted)}" if wanted else path


@dataclasses.dataclass(frozen=True)
class Wording:
    """One request's language on the staff pages: its words, and how it writes names, numbers and
    dates. Templates call it (``t("volume")``) so no page has a sentence of its own."""

    language: str
    names: TopicNames = dataclasses.field(default_factory=default_names, compare=False)
    """The tenant's names of topics and subtopics (its own taxonomy's, or the default's)."""
    places: PlaceNames = dataclasses.field(default_factory=PlaceNames, compare=False)
    """The tenant's names of its departments and areas (none on the login pages)."""

    @property
    def words(self) -> dict[str, str]:
        return STAFF_WORDS[self.language]

    @property
    def other(self) -> str:
        """The language the page offers a link to."""
        return "en" if self.language == "nl" else "nl"

    @property
    def carried(self) -> str:
        """The ``lang`` value every link and form of the page carries: none for Dutch (the default)."""
        return "" if self.language == DEFAULT_LANGUAGE else self.language

    def __call__(self, key: str, **values: object) -> str:
        text = self.words[key]
        return text.format(**values) if values else text

    def other_link(self, path: str, params: dict[str, str]) -> str:
        """The same page in the other language: its own query with only ``lang`` changed."""
        query = [(k, v) for k, v in params.items() if k != "lang" and v]
        return f"{path}?{urlencode([*query, ('lang', self.other)])}"

    def topic(self, code: str | None) -> str:
        """A topic's name in the taxonomy, in the page's language; the page's words for none or not
        yet, and :func:`humanise` for a code the taxonomy does not name (an old one)."""
        if not code:
            return self("none")
        if code == UNCLASSIFIED:
            return self("unclassified")
        return self.names.topic(code, self.language) or humanise(code)

    def subtopic(self, code: str | None, topic: str | None = None) -> str:
        """A subtopic's name, like :meth:`topic`. Subtopic codes are the taxonomy's within a topic,
        so ``topic`` is given wherever the page knows it; without it the code's name is used only
        when the taxonomy gives that code one name everywhere."""
        if not code:
            return self("none")
        if code == UNCLASSIFIED:
            return self("unclassified")
        return self.names.subtopic(code, self.language, topic) or humanise(code)

    def dimension(self, name: str) -> str:
        return self.words.get(f"dimension.{name}", name)

    def department(self, code: str | None) -> str:
        """A department's name in the tenant's ``departments.yaml``; the page's words for a case
        no department has (``unassigned``); the code for one the file does not name."""
        if not code:
            return self("none")
        return self.words.get(f"department.{code}") or self.places.department(code) or code

    def value(self, dimension: str, value: str | None, topic: str | None = None) -> str:
        """A value as the page shows it: topics and subtopics by name (a subtopic under ``topic``),
        areas by the tenant's names, closed lists (languages among them) in the page's language;
        any other value as it is."""
        if dimension == "topic":
            return self.topic(value)
        if dimension == "subtopic":
            return self.subtopic(value, topic)
        if dimension == "department":
            return self.department(value)
        if not value:
            return self("none")
        word = self.words.get(f"{dimension}.{value}")
        if word is None and dimension == "area":
            word = self.places.area(value)
        if word is None and dimension == "language":
            word = language_name(value, self.language)
        return word or value

    def number(self, value: float, spec: str = "") -> str:
        """A figure as English pages always wrote it, with a decimal comma on a Dutch page."""
        text = format(value, spec)
        return text.replace(".", ",") if self.language == "nl" else text

    def day(self, value: date) -> str:
        """``7 december 2026`` on a Dutch page, ``2026-12-07`` on an English one (as it was)."""
        if self.language == "nl":
            return format_date(value, "nl") or ""
        return value.isoformat()

    def short_day(self, value: date) -> str:
        """A day on a chart's axis: ``7 dec`` or ``07 Dec``."""
        if self.language == "nl":
            return f"{value.day} {_MONTHS_SHORT_NL[value.month - 1]}"
        return value.strftime("%d %b")

    def moment(self, value: datetime) -> str:
        """A local time in a list: ``7 december 2026, 14:05`` or ``2026-12-07 14:05``."""
        if self.language == "nl":
            return f"{self.day(value.date())}, {value:%H:%M}"
        return value.strftime("%Y-%m-%d %H:%M")

    def chart(self) -> charts.ChartWords:
        """What the charts write besides their labels, in this language."""
        return charts.ChartWords(
            empty=self("chart_empty"),
            decimal="," if self.language == "nl" else ".",
            axis_day=self.short_day,
            tip_day=self.day,
        )


def _render_staff(
    request: Request,
    name: str,
    t: Wording,
    status: int = 200,
    params: dict[str, str] | None = None,
    path: str | None = None,
    **values: Any,
) -> HTMLResponse:
    """A staff page in ``t``'s language, with the link to the same page in the other one (built
    from ``path`` and ``params``, by default the request's own path and query)."""
    query = dict(request.query_params) if params is None else params
    return _render(
        request,
        name,
        status=status,
        t=t,
        lang=t.language,
        other_link=t.other_link(path or request.url.path, query),
        **values,
    )


# -- login ---------------------------------------------------------------------------------------


def _login_page(
    request: Request, t: Wording, target: str, *, status: int = 200, error: str | None = None
) -> HTMLResponse:
    """The login page in ``t``'s language, going on to ``target`` (a :func:`safe_next` path): a
    link per municipality whose staff may sign in through its provider, and the API key form.
    Answers from other routes (a refused key, the provider's callback) keep ``/dashboard/login``'s
    link to the other language."""
    providers = [(name, _oidc_start_link(code, target, t)) for code, name in OIDC.tenants(request)]
    params = None if request.url.path == "/dashboard/login" and status == 200 else {"next": target}
    return _render_staff(
        request,
        "login.html",
        t,
        status=status,
        params=params,
        path="/dashboard/login",
        next=target,
        error=error,
        providers=providers,
    )


def _oidc_start_link(tenant: str, target: str, t: Wording) -> str:
    query = {"tenant": tenant, "next": target}
    if t.carried:
        query["lang"] = t.carried
    return f"/dashboard/login/oidc?{urlencode(query)}"


@router.get("/dashboard/login")
async def login_form(request: Request, next: str | None = None, lang: str | None = None) -> HTMLResponse:
    t = Wording(language_of(lang or _language_in(next)))
    return _login_page(request, t, safe_next(next))


def _key_problem(t: Wording, problem: Problem) -> str:
    """What the login form says about a refused key, in the page's language."""
    key = _KEY_PROBLEMS.get(problem.detail or "")
    if key:
        return t(key)
    return problem.detail if t.language == "en" and problem.detail else t("key_refused")


@router.post("/dashboard/login")
async def login(request: Request) -> Response:
    """Signs in with the key typed, throttled per client address (:meth:`WebLogin.sign_in`): once
    an address's failed sign-ins are used up, the form comes back with 429 and ``Retry-After``
    and the key is not even looked at."""
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    key = (form.get("api_key") or [""])[0].strip()
    target = safe_next((form.get("next") or [""])[0])
    t = Wording(language_of((form.get("lang") or [""])[0]))
    ctx = context(request)
    outcome = await LOGIN.sign_in(request, key, ctx.settings)
    if isinstance(outcome, SignInThrottled):
        error = t("too_many_failures", seconds=outcome.retry_after_s)
        throttled = _login_page(request, t, target, status=429, error=error)
        throttled.headers.update(outcome.headers)
        return throttled
    if isinstance(outcome, SignInRefused):
        return _login_page(request, t, target, status=401, error=_key_problem(t, outcome.problem))
    if isinstance(outcome, SignInLacksScope):
        return _login_page(request, t, target, status=403, error=t("key_lacks_scope", scope=SCOPE))
    response = RedirectResponse(with_language(target, t.language), status_code=303)
    LOGIN.start_session(
        response,
        request.app.state.insights_secret,
        outcome.principal,
        ttl_s=ctx.settings.session_ttl_s,
        secure=ctx.settings.cookie_secure,
    )
    return response


@router.get("/dashboard/login/oidc")
async def oidc_login(
    request: Request, tenant: str = "", next: str | None = None, lang: str | None = None
) -> Response:
    """Sends the browser to ``tenant``'s identity provider (:meth:`WebOidc.start`), to come back to
    :func:`oidc_callback` and then to ``next`` in the language chosen (carried inside ``next``,
    as every redirect of the staff pages carries it). A municipality that does not let its staff
    sign in with its provider here is a 404, a provider that cannot be reached a 502, both as the
    login page with the reason."""
    t = Wording(language_of(lang or _language_in(next)))
    target = safe_next(next)
    if tenant not in {code for code, _ in OIDC.tenants(request)}:
        return _login_page(request, t, target, status=404, error=t("oidc_not_offered"))
    ctx = context(request)
    started = await OIDC.start(
        request,
        request.app.state.insights_secret,
        tenant,
        with_language(target, t.language),
        secure=ctx.settings.cookie_secure,
    )
    if isinstance(started, SignInFailed):
        return _login_page(
            request, t, target, status=502, error=t("oidc_failed", detail=started.says(t.language))
        )
    return started


@router.get(OIDC_CALLBACK)
async def oidc_callback(request: Request) -> Response:
    """Where the provider sends the browser back (:meth:`WebOidc.finish`): a person with
    ``insights:read`` is signed in and goes on to the page asked for; anyone else gets the login
    page again (403 without the scope, 401 when the sign-in failed) and no login. The flow cookie
    is gone after every answer: a callback is taken once."""
    secret = request.app.state.insights_secret
    # The page asked for, and so the language, travel in the flow cookie; a failed or refused
    # sign-in still shows the login page in that language and keeps where it was going.
    target = safe_next(_flow_next(request, secret))
    t = Wording(language_of(_language_in(target)))
    outcome = await OIDC.finish(request, secret)
    response: Response
    if isinstance(outcome, OidcSignedIn):
        ctx = context(request)
        # outcome.next_url is the flow's own ``next``: the target read above, language included.
        response = _continue_page(request, t, safe_next(outcome.next_url))
        LOGIN.start_session(
            response,
            secret,
            outcome.principal,
            ttl_s=ctx.settings.session_ttl_s,
            secure=ctx.settings.cookie_secure,
            issuer=outcome.issuer,
        )
        OIDC.keep_id_token(
            response, outcome, ttl_s=ctx.settings.session_ttl_s, secure=ctx.settings.cookie_secure
        )
        log.info(
            "dashboard: %s of %s signed in through their provider",
            outcome.principal.actor,
            outcome.principal.tenant,
        )
    elif isinstance(outcome, SignInLacksScope):
        log.info("dashboard: %s of %s lacks %s", outcome.principal.actor, outcome.principal.tenant, SCOPE)
        response = _login_page(request, t, target, status=403, error=t("person_lacks_scope", scope=SCOPE))
    else:
        response = _login_page(
            request, t, target, status=401, error=t("oidc_failed", detail=outcome.says(t.language))
        )
    OIDC.end_flow(response)
    response.headers["Cache-Control"] = "no-store"
    return response


def _continue_page(request: Request, t: Wording, destination: str) -> HTMLResponse:
    """A signed-in person's way on to ``destination``: a page of this service that goes there at
    once (``Refresh: 0``) and links there, instead of a redirect.

    The login cookie is ``SameSite=Strict``, and the provider's page (where the person typed their
    password) started the navigation to the callback: a browser does not send a Strict cookie on
    a navigation another site started, redirects included, so a 303 would land on the login page
    again while signed in. A refresh is a new navigation started by this page, which the cookie
    accompanies."""
    response = _render_staff(
        request,
        "login.html",
        t,
        params={"next": destination},
        path="/dashboard/login",
        next=destination,
        error=None,
        providers=[],
        continue_to=destination,
    )
    response.headers["Refresh"] = refresh_to(destination)
    return response


def _flow_next(request: Request, secret: bytes) -> str:
    """The ``next`` the sign-in being finished was started with ("" when there is none to read)."""
    return OIDC.flow_next(request, secret)


@router.post("/dashboard/logout")
async def logout(request: Request, lang: str | None = None) -> Response:
    """Sign out: the login cookie goes, and a person signed in through their municipality's
    provider is sent there to end that session too (:meth:`WebOidc.end_session_url`), which sends
    them back to the login page (registered at the provider as a post-logout redirect URI)."""
    language = language_of(lang)
    principal = LOGIN.principal(request, request.app.state.insights_secret)
    login_page = str(request.base_url).rstrip("/") + "/dashboard/login"
    at_provider = await OIDC.end_session_url(request, principal, login_page, language=language)
    response: Response
    if at_provider and principal is not None:
        # A page that moves on by itself, not a redirect: the pages' CSP (form-action 'self') stops
        # a form post that redirects to another site, as the provider is.
        t = Wording(language)
        tenant = get_registry(request).get(principal.tenant)
        response = _render_staff(
            request,
            "login.html",
            t,
            params={},
            path="/dashboard/login",
            next="",
            error=None,
            providers=[],
            signing_out=at_provider,
            municipality=tenant.name if tenant is not None else principal.tenant,
        )
        response.headers["Refresh"] = refresh_to(at_provider)
    else:
        response = RedirectResponse(with_language("/dashboard/login", language), status_code=303)
    LOGIN.end_session(response)
    OIDC.forget_id_token(response)
    response.headers["Cache-Control"] = "no-store"
    return response


# -- dashboard -----------------------------------------------------------------------------------


def _period_filters(filters: Filters, day: date, interval: str) -> Filters:
    end = day + timedelta(days=6) if interval == "week" else day
    if interval == "month":
        end = (day.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
    return dataclasses.replace(filters, start=day, end=min(end, filters.end))


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard(
    request: Request,
    viewer: Viewer,
    filters: FilterParams,
    interval: Interval = "day",
    split: Split = "topic",
    lang: str | None = None,
) -> HTMLResponse:
    ctx = context(request)
    tenant = viewer.tenant
    t = _wording(request, tenant, lang)
    chart_words = t.chart()

    def to(path: str, view: Filters, **extra: str) -> str:
        return link(path, view, lang=t.carried, **extra)

    async with ctx.runtime.sessions() as session:
        volume = await service.trend(session, tenant, filters, interval=interval, group_by="mode")
        by_split = await service.trend(session, tenant, filters, interval=interval, group_by=split)
        breakdowns = {
            dim: await service.breakdown(session, tenant, filters, dim, limit=12)
            for dim in ("topic", "channel", "kind", "language", "area")
        }
        subtopics = (
            await service.breakdown(session, tenant, filters, "subtopic", limit=12) if filters.topic else []
        )
        by_language = await service.cross(session, tenant, filters, "topic", "language")
        # as people look for them: by the names shown (the query orders by code)
        departments = sorted(
            await service.departments(session, tenant, filters),
            key=lambda row: t.department(row["department"]).casefold(),
        )
        satisfaction = await service.satisfaction_by_topic(session, tenant, filters)
        issues = await reports.emerging_issues(session, tenant, filters.start, filters.end)

    per_mode: dict[str, list[tuple[date, float]]] = {"active": [], "passive": []}
    totals: dict[date, float] = {}
    for period, mode, count in volume:
        per_mode.setdefault(str(mode), []).append((period, count))
        totals[period] = totals.get(period, 0) + count
    if not any(n for _, _, n in volume):
        totals = {}
    series = [charts.Series(t("series_all"), sorted(totals.items()))] if totals else []
    series += [
        charts.Series(t.words.get(f"series.{mode}", mode), points)
        for mode, points in per_mode.items()
        if points and totals
    ]
    interval_name = t(f"interval.{interval}")
    volume_chart = charts.line_chart(
        series,
        label=t("volume_chart", interval=interval_name),
        link=lambda d: to("/dashboard/signals", _period_filters(filters, d, interval)),
        wording=chart_words,
    )

    split_totals: dict[str, int] = {}
    for _, group, count in by_split:
        split_totals[str(group)] = split_totals.get(str(group), 0) + count
    leaders = [g for g in sorted(split_totals, key=lambda g: (-split_totals[g], g)) if split_totals[g]][:6]
    split_chart = charts.line_chart(
        [
            charts.Series(
                t.value(split, group, filters.topic), [(p, n) for p, g, n in by_split if str(g) == group]
            )
            for group in leaders
        ],
        label=t("split_chart", interval=interval_name, count=len(leaders), split=t.dimension(split)),
        link=lambda d: to("/dashboard/signals", _period_filters(filters, d, interval)),
        wording=chart_words,
    )

    def bars(dimension: str, rows: list[tuple[str, int]], colour: str) -> Any:
        return charts.bar_chart(
            [
                charts.Bar(
                    t.value(dimension, value, filters.topic),
                    count,
                    href=to("/dashboard/signals", filters.narrowed(**{dimension: value})) if value else None,
                    label_href=to("/dashboard", filters.narrowed(**{dimension: value}), interval=interval)
                    if value
                    else None,
                )
                for value, count in rows
            ],
            label=t("bars_chart", dimension=t.dimension(dimension)),
            colour=colour,
            wording=chart_words,
        )

    palette = charts.PALETTE
    breakdown_charts = [
        (t.dimension(dimension).capitalize(), chart_id, bars(dimension, breakdowns[dimension], colour))
        for dimension, chart_id, colour in (
            ("topic", "topics", palette[0]),
            ("channel", "channels", palette[1]),
            ("kind", "kinds", palette[2]),
            ("language", "languages", palette[3]),
            ("area", "areas", palette[4]),
        )
    ]
    if filters.topic:
        breakdown_charts.insert(
            1,
            (
                t("subtopic_of", topic=t.topic(filters.topic)),
                "subtopics",
                bars("subtopic", subtopics, palette[5]),
            ),
        )

    topic_totals: dict[str, int] = {}
    language_totals: dict[str, int] = {}
    matrix: dict[tuple[str, str], int] = {}
    for topic, language, count in by_language:
        topic_totals[topic] = topic_totals.get(topic, 0) + count
        language_totals[language] = language_totals.get(language, 0) + count
        matrix[(topic, language)] = count
    topics = sorted(topic_totals, key=lambda name: (-topic_totals[name], name))[:12]
    languages = sorted(language_totals, key=lambda lang: (-language_totals[lang], lang))[:6]
    peak = max(matrix.values(), default=0)
    heatmap = [
        (
            topic,
            [
                (
                    language,
                    matrix.get((topic, language), 0),
                    charts.shade(matrix.get((topic, language), 0), peak),
                    to("/dashboard/signals", filters.narrowed(topic=topic, language=language)),
                )
                for language in languages
            ],
        )
        for topic in topics
    ]
    satisfaction_chart = charts.bar_chart(
        [
            charts.Bar(t.topic(row["topic"]), row["mean_score"] or 0)
            for row in satisfaction
            if row["mean_score"] is not None
        ],
        label=t("satisfaction_chart"),
        maximum=5,
        colour=palette[2],
        wording=chart_words,
    )
    total = sum(totals.values()) if totals else 0
    passive = sum(v for _, v in per_mode.get("passive", []))
    open_cases = sum(d["open"] for d in departments)
    judged = sum(d["sla_judged"] for d in departments)
    met = sum(d["sla_met"] for d in departments)
    feedback = sum(d["feedback"] for d in departments)
    kpis = [
        (t("kpi_signals"), f"{total:,.0f}".replace(",", " ")),
        (t("kpi_passive"), f"{passive / total:.0%}" if total else t("n/a")),
        (t("kpi_open"), str(open_cases)),
        (t("kpi_sla"), f"{met / judged:.0%}" if judged else t("n/a")),
        (t("kpi_feedback"), str(feedback)),
    ]
    active_filters = [
        (name, value, to("/dashboard", filters.narrowed(**{name: None}), interval=interval))
        for name, value in filters.dimension_values().items()
    ]
    return _render_staff(
        request,
        "dashboard.html",
        t,
        tenant=tenant,
        tenant_name=_tenant_name(request, tenant),
        filters=filters,
        interval=interval,
        dimensions=DIMENSIONS,
        active_filters=active_filters,
        kpis=kpis,
        volume_chart=volume_chart,
        split_chart=split_chart,
        split=split,
        splits=("topic", "subtopic", "channel", "kind", "language", "area"),
        breakdown_charts=breakdown_charts,
        heatmap=heatmap,
        heatmap_languages=languages,
        departments=departments,
        satisfaction_chart=satisfaction_chart,
        issues=issues[:12],
        method=ctx.method,
        export=lambda chart, fmt: link(
            f"/dashboard/exports/{chart}.{fmt}", filters, interval=interval, split=split
        ),
        signals_link=to("/dashboard/signals", filters),
        transparency_link=with_language(f"/transparency/{tenant}", t.language),
    )


@router.get("/dashboard/signals", response_class=HTMLResponse)
async def signal_list(
    request: Request,
    viewer: Viewer,
    filters: FilterParams,
    cursor: str | None = None,
    lang: str | None = None,
) -> HTMLResponse:
    ctx = context(request)
    t = _wording(request, viewer.tenant, lang)
    try:
        async with ctx.runtime.sessions() as session:
            items, next_cursor = await service.signals(
                session, viewer.tenant, filters, cursor=cursor, limit=50
            )
    except ValueError as exc:
        raise Problem(
            422, str(exc), slug="invalid-request", errors=[{"pointer": "/cursor", "detail": str(exc)}]
        ) from exc
    for item in items:  # shown in the municipality's own time
        if item["received_at"] is not None:
            item["received_at"] = item["received_at"].astimezone(ctx.zone)
    return _render_staff(
        request,
        "signals.html",
        t,
        tenant=viewer.tenant,
        tenant_name=_tenant_name(request, viewer.tenant),
        filters=filters,
        items=items,
        next_link=link("/dashboard/signals", filters, cursor=next_cursor, lang=t.carried)
        if next_cursor
        else None,
        back_link=link("/dashboard", filters, lang=t.carried),
        export_csv=link("/dashboard/exports/signals.csv", filters),
        export_json=link("/dashboard/exports/signals.json", filters),
    )


@router.get("/dashboard/exports/{filename}")
async def dashboard_export(
    filename: str,
    request: Request,
    viewer: Viewer,
    filters: FilterParams,
    interval: Interval = "day",
    split: Split = "topic",
) -> Response:
    return await export_response(context(request), viewer.tenant, filename, filters, interval, split)


def _tenant_name(request: Request, tenant: str) -> str:
    found = get_registry(request).get(tenant)
    return found.name if found else tenant


def _wording(request: Request, tenant: str, lang: str | None) -> Wording:
    """A staff page's words for the tenant: the names of its topics (its own taxonomy's, else the
    default's) and of its departments and areas (its own files')."""
    found = get_registry(request).get(tenant)
    return Wording(language_of(lang), context(request).names.get(found), place_names(found))


# -- transparency --------------------------------------------------------------------------------


async def _transparency(
    request: Request, tenant: str
) -> tuple[list[service.TransparencyRow], date, date, Tenant]:
    found = get_registry(request).get(tenant)
    if found is None:
        raise Problem(404, "no such municipality", slug="unknown-tenant")
    ctx = context(request)
    end = ctx.today()
    start = end - timedelta(days=ctx.settings.transparency_days - 1)
    async with ctx.runtime.sessions() as session:
        rows = await service.transparency(
            session, tenant, start, end, min_cell=ctx.settings.min_cell, zone=ctx.zone
        )
    return rows, start, end, found


PUBLIC_WORDS: dict[str, dict[str, str]] = {
    "nl": {
        "title": "U meldde, wij deden",
        "section": "u meldde, wij deden",
        "other_language": "English",
        "intro": "Wat inwoners van {tenant} meldden van {start} tot en met {end}, en wat daarmee is gedaan.",
        "privacy": "Om de privacy te beschermen tonen we geen cijfer dat op minder dan {min} meldingen, "
        "zaken of antwoorden berust (daar staat „minder dan {min}”), en zijn kleinere onderwerpen "
        "samengevoegd.",
        "csv": "Downloaden als CSV",
        "reported": "Wat u meldde",
        "chart": "Wat inwoners meldden, per onderwerp",
        "done": "Wat wij deden",
        "topic": "Onderwerp",
        "reports": "Meldingen",
        "resolved": "Opgelost",
        "median": "Doorlooptijd (mediaan)",
        "satisfied": "Tevreden",
        "fewer": "minder dan {min}",
        "days": "{days} dagen",
        "other_topics": "Overige onderwerpen",
        "nothing": "Nog niets te tonen.",
        "chart_empty": "nog geen meldingen in deze periode",
    },
    "en": {
        "title": "You said, we did",
        "section": "you said, we did",
        "other_language": "Nederlands",
        "intro": "What residents of {tenant} reported from {start} to {end}, and what was done about it.",
        "privacy": "To protect privacy, no figure based on fewer than {min} reports, cases or answers "
        "is shown (marked “fewer than {min}”), and smaller topics are combined.",
        "csv": "Download as CSV",
        "reported": "What you reported",
        "chart": "What residents reported, per topic",
        "done": "What we did",
        "topic": "Topic",
        "reports": "Reports",
        "resolved": "Cases resolved",
        "median": "Median time to resolve",
        "satisfied": "Satisfied",
        "fewer": "fewer than {min}",
        "days": "{days} days",
        "other_topics": "Other topics",
        "nothing": "Nothing to show yet.",
        "chart_empty": "no reports in this period yet",
    },
}
"""The public page's words. It is in Dutch unless ``?lang=en`` asks for English: residents of a
Dutch municipality read it (the staff pages have their own words, :data:`STAFF_WORDS`)."""


@router.get("/transparency/{tenant}", response_class=HTMLResponse)
async def transparency(request: Request, tenant: str, lang: str | None = None) -> HTMLResponse:
    rows, start, end, found = await _transparency(request, tenant)
    language = language_of(lang)
    words = PUBLIC_WORDS[language]
    t = Wording(
        language, context(request).names.get(found)
    )  # names and numbers as the staff pages write them

    def topic_name(topic: str) -> str:
        """The taxonomy's name of a topic; the pooled small topics and old codes as before."""
        return words["other_topics"] if topic == "other topics" else t.topic(topic)

    def days(value: float) -> str:
        return words["days"].format(days=t.number(value, ".1f"))

    shown = [row for row in rows if row.reported is not None]
    chart = charts.bar_chart(
        [charts.Bar(topic_name(row.topic), row.reported or 0) for row in shown],
        label=words["chart"],
        width=560,
        wording=charts.ChartWords(empty=words["chart_empty"]),  # whole numbers: no decimal sign
    )
    response = _render(
        request,
        "transparency.html",
        tenant=tenant,
        tenant_name=found.name,
        rows=rows,
        start=format_date(start, language),
        end=format_date(end, language),
        chart=chart,
        min_cell=context(request).settings.min_cell,
        lang=language,
        other_lang="en" if language == "nl" else "nl",
        words=words,
        topic_name=topic_name,
        days=days,
    )
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@router.get("/transparency/{tenant}/{filename}")
async def transparency_export(request: Request, tenant: str, filename: str) -> Response:
    if filename not in ("export.csv", "export.json"):
        raise Problem(404, "no such export; use export.csv or export.json", slug="unknown-export")
    rows, start, end, _ = await _transparency(request, tenant)
    data = reports.transparency_table(rows)
    disposition = {
        "Content-Disposition": f'attachment; filename="{tenant}-transparency-{start}-{end}.{filename[7:]}"'
    }
    if filename.endswith(".csv"):
        return Response(reports.to_csv(data), media_type="text/csv; charset=utf-8", headers=disposition)
    body = reports.to_json(
        data,
        tenant=tenant,
        start=start.isoformat(),
        end=end.isoformat(),
        min_cell=context(request).settings.min_cell,
    )
    return Response(body, media_type="application/json", headers=disposition)


def login_redirect(next_url: str) -> RedirectResponse:
    """To the login form, which then speaks the language of the page asked for."""
    target = f"/dashboard/login?{urlencode({'next': next_url})}"
    return RedirectResponse(with_language(target, language_of(_language_in(next_url))), status_code=303)
