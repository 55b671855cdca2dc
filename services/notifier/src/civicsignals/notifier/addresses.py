"""The guard against server-side request forgery for webhook endpoints.

A partner registers a URL and notifier POSTs to it from inside the municipality's network. A URL
whose host resolves to loopback, a private range, link-local (cloud metadata services live there),
multicast or another reserved address is refused, unless ``allow_private_endpoints`` is set (the
embedded run and the tests, whose receivers listen on 127.0.0.1). The check runs when an endpoint
is registered or changed and again before every attempt, since DNS answers change.

What this does not stop: a name that resolves to a public address for the check and a private one
a moment later (DNS rebinding inside the same second). Production should also deny egress to
private ranges at the network level; this guard is the application's share.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from urllib.parse import urlsplit


class UnsafeEndpoint(ValueError):
    """The URL may not be called; the message says why (and names no resolved address)."""


def check_url_shape(url: str) -> tuple[str, int]:
    """``http``/``https`` with a host, no user info; returns (host, port)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeEndpoint("the URL must be http or https")
    if not parts.hostname:
        raise UnsafeEndpoint("the URL has no host")
    if parts.username or parts.password:
        raise UnsafeEndpoint("the URL must not carry user name or password")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise UnsafeEndpoint("the URL has an invalid port") from exc
    return parts.hostname, port


def is_public(address: str) -> bool:
    """False for every address an outside partner can have no business on."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


async def resolve(host: str, port: int) -> list[str]:
    with contextlib.suppress(ValueError):
        return [str(ipaddress.ip_address(host))]  # a literal address needs no lookup
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnsafeEndpoint("the host does not resolve") from exc
    return sorted({str(info[4][0]) for info in infos})


async def check_endpoint(url: str, *, allow_private: bool) -> None:
    """Raise :class:`UnsafeEndpoint` unless every address the URL's host resolves to may be called."""
    host, port = check_url_shape(url)
    addresses = await resolve(host, port)
    if not addresses:
        raise UnsafeEndpoint("the host does not resolve")
    if allow_private:
        return
    if not all(is_public(address) for address in addresses):
        raise UnsafeEndpoint(
            "the host resolves to a loopback, private, link-local or reserved address, which is not allowed"
        )
