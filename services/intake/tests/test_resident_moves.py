"""The resident's moves and the reopening window, as plain functions (no server, no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from civicsignals.intake.residentmoves import ended_at, offered, reopen_until

DAY = timedelta(days=1)
T0 = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)
RESOLVED_THEN_CLOSED = [
    ("received", T0),
    ("assigned", T0 + timedelta(minutes=1)),
    ("resolved", T0 + 2 * DAY),
    ("closed", T0 + 16 * DAY),  # routing closes resolved cases later: the window does not restart
]


def test_the_window_runs_from_when_the_case_ended_not_from_its_closing() -> None:
    assert ended_at(RESOLVED_THEN_CLOSED) == T0 + 2 * DAY
    assert reopen_until(RESOLVED_THEN_CLOSED, 30) == T0 + 32 * DAY
    assert reopen_until(RESOLVED_THEN_CLOSED, None) is None  # no limit
    # Reopened and resolved again: the new ending starts a new window.
    again = [*RESOLVED_THEN_CLOSED, ("reopened", T0 + 20 * DAY), ("resolved", T0 + 25 * DAY)]
    assert ended_at(again) == T0 + 25 * DAY
    # A case that has not ended has no window.
    assert ended_at(RESOLVED_THEN_CLOSED[:2]) is None
    assert reopen_until(RESOLVED_THEN_CLOSED[:2], 30) is None


def test_reopening_is_offered_until_the_last_moment_of_the_window() -> None:
    def moves(now: datetime, within_days: int | None = 30, has_case: bool = True) -> list[str]:
        return list(
            offered("closed", RESOLVED_THEN_CLOSED, has_case=has_case, within_days=within_days, now=now)
        )

    last = T0 + 32 * DAY
    assert moves(T0 + 3 * DAY) == ["reopen"]
    assert moves(last) == ["reopen"]
    assert moves(last + timedelta(seconds=1)) == []
    assert moves(T0 + 400 * DAY, within_days=None) == ["reopen"]
    assert moves(T0 + 2 * DAY, within_days=0) == ["reopen"]  # 0 days: only at the moment it ended
    assert moves(T0 + 3 * DAY, within_days=0) == []
    assert moves(T0 + 3 * DAY, has_case=False) == []  # before routing opened a case: nothing
    # The other moves have no window.
    waiting = [("received", T0), ("assigned", T0), ("waiting_on_resident", T0 + DAY)]
    late = T0 + 400 * DAY
    assert offered("waiting_on_resident", waiting, has_case=True, within_days=30, now=late) == [
        "reply",
        "withdraw",
    ]
