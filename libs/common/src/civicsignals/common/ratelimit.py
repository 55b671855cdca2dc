"""Per-client rate limits (DESIGN §5: 429 with ``Retry-After``): a token bucket per key.

Each key (an API key id, or a client address for public routes) owns a bucket holding up to
``burst`` tokens that refills at ``rate_per_s``; a request takes one token or is refused with the
time until the next token. The buckets live in the process's memory. Alone, each replica behind a
load balancer would give a client the whole limit, N times it in all; a limiter whose grants are
shared (:mod:`civicsignals.common.ratesharing`, for API keys) also debits what the other replicas
granted, so each bucket stands for the client's one bucket across them all.

A limit per client address counts an IPv6 address by its /64 network (:func:`client_key`): one
host, or one home or office line, usually holds a whole /64 and can pick any address in it, so
counting single IPv6 addresses would give it billions of allowances.

Framework-free (the clock is injectable) so the arithmetic is tested without a server.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from civicsignals.common.problems import Problem

ROUNDING_SLACK = 1e-9
"""A token short by no more than this is a whole one: refills summed in steps of floating-point
time can fall a hair short of the token that the wait a client was told promised it (12 s at
5 a minute), and a client that waited exactly that long must get through."""


class TokenBucketLimiter:
    """Token buckets keyed by a string; the least recently used are forgotten past ``max_keys``.

    A forgotten bucket comes back full, which only ever favours the client, so the bound on
    memory never refuses anyone wrongly.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a rate limit needs a positive rate and a burst of at least 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()
        # Set by a ``ratesharing.LimitExchange``: count the tokens this replica grants, per key,
        # until the exchange tells the others (:meth:`drain_taken`).
        self.share_taken = False
        self._taken: dict[str, int] = {}

    def _refilled(self, tokens: float, last: float, now: float) -> float:
        return min(float(self.burst), tokens + (now - last) * self.rate_per_s)

    def acquire(self, key: str) -> float:
        """Take a token for ``key``: 0.0 when allowed, else the seconds until a token is free."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(key, (float(self.burst), now))
            tokens = self._refilled(tokens, last, now)
            if tokens >= 1.0 - ROUNDING_SLACK:
                wait = 0.0
                tokens = max(0.0, tokens - 1.0)
                if self.share_taken:
                    self._taken[key] = self._taken.get(key, 0) + 1
            else:
                wait = (1.0 - tokens) / self.rate_per_s
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        return wait

    def give_back(self, key: str) -> None:
        """Return the token an :meth:`acquire` of ``key`` took, for a use that turned out not to
        count (a sign-in throttle takes a token before it knows whether the attempt fails, so that
        attempts made at the same moment cannot overdraw the bucket, and gives it back on success).

        Never past the burst; a bucket forgotten meanwhile stays forgotten, since it comes back full.
        """
        now = self._clock()
        with self._lock:
            found = self._buckets.get(key)
            if found is not None:
                tokens, last = found
                self._buckets[key] = (min(float(self.burst), self._refilled(tokens, last, now) + 1.0), now)
            if self._taken.get(key, 0) > 1:
                self._taken[key] -= 1
            else:
                self._taken.pop(key, None)

    def tokens(self, key: str) -> float:
        """The tokens ``key`` holds now, without taking one (a full burst for a key not seen):
        what a replica's bucket stands at, for tests and diagnostics."""
        now = self._clock()
        with self._lock:
            found = self._buckets.get(key)
        return float(self.burst) if found is None else self._refilled(found[0], found[1], now)

    def drain_taken(self) -> dict[str, int]:
        """The tokens this replica granted per key since the last drain (only while
        ``share_taken``), to tell the other replicas; the count starts again from nothing."""
        with self._lock:
            taken, self._taken = self._taken, {}
        return taken

    def taken_elsewhere(self, key: str, count: int) -> None:
        """Debit ``count`` tokens that another replica granted for ``key``, so that this bucket,
        refilling at the same rate and drained by every replica's grants, stands for the key's
        one bucket across all replicas. The balance may go below zero (the key then waits here
        too until it is paid back), never below minus one burst: replicas that each granted a
        burst at the same moment cost the key at most one more burst of waiting."""
        if count <= 0:
            return
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(key, (float(self.burst), now))
            tokens = max(-float(self.burst), self._refilled(tokens, last, now) - count)
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)

    def check(self, key: str, *, what: str = "this key") -> None:
        """Take a token or raise a 429 problem with ``Retry-After`` in whole seconds (at least 1)."""
        wait = self.acquire(key)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise Problem(
                429,
                f"too many requests for {what}; retry after {seconds} s",
                slug="rate-limited",
                headers={"Retry-After": str(seconds)},
            )


def client_key(host: str | None) -> str:
    """What a per-address limit counts a client by: an IPv4 address as it is (also when it comes
    IPv4-mapped, ``::ffff:192.0.2.1``), an IPv6 address by its /64 network (``2001:db8:1:2::/64``);
    a host that is no address (a test client's name) as it is, and no host as ``unknown`` (such
    clients share one count)."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def client_address(request: Any) -> str:
    """:func:`client_key` of a request's client (Starlette's ``request.client``, which uvicorn has
    already set to the forwarded address when the connection comes from a trusted proxy)."""
    client = getattr(request, "client", None)
    return client_key(client.host if client is not None else None)
