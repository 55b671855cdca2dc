"""OpenTelemetry set-up, and the W3C trace context carried in NATS headers (DESIGN §2).

A signal's trace starts at the HTTP request in intake, is written into the outbox row with the
event, travels in the NATS headers ``traceparent``/``tracestate`` and continues in every consumer,
so one trace spans every service that handled the signal.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

TRACE_HEADERS = ("traceparent", "tracestate")
_configured = False


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans as JSON lines to a file, so that a test can collect every process's spans."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = [span.to_json(indent=None) for span in spans]
        with self._lock, self._path.open("a", encoding="utf-8") as handle:
            for line in lines:
                handle.write(json.dumps(json.loads(line)) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def setup_telemetry(service: str, exporter: str = "none", jsonl_path: Path | None = None) -> None:
    """Install a tracer provider once per process; ``exporter`` chooses where spans go."""
    global _configured
    if _configured:
        return
    provider = TracerProvider(resource=Resource.create({"service.name": f"civicsignals-{service}"}))
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter == "jsonl":
        target = jsonl_path or Path(f"{service}-spans.jsonl")
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(target)))
    trace.set_tracer_provider(provider)
    _configured = True


def tracer() -> trace.Tracer:
    return trace.get_tracer("civicsignals")


def inject_trace_headers(headers: dict[str, str]) -> dict[str, str]:
    """Write the current trace context into ``headers`` (W3C traceparent/tracestate)."""
    propagate.inject(headers)
    return headers


def extract_trace_context(headers: Mapping[str, Any] | None) -> context.Context:
    carrier = {key: value for key, value in (headers or {}).items() if key.lower() in TRACE_HEADERS}
    return propagate.extract(carrier)
