"""``civicsignals-notifier``: run the service."""

from __future__ import annotations

from civicsignals.common.app import build_cli, run_database_command, serve


def main(argv: list[str] | None = None) -> None:
    parser, _commands = build_cli("civicsignals-notifier", __doc__)
    args = parser.parse_args(argv)
    from civicsignals.notifier.settings import NotifierSettings

    if args.command in ("migrate", "makemigration") and run_database_command(args, NotifierSettings()):
        return
    if args.command == "serve":
        from civicsignals.notifier.app import create_app
        from civicsignals.notifier.settings import NotifierSettings

        settings = NotifierSettings()
        serve(lambda: create_app(settings), settings.host, settings.port, settings.log_level)
