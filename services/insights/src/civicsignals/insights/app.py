"""Insights' application: the read model's consumers, the dashboard, the API and the public page."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from sqlmodel import SQLModel

from civicsignals.common.app import create_service_app
from civicsignals.common.audit import mount_audit
from civicsignals.common.runtime import ServiceRuntime
from civicsignals.insights import flows, models  # noqa: F401  (models registers the tables)
from civicsignals.insights.pages import login_redirect
from civicsignals.insights.pages import router as pages_router
from civicsignals.insights.settings import InsightsSettings
from civicsignals.insights.views import router as api_router
from civicsignals.insights.web_auth import LoginRequired, load_secret

STATIC = Path(__file__).parent / "static"


def create_app(settings: InsightsSettings | None = None) -> FastAPI:
    settings = settings or InsightsSettings()
    runtime = ServiceRuntime(settings, metadata=SQLModel.metadata)
    ctx = flows.InsightsContext.build(runtime, settings)
    for consumer in flows.consumers(ctx):
        runtime.add_background(consumer.run)

    async def emerging_issue_check() -> None:
        await flows.detection_loop(ctx)

    runtime.add_background(emerging_issue_check)
    app = create_service_app(
        runtime,
        title="Civic Signals — insights",
        description="Trends by topic across every channel, emerging issues, exports, the staff dashboard "
        "and the public 'you said, we did' page, built from the events of every service.",
        routers=[api_router, pages_router],
        on_shutdown=ctx.quiesce,
    )
    app.state.insights = ctx
    app.state.insights_secret = load_secret(settings.session_secret, settings.data_dir)
    app.mount("/static/insights", StaticFiles(directory=STATIC), name="insights-static")

    @app.exception_handler(LoginRequired)
    async def _login_required(_request: Request, exc: LoginRequired) -> Response:
        return login_redirect(exc.next_url)

    mount_audit(app)
    return app
