"""``civicsignals-routing``: run the service."""

from __future__ import annotations

from civicsignals.common.app import build_cli, serve


def main(argv: list[str] | None = None) -> None:
    parser, _commands = build_cli("civicsignals-routing", __doc__)
    args = parser.parse_args(argv)
    if args.command == "serve":
        from civicsignals.routing.app import create_app
        from civicsignals.routing.settings import RoutingSettings

        settings = RoutingSettings()
        serve(lambda: create_app(settings), settings.host, settings.port, settings.log_level)
