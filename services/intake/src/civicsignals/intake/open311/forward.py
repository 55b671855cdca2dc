"""A partner's or back office's Open311 update, passed on to routing, which owns the case
(``caseupdates``), with routing's answers told as Open311 errors.

Intake checks the caller first (a key with ``cases:write``, or ``partner:<code>`` of a partner
the case was forwarded to). The update id is made unique per calling key
(``open311:<key id>:<update_id>``), so a client retrying the same update is one update at routing.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from civicsignals.intake import caseupdates
from civicsignals.intake.caseupdates import CaseUpdate
from civicsignals.intake.open311.service import Open311Error

__all__ = ["CaseUpdate", "forward", "service_key"]


def service_key(keys_dir: Path, tenant: str) -> str:
    try:
        return caseupdates.service_key(keys_dir, tenant)
    except caseupdates.NoServiceKey:
        raise Open311Error(
            400, "intake cannot pass updates on to routing yet (no service key configured)"
        ) from None


async def forward(client: httpx.AsyncClient, routing_url: str, key: str, update: CaseUpdate) -> None:
    """Send the update to routing; map its answer to the Open311 error codes (400/404)."""
    try:
        await caseupdates.send(client, routing_url, key, update)
    except caseupdates.RoutingUnavailable:
        raise Open311Error(400, "the case service is unreachable; retry the update later") from None
    except caseupdates.RoutingRefused as refused:
        if refused.status == 404:
            raise Open311Error(404, "service_request_id has no case") from None
        if refused.status in (401, 403):
            raise Open311Error(
                400, "the case service refused intake's credentials; the operator must fix this"
            ) from None
        raise Open311Error(400, f"the case service refused the update: {refused.detail}") from None
