"""``civicsignals-insights``: run the service, rebuild the read model, check for emerging issues."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import date

from sqlmodel import SQLModel

from civicsignals.common.app import build_cli, configure_logging, run_database_command, serve
from civicsignals.common.db import create_schema


def main(argv: list[str] | None = None) -> None:
    parser, commands = build_cli("civicsignals-insights", __doc__)
    commands.add_parser(
        "rebuild",
        help="empty the read model and replay the CIVIC stream from its start (stop the service first)",
    )
    detect = commands.add_parser("detect", help="check completed days for emerging issues now")
    detect.add_argument("--day", type=date.fromisoformat, help="check this day (YYYY-MM-DD) of every tenant")
    args = parser.parse_args(argv)
    from civicsignals.insights.settings import InsightsSettings

    settings = InsightsSettings()
    if args.command in ("migrate", "makemigration") and run_database_command(args, settings):
        return
    if args.command == "serve":
        from civicsignals.insights.app import create_app

        serve(lambda: create_app(settings), settings.host, settings.port, settings.log_level)
        return
    configure_logging(settings.log_level)
    result = asyncio.run(_offline(settings, args.command, getattr(args, "day", None)))
    json.dump(result, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


async def _offline(settings: object, command: str, day: date | None) -> dict[str, object]:
    """Run ``rebuild`` or ``detect`` without the HTTP server and without the live consumers."""
    from civicsignals.common.runtime import ServiceRuntime
    from civicsignals.insights import flows, models  # noqa: F401  (registers the tables)
    from civicsignals.insights.settings import InsightsSettings

    assert isinstance(settings, InsightsSettings)
    runtime = ServiceRuntime(settings, metadata=SQLModel.metadata)
    ctx = flows.InsightsContext.build(runtime, settings)
    await create_schema(runtime.engine, SQLModel.metadata)
    try:
        await runtime.bus.connect(retry_forever=False)
        if command == "rebuild":
            report = await flows.rebuild(ctx)
            return {"rebuilt": True, **report.__dict__}
        if day is not None:
            found = 0
            for tenant in await flows.tenants_with_data(ctx):
                found += len(await flows.detect_day(ctx, tenant, day))
        else:
            found = await flows.detect_completed_days(ctx)
        if runtime.relay is not None:
            await runtime.relay.relay_once()  # publish what was found before the process ends
        return {"emerging": found}
    finally:
        await runtime.stop()
