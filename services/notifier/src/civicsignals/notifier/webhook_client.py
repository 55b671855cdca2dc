"""The HTTP client that POSTs webhooks to partners, on aiohttp.

Why not httpx, used elsewhere: profiled under the pipeline benchmark, httpx spent about 2.6 ms of
CPU per POST at 64 concurrent requests (its pool checks every idle connection's socket on each
request), aiohttp about 0.2 ms on the same machine and receiver; webhooks were a fifth of notifier's
CPU. What a webhook needs of the client is small: no redirects followed (DESIGN §6), no proxy
from the environment, one time-out for the whole attempt, and the status and ``Retry-After``.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

MAX_BODY_READ = 64 * 1024
"""Of a receiver's answer only the status and headers count; at most this much of its body is read
(so the connection can be reused), and a longer body just closes the connection."""


class WebhookTimeout(Exception):
    """The receiver did not answer within the time-out."""


class WebhookUnreachable(Exception):
    """No HTTP answer: refused, reset, DNS, TLS; the message names the kind, no addresses."""


@dataclass(frozen=True)
class WebhookAnswer:
    status_code: int
    retry_after: str | None


class WebhookClient:
    """One aiohttp session for every webhook, opened on first use (it needs the running loop)."""

    def __init__(self, *, max_connections: int) -> None:
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0),
                trust_env=False,  # no proxy from the environment between us and a partner
                auto_decompress=False,
                skip_auto_headers=("Accept-Encoding",),
            )
        return self._session

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], *, timeout_s: float
    ) -> WebhookAnswer:
        """POST ``body``; the answer whatever its status, or one of the two exceptions above."""
        try:
            async with self._open().post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response:
                await response.content.read(MAX_BODY_READ)
                return WebhookAnswer(response.status, response.headers.get("Retry-After"))
        except TimeoutError as exc:  # aiohttp's time-outs are TimeoutError too
            raise WebhookTimeout() from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise WebhookUnreachable(type(exc).__name__) from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
