"""When to try a delivery again, and what a receiver's answer means (framework-free).

The retry schedule is a list of delays: after the first failed attempt the first delay, and so on;
when the list is used up the delivery has failed for good. A receiver's ``429 Too Many Requests``
with ``Retry-After`` sets the next attempt itself (capped), since the receiver knows best when it
can take more; ``410 Gone`` says the endpoint is gone for good; a redirect is not followed (the
signed message is for the URL the partner registered, nowhere else) and counts as a failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum


class Outcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    THROTTLED = "throttled"
    GONE = "gone"
    FAILED = "failed"


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    next_attempt_at: datetime | None
    reason: str


def retry_delay(schedule: list[float], attempts: int) -> float | None:
    """Seconds to wait after attempt number ``attempts`` (1-based) failed; None when none is left."""
    if attempts < 1 or attempts > len(schedule):
        return None
    return schedule[attempts - 1]


def parse_retry_after(value: str | None, now: datetime, cap_s: float) -> float | None:
    """Seconds from ``now`` that a ``Retry-After`` asks for (delay-seconds or an HTTP date), capped."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), cap_s)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, (when - now).total_seconds()), cap_s)


def judge(
    *,
    status_code: int | None,
    error: str | None,
    retry_after: str | None,
    attempts: int,
    schedule: list[float],
    now: datetime,
    retry_after_cap_s: float,
) -> Verdict:
    """What to do after an attempt: the answer (or the error) and how many attempts were made."""
    if status_code is not None and 200 <= status_code < 300:
        return Verdict(Outcome.DELIVERED, None, f"HTTP {status_code}")
    if status_code == 410:
        return Verdict(Outcome.GONE, None, "HTTP 410 Gone: the endpoint is disabled")
    reason = error or f"HTTP {status_code}"
    if status_code is not None and 300 <= status_code < 400:
        reason = f"HTTP {status_code}: redirects are not followed"
    if status_code == 429:
        wait = parse_retry_after(retry_after, now, retry_after_cap_s)
        if wait is not None and attempts <= len(schedule):
            return Verdict(
                Outcome.THROTTLED, now + timedelta(seconds=wait), f"HTTP 429, Retry-After {wait:g}s"
            )
    delay = retry_delay(schedule, attempts)
    if delay is None:
        return Verdict(Outcome.FAILED, None, f"gave up after {attempts} attempts; last: {reason}")
    return Verdict(Outcome.RETRY, now + timedelta(seconds=delay), reason)
