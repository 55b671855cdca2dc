"""A partner's or back office's Open311 update, passed on to routing, which owns the case.

Contract with routing: ``POST {routing_url}/v1/cases/{case_id}/updates`` with JSON
``{status, public_note, internal_note, update_id}``, authorised with intake's own service key for
the tenant (a key holding ``cases:write``), read from ``<service_keys_dir>/<tenant>``. Intake
checks the caller first (a key with ``cases:write``, or ``partner:<code>`` of a partner the case
was forwarded to), so routing sees only updates intake has vouched for. The update id is made
unique per calling key (``open311:<key id>:<update_id>``), so a client retrying the same update
is one update at routing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import httpx

from civicsignals.intake.open311.service import Open311Error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseUpdate:
    case_id: str
    status: str
    public_note: str | None
    update_id: str


def service_key(keys_dir: Path, tenant: str) -> str:
    path = keys_dir / tenant
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        key = ""
    if not key:
        log.error(
            "open311: no service key for routing at %s; create one with scope cases:write for tenant %s",
            path,
            tenant,
        )
        raise Open311Error(400, "intake cannot pass updates on to routing yet (no service key configured)")
    return key


async def forward(client: httpx.AsyncClient, routing_url: str, key: str, update: CaseUpdate) -> None:
    """Send the update to routing; map its answer to the Open311 error codes (400/404)."""
    url = f"{routing_url.rstrip('/')}/v1/cases/{update.case_id}/updates"
    body = {
        "status": update.status,
        "public_note": update.public_note,
        "internal_note": None,
        "update_id": update.update_id,
    }
    try:
        response = await client.post(url, json=body, headers={"Authorization": f"Bearer {key}"})
    except httpx.HTTPError as exc:
        log.warning("open311: routing unreachable for an update (%s)", type(exc).__name__)
        raise Open311Error(400, "the case service is unreachable; retry the update later") from None
    if response.is_success:
        return
    if response.status_code == 404:
        raise Open311Error(404, "service_request_id has no case")
    if response.status_code in (401, 403):
        log.error("open311: routing refused intake's service key (%s)", response.status_code)
        raise Open311Error(400, "the case service refused intake's credentials; the operator must fix this")
    detail = _detail(response)
    raise Open311Error(400, f"the case service refused the update: {detail}")


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or f"HTTP {response.status_code}")
    return f"HTTP {response.status_code}"
