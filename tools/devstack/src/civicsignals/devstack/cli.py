"""``civicsignals-devstack run``: the whole of Civic Signals on one machine (``make run``).

DESIGN §8 "embedded default": no Docker, no cluster. One command starts a real NATS server with
JetStream, a mail catcher, every service as its own process with SQLite, and the local entry point
on http://127.0.0.1:8000, and keeps everything under ``.data/``. Ctrl-C stops all of it, in order:
entry point, services, mail catcher, NATS last so the services can drain their messages.

Which environment variables a service gets is decided in one place, :func:`service_env`, and
which services exist, on which port and behind which path prefixes, in one table,
:data:`SERVICES`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from .ports import LOCALHOST, port_is_free, preferred_port

if TYPE_CHECKING:
    import uvicorn

    from .nats import NatsServer
    from .supervisor import ProcessSupervisor

__all__ = [
    "DATA_SUBDIRS",
    "GATEWAY_PORT",
    "SAMPLE_SIGNAL",
    "SERVICES",
    "DevstackError",
    "ServiceSpec",
    "gateway_routes",
    "load_prepare_dev_tenant",
    "main",
    "prepare_data_dir",
    "run",
    "service_command",
    "service_env",
]


class DevstackError(RuntimeError):
    """Something the developer must fix before the stack can run; printed without a traceback."""


@dataclass(frozen=True)
class ServiceSpec:
    """One service of the dev stack: its name, local port and the path prefixes it serves."""

    name: str
    port: int
    prefixes: tuple[str, ...]

    @property
    def base_url(self) -> str:
        """Where the service listens directly."""
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def readyz_url(self) -> str:
        """Readiness endpoint every service serves (DESIGN §1)."""
        return f"{self.base_url}/readyz"

    @property
    def docs_url(self) -> str:
        """FastAPI's interactive API docs."""
        return f"{self.base_url}/docs"


GATEWAY_PORT = 8000
GATEWAY_URL = f"http://{LOCALHOST}:{GATEWAY_PORT}"
NATS_PREFERRED_PORT = 4333  # not 4222: a system NATS may run there (DESIGN §8)
MAIL_PREFERRED_PORT = 1025
DEV_ISSUER_PREFERRED_PORT = 8009
#: How long ``make run`` waits for each service to be ready. Generous, because the first start
#: on a fresh ``.data`` builds the classifier's cold-start model (92 s measured on a slow
#: 2-core machine, 2026-12-07); a service that exits or fails meanwhile is reported at once, and
#: every 15 s the wait says what the service is doing.
READY_TIMEOUT_S = 600.0
#: The embedded run's OpenID Connect client of the staff pages, and the group its person is in.
DEV_WEB_CLIENT = "civicsignals-dev"
DEV_STAFF_GROUP = "demo-medewerkers"
DEV_STAFF_SCOPES = ["insights:read", "privacy:admin", "cases:read"]
#: Where the staff pages' sign-in comes back (``web_oidc``); under each page's login path.
OIDC_CALLBACK_PATHS = {"insights": "/dashboard/login/oidc/callback", "intake": "/privacy/login/oidc/callback"}
#: Where the provider sends staff back after signing them out (RP-Initiated Logout): the login pages.
OIDC_POST_LOGOUT_PATHS = {"insights": "/dashboard/login", "intake": "/privacy/login"}

SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        "intake",
        8001,
        (
            "/v1/signals",
            "/v1/tracking",
            "/v1/conversations",
            "/v1/privacy",
            "/privacy",
            "/open311",
            "/v1/audit/intake",
        ),
    ),
    ServiceSpec("classifier", 8002, ("/v1/classify", "/v1/models", "/v1/audit/classifier")),
    ServiceSpec("routing", 8003, ("/v1/cases", "/v1/routing", "/v1/audit/routing")),
    ServiceSpec("notifier", 8004, ("/v1/partners", "/v1/deliveries", "/v1/templates", "/v1/audit/notifier")),
    ServiceSpec(
        "insights",
        8005,
        (
            "/v1/trends",
            "/v1/emerging",
            "/v1/exports",
            "/dashboard",
            "/transparency",
            "/static/insights",
            "/v1/audit/insights",
        ),
    ),
)

DATA_SUBDIRS = ("nats", "mail", "logs", "db", "tenants")

SAMPLE_SIGNAL: dict[str, Any] = {
    "text": "Er ligt al drie dagen een berg afval naast de container op de Kerkstraat.",
    "channel": "web",
    "kind": "report",
    "language": "nl",
    "reporter": {"name": "Test Bewoner", "email": "bewoner@example.org", "consent": True},
}


def _service(name: str) -> ServiceSpec:
    for spec in SERVICES:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown service {name!r}; known: {[s.name for s in SERVICES]}")


def service_env(
    name: str,
    *,
    data_dir: Path,
    nats_url: str,
    smtp_port: int,
    smtp_host: str = LOCALHOST,
    public_base_url: str = GATEWAY_URL,
) -> dict[str, str]:
    """The ``CIVIC_<NAME>_*`` settings a service gets in the dev stack.

    The single place that maps the dev stack's layout onto the services' settings, so that
    ``make run`` and the end-to-end tests configure services identically. Paths are absolute
    because each service may run with another working directory.
    """
    spec = _service(name)
    data = Path(data_dir).resolve()
    prefix = f"CIVIC_{name.upper()}_"
    env = {
        f"{prefix}PORT": str(spec.port),
        f"{prefix}DATABASE_URL": f"sqlite+aiosqlite:///{data / 'db' / f'{name}.db'}",
        f"{prefix}NATS_URL": nats_url,
        f"{prefix}TENANTS_DIR": str(data / "tenants"),
        f"{prefix}DATA_DIR": str(data),
    }
    if name == "intake":
        env[f"{prefix}PUBLIC_BASE_URL"] = public_base_url
        # The services intake asks: routing (updates, the access document's case notes) and
        # notifier (the access document's mail record).
        env[f"{prefix}ROUTING_URL"] = _service("routing").base_url
        env[f"{prefix}NOTIFIER_URL"] = _service("notifier").base_url
    if name == "notifier":
        env[f"{prefix}SMTP_HOST"] = smtp_host
        env[f"{prefix}SMTP_PORT"] = str(smtp_port)
        env[f"{prefix}INTAKE_URL"] = _service("intake").base_url
        # DESIGN §8: in the embedded run, partner endpoints on loopback are allowed.
        env[f"{prefix}ALLOW_PRIVATE_ENDPOINTS"] = "true"
    return env


def service_command(name: str) -> list[str]:
    """How a service is started: its package's ``serve`` command, with this interpreter."""
    _service(name)
    return [sys.executable, "-m", f"civicsignals.{name}", "serve"]


def gateway_routes(services: Sequence[ServiceSpec] = SERVICES) -> list[tuple[str, str]]:
    """``(prefix, upstream)`` pairs for the entry point, from the :data:`SERVICES` table."""
    return [(prefix, spec.base_url) for spec in services for prefix in spec.prefixes]


def prepare_data_dir(data_dir: Path) -> dict[str, Path]:
    """Create ``data_dir`` and its sub-folders; return them by name (absolute)."""
    root = Path(data_dir).resolve()
    dirs = {name: root / name for name in DATA_SUBDIRS}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    return dirs


def load_prepare_dev_tenant() -> Callable[[Path, Path], str]:
    """Import ``civicsignals.common.tenants.prepare_dev_tenant`` lazily.

    Lazy so that the rest of the devstack (fixtures, gateway, mail catcher) works without it, and
    so a missing or broken tenants module is reported as one clear sentence.
    """
    try:
        from civicsignals.common.tenants import prepare_dev_tenant
    except ImportError as exc:
        raise DevstackError(
            "cannot prepare the demo tenant: civicsignals.common.tenants.prepare_dev_tenant "
            f"is not available ({exc}). Is libs/common installed and up to date (uv sync)?"
        ) from exc
    func: Callable[[Path, Path], str] = prepare_dev_tenant
    return func


def oidc_redirect_uris(services: Sequence[ServiceSpec] = SERVICES) -> list[str]:
    """The redirect URIs of the staff pages' sign-in: through the entry point, and at each
    service's own port (the entry point passes the upstream's Host, so a page builds its callback
    URL from the port it runs on)."""
    return _at_every_address(OIDC_CALLBACK_PATHS, services)


def oidc_post_logout_uris(services: Sequence[ServiceSpec] = SERVICES) -> list[str]:
    """The staff pages' login pages, through the entry point and at each service's own port:
    where the provider may send the browser back after signing a person out."""
    return _at_every_address(OIDC_POST_LOGOUT_PATHS, services)


def _at_every_address(paths: dict[str, str], services: Sequence[ServiceSpec]) -> list[str]:
    uris = []
    for spec in services:
        path = paths.get(spec.name)
        if path is not None:
            uris += [f"{GATEWAY_URL}{path}", f"{spec.base_url}{path}"]
    return uris


def let_demo_staff_sign_in(tenant_folder: Path, issuer_url: str) -> None:
    """Point the embedded run's copy of the demo tenant at the development identity provider, so
    that "Inloggen via ..." on the dashboard and the privacy desk works as with a municipality's own
    provider. A block the developer put there themselves (another client id) is left alone."""
    import yaml

    from civicsignals.admin.devissuer import set_tenant_oidc

    settings = yaml.safe_load((tenant_folder / "tenant.yaml").read_text(encoding="utf-8")) or {}
    current = settings.get("oidc")
    if current is not None and current.get("web_client_id") != DEV_WEB_CLIENT:
        return
    block = {
        "issuer": issuer_url,
        "audience": "civicsignals",
        "web_client_id": DEV_WEB_CLIENT,
        "group_scopes": {DEV_STAFF_GROUP: DEV_STAFF_SCOPES},
    }
    if current != block:
        set_tenant_oidc(tenant_folder, block)


def _display_path(path: Path) -> str:
    """A path as the developer would type it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def banner(
    *,
    data_dir: Path,
    nats_url: str,
    mail_dir: Path,
    smtp_port: int,
    logs_dir: Path,
    services: Sequence[ServiceSpec] = SERVICES,
    issuer_url: str = "",
) -> str:
    """What the developer needs after startup: where things are, and a signal to post."""
    key_file = shlex.quote(_display_path(data_dir / "dev-api-key"))
    body = shlex.quote(json.dumps(SAMPLE_SIGNAL, ensure_ascii=False))
    lines = [
        "",
        "Civic Signals is running.",
        f"  entry point      {GATEWAY_URL}",
        *(f"  {s.name:<16} {s.docs_url}" for s in services),
        f"  NATS             {nats_url}",
        f"  mail (SMTP)      smtp://{LOCALHOST}:{smtp_port} -> {mail_dir}/ (.eml files)",
        f"  logs             {logs_dir}/",
        "",
        "Post a sample signal:",
        f"  curl -sS -X POST {GATEWAY_URL}/v1/signals \\",
        f'    -H "Authorization: Bearer $(cat {key_file})" \\',
        '    -H "Content-Type: application/json" \\',
        f"    -d {body}",
        "",
        "Track it: open the status_url from the answer in a browser, or",
        f"  curl -sS {GATEWAY_URL}/v1/tracking/<tracking_code>",
        "",
        f"Dashboard: {GATEWAY_URL}/dashboard (sign in with the key in {_display_path(data_dir / 'dev-api-key')})",
        f'Public "you said, we did" page: {GATEWAY_URL}/transparency/demo',
        f"Privacy desk (access and erasure requests): {GATEWAY_URL}/privacy (the same key)",
        *(
            [
                f'Or "Inloggen via ..." on both: a development identity provider ({issuer_url}) signs',
                f"  you in as a member of {DEV_STAFF_GROUP} ({', '.join(DEV_STAFF_SCOPES)}), no password asked.",
            ]
            if issuer_url
            else []
        ),
        "",
        "Press Ctrl-C to stop everything.",
        "",
    ]
    return "\n".join(lines)


def _say(message: str) -> None:
    print(f"devstack: {message}", flush=True)


def _still_waiting_for(name: str) -> Callable[[float, str], None]:
    """What ``make run`` prints while a service is not ready yet: on a fresh ``.data`` the
    classifier first builds its cold-start model, which takes from seconds to a few minutes
    with the machine's speed."""

    reported = ""

    def say(waited_s: float, last_log_line: str) -> None:
        nonlocal reported
        line = last_log_line.strip()[:160]
        doing = f": {line}" if line and line != reported else ""  # each log line once
        reported = line or reported
        _say(f"waiting for {name} ({waited_s:.0f} s){doing}")

    return say


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """Make SIGTERM (and SIGINT, even when inherited as ignored) stop the stack like Ctrl-C."""
    raise KeyboardInterrupt


def run(
    data_dir: Path,
    config_dir: Path,
    *,
    ready_timeout: float = READY_TIMEOUT_S,
    services: Sequence[ServiceSpec] = SERVICES,
) -> int:
    """Start the whole stack, serve the entry point until interrupted, then stop everything."""
    # Imported here so `--help` and the unit-level helpers stay fast and light.
    import uvicorn

    from civicsignals.admin.devissuer import DevIssuer

    from .gateway import create_gateway
    from .mailcatcher import MailCatcher
    from .nats import NatsServer
    from .supervisor import ProcessSupervisor

    config_dir = Path(config_dir).resolve()
    if not config_dir.is_dir():
        raise DevstackError(f"tenant config folder {config_dir} does not exist")
    prepare_dev_tenant = load_prepare_dev_tenant()  # fail before starting anything

    busy = [
        f"{port} ({what})"
        for port, what in [(GATEWAY_PORT, "entry point"), *((s.port, s.name) for s in services)]
        if not port_is_free(port)
    ]
    if busy:
        raise DevstackError(
            f"port(s) already in use: {', '.join(busy)}. Is another dev stack running? Stop it first."
        )

    dirs = prepare_data_dir(data_dir)
    root = Path(data_dir).resolve()
    # Ctrl-C and SIGTERM both mean "stop everything cleanly", even when started with SIGINT
    # ignored (as a shell does for background jobs).
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)

    nats = NatsServer(
        dirs["nats"],
        port=preferred_port(NATS_PREFERRED_PORT),
        server_name="civicsignals-dev",
        log_file=dirs["logs"] / "nats-server.log",
    )
    mail = MailCatcher(dirs["mail"], port=preferred_port(MAIL_PREFERRED_PORT))
    supervisor = ProcessSupervisor(dirs["logs"])
    issuer = DevIssuer(port=preferred_port(DEV_ISSUER_PREFERRED_PORT))
    try:
        _say(f"starting NATS (JetStream, store {dirs['nats']})")
        nats.start()
        (root / "nats-url").write_text(nats.url, encoding="utf-8")
        _say(f"NATS ready at {nats.url}")

        mail.start()
        _say(f"mail catcher on smtp://{LOCALHOST}:{mail.port} -> {dirs['mail']}")

        _say(f"preparing the demo tenant from {config_dir}")
        prepare_dev_tenant(config_dir, root)
        issuer.start()
        issuer.add_web_client(DEV_WEB_CLIENT, oidc_redirect_uris(services), oidc_post_logout_uris(services))
        issuer.sign_in_as("demo-medewerker", groups=[DEV_STAFF_GROUP])
        issuer.sign_in_again_after_logout = True  # no password form to sign in again with
        let_demo_staff_sign_in(dirs["tenants"] / "demo", issuer.issuer)
        _say(f"development identity provider on {issuer.issuer} (signs in demo staff without a password)")

        for spec in services:
            env = service_env(spec.name, data_dir=root, nats_url=nats.url, smtp_port=mail.port)
            env["PYTHONUNBUFFERED"] = "1"  # logs reach the log file as they happen
            supervisor.start(spec.name, service_command(spec.name), env=env, cwd=Path.cwd())
            _say(
                f"started {spec.name} (pid {supervisor.pid(spec.name)}, log {supervisor.log_file(spec.name)})"
            )
        for spec in services:
            supervisor.wait_http_ready(
                spec.name, spec.readyz_url, timeout=ready_timeout, still_waiting=_still_waiting_for(spec.name)
            )
            _say(f"{spec.name} ready on {spec.base_url}")

        app = create_gateway(gateway_routes(services))
        config = uvicorn.Config(
            app,
            host=LOCALHOST,
            port=GATEWAY_PORT,
            log_level="info",
            server_header=False,  # the upstream's Server and Date headers are relayed instead
            date_header=False,
            proxy_headers=False,  # the entry point is the edge: X-Forwarded-For is ours to set
        )
        server = uvicorn.Server(config)
        info = banner(
            data_dir=root,
            nats_url=nats.url,
            mail_dir=dirs["mail"],
            smtp_port=mail.port,
            logs_dir=dirs["logs"],
            services=services,
            issuer_url=issuer.issuer,
        )

        # From here on a signal asks uvicorn to shut down instead of raising: uvicorn handles
        # SIGINT/SIGTERM itself while serving and re-delivers them to these handlers afterwards,
        # where raising would escape from inside its task.
        def _stop_serving(signum: int, frame: FrameType | None) -> None:
            server.should_exit = True

        signal.signal(signal.SIGINT, _stop_serving)
        signal.signal(signal.SIGTERM, _stop_serving)
        asyncio.run(_serve(server, supervisor, nats, info))
        return 0 if server.started else 1
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        # Startup failures (a service that does not get ready, a NATS that does not start) are
        # reported as messages; the exception text already carries the relevant log tail.
        _say(f"error: {exc}")
        return 1
    finally:
        # Nothing may interrupt the shutdown: a second Ctrl-C would leave children behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _say("stopping")
        supervisor.stop_all()
        issuer.stop()
        mail.stop()
        nats.stop()
        _say("stopped")


async def _serve(server: uvicorn.Server, supervisor: ProcessSupervisor, nats: NatsServer, info: str) -> None:
    """Serve the gateway; print the banner once it listens; report children that die."""
    task = asyncio.create_task(server.serve())
    # uvicorn exposes only a flag, no event, for "listening".
    while not server.started and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    if server.started:
        print(info, flush=True)
    reported: set[str] = set()
    nats_reported = False
    while not task.done():
        for name, code in supervisor.exited().items():
            if name not in reported:
                reported.add(name)
                _say(f"WARNING: {name} exited with code {code}; see {supervisor.log_file(name)}")
        if not nats.is_running and not nats_reported:
            nats_reported = True
            _say(f"WARNING: nats-server exited; see {nats.log_file}")
        await asyncio.wait({task}, timeout=1.0)
    await task


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``civicsignals-devstack`` console script."""
    parser = argparse.ArgumentParser(
        prog="civicsignals-devstack",
        description="Run Civic Signals locally: NATS, services, mail, entry point.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="start everything and serve http://127.0.0.1:8000 until Ctrl-C")
    run_p.add_argument("--data-dir", type=Path, default=Path(".data"), help="state folder (default .data)")
    run_p.add_argument(
        "--config-dir",
        type=Path,
        default=Path("config/tenants"),
        help="tenant configs (default config/tenants)",
    )
    run_p.add_argument(
        "--ready-timeout",
        type=float,
        default=READY_TIMEOUT_S,
        help=f"seconds to wait for each service's /readyz (default {READY_TIMEOUT_S:.0f})",
    )
    args = parser.parse_args(argv)
    # Same shape as uvicorn's lines, so the gateway's upstream warnings read like the rest.
    logging.basicConfig(level=logging.INFO, format="%(levelname)-9s %(name)s: %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every SMTP session
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per readiness probe and proxied request

    if args.command == "run":
        try:
            return run(args.data_dir, args.config_dir, ready_timeout=args.ready_timeout)
        except DevstackError as exc:
            _say(f"error: {exc}")
            return 2
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
