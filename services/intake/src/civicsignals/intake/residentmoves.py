"""Which of their own moves a resident may make now (framework-free, tested without a server).

Routing's life cycle lets the reporter answer a question, reopen an ended case and withdraw an
open one (``RESIDENT_ACTIONS``). Reopening is limited in time: a problem that comes back months
after it was fixed is a new problem, for a new report (and by then the reporter's contact may
have been deleted by the retention job, so a reopened case could not tell them anything). The
window runs from the moment the case *ended*: routing closing a resolved case later does not
restart it. Staff can reopen a case at any time; only the resident's door is limited.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from civicsignals.intake.models import RESIDENT_ACTIONS, ResidentAction

#: The statuses a resident may reopen from, as one stretch of "the case ended".
REOPENABLE = RESIDENT_ACTIONS["reopen"][1]


def ended_at(history: Sequence[tuple[str, datetime]]) -> datetime | None:
    """When the case last ended: the first entry of the trailing run of reopenable statuses in
    ``history`` ((status, at) in sequence order), or None when the case is not ended now."""
    since: datetime | None = None
    for status, at in reversed(history):
        if status not in REOPENABLE:
            break
        since = at
    return since


def reopen_until(history: Sequence[tuple[str, datetime]], within_days: int | None) -> datetime | None:
    """The last moment the resident may reopen; None when the case is not ended or there is no
    limit (``within_days`` None)."""
    since = ended_at(history)
    if since is None or within_days is None:
        return None
    return since + timedelta(days=within_days)


def offered(
    status: str,
    history: Sequence[tuple[str, datetime]],
    *,
    has_case: bool,
    within_days: int | None,
    now: datetime,
) -> list[ResidentAction]:
    """The moves the resident may make now, in ``RESIDENT_ACTIONS`` order: none before routing
    opened a case, and no reopening once the window has passed."""
    if not has_case:
        return []
    moves: list[ResidentAction] = []
    for action, (_, offered_in) in RESIDENT_ACTIONS.items():
        if status not in offered_in:
            continue
        if action == "reopen":
            until = reopen_until(history, within_days)
            if until is not None and now > until:
                continue
        moves.append(action)
    return moves
