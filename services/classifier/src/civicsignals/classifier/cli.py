"""``civicsignals-classifier``: run the service."""

from __future__ import annotations

from civicsignals.common.app import build_cli, serve


def main(argv: list[str] | None = None) -> None:
    parser, _commands = build_cli("civicsignals-classifier", __doc__)
    args = parser.parse_args(argv)
    if args.command == "serve":
        from civicsignals.classifier.app import create_app
        from civicsignals.classifier.settings import ClassifierSettings

        settings = ClassifierSettings()
        serve(lambda: create_app(settings), settings.host, settings.port, settings.log_level)
