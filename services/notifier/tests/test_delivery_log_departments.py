"""A key bound to departments reads the delivery log of the cases its departments hold now.

Notifier keeps, per signal, the departments that hold its case and the case sequence they are of:
``signal.routed`` names them at sequence 1, ``case.departments_changed`` after every move. A key
bound to departments (``cases:read``, and ``rules:admin`` too) sees the deliveries of those signals
only; a department the case left sees them no more, and a signal it does not hold lists nothing,
as an unknown one. On the real notifier over its real database and NATS; the deliveries are the
acknowledgements notifier schedules itself for ``signal.received`` (intake does not answer, so an
acknowledgement that ``signal.routed`` released stays in the log after its first attempt, waiting
ten minutes for the next; one never released waits as long for routing).
"""

from __future__ import annotations

from typing import Any

import httpx
from sqlmodel import col, select

from civicsignals.common.events import (
    CaseDepartmentsChanged,
    CloudEvent,
    EventData,
    SignalRouted,
    make_event,
)
from civicsignals.common.inbox import ProcessedEvent
from civicsignals.common.tenants import add_key
from civicsignals.devstack.ports import free_port
from civicsignals.notifier import flows, service, views
from civicsignals.notifier.models import Delivery, SignalLink

from .conftest import signal_received

TENANT = "gouda"
DEPARTMENTS = ["stadsbeheer", "handhaving", "afval-en-reiniging"]


def routed(signal_id: str, responsible: str, informed: list[str] | None = None) -> SignalRouted:
    return SignalRouted(
        signal_id=signal_id,
        case_id=f"case-{signal_id}",
        tracking_code="7KQ2-M9XD-4HTC",
        responsible=responsible,
        informed=informed or [],
        priority="normal",
        rule_id="afval",
    )


def moved(
    signal_id: str,
    sequence: int,
    responsible: str,
    informed: list[str] | None = None,
    left: list[str] | None = None,
) -> CaseDepartmentsChanged:
    return CaseDepartmentsChanged(
        case_id=f"case-{signal_id}",
        signal_id=signal_id,
        sequence=sequence,
        responsible=responsible,
        informed=informed or [],
        left=left or [],
        change="assignment",
    )


async def start(notifier_factory: Any, make_tenant: Any) -> tuple[Any, Any]:
    """A tenant with three departments and a notifier whose intake does not answer (a closed port):
    its acknowledgements stay in the log, unchanged once tried (see :func:`acknowledgements`)."""
    gouda = make_tenant(TENANT, scopes=["rules:admin"], departments=DEPARTMENTS)
    notifier = await notifier_factory(
        gouda,
        intake_url=f"http://127.0.0.1:{free_port()}",
        acknowledgement_wait_s=600.0,
        retry_schedule_s=[600.0],
    )
    return gouda, notifier


async def holders(notifier: Any, signal_id: str) -> tuple[list[str] | None, int] | None:
    """The departments notifier knows to hold the signal's case, and their sequence (None: no link)."""
    async with notifier.runtime.sessions() as session:
        link = await session.get(SignalLink, signal_id)
    return (link.holders, link.holders_sequence) if link is not None else None


async def processed(notifier: Any, consumer: str, event: CloudEvent) -> bool:
    async with notifier.runtime.sessions() as session:
        found = await session.exec(
            select(ProcessedEvent).where(
                ProcessedEvent.consumer == consumer, ProcessedEvent.event_id == event.id
            )
        )
        return found.first() is not None


async def applied(notifier: Any, wait_until: Any, consumer: str, data: EventData) -> CloudEvent:
    """Publish ``data`` as routing would and wait until ``consumer`` has committed it."""
    event = await notifier.publish(TENANT, data)
    await wait_until(
        lambda: processed(notifier, consumer, event), timeout=20, message=f"{consumer} to apply {event.id}"
    )
    return event


async def acknowledgements(notifier: Any, wait_until: Any, *signal_ids: str) -> dict[str, str]:
    """Wait until each signal has its acknowledgement in the log, and one that routing released
    has had its attempt (so no reader sees it change); their delivery ids by signal."""

    async def _all() -> dict[str, str] | None:
        rows = {row["signal_id"]: row for row in await notifier.deliveries(channel="email")}
        settled = all(
            row["status"] != "sending" and (row["case_id"] is None or row["attempts"] >= 1)
            for row in rows.values()
        )
        return (
            {sid: row["id"] for sid, row in rows.items()}
            if set(signal_ids) <= set(rows) and settled
            else None
        )

    found: dict[str, str] = await wait_until(_all, timeout=20, message="the acknowledgements")
    return found


class Reader:
    """One key's view of the log over HTTP."""

    def __init__(self, client: httpx.AsyncClient, key: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {key}"}

    async def page(self, **params: str | int) -> dict[str, Any]:
        response = await self.client.get("/v1/deliveries", params=params, headers=self.headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def signals(self, **params: str | int) -> list[str]:
        """The signal ids of the deliveries listed (one acknowledgement a signal here)."""
        return [row["signal_id"] for row in (await self.page(limit=200, **params))["items"]]

    async def get(self, path: str) -> httpx.Response:
        return await self.client.get(path, headers=self.headers)

    async def post(self, path: str) -> httpx.Response:
        return await self.client.post(path, headers=self.headers)


def department_key(gouda: Any, scopes: list[str], *departments: str) -> str:
    _, key = add_key(gouda.folder, scopes, departments=list(departments), description="a department")
    return key


async def test_department_staff_list_the_deliveries_of_the_cases_their_departments_hold(
    notifier_factory: Any, make_tenant: Any, wait_until: Any
) -> None:
    gouda, notifier = await start(notifier_factory, make_tenant)
    for signal_id in ("s-anna", "s-bea", "s-cas", "s-old"):
        await notifier.publish(TENANT, signal_received(signal_id))
    await applied(
        notifier, wait_until, flows.ROUTED_CONSUMER, routed("s-anna", "stadsbeheer", ["handhaving"])
    )
    await applied(notifier, wait_until, flows.ROUTED_CONSUMER, routed("s-bea", "afval-en-reiniging"))
    await applied(notifier, wait_until, flows.ROUTED_CONSUMER, routed("s-cas", "stadsbeheer"))
    ids = await acknowledgements(notifier, wait_until, "s-anna", "s-bea", "s-cas", "s-old")
    assert await holders(notifier, "s-anna") == (["stadsbeheer", "handhaving"], 1)
    assert await holders(notifier, "s-old") == (None, 0)  # received, never routed: no holders known

    transport = httpx.ASGITransport(app=notifier.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://notifier") as client:
        stadsbeheer = Reader(client, department_key(gouda, ["cases:read"], "stadsbeheer"))
        handhaving = Reader(client, department_key(gouda, ["cases:read"], "handhaving"))
        afval = Reader(client, department_key(gouda, ["cases:read"], "afval-en-reiniging"))
        two = Reader(client, department_key(gouda, ["cases:read"], "handhaving", "afval-en-reiniging"))
        admin_of_stadsbeheer = Reader(client, department_key(gouda, ["rules:admin"], "stadsbeheer"))
        unbound_admin = Reader(client, gouda.key)

        # without ?signal=: their departments' cases (responsible or informed), newest first
        assert await stadsbeheer.signals() == ["s-cas", "s-anna"]
        assert await handhaving.signals() == ["s-anna"]
        assert await afval.signals() == ["s-bea"]
        assert await two.signals() == ["s-bea", "s-anna"]
        # paged, and the filters work as for everyone
        first = await stadsbeheer.page(limit=1)
        assert [row["signal_id"] for row in first["items"]] == ["s-cas"] and first["next_cursor"]
        second = await stadsbeheer.page(limit=1, cursor=first["next_cursor"])
        assert [row["signal_id"] for row in second["items"]] == ["s-anna"]
        assert await stadsbeheer.signals(channel="email") == ["s-cas", "s-anna"]
        assert await stadsbeheer.signals(channel="webhook") == []
        # with ?signal=: theirs as an admin sees it; another department's, or one whose
        # departments notifier never learnt, an empty page (not a 403: nothing tells it exists)
        own = await stadsbeheer.page(signal="s-anna")
        assert own["items"] == await notifier.deliveries(signal="s-anna")
        for foreign in ("s-bea", "s-old", "s-nobody"):
            assert await stadsbeheer.page(signal=foreign) == {"items": [], "next_cursor": None}

        # rules:admin bound to a department: its department's too, and one delivery of another's
        # answers like a missing one (read and retry)
        assert await admin_of_stadsbeheer.signals() == ["s-cas", "s-anna"]
        assert await admin_of_stadsbeheer.signals(signal="s-bea") == []
        mine = await admin_of_stadsbeheer.get(f"/v1/deliveries/{ids['s-anna']}")
        assert mine.status_code == 200 and mine.json()["signal_id"] == "s-anna"
        for foreign in ("s-bea", "s-old"):
            for response in (
                await admin_of_stadsbeheer.get(f"/v1/deliveries/{ids[foreign]}"),
                await admin_of_stadsbeheer.post(f"/v1/deliveries/{ids[foreign]}/retry"),
            ):
                assert response.status_code == 404, response.text
                assert response.json()["type"].endswith("/unknown-delivery")
        # cases:read still does not open one delivery's detail, bound or not
        assert (await stadsbeheer.get(f"/v1/deliveries/{ids['s-anna']}")).status_code == 403

        # a key bound to no department reads all of it, as before
        assert await unbound_admin.signals() == ["s-old", "s-cas", "s-bea", "s-anna"]
        assert (await unbound_admin.get(f"/v1/deliveries/{ids['s-old']}")).status_code == 200


async def test_a_move_takes_the_log_from_the_department_the_case_left_and_an_older_one_changes_nothing(
    notifier_factory: Any, make_tenant: Any, wait_until: Any
) -> None:
    gouda, notifier = await start(notifier_factory, make_tenant)
    await notifier.publish(TENANT, signal_received("s-anna"))
    await applied(notifier, wait_until, flows.ROUTED_CONSUMER, routed("s-anna", "stadsbeheer"))
    ids = await acknowledgements(notifier, wait_until, "s-anna")
    transport = httpx.ASGITransport(app=notifier.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://notifier") as client:
        stadsbeheer = Reader(client, department_key(gouda, ["cases:read"], "stadsbeheer"))
        handhaving = Reader(client, department_key(gouda, ["cases:read"], "handhaving"))
        afval = Reader(client, department_key(gouda, ["cases:read"], "afval-en-reiniging"))
        admin_of_stadsbeheer = Reader(client, department_key(gouda, ["rules:admin"], "stadsbeheer"))
        assert await stadsbeheer.signals() == ["s-anna"] and await handhaving.signals() == []

        # reassigned to handhaving (sequence 3): stadsbeheer no longer sees the case's mail
        await applied(
            notifier,
            wait_until,
            flows.DEPARTMENTS_CONSUMER,
            moved("s-anna", 3, "handhaving", left=["stadsbeheer"]),
        )
        assert await holders(notifier, "s-anna") == (["handhaving"], 3)
        assert await stadsbeheer.signals() == [] and await stadsbeheer.signals(signal="s-anna") == []
        assert await handhaving.signals() == ["s-anna"]
        assert await handhaving.signals(signal="s-anna") == ["s-anna"]
        left_behind = await admin_of_stadsbeheer.get(f"/v1/deliveries/{ids['s-anna']}")
        assert left_behind.status_code == 404, left_behind.text

        # an older move (sequence 2) that arrives late, and signal.routed again: nothing changes
        await applied(
            notifier,
            wait_until,
            flows.DEPARTMENTS_CONSUMER,
            moved("s-anna", 2, "afval-en-reiniging", ["stadsbeheer"], left=["handhaving"]),
        )
        await applied(notifier, wait_until, flows.ROUTED_CONSUMER, routed("s-anna", "stadsbeheer"))
        assert await holders(notifier, "s-anna") == (["handhaving"], 3)
        assert await stadsbeheer.signals() == [] and await afval.signals() == []
        assert await handhaving.signals() == ["s-anna"]

        # escalated (sequence 4): afval is informed too, handhaving keeps it
        await applied(
            notifier,
            wait_until,
            flows.DEPARTMENTS_CONSUMER,
            moved("s-anna", 4, "handhaving", ["afval-en-reiniging"]),
        )
        assert await afval.signals() == ["s-anna"] and await handhaving.signals() == ["s-anna"]


async def test_a_move_of_a_signal_notifier_does_not_know_yet_is_kept(
    notifier_factory: Any, make_tenant: Any, wait_until: Any
) -> None:
    """Routing's events and intake's come on separate consumers, in any order: a move applied
    first creates the signal's link, and the case's signal.routed (sequence 1) after it keeps it."""
    gouda, notifier = await start(notifier_factory, make_tenant)
    await applied(
        notifier,
        wait_until,
        flows.DEPARTMENTS_CONSUMER,
        moved("s-late", 2, "handhaving", left=["stadsbeheer"]),
    )
    assert await holders(notifier, "s-late") == (["handhaving"], 2)
    await notifier.publish(TENANT, signal_received("s-late"))
    await applied(notifier, wait_until, flows.ROUTED_CONSUMER, routed("s-late", "stadsbeheer"))
    await acknowledgements(notifier, wait_until, "s-late")
    assert await holders(notifier, "s-late") == (["handhaving"], 2)
    transport = httpx.ASGITransport(app=notifier.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://notifier") as client:
        assert await Reader(client, department_key(gouda, ["cases:read"], "handhaving")).signals() == [
            "s-late"
        ]
        assert await Reader(client, department_key(gouda, ["cases:read"], "stadsbeheer")).signals() == []


async def test_a_routing_applied_from_a_stale_read_does_not_undo_a_move_committed_meanwhile(
    notifier_factory: Any, make_tenant: Any
) -> None:
    """``signal.routed`` and the moves travel on two consumers, whose transactions may overlap:
    one that read the link before the other committed a move must not write its older holders
    over the move (the database compares the sequences, not the read)."""
    _, notifier = await start(notifier_factory, make_tenant)
    ctx = notifier.app.state.notifier
    sessions = notifier.runtime.sessions
    received = make_event(tenant=TENANT, service="intake", data=signal_received("s-race"))
    first = make_event(tenant=TENANT, service="routing", data=routed("s-race", "stadsbeheer"))
    move = make_event(
        tenant=TENANT, service="routing", data=moved("s-race", 2, "handhaving", left=["stadsbeheer"])
    )
    async with sessions() as session, session.begin():
        await flows.prepare(ctx, session, [received])
        await flows.apply_signal_received(ctx, session, received)
        await flows.settle_holders(session)

    async with sessions() as stale, stale.begin():
        await flows.prepare(ctx, stale, [first])  # reads the link: no holders yet
        await flows.apply_signal_routed(ctx, stale, first)
        async with sessions() as mover, mover.begin():
            await flows.prepare(ctx, mover, [move])
            await flows.apply_case_departments_changed(ctx, mover, move)
            await flows.settle_holders(mover)
        await flows.settle_holders(stale)

    assert await holders(notifier, "s-race") == (["handhaving"], 2)
    async with sessions() as session:  # the rest of signal.routed was written all the same
        link = await session.get(SignalLink, "s-race")
        assert link is not None and link.case_id == "case-s-race" and link.partners == []
        rows = await session.exec(select(Delivery).where(col(Delivery.signal_id) == "s-race"))
        assert [row.case_id for row in rows.all()] == ["case-s-race"]


def test_who_reads_which_part_of_the_log() -> None:
    """The rule in plain functions: bound keys are limited to their departments (admin aside),
    an unbound cases:read key must name a signal, and unknown holders are held by nobody."""
    from civicsignals.common.auth import Principal

    def principal(*scopes: str, departments: tuple[str, ...] = ()) -> Principal:
        return Principal(
            tenant=TENANT, key_id="k", scopes=frozenset(scopes), departments=frozenset(departments)
        )

    bound_reader = principal("cases:read", departments=("stadsbeheer",))
    bound_admin = principal("rules:admin", departments=("stadsbeheer",))
    assert views.log_limited_to(bound_reader) == {"stadsbeheer"} == views.log_limited_to(bound_admin)
    assert views.log_limited_to(principal("admin", departments=("stadsbeheer",))) == frozenset()
    assert views.log_limited_to(principal("rules:admin")) == frozenset()
    assert views.refusal_of_log_reader(bound_reader, None) is None
    assert views.refusal_of_log_reader(principal("cases:read"), None) == views.SIGNAL_REQUIRED_REFUSAL
    assert views.refusal_of_log_reader(principal("cases:read"), "s-1") is None

    assert service.held_by_any(["stadsbeheer", "handhaving"], frozenset({"handhaving"}))
    assert not service.held_by_any(["stadsbeheer"], frozenset({"handhaving"}))
    assert not service.held_by_any(None, frozenset({"handhaving"}))
    assert not service.held_by_any([], frozenset({"handhaving"}))

    assert flows.newer_holders(0, "stadsbeheer", ["handhaving", "stadsbeheer"], 1) == [
        "stadsbeheer",
        "handhaving",
    ]
    assert flows.newer_holders(3, "afval", [], 2) is None
    assert flows.newer_holders(3, "afval", [], 3) is None  # a repeat of the same sequence
