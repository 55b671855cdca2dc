"""The resident's own pages: the tracking page and the satisfaction form, as HTML for a browser.

The acknowledgement e-mail links to ``/v1/tracking/{code}`` and the resolution e-mail to
``/v1/tracking/{code}/feedback?score=N``, and residents open those links in a browser. So the
same URLs answer HTML to a browser (``Accept`` prefers ``text/html``) and JSON to everything
else, and the form works without JavaScript: it posts ``application/x-www-form-urlencoded`` to
the JSON API's own route, which then answers with a redirect back to the tracking page
(post/redirect/get, so reloading never posts twice). A link in an e-mail only shows the form
with the score filled in: mail scanners open links, so a GET must never record anything.

The pages show what the JSON shows (``TrackingPublic``) and nothing more: no personal data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from civicsignals.common.problems import Problem
from civicsignals.common.wording import STATUS_LABELS, format_date, language_of
from civicsignals.intake import flows
from civicsignals.intake.flows import IntakeContext, Tracked
from civicsignals.intake.models import RESIDENT_ACTIONS, FeedbackCreate, ResidentUpdateCreate
from civicsignals.intake.residentmoves import REOPENABLE

HTML_TYPES = ("text/html", "application/xhtml+xml")
FORM_TYPE = "application/x-www-form-urlencoded"
MULTIPART_TYPE = "multipart/form-data"
FORM_TYPES = frozenset({FORM_TYPE, MULTIPART_TYPE})

# No scripts, no outside resources, forms only back to us; the code in the URL goes to no one else.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Vary": "Accept",
}

#: Intake's HTML templates (the resident's pages and the privacy desk), escaped by default.
TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(default=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

WORDS: dict[str, dict[str, str]] = {
    "nl": {
        "title": "Uw melding",
        "code": "Volgnummer",
        "received": "Ontvangen op",
        "status": "Status",
        "expected": "Verwacht uiterlijk",
        "files": "Foto's en bestanden",
        "history": "Verloop",
        "feedback_heading": "Hoe tevreden bent u?",
        "score_legend": "Hoe tevreden bent u over de afhandeling? (1 = zeer ontevreden, 5 = zeer tevreden)",
        "satisfied_legend": "Is uw melding naar tevredenheid afgehandeld?",
        "yes": "Ja",
        "no": "Nee",
        "comment": "Toelichting (niet verplicht)",
        "comment_hint": "Zet hier geen naam, adres, telefoonnummer of e-mailadres in.",
        "send": "Verstuur",
        "thanks": "Dank u wel voor uw beoordeling.",
        "already": "Voor deze melding is al een beoordeling gegeven. Dank u wel.",
        "not_yet": "U kunt uw melding beoordelen zodra deze is afgehandeld.",
        "errors": "Controleer het formulier:",
        "back": "Terug naar uw melding",
        "keep": "Bewaar de link naar deze pagina: hier ziet u hoe het met uw melding gaat.",
        "not_found_title": "Melding niet gevonden",
        "not_found": "Wij kennen geen melding met dit volgnummer. Controleer het nummer in uw e-mail.",
        "reply_heading": "Wij hebben een vraag aan u",
        "reply_label": "Uw antwoord",
        "reply_send": "Verstuur uw antwoord",
        "reopen_summary": "Is het probleem er nog? Meld het ons",
        "reopen_label": "Wat is er nog mis?",
        "reopen_send": "Heropen mijn melding",
        "photo_label": "Foto of pdf (niet verplicht)",
        "reopen_until": "Dit kan tot en met {date}.",
        "reopen_passed": "Is het probleem er weer? Deze melding kan niet meer worden heropend; "
        "doe een nieuwe melding.",
        "withdraw_summary": "Melding intrekken",
        "withdraw_label": "Waarom trekt u de melding in? (niet verplicht)",
        "withdraw_send": "Trek mijn melding in",
        "sent_reply": "Uw antwoord is verstuurd. De status wordt zo bijgewerkt.",
        "sent_reopen": "Uw melding is heropend. De status wordt zo bijgewerkt.",
        "sent_withdraw": "Uw melding is ingetrokken. De status wordt zo bijgewerkt.",
        "not_now": "Dit kan nu niet meer: de status van uw melding is intussen veranderd.",
        "unavailable": "Dit lukt op dit moment niet. Probeer het over een minuut opnieuw.",
    },
    "en": {
        "title": "Your report",
        "code": "Tracking code",
        "received": "Received on",
        "status": "Status",
        "expected": "Expected by",
        "files": "Photos and files",
        "history": "History",
        "feedback_heading": "How satisfied are you?",
        "score_legend": "How satisfied are you with how it was handled? (1 = very dissatisfied, 5 = very satisfied)",
        "satisfied_legend": "Was your report dealt with to your satisfaction?",
        "yes": "Yes",
        "no": "No",
        "comment": "Comment (optional)",
        "comment_hint": "Please do not include a name, address, phone number or e-mail address.",
        "send": "Send",
        "thanks": "Thank you for your feedback.",
        "already": "Feedback was already given for this report. Thank you.",
        "not_yet": "You can rate your report once it has been dealt with.",
        "errors": "Please check the form:",
        "back": "Back to your report",
        "keep": "Keep the link to this page: it shows how your report is progressing.",
        "not_found_title": "Report not found",
        "not_found": "We know of no report with this tracking code. Please check the code in your e-mail.",
        "reply_heading": "We have a question for you",
        "reply_label": "Your answer",
        "reply_send": "Send your answer",
        "reopen_summary": "Is the problem still there? Tell us",
        "reopen_label": "What is still wrong?",
        "reopen_send": "Reopen my report",
        "photo_label": "Photo or PDF (optional)",
        "reopen_until": "You can do this until {date}.",
        "reopen_passed": "Is the problem back? This report can no longer be reopened; please make a new report.",
        "withdraw_summary": "Withdraw this report",
        "withdraw_label": "Why do you withdraw it? (optional)",
        "withdraw_send": "Withdraw my report",
        "sent_reply": "Your answer was sent. The status will be updated shortly.",
        "sent_reopen": "Your report was reopened. The status will be updated shortly.",
        "sent_withdraw": "Your report was withdrawn. The status will be updated shortly.",
        "not_now": "This is no longer possible: the status of your report has changed meanwhile.",
        "unavailable": "This cannot be done right now. Please try again in a minute.",
    },
}

FIELD_ERRORS: dict[str, dict[str, str]] = {
    "nl": {
        "score": "Kies een cijfer van 1 tot en met 5.",
        "satisfied": "Kies ja of nee.",
        "comment": "De toelichting is te lang (ten hoogste 2000 tekens).",
        "text": "Schrijf hier uw tekst (ten hoogste 4000 tekens).",
        "photo_size": "Dit bestand is te groot: ten hoogste {mb} MB.",
        "photo_type": "Dit bestand kunnen wij niet aannemen: stuur een foto (JPEG, PNG, WebP of HEIC) of een pdf.",
        "photo_count": "Bij deze melding kunnen geen bestanden meer worden gevoegd.",
        "photo_erased": "Op uw verzoek zijn uw gegevens bij deze melding gewist; "
        "wij nemen er daarom geen bestanden meer bij aan. Uw tekst kunt u zonder bestand sturen.",
    },
    "en": {
        "score": "Choose a score from 1 to 5.",
        "satisfied": "Choose yes or no.",
        "comment": "The comment is too long (2,000 characters at most).",
        "text": "Please write your text here (4,000 characters at most).",
        "photo_size": "This file is too large: {mb} MB at most.",
        "photo_type": "We cannot accept this file: please send a photo (JPEG, PNG, WebP or HEIC) or a PDF.",
        "photo_count": "No more files can be added to this report.",
        "photo_erased": "At your request your personal data on this report was erased, so we no "
        "longer accept files with it. You can send your text without a file.",
    },
}


def wants_html(request: Request) -> bool:
    """Whether the client prefers HTML to JSON (RFC 9110 ``Accept`` with q-values): a browser
    does; curl, portals and Open311 clients (``*/*`` or ``application/json``) get JSON."""
    html = json = 0.0
    for item in request.headers.get("accept", "").split(","):
        media, _, params = item.strip().partition(";")
        media = media.strip().lower()
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media in HTML_TYPES or media == "text/*":
            html = max(html, quality)
        elif media in ("application/json", "application/*", "application/problem+json"):
            json = max(json, quality)
        elif media == "*/*":
            html, json = max(html, quality * 0.999), max(json, quality)  # a tie goes to JSON
    return html > json


def is_form(request: Request) -> bool:
    """Whether the body is a page's form: urlencoded, or multipart when it carries a file."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower() in FORM_TYPES


def _when(value: datetime, language: str, timezone: str) -> str:
    """``29 november 2026, 09:46``: the date as the e-mails write it, and the local time."""
    return (
        f"{format_date(value, language, timezone)}, {value.astimezone(ZoneInfo(timezone)).strftime('%H:%M')}"
    )


def _render(template: str, status_code: int, **values: Any) -> HTMLResponse:
    html = TEMPLATES.get_template(template).render(**values)
    return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)


def tracking_page(
    tracked: Tracked,
    *,
    sent: str | None = None,
    failed: tuple[str, str] | None = None,
    values: Mapping[str, Any] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    """The resident's page: status, expected date, the history with public notes, what they may
    do now (answer a question, reopen, withdraw), and once the case has ended, the satisfaction
    form (or thanks for it). ``sent`` names the action just made (its form is not offered again
    while the page waits for the case's event); ``failed`` is (action, message) for a form that
    comes back, with the ``values`` that were typed."""
    view, lang = tracked.view, language_of(tracked.language)
    labels = STATUS_LABELS[lang]
    ended = view.status in flows.FEEDBACK_STATUSES  # the page asks exactly when the API accepts
    words = WORDS[lang]
    return _render(
        "tracking.html",
        status_code,
        lang=lang,
        words=words,
        municipality=tracked.municipality,
        code=view.tracking_code,
        status=labels.get(view.status, view.status),
        received=_when(view.received_at, lang, tracked.timezone),
        expected=None if ended else format_date(view.expected_by, lang, tracked.timezone),
        promise=None if ended else view.service_promise,
        attachments=view.attachments,
        history=[
            {
                "when": _when(entry.at, lang, tracked.timezone),
                "status": labels.get(entry.status, entry.status),
                "note": entry.note,
            }
            for entry in reversed(view.history)
        ],
        question=view.history[-1].note if view.status == "waiting_on_resident" and view.history else None,
        actions=[action for action in view.actions if action != sent],
        reopen_until=format_date(view.reopen_until, lang, tracked.timezone)
        if "reopen" in view.actions and view.reopen_until is not None
        else None,
        reopen_passed=view.status in REOPENABLE and "reopen" not in view.actions and sent != "reopen",
        notice=words.get(f"sent_{sent}") if sent in RESIDENT_ACTIONS else None,
        failed={"action": failed[0], "message": failed[1]} if failed else None,
        typed=str((values or {}).get("text") or ""),
        action_url=tracked.actions_path,
        ask_feedback=ended and not view.feedback_given,
        feedback_given=view.feedback_given,
        form=_form_values({}),
        errors={},
        feedback_url=tracked.feedback_path,
    )


def feedback_page(
    tracked: Tracked,
    values: Mapping[str, Any] | None = None,
    errors: Mapping[str, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    """The satisfaction form on its own (the resolution e-mail's links), filled in with ``values``."""
    lang = language_of(tracked.language)
    return _render(
        "feedback.html",
        status_code,
        lang=lang,
        words=WORDS[lang],
        municipality=tracked.municipality,
        code=tracked.view.tracking_code,
        status=STATUS_LABELS[lang].get(tracked.view.status, tracked.view.status),
        feedback_given=tracked.view.feedback_given,
        feedback_open=tracked.view.status in flows.FEEDBACK_STATUSES,
        form=_form_values(values or {}),
        errors=dict(errors or {}),
        feedback_url=tracked.feedback_path,
        status_url=tracked.status_path,
    )


def not_found_page() -> HTMLResponse:
    """An unknown code: the same answer for every code (no enumeration), in both languages."""
    return _render("not_found.html", 404, lang="nl", pages=[WORDS["nl"], WORDS["en"]])


def _form_values(values: Mapping[str, Any]) -> dict[str, str]:
    return {name: str(values.get(name) or "") for name in ("score", "satisfied", "comment")}


def prefill(score: str | None) -> dict[str, str]:
    """The form as an e-mail's link opens it: its score chosen, and "satisfied" when 4 or 5 (no when
    1 or 2). A score that is not 1 to 5 is ignored: the resident still gets the empty form."""
    if score is None or score.strip() not in ("1", "2", "3", "4", "5"):
        return {}
    chosen = int(score)
    return {"score": str(chosen), "satisfied": "yes" if chosen >= 4 else "no" if chosen <= 2 else ""}


def read_form(form: Mapping[str, Any], language: str | None) -> tuple[FeedbackCreate | None, dict[str, str]]:
    """The posted form as the API's ``FeedbackCreate``, or the resident's errors by field."""
    lang = language_of(language)
    raw = {
        "score": str(form.get("score", "")).strip() or None,
        "satisfied": {"yes": True, "no": False}.get(str(form.get("satisfied", "")).strip().lower()),
        "comment": str(form.get("comment", "")) or None,
    }
    try:
        return FeedbackCreate.model_validate(raw), {}
    except ValidationError as exc:
        fields = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
        return None, {field: FIELD_ERRORS[lang][field] for field in fields if field in FIELD_ERRORS[lang]}


def see_tracking_page(tracked: Tracked) -> RedirectResponse:
    """After the form: back to the tracking page, which now thanks the resident (303: as a GET)."""
    return RedirectResponse(tracked.status_path, status_code=303, headers={"Cache-Control": "no-store"})


async def post_feedback_form(ctx: IntakeContext, tracked: Tracked, form: Mapping[str, Any]) -> Response:
    """The form posted: recorded as the JSON API records it, then back to the tracking page; a form
    with mistakes comes back filled in, with the mistakes named (422), and nothing is recorded."""
    payload, errors = read_form(form, tracked.language)
    if payload is None:
        return feedback_page(tracked, form, errors, 422)
    try:
        await flows.submit_feedback(ctx, tracked.view.tracking_code, payload)
    except Problem as problem:
        if problem.status != 409:
            raise
        if problem.slug == "feedback-already-given":
            tracked = replace(tracked, view=tracked.view.model_copy(update={"feedback_given": True}))
        return feedback_page(tracked, status_code=409)  # already given, or the case has not ended
    return see_tracking_page(tracked)


async def post_resident_form(ctx: IntakeContext, tracked: Tracked, form: Mapping[str, Any]) -> Response:
    """A resident's action from their page, made as the JSON API makes it; then back to the page,
    which says it was sent. A form that cannot be done comes back on the page with the reason."""
    words = WORDS[language_of(tracked.language)]
    action = str(form.get("action", ""))
    try:
        payload = ResidentUpdateCreate.model_validate({"action": action, "text": form.get("text") or None})
    except ValidationError as exc:
        if any(error["loc"][:1] == ("action",) for error in exc.errors()):
            return tracking_page(tracked, failed=("", words["not_now"]), status_code=422)
        return tracking_page(tracked, failed=(action, _text_error(tracked)), values=form, status_code=422)
    photo = await _photo(form.get("file"), ctx.settings.max_attachment_bytes)
    try:
        await flows.resident_update(ctx, tracked.view.tracking_code, payload, photo)
    except Problem as problem:
        errors = FIELD_ERRORS[language_of(tracked.language)]
        if problem.status == 422:
            message, status = _text_error(tracked), 422
        elif problem.slug in PHOTO_PROBLEMS:
            limit = ctx.settings.max_attachment_bytes // (1024 * 1024)
            message, status = errors[PHOTO_PROBLEMS[problem.slug]].format(mb=limit), problem.status
        elif problem.status == 409:
            message, status = (
                words["reopen_passed" if problem.slug == "reopen-window-passed" else "not_now"],
                409,
            )
        elif problem.status == 503:
            message, status = words["unavailable"], 503
        else:
            raise
        return tracking_page(tracked, failed=(action, message), values=form, status_code=status)
    return RedirectResponse(
        f"{tracked.status_path}?sent={action}", status_code=303, headers={"Cache-Control": "no-store"}
    )


#: The attachment problems a page form explains, by slug: the key of the message.
PHOTO_PROBLEMS = {
    "attachment-too-large": "photo_size",
    "attachment-refused": "photo_type",
    "too-many-attachments": "photo_count",
    "signal-erased": "photo_erased",
}


async def _photo(field: Any, max_bytes: int) -> flows.Upload | None:
    """The form's file, or None when none was chosen (a browser then sends an empty part). One
    byte over the limit is read, so that a file too large is refused as such."""
    if not isinstance(field, UploadFile) or not field.filename:
        return None
    content = await field.read(max_bytes + 1)
    if not content:
        return None
    return flows.Upload(content=content, filename=field.filename, declared_type=field.content_type)


def _text_error(tracked: Tracked) -> str:
    return FIELD_ERRORS[language_of(tracked.language)]["text"]
