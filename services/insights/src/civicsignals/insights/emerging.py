"""Emerging issues: a day whose count rises above the series' own seasonal baseline.

The method, stated here, in the docs and on the dashboard:

- **Series**: per tenant, the daily count of every topic, every topic and subtopic, every area,
  and every topic within an area.
- **Seasonal baseline**: the same weekday in each of the preceding ``W`` weeks (default 8), so
  that a Monday is compared with Mondays: the weekly rhythm of a contact centre is the strongest
  season there is. Weeks before the tenant's first signal do not count; fewer than two weeks of
  history means no test.
- **Test**: if the day and its ``W`` baseline days share one Poisson rate, then, given their
  total ``n = x + B``, the day's count ``x`` is Binomial(``n``, 1/(``W``+1)). This conditional test
  is exact: it needs no estimate of the rate, so the uncertainty of a baseline of eight days does
  not inflate the false alarms. The day alarms when the upper tail ``P(X >= x) < alpha``.
- **Stated false-alarm rate**: ``alpha`` = 0.001 per series per day (one false alarm in a thousand
  series-days when nothing changed). Because the binomial is discrete the true rate is at most
  ``alpha``. It holds for counts that are Poisson within a weekday; counts more variable than
  that (holidays, storms) alarm more often — which is usually what one wants to hear about.
- A day with fewer than ``min_count`` (default 5) signals never alarms: a handful is no issue.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta


@dataclass(frozen=True)
class Method:
    false_alarm_rate: float = 0.001
    baseline_weeks: int = 8
    min_count: int = 5
    min_weeks: int = 2

    def describe(self) -> dict[str, object]:
        return {
            "name": "seasonal conditional Poisson test",
            "baseline": f"the same weekday in each of the preceding {self.baseline_weeks} weeks",
            "test": "x | x+B ~ Binomial(x+B, 1/(W+1)); alarm when P(X >= x) < false_alarm_rate",
            "false_alarm_rate": self.false_alarm_rate,
            "per": "series and day",
            "min_count": self.min_count,
            "series": ["topic", "subtopic", "area", "topic-area"],
        }


@dataclass(frozen=True)
class Evaluation:
    observed: int
    baseline: tuple[int, ...]
    expected: float
    p_value: float
    alarm: bool

    @property
    def score(self) -> float:
        """Strength of the evidence: ``-log10`` of the p-value (3 is the default threshold)."""
        return round(-math.log10(max(self.p_value, 1e-300)), 3)


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, p)``, summed from ``k`` upwards in log space."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_term = (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )
    term = math.exp(log_term)
    total = term
    ratio_p = p / (1.0 - p)
    j = k
    while j < n:
        term *= (n - j) / (j + 1) * ratio_p
        j += 1
        total += term
        if term < total * 1e-16 and j > n * p:
            break
    return min(1.0, total)


def evaluate(observed: int, baseline: Sequence[int], method: Method) -> Evaluation | None:
    """Test one day against its baseline days; None when there is too little history."""
    weeks = len(baseline)
    if weeks < method.min_weeks:
        return None
    total = observed + sum(baseline)
    expected = sum(baseline) / weeks
    p_value = binomial_upper_tail(observed, total, 1.0 / (weeks + 1))
    alarm = observed >= method.min_count and observed > expected and p_value < method.false_alarm_rate
    return Evaluation(observed, tuple(baseline), round(expected, 3), p_value, alarm)


def baseline_days(day: date, weeks: int) -> list[date]:
    """The same weekday in each of the ``weeks`` preceding weeks, newest first."""
    return [day - timedelta(days=7 * week) for week in range(1, weeks + 1)]


def scan(series: Sequence[int], method: Method, start: int | None = None) -> list[int]:
    """Indices of the days of a daily series that alarm (for generated series and the benchmark)."""
    first = method.baseline_weeks * 7 if start is None else start
    alarms = []
    for index in range(first, len(series)):
        history = [series[index - 7 * w] for w in range(1, method.baseline_weeks + 1) if index - 7 * w >= 0]
        evaluation = evaluate(series[index], history, method)
        if evaluation is not None and evaluation.alarm:
            alarms.append(index)
    return alarms


def insight_id(
    tenant: str, day: date, series: str, topic: str | None, subtopic: str | None, area: str | None
) -> str:
    """The same series on the same day is always the same insight, however often it is checked."""
    raw = "|".join([tenant, day.isoformat(), series, topic or "", subtopic or "", area or ""])
    return "ins_" + hashlib.sha256(raw.encode()).hexdigest()[:28]
