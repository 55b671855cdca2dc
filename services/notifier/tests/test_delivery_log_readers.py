"""Who may read the delivery log: ``rules:admin`` all of it, ``cases:read`` one signal at a time
(staff asking "was the resident told?", and intake's service key for a person's access document),
a key bound to departments only the signals whose case its departments hold now (none of a signal
whose departments notifier never learnt; see test_delivery_log_departments.py). On the real
notifier over its real database and NATS; the deliveries are the acknowledgements notifier
schedules itself for ``signal.received``."""

from __future__ import annotations

from typing import Any

import httpx

from civicsignals.common.tenants import add_key

from .conftest import signal_received

TENANT = "gouda"


async def _scheduled_acknowledgements(notifier: Any, wait_until: Any, *signal_ids: str) -> None:
    """Wait until notifier scheduled an acknowledgement for each signal (it waits for routing
    for ``acknowledgement_wait_s``, 30 s here: long enough for the test to read it scheduled)."""

    async def _all() -> bool:
        listed = {row["signal_id"] for row in await notifier.deliveries(channel="email")}
        return set(signal_ids) <= listed

    await wait_until(_all, timeout=20, message="notifier to schedule the acknowledgements")


async def test_a_case_reader_lists_one_signals_deliveries_and_only_with_the_signal_named(
    notifier_factory: Any, make_tenant: Any, wait_until: Any
) -> None:
    gouda = make_tenant(TENANT, scopes=["rules:admin"], departments=["stadsbeheer", "handhaving"])
    notifier = await notifier_factory(gouda)
    for signal_id, code in (("s-anna", "AAAA-BBBB-CCCC"), ("s-bea", "DDDD-EEEE-FFFF")):
        await notifier.publish(TENANT, signal_received(signal_id, code))
    await _scheduled_acknowledgements(notifier, wait_until, "s-anna", "s-bea")
    _, reader = gouda.add_key(["cases:read"], description="a coordinator's tool")
    _, stranger = make_tenant("delft", scopes=["cases:read"]).add_key(["cases:read"])
    transport = httpx.ASGITransport(app=notifier.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://notifier") as client:

        async def listed(key: str, **params: str) -> httpx.Response:
            return await client.get(
                "/v1/deliveries", params=params, headers={"Authorization": f"Bearer {key}"}
            )

        anna = await listed(reader, signal="s-anna")
        by_email = await listed(reader, signal="s-anna", channel="email")
        foreign = await listed(stranger, signal="s-anna")
        without_signal = await listed(reader)
        blank_signal = await listed(reader, signal=" ", channel="email")

    # the same rows an admin sees of that signal, and none of the other signal's
    assert anna.status_code == 200, anna.text
    assert anna.json()["items"] == await notifier.deliveries(signal="s-anna")
    assert [(row["signal_id"], row["template"], row["status"]) for row in anna.json()["items"]] == [
        ("s-anna", "acknowledgement", "scheduled")
    ]
    assert by_email.json() == anna.json()
    assert foreign.status_code == 200 and foreign.json()["items"] == []  # another tenant's: none
    # without the signal: refused, and the answer names the query parameter to give
    for refused in (without_signal, blank_signal):
        assert refused.status_code == 403, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"].endswith("/forbidden")
        assert "signal query parameter" in refused.json()["detail"]
        assert "s-bea" not in refused.text


async def test_keys_without_either_scope_are_refused_and_department_bound_readers_see_no_unrouted_signal(
    notifier_factory: Any, make_tenant: Any, wait_until: Any
) -> None:
    gouda = make_tenant(TENANT, scopes=["rules:admin"], departments=["stadsbeheer"])
    notifier = await notifier_factory(gouda)
    await notifier.publish(TENANT, signal_received("s-anna"))
    await _scheduled_acknowledgements(notifier, wait_until, "s-anna")
    _, portal = gouda.add_key(["signals:write", "contact:read"], description="neither scope")
    _, department = add_key(gouda.folder, ["cases:read"], departments=["stadsbeheer"])
    _, department_admin = add_key(gouda.folder, ["admin"], departments=["stadsbeheer"])
    transport = httpx.ASGITransport(app=notifier.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://notifier") as client:

        async def listed(key: str) -> httpx.Response:
            return await client.get(
                "/v1/deliveries", params={"signal": "s-anna"}, headers={"Authorization": f"Bearer {key}"}
            )

        unscoped, bound, admin = (
            await listed(portal),
            await listed(department),
            await listed(department_admin),
        )

    assert unscoped.status_code == 403, unscoped.text
    assert "'rules:admin', 'cases:read'" in unscoped.json()["detail"]
    # bound to a department: allowed, but notifier has not learnt which departments hold the case
    # (no signal.routed yet), so the signal lists nothing, as one that does not exist
    assert bound.status_code == 200, bound.text
    assert bound.json() == {"items": [], "next_cursor": None}
    # admin sees every department's (DESIGN §3), as at routing
    assert admin.status_code == 200 and len(admin.json()["items"]) == 1
