"""One trace spans intake, classifier, routing and notifier for a signal (issue 8, DESIGN §2).

Each service process writes its finished spans as JSON lines (``OTEL_EXPORTER=jsonl``); the test
reads every process's file and follows the signal's trace across them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.conftest import SERVICE_NAMES, Stack
from tests.test_pipeline import mail_with, post_signal, wait_for_status

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def read_spans(folder: Path) -> list[dict]:
    spans = []
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                spans.append(json.loads(line))
    return spans


def service_of(span: dict) -> str:
    return str(span["resource"]["attributes"]["service.name"])


async def test_one_trace_spans_every_service(stack: Stack, tmp_path: Path) -> None:
    spans_dir = tmp_path / "spans"
    for name in SERVICE_NAMES:
        stack.start(name, otel_exporter="jsonl", otel_jsonl_path=str(spans_dir / f"{name}.jsonl"))
    created = await asyncio.to_thread(post_signal, stack)
    await asyncio.to_thread(wait_for_status, stack, created["tracking_code"], "assigned")
    await asyncio.to_thread(mail_with, stack, created["tracking_code"])

    spans = read_spans(spans_dir)
    posts = [
        s
        for s in spans
        if service_of(s) == "civicsignals-intake"
        and s["name"] == "POST /v1/signals"
        and s["kind"] == "SpanKind.SERVER"
    ]
    assert posts, [s["name"] for s in spans]
    trace_id = posts[0]["context"]["trace_id"]
    in_trace = [s for s in spans if s["context"]["trace_id"] == trace_id]
    services = {service_of(s) for s in in_trace}
    assert services >= {
        "civicsignals-intake",
        "civicsignals-classifier",
        "civicsignals-routing",
        "civicsignals-notifier",
    }, sorted(services)
    consumed = {(service_of(s), s["name"]) for s in in_trace if s["kind"] == "SpanKind.CONSUMER"}
    assert ("civicsignals-classifier", "consume nl.civicsignals.signal.received.v1") in consumed
    assert ("civicsignals-routing", "consume nl.civicsignals.signal.classified.v1") in consumed
    assert ("civicsignals-notifier", "consume nl.civicsignals.signal.received.v1") in consumed
    # Every span of the trace hangs under another span of it, except the request that began it.
    ids = {s["context"]["span_id"] for s in in_trace}
    roots = [s for s in in_trace if s.get("parent_id") not in ids]
    assert len(roots) == 1 and roots[0]["context"]["span_id"] == posts[0]["context"]["span_id"]
