"""One rate limit per API key across every replica of a service (DESIGN §5, §8).

Each replica keeps its own token buckets (:class:`~civicsignals.common.ratelimit.TokenBucketLimiter`)
and decides every request alone, at no cost beyond a dictionary update. A :class:`LimitExchange`
tells the other replicas, a few times a second, how many tokens it granted per key, and debits
what they granted from its own buckets. Every bucket then refills at the key's rate and is drained
by the key's requests wherever they landed, so it stands for the key's one bucket: a portal gets
its limit, not its limit times the number of replicas. Sharing lags by at most one interval, and
replicas that grant at the same moment can together overshoot by what they grant in that interval
(each at most its burst), after which the key waits on every replica until it is paid back.

Why not a shared store (PostgreSQL, a NATS key-value bucket): it would put a round trip on every
request's path; this puts one small message per replica and interval on the bus. If NATS is away,
each replica limits alone, as before, and the counts of that time are dropped, never queued.

The messages go over core NATS on ``civicsignals.ratelimit.<service>.<limit>``, outside ``civic.>``
and ``dlq.>``, so no stream stores them and no department user may read them. They carry API key
ids only (``key:<id>``, a service account's, never a person's): a person signed in with the
municipality's OpenID Connect provider (``person:<subject>``) and a client address are personal
data and stay in the replica that saw them. A message that is not what this module writes is
ignored with a warning that names no key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from civicsignals.common.bus import Bus
from civicsignals.common.ids import new_id
from civicsignals.common.ratelimit import TokenBucketLimiter

log = logging.getLogger(__name__)

SUBJECT_PREFIX = "civicsignals.ratelimit"

SHAREABLE_KEY = re.compile(r"key:[A-Za-z0-9_-]{1,64}")
"""What may travel: an API key's id as ``Principal.actor`` names it, nothing else."""

MAX_KEYS_PER_MESSAGE = 2_000
"""Keeps a message far below NATS's default 1 MB payload limit (a key's entry is under 80 bytes)."""


def is_shareable(key: str) -> bool:
    """Whether a limiter key may go on the bus: an API key's id, not a person or an address."""
    return SHAREABLE_KEY.fullmatch(key) is not None


def encode(replica: str, taken: dict[str, int]) -> bytes:
    return json.dumps({"replica": replica, "taken": taken}, separators=(",", ":")).encode()


def decode(payload: bytes) -> tuple[str, dict[str, int]]:
    """The replica and its grants of a message; ``ValueError`` for anything else (another
    writer's message, a cut one), so the caller can skip it."""
    data: Any = json.loads(payload)
    if not isinstance(data, dict) or not isinstance(data.get("replica"), str):
        raise ValueError("not a rate-limit message")
    taken = data.get("taken")
    if not isinstance(taken, dict):
        raise ValueError("not a rate-limit message")
    grants: dict[str, int] = {}
    for key, count in taken.items():
        if not is_shareable(key) or not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError("a grant that this module does not write")
        grants[key] = count
    return data["replica"], grants


class LimitExchange:
    """Shares one limiter's grants with the same limiter in the service's other replicas."""

    def __init__(
        self,
        limiter: TokenBucketLimiter,
        bus: Bus,
        *,
        limit: str,
        interval_s: float = 0.25,
        shareable: Callable[[str], bool] = is_shareable,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("the exchange needs a positive interval")
        self.limiter = limiter
        self.bus = bus
        self.subject = f"{SUBJECT_PREFIX}.{bus.service}.{limit}"
        self.interval_s = interval_s
        self.shareable = shareable
        self.replica = new_id()  # this process, so that it skips its own messages
        limiter.share_taken = True

    async def run(self) -> None:
        """Listen to the other replicas and tell them this one's grants, until cancelled (a
        background job of the service's runtime, started once the bus is up)."""
        subscription = await self.bus.nc.subscribe(self.subject, cb=self._received)
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                await self.publish_once()
        finally:
            try:
                await subscription.unsubscribe()
            except Exception:  # closing down, or NATS already gone: nothing left to undo
                log.debug("rate-limit exchange: unsubscribe failed", exc_info=True)

    async def publish_once(self) -> int:
        """Tell the other replicas what this one granted since the last time; how many keys."""
        taken = {key: count for key, count in self.limiter.drain_taken().items() if self.shareable(key)}
        if not taken or not self.bus.connected:
            return 0  # away from NATS: each replica limits alone meanwhile, as without sharing
        keys = list(taken)
        for start in range(0, len(keys), MAX_KEYS_PER_MESSAGE):
            part = {key: taken[key] for key in keys[start : start + MAX_KEYS_PER_MESSAGE]}
            await self.bus.nc.publish(self.subject, encode(self.replica, part))
        return len(keys)

    async def _received(self, message: Any) -> None:
        try:
            replica, grants = decode(message.data)
        except ValueError:  # json's errors are ValueErrors too
            log.warning("rate-limit exchange: skipped a message on %s that it did not write", self.subject)
            return
        if replica == self.replica:
            return
        for key, count in grants.items():
            self.limiter.taken_elsewhere(key, count)
