"""Notifier's plain functions: contacts from intake, partners and their secrets, the log.

Nothing here knows HTTP routes or the bus; ``flows`` and ``views`` call these.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from sqlalchemy import String, cast, or_
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import SelectOfScalar

from civicsignals.common.bus import PermanentError, TransientError
from civicsignals.common.tasks import cancel_and_wait
from civicsignals.notifier.models import (
    Attempt,
    Delivery,
    Endpoint,
    EndpointPublic,
    EndpointUpdate,
    Partner,
    SecretInfo,
    SignalLink,
)
from civicsignals.notifier.secretbox import SecretBox

log = logging.getLogger(__name__)


# --- residents' contacts and mail ----------------------------------------------------------------


@dataclass(frozen=True)
class Contact:
    name: str | None
    email: str | None
    consent: bool
    language: str | None


#: The most signals one look-up names (intake refuses more).
LOOKUP_LIMIT = 100


class IntakeContacts:
    """Reads contacts through intake's internal endpoints; the address is used, never stored.

    The dispatcher starts the mails it claimed together, and each asks for its resident's contact.
    The reads asked for in one turn of the event loop go to intake as one look-up per tenant
    (``POST /v1/contacts/lookup``, up to ``LOOKUP_LIMIT`` signals), not one request each: under
    bench/pipeline's load the contact reads were about a sixth of intake's work, most of it the
    cost of a request, not of the read. Nothing waits for more reads to come: the look-up goes
    out as soon as the reads that were started together have asked. An intake without the
    look-up (404 or 405 during an upgrade) is asked one signal at a time, as before.

    On aiohttp, like the webhooks (``webhook_client``): httpx cost several times the CPU per
    request here. The session opens on first use, in the running loop.
    """

    def __init__(self, base_url: str, keys_dir: Path, *, timeout_s: float, max_connections: int = 16) -> None:
        self.base_url = base_url.rstrip("/")
        self.keys_dir = keys_dir
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._keys: dict[str, tuple[int, str]] = {}
        # tenant -> signal id -> the reads waiting for it, until the next look-up goes out
        self._asked: dict[str, dict[str, list[asyncio.Future[Contact | None]]]] = {}
        self._lookups: set[asyncio.Task[None]] = set()

    def _key(self, tenant: str) -> str:
        """The tenant's key file, read again only when it changed (a rotation replaces the file)."""
        path = self.keys_dir / tenant
        try:
            changed = path.stat().st_mtime_ns
            cached = self._keys.get(tenant)
            if cached is None or cached[0] != changed:
                cached = self._keys[tenant] = (changed, path.read_text(encoding="utf-8").strip())
            return cached[1]
        except FileNotFoundError:
            raise PermanentError(f"no intake service key for tenant {tenant!r} in {self.keys_dir}") from None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                timeout=self.timeout,
                trust_env=False,
            )
        return self._session

    async def fetch(self, tenant: str, signal_id: str) -> Contact | None:
        """The contact of a signal, or None when intake keeps none (erased, or never given).
        Raises :class:`TransientError` when intake cannot answer now, :class:`PermanentError`
        when it refuses notifier's key."""
        loop = asyncio.get_running_loop()
        read: asyncio.Future[Contact | None] = loop.create_future()
        if not self._asked:
            loop.call_soon(self._send_asked)
        self._asked.setdefault(tenant, {}).setdefault(signal_id, []).append(read)
        return await read

    def _send_asked(self) -> None:
        """Send what was asked for since the last call: one look-up per tenant and ``LOOKUP_LIMIT``."""
        asked, self._asked = self._asked, {}
        for tenant, reads in asked.items():
            ids = list(reads)
            for start in range(0, len(ids), LOOKUP_LIMIT):
                part = {signal_id: reads[signal_id] for signal_id in ids[start : start + LOOKUP_LIMIT]}
                task = asyncio.create_task(self._answer(tenant, part), name="notifier-contact-lookup")
                self._lookups.add(task)
                task.add_done_callback(self._lookups.discard)

    async def _answer(self, tenant: str, reads: dict[str, list[asyncio.Future[Contact | None]]]) -> None:
        """Look the signals up and hand each waiting read its answer. When the look-up fails,
        each read raises its error; when it is cancelled (notifier stopping), each is cancelled.
        A read whose mail was cancelled meanwhile is done already and left as it is."""
        pending = [(signal_id, read) for signal_id, waiting in reads.items() for read in waiting]
        try:
            contacts = await self._lookup(tenant, list(reads))
        except asyncio.CancelledError:
            for _, read in pending:
                read.cancel()
            raise
        except Exception as exc:
            for _, read in pending:
                if not read.done():
                    read.set_exception(exc)
            return
        for signal_id, read in pending:
            if not read.done():
                read.set_result(contacts.get(signal_id))

    async def _lookup(self, tenant: str, signal_ids: list[str]) -> dict[str, Contact]:
        """The contacts intake keeps for ``signal_ids``, by signal id."""
        status, body = await self._request(tenant, "POST", "/v1/contacts/lookup", {"signal_ids": signal_ids})
        if status in (404, 405):  # an intake from before the look-up
            found = await asyncio.gather(*(self._fetch_one(tenant, signal_id) for signal_id in signal_ids))
            return {
                signal_id: contact for signal_id, contact in zip(signal_ids, found, strict=True) if contact
            }
        self._check(tenant, status)
        contacts = body.get("contacts") if isinstance(body, dict) else None
        if not isinstance(contacts, list) or not all(isinstance(item, dict) for item in contacts):
            raise TransientError(f"intake answered {status} without a list of contacts")
        return {str(item.get("signal_id")): _contact(item) for item in contacts}

    async def _fetch_one(self, tenant: str, signal_id: str) -> Contact | None:
        """One signal's contact through ``GET /v1/signals/{signal_id}/contact``."""
        status, body = await self._request(tenant, "GET", f"/v1/signals/{signal_id}/contact")
        if status == 404:
            return None
        self._check(tenant, status)
        if not isinstance(body, dict):
            raise TransientError(f"intake answered {status}")
        return _contact(body)

    async def _request(
        self, tenant: str, method: str, path: str, json: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        """One request to intake with the tenant's key: the status, and the JSON body of a 200.
        An intake that cannot be reached (or answers no JSON) is a :class:`TransientError`."""
        headers = {"Authorization": f"Bearer {self._key(tenant)}"}
        try:
            async with self._open().request(
                method, f"{self.base_url}{path}", json=json, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                return status, await response.json(content_type=None) if status == 200 else None
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise TransientError(f"intake unreachable: {type(exc).__name__}") from exc

    @staticmethod
    def _check(tenant: str, status: int) -> None:
        if status in (401, 403):
            raise PermanentError(f"intake refused notifier's key for tenant {tenant!r}: {status}")
        if status != 200:
            raise TransientError(f"intake answered {status}")

    async def close(self) -> None:
        await cancel_and_wait(list(self._lookups), timeout_s=5.0, what="contact look-ups")
        if self._session is not None:
            await self._session.close()
            self._session = None


def _contact(body: dict[str, Any]) -> Contact:
    return Contact(
        name=body.get("name"),
        email=body.get("email"),
        consent=bool(body.get("consent")),
        language=body.get("language"),
    )


# --- partners ------------------------------------------------------------------------------------


def partner_catalogue(tenant_folder: Path | None) -> dict[str, dict[str, Any]] | None:
    """The partners a tenant's folder defines (``partners.yaml``), by code; None without that file.

    Routing names partners by these codes in ``signal.routed``; a partner registered here under
    another code would never receive anything, so registration checks against this list.
    """
    if tenant_folder is None:
        return None
    path = tenant_folder / "partners.yaml"
    if not path.is_file():
        return None
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        log.warning(
            "partners.yaml of %s is not valid YAML; partner codes are not checked", tenant_folder.name
        )
        return None
    entries = raw.get("partners", []) if isinstance(raw, dict) else raw
    catalogue: dict[str, dict[str, Any]] = {}
    if isinstance(entries, dict):
        entries = [{"code": code, **(value or {})} for code, value in entries.items()]
    for entry in entries or []:
        if isinstance(entry, str):
            catalogue[entry] = {"code": entry}
        elif isinstance(entry, dict) and "code" in entry:
            catalogue[str(entry["code"])] = dict(entry)
    return catalogue


async def find_partner(session: AsyncSession, tenant: str, id_or_code: str) -> Partner | None:
    """A partner of this tenant by id or by code; another tenant's partner is not found."""
    query = select(Partner).where(
        Partner.tenant == tenant, (col(Partner.id) == id_or_code) | (col(Partner.code) == id_or_code)
    )
    return (await session.exec(query)).first()


async def enabled_endpoints(
    session: AsyncSession, tenant: str, codes: list[str]
) -> list[tuple[Partner, Endpoint]]:
    """The enabled endpoints of the named partners of a tenant, in one query."""
    if not codes:
        return []
    query = (
        select(Partner, Endpoint)
        .join(Endpoint, col(Endpoint.partner_id) == col(Partner.id))
        .where(Partner.tenant == tenant, col(Partner.code).in_(codes), col(Endpoint.enabled).is_(True))
        .order_by(col(Endpoint.id))
    )
    return [(partner, endpoint) for partner, endpoint in (await session.exec(query)).all()]


async def endpoints_of(session: AsyncSession, partner_id: str) -> list[Endpoint]:
    query = select(Endpoint).where(Endpoint.partner_id == partner_id).order_by(col(Endpoint.id))
    return list((await session.exec(query)).all())


def secret_entry(box: SecretBox, endpoint_id: str, secret: str, now: datetime) -> dict[str, Any]:
    return {"sealed": box.seal(secret, endpoint_id), "created_at": now.isoformat(), "expires_at": None}


def _expires(entry: dict[str, Any]) -> datetime | None:
    value = entry.get("expires_at")
    return datetime.fromisoformat(value) if value else None


def _valid(entry: dict[str, Any], now: datetime) -> bool:
    expires = _expires(entry)
    return expires is None or expires > now


def secrets_in_force(endpoint: Endpoint, box: SecretBox, now: datetime) -> list[str]:
    """Every secret that signs now: the current one and, during a rotation, the previous one."""
    return [box.open(entry["sealed"], endpoint.id) for entry in endpoint.secrets if _valid(entry, now)]


def rotate_secret(
    endpoint: Endpoint, box: SecretBox, new_secret: str, overlap: timedelta, now: datetime
) -> datetime | None:
    """Make ``new_secret`` current; the previous one stays valid for ``overlap``. Older ones go.

    Returns until when the previous secret is valid (None when there was none, or overlap is 0).
    """
    previous = [entry for entry in endpoint.secrets if _valid(entry, now)]
    kept: list[dict[str, Any]] = []
    valid_until: datetime | None = None
    if previous and overlap > timedelta(0):
        valid_until = now + overlap
        kept.append({**previous[0], "expires_at": valid_until.isoformat()})
    endpoint.secrets = [secret_entry(box, endpoint.id, new_secret, now), *kept]
    endpoint.updated_at = now
    return valid_until


def change_endpoint(endpoint: Endpoint, change: EndpointUpdate, now: datetime) -> None:
    """Apply a partner admin's change: the URL, the event types, and enabling (which forgets why
    it was disabled) or disabling (``by_request``)."""
    if change.url is not None:
        endpoint.url = change.url
    if change.event_types is not None:
        endpoint.event_types = change.event_types
    if change.enabled is not None:
        if change.enabled and not endpoint.enabled:
            endpoint.disabled_reason, endpoint.disabled_at, endpoint.failing_since = None, None, None
        endpoint.enabled = change.enabled
        if not change.enabled:
            endpoint.disabled_reason, endpoint.disabled_at = "by_request", now
    endpoint.updated_at = now


def endpoint_public(endpoint: Endpoint, now: datetime) -> EndpointPublic:
    return EndpointPublic(
        id=endpoint.id,
        partner_id=endpoint.partner_id,
        url=endpoint.url,
        event_types=list(endpoint.event_types),
        enabled=endpoint.enabled,
        disabled_reason=endpoint.disabled_reason,
        disabled_at=endpoint.disabled_at,
        failing_since=endpoint.failing_since,
        last_success_at=endpoint.last_success_at,
        secrets=[
            SecretInfo(created_at=datetime.fromisoformat(entry["created_at"]), expires_at=_expires(entry))
            for entry in endpoint.secrets
            if _valid(entry, now)
        ],
        created_at=endpoint.created_at,
        updated_at=endpoint.updated_at,
    )


# --- the delivery log ----------------------------------------------------------------------------


async def list_deliveries(
    session: AsyncSession,
    tenant: str,
    *,
    partner: str | None,
    status: str | None,
    signal: str | None,
    channel: str | None,
    cursor: str | None,
    limit: int,
    held_by: frozenset[str] = frozenset(),
) -> tuple[list[Delivery], str | None]:
    """Deliveries of one tenant, newest first; ``partner`` matches the partner's code or id.

    With ``held_by`` (the departments a caller is bound to), only those of signals whose case one
    of them holds now: a department's staff see the mails and webhooks of the cases they handle,
    not those of a case that left them, nor a delivery about no signal (a partner's contact's)."""
    query = select(Delivery).where(Delivery.tenant == tenant)
    if held_by:
        query = query.where(col(Delivery.signal_id).in_(signals_held_by(tenant, held_by)))
    if partner:
        query = query.where((col(Delivery.partner_code) == partner) | (col(Delivery.partner_id) == partner))
    if status:
        query = query.where(Delivery.status == status)
    if signal:
        query = query.where(Delivery.signal_id == signal)
    if channel:
        query = query.where(Delivery.channel == channel)
    if cursor:
        query = query.where(col(Delivery.id) < cursor)
    rows = list((await session.exec(query.order_by(col(Delivery.id).desc()).limit(limit + 1))).all())
    next_cursor = rows[limit - 1].id if len(rows) > limit else None
    return rows[:limit], next_cursor


def signals_held_by(tenant: str, departments: frozenset[str]) -> SelectOfScalar[str]:
    """The ids of the tenant's signals whose case one of ``departments`` holds now (a subquery).

    ``holders`` is a JSON list of department codes; a code is found as its quoted JSON string in
    the list's text, as routing finds a case's informed departments (department codes are
    ``[a-z0-9-]``, and the LIKE pattern is escaped all the same). A signal whose holders are not
    known (NULL: routed before notifier kept them) is held by none."""
    holders_text = cast(col(SignalLink.holders), String)
    return select(col(SignalLink.signal_id)).where(
        SignalLink.tenant == tenant,
        or_(*(holders_text.contains(f'"{code}"', autoescape=True) for code in sorted(departments))),
    )


def held_by_any(holders: list[str] | None, departments: frozenset[str]) -> bool:
    """Whether one of ``departments`` holds a case whose holders are ``holders`` (None: not known,
    so none does)."""
    return holders is not None and not departments.isdisjoint(holders)


async def attempts_of(session: AsyncSession, delivery_id: str) -> list[Attempt]:
    query = select(Attempt).where(Attempt.delivery_id == delivery_id).order_by(col(Attempt.number))
    return list((await session.exec(query)).all())
