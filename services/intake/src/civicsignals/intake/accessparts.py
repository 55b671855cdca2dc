"""The parts of a person's access document (AVG art. 15) that other services keep, asked for over HTTP.

Routing keeps the internal notes staff wrote on the person's cases (:mod:`casenotes`), notifier
the record of the e-mails it sent about their signals (:mod:`mailrecord`). Intake asks each with
its own service key for the tenant (the file :func:`caseupdates.stored_service_key` reads; the
key needs ``cases:read``), on behalf of the privacy officer whose request it audits.

Both lookups go through here so that they fail alike and say so alike: when a service cannot be
asked (intake has no key, it does not answer, it refuses the key, a 5xx, an answer that is not
what was asked) :class:`PartUnavailable` names the service, the URL and why. The caller then
makes no document (all or nothing: one with some signals' part and not others' would look
complete), unless it was told to leave that part out, which the document then says. Nothing here
logs a person's data or what a service answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode

import httpx

from civicsignals.common.tenants import TenantRegistry, key_id_of
from civicsignals.intake import caseupdates

if TYPE_CHECKING:
    from civicsignals.intake.settings import IntakeSettings

#: The services intake asks, by the name :class:`PartUnavailable` gives them.
ROUTING = "routing"
NOTIFIER = "notifier"

#: How many requests go to one service at once: a person has few signals, no burst is needed.
CONCURRENCY = 8

T = TypeVar("T")


class PartUnavailable(RuntimeError):
    """A service could not be asked for its part of the document; the document would be incomplete.

    ``service`` is :data:`ROUTING` or :data:`NOTIFIER` (so a caller can say which part is
    missing), ``url`` what intake tried (or would have tried, when it has no key), ``reason`` why,
    in words an operator can act on. None of them holds a person's data.
    """

    def __init__(self, service: str, url: str, reason: str) -> None:
        super().__init__(f"{service} at {url}: {reason}")
        self.service = service
        self.url = url
        self.reason = reason


@dataclass(frozen=True)
class OtherService:
    """How intake reaches one other service: its name, the HTTP client, the service's base URL
    and the folder of intake's service keys (one file per tenant)."""

    name: str
    client: httpx.AsyncClient
    base_url: str
    keys_dir: Path
    #: The tenants' key records, to refuse a service key bound to departments before it is used.
    registry: TenantRegistry | None = None

    def url(self, path: str, query: Mapping[str, str | int] | None = None) -> str:
        """The full URL of ``path`` (and its query), as asked and as named in a failure."""
        address = f"{self.base_url.rstrip('/')}{path}"
        return f"{address}?{urlencode(query)}" if query else address

    def unavailable(self, url: str, reason: str) -> PartUnavailable:
        return PartUnavailable(self.name, url, reason)

    def service_key(self, tenant: str) -> str:
        """Intake's key for the tenant, as case updates read it; a missing or empty file is the
        caller's to report (with the scopes the key needs), not a second message in the log."""
        key = caseupdates.stored_service_key(self.keys_dir, tenant)
        if key is None:
            raise self.unavailable(
                self.base_url,
                f"intake has no service key for {self.name} at {self.keys_dir / tenant} "
                "(scopes cases:read and cases:write)",
            )
        self._refuse_if_bound_to_departments(key)
        return key

    def _refuse_if_bound_to_departments(self, key: str) -> None:
        """A key bound to departments sees only their cases: routing answers 404 for another
        department's case, and notifier an empty page for its signal. Both read as "nothing here",
        so the document would look complete while it lacks notes or mails. Such a key is refused
        before it is used. An unknown key is left to the service, which refuses it (401)."""
        key_id = key_id_of(key)
        record = self.registry.find_key(key_id) if self.registry is not None and key_id else None
        if record is not None and record.departments:
            raise self.unavailable(
                self.base_url,
                f"intake's service key {record.key_id} is bound to departments "
                f"({', '.join(record.departments)}): {self.name} would show it only their cases, and "
                "the document would look complete without the rest; use a key bound to no department",
            )

    async def get_json(self, key: str, url: str, *, absent_is_none: bool = False) -> Any:
        """The JSON a ``GET`` of ``url`` answers with intake's key; with ``absent_is_none`` a 404
        is None (the object is gone), otherwise a failure like any other answer but a 2xx."""
        try:
            response = await self.client.get(url, headers={"Authorization": f"Bearer {key}"})
        except httpx.HTTPError as exc:
            raise self.unavailable(url, f"no answer ({type(exc).__name__})") from None
        if response.status_code == 404 and absent_is_none:
            return None
        if response.status_code in (401, 403):
            raise self.unavailable(
                url, f"refused intake's service key (HTTP {response.status_code}); it needs cases:read"
            )
        if not response.is_success:
            raise self.unavailable(url, f"answered HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise self.unavailable(url, "answered something that is not JSON") from None

    async def ask_each(
        self, tenant: str, items: Iterable[str], ask: Callable[[str, str], Awaitable[T]]
    ) -> dict[str, T]:
        """``await ask(key, item)`` for each distinct item, with intake's key for ``tenant``, at
        most :data:`CONCURRENCY` at once; the answers by item. The first failure ends them all
        and is raised (all or nothing). No items: no key is needed and nothing is asked."""
        unique = list(dict.fromkeys(items))
        if not unique:
            return {}
        key = self.service_key(tenant)
        gate = asyncio.Semaphore(CONCURRENCY)

        async def _one(item: str) -> T:
            async with gate:
                return await ask(key, item)

        # A task group, not gather: the first failure cancels the other calls, so none is left
        # running on a client its caller is about to close.
        try:
            async with asyncio.TaskGroup() as group:
                tasks = {item: group.create_task(_one(item)) for item in unique}
        except* PartUnavailable as failed:
            raise failed.exceptions[0] from None
        return {item: task.result() for item, task in tasks.items()}


def routing(client: httpx.AsyncClient, settings: IntakeSettings, registry: TenantRegistry) -> OtherService:
    """Routing, which keeps the cases (``CIVIC_INTAKE_ROUTING_URL``)."""
    return OtherService(ROUTING, client, settings.routing_url, settings.service_keys_dir, registry)


def notifier(client: httpx.AsyncClient, settings: IntakeSettings, registry: TenantRegistry) -> OtherService:
    """Notifier, which keeps the delivery log (``CIVIC_INTAKE_NOTIFIER_URL``)."""
    return OtherService(NOTIFIER, client, settings.notifier_url, settings.service_keys_dir, registry)


def utc_text(value: str) -> str:
    """Another service's time in the document's form (RFC 3339 UTC with ``Z``), whatever zone it
    wrote; a time without a zone is taken as UTC."""
    parsed = datetime.fromisoformat(value)
    aware = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    return aware.isoformat().replace("+00:00", "Z")
