"""Stopping background tasks so that a shutdown always ends.

Two ways a shutdown can hang on a task that was cancelled:

- the cancel is lost: a database driver interrupted mid-operation may raise an error of its own
  (a connection left in an unknown state) instead of ``CancelledError``, and a loop that catches
  errors to retry them catches that one too and goes on; such loops ask :func:`cancel_requested`;
- the task is stuck in an await that does not end (a lock wait, a socket that never answers).

:func:`cancel_and_wait` bounds the wait and logs the stack of whatever did not stop, so a hang
says where it is instead of holding the process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


def cancel_requested() -> bool:
    """Whether the running task has been cancelled and has not yet finished with it."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[object]], *, timeout_s: float, what: str, grace_s: float = 0.0
) -> bool:
    """Give ``tasks`` (already told to stop) up to ``grace_s`` to end by themselves, cancel those
    still running and wait for them up to ``timeout_s``; True if all ended.

    Those still running then are logged with where they wait and left behind: a shutdown must end."""
    pending = [task for task in tasks if not task.done()]
    if pending and grace_s > 0:
        _, unfinished = await asyncio.wait(pending, timeout=grace_s)
        pending = list(unfinished)
    for task in pending:
        task.cancel()
    if not pending:
        return True
    done, still_running = await asyncio.wait(pending, timeout=timeout_s)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s: task %s ended with %r", what, task.get_name(), task.exception())
    for task in still_running:
        log.error(
            "%s: %s did not stop within %gs; it waits in:\n%s", what, task.get_name(), timeout_s, awaits(task)
        )
    return not still_running


def awaits(task: asyncio.Task[Any]) -> str:
    """Where a suspended task waits: every coroutine down the chain of awaits, innermost last
    (``Task.print_stack`` shows only the outermost frame)."""
    lines = []
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
        if frame is None:
            lines.append(f"  {awaited!r}")
        else:
            lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
    return "\n".join(lines)
