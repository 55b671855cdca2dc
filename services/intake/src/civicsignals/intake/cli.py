"""``civicsignals-intake``: run the service."""

from __future__ import annotations

from civicsignals.common.app import build_cli, serve


def main(argv: list[str] | None = None) -> None:
    parser, _commands = build_cli("civicsignals-intake", __doc__)
    args = parser.parse_args(argv)
    if args.command == "serve":
        from civicsignals.intake.app import create_app
        from civicsignals.intake.settings import IntakeSettings

        settings = IntakeSettings()
        serve(lambda: create_app(settings), settings.host, settings.port, settings.log_level)
