"""The case life cycle as one explicit transition table (framework-free).

A case moves ``received → triage → assigned → in_progress → waiting_on_resident / forwarded →
resolved → closed``, can be ``reopened``, and can end as ``rejected``, ``duplicate`` or
``cancelled``. The table says, for every allowed move, which roles may make it. Everything that is
not in the table is illegal, and the error lists what is allowed from where the case stands, so a
department's system can show its user the right buttons.

Roles (the actor recorded in the history is always a role, never a person's name):

``system``       routing itself (opening a case, closing resolved cases, escalation)
``triage``       the tenant's triage department, or a coordinator key without a department
``responsible``  the department responsible for the case, or a coordinator key
``partner``      a partner organisation the case was forwarded to
``resident``     the reporter, through intake (reopening, cancelling, answering a question)
``admin``        a key with the ``admin`` scope: every move in the table
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from civicsignals.common.events import CASE_STATUSES

ROLES: tuple[str, ...] = ("system", "triage", "responsible", "partner", "resident", "admin")

SYSTEM = frozenset({"system"})
TRIAGE = frozenset({"triage"})
STAFF = frozenset({"responsible"})
STAFF_OR_TRIAGE = frozenset({"responsible", "triage"})

# from status -> {to status: roles that may make the move}
TRANSITIONS: dict[str, dict[str, frozenset[str]]] = {
    "received": {
        "triage": SYSTEM,
        "assigned": SYSTEM,
        "forwarded": SYSTEM,  # a rule that names a partner
        "cancelled": frozenset({"system", "resident"}),
    },
    "triage": {
        "assigned": frozenset({"triage", "system"}),
        "rejected": TRIAGE,
        "duplicate": TRIAGE,
        "cancelled": frozenset({"triage", "resident"}),
    },
    "assigned": {
        "in_progress": STAFF,
        "waiting_on_resident": STAFF,
        "forwarded": STAFF,
        "resolved": STAFF,
        "triage": STAFF,  # "not ours": back to the triage department
        "rejected": STAFF,
        "duplicate": STAFF_OR_TRIAGE,
        "cancelled": frozenset({"responsible", "resident"}),
    },
    "in_progress": {
        "waiting_on_resident": STAFF,
        "forwarded": STAFF,
        "resolved": STAFF,
        "rejected": STAFF,
        "duplicate": STAFF,
        "cancelled": frozenset({"responsible", "resident"}),
    },
    "waiting_on_resident": {
        "in_progress": frozenset({"responsible", "resident"}),
        "resolved": STAFF,
        "cancelled": frozenset({"responsible", "resident"}),
    },
    "forwarded": {
        "in_progress": frozenset({"responsible", "partner"}),
        "assigned": frozenset({"responsible", "partner"}),  # the partner hands it back
        "resolved": frozenset({"responsible", "partner"}),
        "cancelled": frozenset({"responsible", "resident"}),
    },
    "resolved": {
        "closed": frozenset({"system", "responsible"}),
        "reopened": frozenset({"responsible", "triage", "resident"}),
    },
    "closed": {
        "reopened": frozenset({"responsible", "triage", "resident"}),
    },
    "reopened": {
        "assigned": STAFF_OR_TRIAGE,
        "in_progress": STAFF,
        "triage": STAFF,
        "resolved": STAFF,
        "forwarded": STAFF,
    },
    "rejected": {
        "reopened": STAFF_OR_TRIAGE,
    },
    "duplicate": {
        "reopened": STAFF_OR_TRIAGE,
    },
    "cancelled": {},
}

# Where a reassignment to another department may start; it ends in ``assigned``, or in ``forwarded``
# when the rule that chooses the new department names partners (as a new case would start).
REASSIGNABLE: frozenset[str] = frozenset(
    {"triage", "assigned", "in_progress", "waiting_on_resident", "forwarded", "reopened"}
)
REASSIGN_ROLES: frozenset[str] = STAFF_OR_TRIAGE

# Statuses in which the SLA clock runs (waiting on the resident pauses it).
SLA_RUNNING: frozenset[str] = frozenset({"triage", "assigned", "in_progress", "forwarded", "reopened"})
# Statuses that end a case (nothing happens any more unless it is reopened).
FINAL: frozenset[str] = frozenset({"resolved", "closed", "rejected", "duplicate", "cancelled"})

assert set(TRANSITIONS) == set(CASE_STATUSES), "every status needs a row in the table"
assert all(set(row) <= set(CASE_STATUSES) for row in TRANSITIONS.values())


@dataclass(frozen=True)
class IllegalTransition(Exception):
    """A move the table does not allow (for these roles); ``allowed`` is what they may do instead."""

    current: str
    target: str
    allowed: tuple[str, ...]
    reason: str

    def __str__(self) -> str:
        return self.reason


def may(current: str, target: str, roles: Iterable[str]) -> bool:
    """Whether any of ``roles`` may move a case from ``current`` to ``target``."""
    granted = TRANSITIONS.get(current, {}).get(target)
    if granted is None:
        return False
    roles = set(roles)
    return "admin" in roles or bool(granted & roles)


def allowed_targets(current: str, roles: Iterable[str]) -> tuple[str, ...]:
    """Every status these roles may move the case to from ``current``, in the table's order."""
    roles = set(roles)
    return tuple(target for target in TRANSITIONS.get(current, {}) if may(current, target, roles))


def check(current: str, target: str, roles: Iterable[str]) -> None:
    """Raise :class:`IllegalTransition` unless ``roles`` may make the move."""
    roles = set(roles)
    if may(current, target, roles):
        return
    allowed = allowed_targets(current, roles)
    if target not in TRANSITIONS.get(current, {}):
        reason = f"a case cannot go from {current} to {target}"
    else:
        needed = ", ".join(sorted(TRANSITIONS[current][target]))
        reason = f"from {current} to {target} may only be done by: {needed}"
    raise IllegalTransition(current, target, allowed, reason)


def check_reassign(current: str, roles: Iterable[str]) -> None:
    roles = set(roles)
    if current in REASSIGNABLE and ("admin" in roles or roles & REASSIGN_ROLES):
        return
    raise IllegalTransition(
        current,
        "assigned",
        allowed_targets(current, roles),
        f"a case in {current} cannot be reassigned by {', '.join(sorted(roles)) or 'nobody'}",
    )
