"""The HTML pages: the staff dashboard (login required) and the public transparency page.

Server-rendered with Jinja2; the charts are SVG drawn in :mod:`charts`, so the pages need no
JavaScript at all and load nothing from outside the service.
"""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from civicsignals.common.auth import Principal, authenticate, get_registry
from civicsignals.common.problems import Problem
from civicsignals.common.wording import format_date, language_of
from civicsignals.insights import charts, reports, service
from civicsignals.insights.models import DIMENSIONS, UNCLASSIFIED
from civicsignals.insights.service import Filters
from civicsignals.insights.views import FilterParams, Interval, Split, context, export_response
from civicsignals.insights.web_auth import COOKIE, SCOPE, dashboard_principal, safe_next, sign

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


# -- login ---------------------------------------------------------------------------------------


@router.get("/dashboard/login")
async def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    return _render(request, "login.html", next=safe_next(next), error=None)


@router.post("/dashboard/login")
async def login(request: Request) -> Response:
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    key = (form.get("api_key") or [""])[0].strip()
    target = safe_next((form.get("next") or [""])[0])
    try:
        principal = authenticate(get_registry(request), f"Bearer {key}")
    except Problem as problem:
        return _render(request, "login.html", status=401, next=target, error=problem.detail)
    if not principal.allows(SCOPE):
        return _render(request, "login.html", status=403, next=target, error=f"this key lacks '{SCOPE}'")
    ctx = context(request)
    token = sign(
        request.app.state.insights_secret, principal.tenant, principal.key_id, ctx.settings.session_ttl_s
    )
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=ctx.settings.session_ttl_s,
        httponly=True,
        secure=ctx.settings.cookie_secure,
        samesite="strict",
        path="/dashboard",
    )
    return response


@router.post("/dashboard/logout")
async def logout() -> Response:
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(COOKIE, path="/dashboard")
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
) -> HTMLResponse:
    ctx = context(request)
    tenant = viewer.tenant
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
        departments = await service.departments(session, tenant, filters)
        satisfaction = await service.satisfaction_by_topic(session, tenant, filters)
        issues = await reports.emerging_issues(session, tenant, filters.start, filters.end)

    per_mode: dict[str, list[tuple[date, float]]] = {"active": [], "passive": []}
    totals: dict[date, float] = {}
    for period, mode, count in volume:
        per_mode.setdefault(str(mode), []).append((period, count))
        totals[period] = totals.get(period, 0) + count
    if not any(n for _, _, n in volume):
        totals = {}
    series = [charts.Series("all signals", sorted(totals.items()))] if totals else []
    series += [
        charts.Series(f"{mode} ({'portals, apps' if mode == 'active' else 'phone, chat'})", points)
        for mode, points in per_mode.items()
        if points and totals
    ]
    volume_chart = charts.line_chart(
        series,
        label=f"Signals per {interval}",
        link=lambda d: link("/dashboard/signals", _period_filters(filters, d, interval)),
    )

    split_totals: dict[str, int] = {}
    for _, group, count in by_split:
        split_totals[str(group)] = split_totals.get(str(group), 0) + count
    leaders = [g for g in sorted(split_totals, key=lambda g: (-split_totals[g], g)) if split_totals[g]][:6]
    split_chart = charts.line_chart(
        [
            charts.Series(
                humanise(group) if split in ("topic", "subtopic") else group,
                [(p, n) for p, g, n in by_split if str(g) == group],
            )
            for group in leaders
        ],
        label=f"Signals per {interval}, the {len(leaders)} largest values of {split}",
        link=lambda d: link("/dashboard/signals", _period_filters(filters, d, interval)),
    )

    def bars(dimension: str, rows: list[tuple[str, int]], colour: str) -> Any:
        return charts.bar_chart(
            [
                charts.Bar(
                    humanise(value) if dimension in ("topic", "subtopic") else value or "(none)",
                    count,
                    href=link("/dashboard/signals", filters.narrowed(**{dimension: value}))
                    if value
                    else None,
                    label_href=link("/dashboard", filters.narrowed(**{dimension: value}), interval=interval)
                    if value
                    else None,
                )
                for value, count in rows
            ],
            label=f"Signals per {dimension}",
            colour=colour,
        )

    palette = charts.PALETTE
    breakdown_charts = [
        ("Topic", "topics", bars("topic", breakdowns["topic"], palette[0])),
        ("Channel", "channels", bars("channel", breakdowns["channel"], palette[1])),
        ("Kind", "kinds", bars("kind", breakdowns["kind"], palette[2])),
        ("Language", "languages", bars("language", breakdowns["language"], palette[3])),
        ("Area", "areas", bars("area", breakdowns["area"], palette[4])),
    ]
    if filters.topic:
        breakdown_charts.insert(
            1,
            ("Subtopic of " + humanise(filters.topic), "subtopics", bars("subtopic", subtopics, palette[5])),
        )

    topic_totals: dict[str, int] = {}
    language_totals: dict[str, int] = {}
    matrix: dict[tuple[str, str], int] = {}
    for topic, language, count in by_language:
        topic_totals[topic] = topic_totals.get(topic, 0) + count
        language_totals[language] = language_totals.get(language, 0) + count
        matrix[(topic, language)] = count
    topics = sorted(topic_totals, key=lambda t: (-topic_totals[t], t))[:12]
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
                    link("/dashboard/signals", filters.narrowed(topic=topic, language=language)),
                )
                for language in languages
            ],
        )
        for topic in topics
    ]
    satisfaction_chart = charts.bar_chart(
        [
            charts.Bar(humanise(row["topic"]), row["mean_score"] or 0)
            for row in satisfaction
            if row["mean_score"] is not None
        ],
        label="Mean satisfaction score (1 to 5) per topic",
        maximum=5,
        colour=palette[2],
    )
    total = sum(totals.values()) if totals else 0
    passive = sum(v for _, v in per_mode.get("passive", []))
    open_cases = sum(d["open"] for d in departments)
    judged = sum(d["sla_judged"] for d in departments)
    met = sum(d["sla_met"] for d in departments)
    feedback = sum(d["feedback"] for d in departments)
    kpis = [
        ("Signals", f"{total:,.0f}".replace(",", " ")),
        ("Passive (phone, chat)", f"{passive / total:.0%}" if total else "n/a"),
        ("Open cases", str(open_cases)),
        ("SLA met", f"{met / judged:.0%}" if judged else "n/a"),
        ("Feedback answers", str(feedback)),
    ]
    active_filters = [
        (name, value, link("/dashboard", filters.narrowed(**{name: None}), interval=interval))
        for name, value in filters.dimension_values().items()
    ]
    return _render(
        request,
        "dashboard.html",
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
        signals_link=link("/dashboard/signals", filters),
    )


@router.get("/dashboard/signals", response_class=HTMLResponse)
async def signal_list(
    request: Request, viewer: Viewer, filters: FilterParams, cursor: str | None = None
) -> HTMLResponse:
    ctx = context(request)
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
    return _render(
        request,
        "signals.html",
        tenant=viewer.tenant,
        tenant_name=_tenant_name(request, viewer.tenant),
        filters=filters,
        items=items,
        next_link=link("/dashboard/signals", filters, cursor=next_cursor) if next_cursor else None,
        back_link=link("/dashboard", filters),
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


# -- transparency --------------------------------------------------------------------------------


async def _transparency(
    request: Request, tenant: str
) -> tuple[list[service.TransparencyRow], date, date, str]:
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
    return rows, start, end, found.name


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
    },
}
"""The public page's words. It is in Dutch unless ``?lang=en`` asks for English: residents of a
Dutch municipality read it (the staff dashboard stays in English, as the rest of the staff tools)."""


@router.get("/transparency/{tenant}", response_class=HTMLResponse)
async def transparency(request: Request, tenant: str, lang: str | None = None) -> HTMLResponse:
    rows, start, end, name = await _transparency(request, tenant)
    language = language_of(lang)
    words = PUBLIC_WORDS[language]

    def topic_name(topic: str) -> str:
        return words["other_topics"] if topic == "other topics" else humanise(topic)

    def days(value: float) -> str:
        figure = f"{value:.1f}"
        return words["days"].format(days=figure.replace(".", ",") if language == "nl" else figure)

    shown = [row for row in rows if row.reported is not None]
    chart = charts.bar_chart(
        [charts.Bar(topic_name(row.topic), row.reported or 0) for row in shown],
        label=words["chart"],
        width=560,
    )
    response = _render(
        request,
        "transparency.html",
        tenant=tenant,
        tenant_name=name,
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
    return RedirectResponse(f"/dashboard/login?{urlencode({'next': next_url})}", status_code=303)
