"""Notifier's Prometheus metrics, served on ``/metrics`` with every other metric of the process.

``partner`` is the partner's code for webhooks and ``resident`` (or ``partner-contact``) for
e-mail; ``channel`` is ``email`` or ``webhook``. No label holds an address, a URL or an id, so the
number of series stays bounded by partners, channels and outcomes.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DELIVERIES = Counter(
    "civic_notifier_deliveries_total",
    "Deliveries that reached an end: delivered, failed (given up) or skipped (no consent, no contact)",
    ["partner", "channel", "result"],
)
ATTEMPTS = Counter(
    "civic_notifier_attempts_total",
    "Delivery attempts by outcome (delivered, retry, throttled, gone, failed, skipped, error)",
    ["partner", "channel", "outcome"],
)
FAILURES = Counter(
    "civic_notifier_attempt_failures_total",
    "Attempts that did not deliver, by reason class (http_4xx, http_5xx, redirect, timeout, connect, refused, smtp, intake)",
    ["partner", "channel", "reason"],
)
LATENCY = Histogram(
    "civic_notifier_delivery_latency_seconds",
    "From the event a message is about (e.g. signal.routed) to its delivery",
    ["partner", "channel"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400, 172800),
)
ATTEMPT_DURATION = Histogram(
    "civic_notifier_attempt_seconds",
    "How long one attempt took (HTTP request or SMTP conversation)",
    ["partner", "channel"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DUE = Gauge("civic_notifier_deliveries_due", "Deliveries whose next attempt is due now")
ENDPOINTS_DISABLED = Counter(
    "civic_notifier_endpoints_disabled_total",
    "Endpoints disabled (gone, or failing for days)",
    ["partner", "reason"],
)
