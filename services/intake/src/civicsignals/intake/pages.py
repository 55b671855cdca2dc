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
from civicsignals.common.wording import STATUS_LABELS, format_date, text_direction
from civicsignals.intake import flows
from civicsignals.intake.flows import IntakeContext, Tracked
from civicsignals.intake.models import RESIDENT_ACTIONS, FeedbackCreate, ResidentUpdateCreate
from civicsignals.intake.residentmoves import REOPENABLE
from civicsignals.intake.tracking_words import FIELD_ERRORS, WORDS

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
    view, lang = tracked.view, tracked.language
    labels = STATUS_LABELS[lang]
    ended = view.status in flows.FEEDBACK_STATUSES  # the page asks exactly when the API accepts
    words = WORDS[lang]
    return _render(
        "tracking.html",
        status_code,
        lang=lang,
        direction=text_direction(lang),
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
    lang = tracked.language
    return _render(
        "feedback.html",
        status_code,
        lang=lang,
        direction=text_direction(lang),
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


def read_form(form: Mapping[str, Any], language: str) -> tuple[FeedbackCreate | None, dict[str, str]]:
    """The posted form as the API's ``FeedbackCreate``, or the resident's errors by field in
    ``language`` (the resident's, as ``Tracked.language`` has it)."""
    lang = language
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
    words = WORDS[tracked.language]
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
        errors = FIELD_ERRORS[tracked.language]
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
    return FIELD_ERRORS[tracked.language]["text"]
