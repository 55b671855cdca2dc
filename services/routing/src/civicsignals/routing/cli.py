"""``civicsignals-routing``: run the service, or generate the NATS accounts for department feeds."""

from __future__ import annotations

from pathlib import Path

from civicsignals.common.app import build_cli, run_database_command, serve


def main(argv: list[str] | None = None) -> None:
    parser, commands = build_cli("civicsignals-routing", __doc__)
    nats_config = commands.add_parser(
        "nats-config",
        help="write a nats-server config with an account per tenant and a user per department",
    )
    nats_config.add_argument("--tenants-dir", type=Path, required=True, help="the tenant folders")
    nats_config.add_argument("--out", type=Path, required=True, help="the nats-server config to write")
    nats_config.add_argument(
        "--credentials",
        type=Path,
        default=None,
        help="where the passwords go (mode 0600; existing ones are kept); default <out>.credentials.json",
    )
    args = parser.parse_args(argv)
    from civicsignals.routing.settings import RoutingSettings

    if args.command in ("migrate", "makemigration") and run_database_command(args, RoutingSettings()):
        return
    if args.command == "serve":
        from civicsignals.routing.app import create_app
        from civicsignals.routing.settings import RoutingSettings

        settings = RoutingSettings()
        serve(lambda: create_app(settings), settings.host, settings.port, settings.log_level)
    elif args.command == "nats-config":
        from civicsignals.routing.natsconfig import generate

        users = generate(args.tenants_dir, args.out, args.credentials)
        tenants = len({user.tenant for user in users})
        print(f"wrote {args.out}: {tenants} account(s), {len(users)} user(s)")
