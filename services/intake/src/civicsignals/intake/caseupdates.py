"""Updates intake passes on to routing, which owns the case: a partner's or back office's Open311
update (``open311/forward.py``), and a resident's own action from the tracking page (``flows``).

Contract with routing: ``POST {routing_url}/v1/cases/{case_id}/updates`` with JSON
``{status, public_note, internal_note, update_id}`` (and ``on_behalf_of_resident`` for a
resident's action), authorised with intake's own service key for the tenant (a key holding
``cases:write``, and ``cases:read`` for the access document's case notes: ``casenotes``), read from ``<service_keys_dir>/<tenant>``. Intake checks the caller first, so
routing sees only updates intake has vouched for; routing's lifecycle has the final say on the
move itself. ``update_id`` makes a retry of the same update one update at routing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseUpdate:
    case_id: str
    status: str
    public_note: str | None
    update_id: str
    on_behalf_of_resident: bool = False


class NoServiceKey(RuntimeError):
    """Intake has no key for routing for this tenant: the operator must create one."""


class RoutingUnavailable(RuntimeError):
    """Routing did not answer; the update may be sent again (the same ``update_id``)."""


class RoutingRefused(RuntimeError):
    """Routing answered with an error: ``status`` is its HTTP status, ``detail`` its reason."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"routing refused the update ({status}): {detail}")
        self.status = status
        self.detail = detail


def stored_service_key(keys_dir: Path, tenant: str) -> str | None:
    """Intake's key for routing for ``tenant`` (``<keys_dir>/<tenant>``), or None when there is none."""
    try:
        return (keys_dir / tenant).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def service_key(keys_dir: Path, tenant: str) -> str:
    """The key, or :class:`NoServiceKey` with an error in the log that says how to make one."""
    path = keys_dir / tenant
    key = stored_service_key(keys_dir, tenant)
    if key is None:
        log.error(
            "no service key for routing at %s; create one with scopes cases:read and cases:write for tenant %s",
            path,
            tenant,
        )
        raise NoServiceKey(tenant)
    return key


async def send(client: httpx.AsyncClient, routing_url: str, key: str, update: CaseUpdate) -> None:
    """Send the update to routing; raise :class:`RoutingUnavailable` or :class:`RoutingRefused`."""
    url = f"{routing_url.rstrip('/')}/v1/cases/{update.case_id}/updates"
    body: dict[str, Any] = {
        "status": update.status,
        "public_note": update.public_note,
        "internal_note": None,
        "update_id": update.update_id,
    }
    if update.on_behalf_of_resident:
        body["on_behalf_of_resident"] = True
    try:
        response = await client.post(url, json=body, headers={"Authorization": f"Bearer {key}"})
    except httpx.HTTPError as exc:
        log.warning("routing unreachable for a case update (%s)", type(exc).__name__)
        raise RoutingUnavailable(type(exc).__name__) from None
    if response.is_success:
        return
    if response.status_code in (401, 403):
        log.error("routing refused intake's service key (%s)", response.status_code)
    raise RoutingRefused(response.status_code, _detail(response))


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or f"HTTP {response.status_code}")
    return f"HTTP {response.status_code}"
