"""The transition table, checked for every pair of states and every role."""

from __future__ import annotations

import itertools

import pytest

from civicsignals.common.events import CASE_STATUSES
from civicsignals.routing import lifecycle

PAIRS = list(itertools.product(CASE_STATUSES, CASE_STATUSES))

# The table written out as the issue states it, independent of the module's data structure: if
# one of the two changes without the other, this test says so.
EXPECTED = {
    ("received", "triage"): {"system"},
    ("received", "assigned"): {"system"},
    ("received", "forwarded"): {"system"},
    ("received", "cancelled"): {"system", "resident"},
    ("triage", "assigned"): {"triage", "system"},
    ("triage", "rejected"): {"triage"},
    ("triage", "duplicate"): {"triage"},
    ("triage", "cancelled"): {"triage", "resident"},
    ("assigned", "in_progress"): {"responsible"},
    ("assigned", "waiting_on_resident"): {"responsible"},
    ("assigned", "forwarded"): {"responsible"},
    ("assigned", "resolved"): {"responsible"},
    ("assigned", "triage"): {"responsible"},
    ("assigned", "rejected"): {"responsible"},
    ("assigned", "duplicate"): {"responsible", "triage"},
    ("assigned", "cancelled"): {"responsible", "resident"},
    ("in_progress", "waiting_on_resident"): {"responsible"},
    ("in_progress", "forwarded"): {"responsible"},
    ("in_progress", "resolved"): {"responsible"},
    ("in_progress", "rejected"): {"responsible"},
    ("in_progress", "duplicate"): {"responsible"},
    ("in_progress", "cancelled"): {"responsible", "resident"},
    ("waiting_on_resident", "in_progress"): {"responsible", "resident"},
    ("waiting_on_resident", "resolved"): {"responsible"},
    ("waiting_on_resident", "cancelled"): {"responsible", "resident"},
    ("forwarded", "in_progress"): {"responsible", "partner"},
    ("forwarded", "assigned"): {"responsible", "partner"},
    ("forwarded", "resolved"): {"responsible", "partner"},
    ("forwarded", "cancelled"): {"responsible", "resident"},
    ("resolved", "closed"): {"system", "responsible"},
    ("resolved", "reopened"): {"responsible", "triage", "resident"},
    ("closed", "reopened"): {"responsible", "triage", "resident"},
    ("reopened", "assigned"): {"responsible", "triage"},
    ("reopened", "in_progress"): {"responsible"},
    ("reopened", "triage"): {"responsible"},
    ("reopened", "resolved"): {"responsible"},
    ("reopened", "forwarded"): {"responsible"},
    ("rejected", "reopened"): {"responsible", "triage"},
    ("duplicate", "reopened"): {"responsible", "triage"},
}


@pytest.mark.parametrize(("current", "target"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_every_pair_of_states_for_every_role(current: str, target: str) -> None:
    granted = EXPECTED.get((current, target), set())
    for role in lifecycle.ROLES:
        allowed = role in granted or (role == "admin" and bool(granted))
        assert lifecycle.may(current, target, {role}) is allowed, (current, target, role)
        if allowed:
            lifecycle.check(current, target, {role})
        else:
            with pytest.raises(lifecycle.IllegalTransition) as info:
                lifecycle.check(current, target, {role})
            # The error lists exactly what this role may do from here instead.
            assert set(info.value.allowed) == {
                to
                for (frm, to), roles in EXPECTED.items()
                if frm == current and (role in roles or role == "admin")
            }
            assert target not in info.value.allowed


def test_nothing_leaves_cancelled_and_no_status_moves_to_itself() -> None:
    assert lifecycle.allowed_targets("cancelled", {"admin"}) == ()
    for status in CASE_STATUSES:
        assert not lifecycle.may(status, status, {"admin"})
        assert not lifecycle.may(status, "received", {"admin"})


def test_the_error_says_who_may_when_the_move_exists() -> None:
    with pytest.raises(lifecycle.IllegalTransition) as info:
        lifecycle.check("forwarded", "resolved", {"triage"})
    assert "may only be done by: partner, responsible" in str(info.value)
    with pytest.raises(lifecycle.IllegalTransition) as info:
        lifecycle.check("closed", "in_progress", {"responsible"})
    assert "cannot go from closed to in_progress" in str(info.value)
    assert info.value.allowed == ("reopened",)


def test_reassignment() -> None:
    lifecycle.check_reassign("in_progress", {"responsible"})
    lifecycle.check_reassign("triage", {"triage"})
    for status in ("resolved", "closed", "cancelled", "duplicate", "rejected", "received"):
        with pytest.raises(lifecycle.IllegalTransition):
            lifecycle.check_reassign(status, {"admin"})
    with pytest.raises(lifecycle.IllegalTransition):
        lifecycle.check_reassign("assigned", {"partner"})
