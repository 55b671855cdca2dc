"""Emerging-issue detection on generated series with known change points.

The false-alarm rate is asserted against the stated one; recall is reported per size of change
(and asserted where the method must find it). The figures are printed and kept as
``test-artifacts/insights/emerging-detection.json``.
"""

from __future__ import annotations

import json
import math
import random
from itertools import product
from pathlib import Path

import pytest

from civicsignals.insights.emerging import Method, binomial_upper_tail, evaluate, scan

ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts" / "insights"
WEEKDAY_PROFILE = (1.2, 1.15, 1.05, 1.0, 0.95, 0.4, 0.25)  # Monday .. Sunday, a contact centre's week
METHOD = Method()


def poisson(rng: random.Random, lam: float) -> int:
    """Inversion sampling; exact for the rates used here."""
    threshold, count, product_ = math.exp(-lam), 0, rng.random()
    while product_ > threshold:
        count += 1
        product_ *= rng.random()
    return count


def series(
    rng: random.Random, base: float, days: int, change_at: int | None = None, factor: float = 1.0
) -> list[int]:
    return [
        poisson(
            rng, base * WEEKDAY_PROFILE[d % 7] * (factor if change_at is not None and d >= change_at else 1.0)
        )
        for d in range(days)
    ]


def test_the_binomial_tail_matches_a_direct_sum() -> None:
    for n, p in ((10, 0.5), (40, 1 / 9), (200, 1 / 9), (7, 0.3)):
        for k in range(n + 2):
            direct = sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))
            assert binomial_upper_tail(k, n, p) == pytest.approx(direct, rel=1e-9, abs=1e-300)


def test_an_obvious_spike_alarms_and_an_ordinary_day_does_not() -> None:
    baseline = [10, 12, 9, 11, 10, 13, 8, 10]
    spike = evaluate(40, baseline, METHOD)
    ordinary = evaluate(13, baseline, METHOD)
    assert (
        spike is not None and spike.alarm and spike.p_value < 1e-6 and spike.expected == pytest.approx(10.375)
    )
    assert ordinary is not None and not ordinary.alarm
    assert evaluate(4, [0] * 8, METHOD) is not None and not evaluate(4, [0] * 8, METHOD).alarm  # min_count
    assert evaluate(50, [10], METHOD) is None  # a single week is no baseline


def test_false_alarms_stay_within_the_stated_rate_and_changes_are_found() -> None:
    rng = random.Random(20261128)
    days, first = 160, METHOD.baseline_weeks * 7

    # 1. No change at all: every alarm is a false one.
    null_days = null_alarms = 0
    for base in (3.0, 8.0, 20.0, 50.0) * 100:
        values = series(rng, base, days)
        null_alarms += len(scan(values, METHOD))
        null_days += days - first
    rate = null_alarms / null_days
    # Under the null each series-day alarms with probability at most alpha (the test is exact and
    # discrete, so conservative). The count of alarms is then at most Binomial(N, alpha); allowing
    # for chance, it may not exceed that distribution's 1 - 1e-6 quantile. (Series-days that share
    # baseline days are dependent; the dependence is weak with eight baseline weeks, and the seed is
    # fixed, so this bound does not flake.)
    bound = next(
        k for k in range(null_days) if binomial_upper_tail(k + 1, null_days, METHOD.false_alarm_rate) < 1e-6
    )
    assert null_alarms <= bound, f"{null_alarms} false alarms in {null_days} series-days (bound {bound})"

    # 2. A known change point: the rate steps up by a factor from a known day on.
    recall: dict[str, dict[str, float]] = {}
    pre_change_days = pre_change_alarms = 0
    for base, factor in product((5.0, 10.0, 20.0), (1.5, 2.0, 3.0)):
        found = delays = 0
        trials = 60
        for _ in range(trials):
            change_at = rng.randrange(first + 14, days - 14)
            values = series(rng, base, days, change_at, factor)
            alarms = scan(values, METHOD)
            early = [a for a in alarms if a < change_at]
            pre_change_alarms += len(early)
            pre_change_days += change_at - first
            hits = [a for a in alarms if change_at <= a < change_at + 7]
            if hits:
                found += 1
                delays += hits[0] - change_at
        recall[f"base {base:g}/day, x{factor:g}"] = {
            "recall_within_7_days": round(found / trials, 3),
            "mean_delay_days": round(delays / found, 2) if found else None,
        }
    pre_rate = pre_change_alarms / pre_change_days

    report = {
        "method": METHOD.describe(),
        "stated_false_alarm_rate": METHOD.false_alarm_rate,
        "null_series_days": null_days,
        "null_false_alarms": null_alarms,
        "observed_false_alarm_rate": rate,
        "false_alarm_bound": bound,
        "pre_change_series_days": pre_change_days,
        "pre_change_false_alarms": pre_change_alarms,
        "recall": recall,
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "emerging-detection.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))

    pre_bound = next(
        k
        for k in range(pre_change_days)
        if binomial_upper_tail(k + 1, pre_change_days, METHOD.false_alarm_rate) < 1e-6
    )
    assert pre_change_alarms <= pre_bound, f"{pre_change_alarms} alarms before the change (bound {pre_bound})"
    assert pre_rate < 1.0
    # A tripling is found within a week whatever the base, a doubling from 20 a day too, and most
    # doublings from 10 a day; smaller steps are reported, not promised.
    for label in ("base 5/day, x3", "base 10/day, x3", "base 20/day, x3", "base 20/day, x2"):
        assert recall[label]["recall_within_7_days"] >= 0.95, (label, recall[label])
    assert recall["base 10/day, x2"]["recall_within_7_days"] >= 0.8
    # And more change is never found less often than less change, for the same base.
    for base in ("5", "10", "20"):
        values = [recall[f"base {base}/day, x{f}"]["recall_within_7_days"] for f in ("1.5", "2", "3")]
        assert values == sorted(values), (base, values)
