"""Intake's consumers change the same signal row (holders, departments, partners, the responsible
department), each from what it read before it writes. Two that read the row before either
committed must not undo each other's change: the case below would give a resident's photos back
to two departments the case had just left.

PostgreSQL: the consumers read their batch's rows ``FOR UPDATE`` (``service.read_ahead``), so a
second reader waits for the first to commit and reads its change. SQLite (one intake process):
a read takes no lock there, so intake's consumers take turns through one lock
(``ConsumerSpec.exclusive``, shown to serialise in libs/common's transactional consumer tests).
"""

from __future__ import annotations

import asyncio

from civicsignals.common.db import is_sqlite
from civicsignals.common.events import CaseDepartmentsChanged
from civicsignals.common.tenants import add_key
from civicsignals.intake import service
from civicsignals.intake.models import Signal

from .conftest import JPEG, Intake
from .test_following import assigned, routed
from .test_intake_features import _attach

#: Long enough for a reader that is not held back to have read (it takes milliseconds).
READER_HEAD_START_S = 1.0


async def test_a_consumer_that_read_before_a_move_committed_does_not_undo_it(intake: Intake) -> None:
    if is_sqlite(intake.settings.database_url):
        # One process: the five consumers that write signal rows share one lock, and only they.
        turns = {spec.exclusive for spec in intake.runtime.consumer_specs if spec.prepare is not None}
        assert len(turns) == 1 and isinstance(next(iter(turns)), asyncio.Lock)
        assert len([spec for spec in intake.runtime.consumer_specs if spec.exclusive is not None]) == 5
        return
    signal = (await intake.post_signal()).json()
    await _attach(intake, signal["id"], "foto.jpg", JPEG, "image/jpeg")

    # Opened at stadsbeheer with handhaving informed (1); sociaal informed too (2, its feed event
    # comes late); then moved to sociaal alone (3): stadsbeheer and handhaving left.
    async with intake.runtime.sessions() as session, session.begin():
        assert await service.apply_routed(session, routed(signal, informed=["handhaving"]))
    moved = CaseDepartmentsChanged(
        case_id="case-1",
        signal_id=signal["id"],
        sequence=3,
        responsible="sociaal",
        informed=[],
        left=["stadsbeheer", "handhaving"],
        change="assignment",
    )
    order: list[str] = []

    async def late_feed_event() -> None:
        """The consumer of the departments' feeds, with sociaal's ``assigned`` of sequence 2."""
        async with intake.runtime.sessions() as session, session.begin():
            await service.read_ahead(session, {signal["id"]}, status_entries=False)
            order.append("feed consumer read")
            assert await service.apply_department_assigned(
                session, assigned(signal, "sociaal", 2, role="informed")
            )

    async with intake.runtime.sessions() as session, session.begin():
        await service.read_ahead(session, {signal["id"]}, status_entries=False)
        assert await service.apply_departments_changed(session, moved)
        feed = asyncio.create_task(late_feed_event())
        await asyncio.sleep(READER_HEAD_START_S)
        order.append("move committed")
    await asyncio.wait_for(feed, timeout=30)

    assert order == ["move committed", "feed consumer read"]
    async with intake.runtime.sessions() as session:
        stored = await session.get(Signal, signal["id"])
    assert stored is not None
    assert (stored.holders, stored.holders_sequence) == (["sociaal"], 3)
    listing = f"/v1/signals/{signal['id']}/attachments"
    opens = set()
    for code in ("stadsbeheer", "handhaving", "sociaal"):
        _, key = add_key(intake.gouda.folder, ["cases:read"], departments=[code])
        if (await intake.client.get(listing, headers=intake.auth(key))).status_code == 200:
            opens.add(code)
    assert opens == {"sociaal"}
