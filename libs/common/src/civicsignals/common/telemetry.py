"""OpenTelemetry set-up, and the W3C trace context carried in NATS headers (DESIGN §2).

A signal's trace starts at the HTTP request in intake, is written into the outbox row with the
event, travels in the NATS headers ``traceparent``/``tracestate`` and continues in every consumer,
so one trace spans every service that handled the signal.

:class:`RequestObserver` is the HTTP side: the request's SERVER span and its Prometheus metrics in
one pure ASGI layer.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry import baggage, context, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


def make_tracer_provider(
    service: str, exporter: str = "none", jsonl_path: Path | None = None
) -> TracerProvider:
    """The tracer provider for ``exporter``, which chooses where spans go.

    With no exporter (``none``, the default) nobody collects the spans, so none is recorded unless
    the caller's trace context asks for it: ``ParentBased(root=ALWAYS_OFF)``. Every span still gets
    its ids, so the ``traceparent`` DESIGN §2 puts on every event still travels, with the sampled
    flag as it came (a portal that samples its own trace is followed through). Recording a span
    that goes nowhere cost about 12 µs of CPU more than making its ids (a throwaway loop of a
    consumer's span with its extract, four attributes and inject: 27 against 15 µs), and a signal
    makes about a dozen on its way (``tests/test_tracing.py``: 11 in intake, classifier, routing
    and notifier, 5 more in insights).

    With an exporter every span is recorded whatever the caller's flag says (``ALWAYS_ON``), so
    turning tracing on for one service shows that service's spans even when the service before it
    does not trace (and marked its spans unsampled). ``OTEL_TRACES_SAMPLER`` (OpenTelemetry's own
    variable, e.g. ``parentbased_traceidratio`` with ``OTEL_TRACES_SAMPLER_ARG``) overrides both.
    """
    chosen: Sampler | None = None  # None: the SDK reads OTEL_TRACES_SAMPLER
    if not os.environ.get("OTEL_TRACES_SAMPLER"):
        chosen = ParentBased(root=ALWAYS_OFF) if exporter == "none" else ALWAYS_ON
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"civicsignals-{service}"}), sampler=chosen
    )
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter == "jsonl":
        target = jsonl_path or Path(f"{service}-spans.jsonl")
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(target)))
    return provider


def setup_telemetry(service: str, exporter: str = "none", jsonl_path: Path | None = None) -> None:
    """Install :func:`make_tracer_provider`'s provider once per process."""
    global _configured
    if _configured:
        return
    trace.set_tracer_provider(make_tracer_provider(service, exporter, jsonl_path))
    _configured = True


_tracer_of: tuple[trace.TracerProvider, trace.Tracer] | None = None


def tracer() -> trace.Tracer:
    """The project's tracer, made once per tracer provider: ``trace.get_tracer`` builds a new one
    on every call (with a warnings filter), a quarter of the cost of each consumer span."""
    global _tracer_of
    provider = trace.get_tracer_provider()
    if _tracer_of is None or _tracer_of[0] is not provider:
        _tracer_of = (provider, provider.get_tracer("civicsignals"))
    return _tracer_of[1]


def inject_trace_headers(headers: dict[str, str]) -> dict[str, str]:
    """Write the current trace context into ``headers`` (W3C traceparent/tracestate).

    Every stored event does this (intake: once per signal), so the usual case — the default
    propagators and no baggage — writes ``traceparent`` directly, as the W3C propagator would,
    instead of walking the composite propagator (a third of the cost of building an outbox row).
    """
    current = context.get_current()
    if not _default_propagation() or baggage.get_all(current):
        propagate.inject(headers, context=current)
        return headers
    span_context = trace.get_current_span(current).get_span_context()
    if span_context.is_valid:
        headers["traceparent"] = (
            f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"
        )
        if span_context.trace_state:
            headers["tracestate"] = span_context.trace_state.to_header()
    return headers


_default_checked: list[Any] = [None, False]


def _default_propagation() -> bool:
    """Whether the global propagator is OpenTelemetry's default (W3C trace context and baggage)."""
    textmap = propagate.get_global_textmap()
    if _default_checked[0] is not textmap:
        members = getattr(textmap, "_propagators", None)
        kinds = {type(member) for member in members} if isinstance(members, list) else set()
        _default_checked[:] = [textmap, kinds == {TraceContextTextMapPropagator, W3CBaggagePropagator}]
    return bool(_default_checked[1])


def extract_trace_context(headers: Mapping[str, Any] | None) -> context.Context:
    carrier = {key: value for key, value in (headers or {}).items() if key.lower() in TRACE_HEADERS}
    return propagate.extract(carrier)


# -- HTTP requests: one span and the request metrics -----------------------------------------------

_PROPAGATED = frozenset({b"traceparent", b"tracestate", b"baggage"})


class _HttpMetrics:
    """The request metrics, under the names and labels ``starlette_exporter`` used before (so the
    dashboards and alerts in docs/operations.md keep working), registered once per process."""

    _instance: _HttpMetrics | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        labels = ("method", "path", "status_code", "app_name")
        self.requests = Counter("starlette_requests_total", "Total HTTP requests", labels)
        self.duration = Histogram(
            "starlette_request_duration_seconds", "HTTP request duration, in seconds", labels
        )
        self.in_progress = Gauge(
            "starlette_requests_in_progress",
            "Total HTTP requests currently in progress",
            ("method", "app_name"),
            multiprocess_mode="livesum",
        )
        # Children by label values: ``labels()`` costs more than the observation itself.
        self._finished: dict[tuple[str, str, int, str], tuple[Any, Any]] = {}
        self._running: dict[tuple[str, str], Any] = {}

    @classmethod
    def get(cls) -> _HttpMetrics:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def running(self, method: str, app_name: str) -> Any:
        key = (method, app_name)
        child = self._running.get(key)
        if child is None:
            child = self._running[key] = self.in_progress.labels(method, app_name)
        return child

    def finished(self, method: str, path: str, status: int, app_name: str, seconds: float) -> None:
        key = (method, path, status, app_name)
        children = self._finished.get(key)
        if children is None:
            children = self._finished[key] = (
                self.requests.labels(method, path, status, app_name),
                self.duration.labels(method, path, status, app_name),
            )
        children[0].inc()
        children[1].observe(seconds)


def _route_template(scope: Scope) -> str | None:
    """The matched route's path template (``/v1/signals/{signal_id}``), set by the router."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


class RequestObserver:
    """Per HTTP request: one SERVER span (continuing the caller's ``traceparent``), the Prometheus
    request metrics, and fixed response headers such as ``API-Version``.

    One pure ASGI layer instead of three middlewares: OpenTelemetry's ASGI instrumentation made
    three spans per request (the request, its body's receive and the response's sends) and
    ``starlette_exporter`` searched the route table again after every request; together with a
    header middleware they cost about twice the bare endpoint's time (bench/intake). The span is
    named ``METHOD /route/{template}`` once the router has matched; metrics are kept only for
    matched routes (so unknown paths cannot grow the label set), and ``skip_paths`` (probes,
    ``/metrics``) get neither.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        app_name: str,
        skip_paths: frozenset[str] = frozenset(),
        extra_headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        self.app = app
        self.app_name = app_name
        self.skip_paths = skip_paths
        self.extra_headers = list(extra_headers)
        self.metrics = _HttpMetrics.get()
        self.tracer = trace.get_tracer("civicsignals.http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra_headers = self.extra_headers
        if scope["path"] in self.skip_paths:

            async def _send_plain(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", ()), *extra_headers]
                await send(message)

            await self.app(scope, receive, _send_plain)
            return

        method: str = scope["method"]
        started = time.perf_counter()
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in _PROPAGATED
        }
        parent = propagate.extract(carrier) if carrier else None
        span = self.tracer.start_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        )
        token = context.attach(trace.set_span_in_context(span, parent))
        running = self.metrics.running(method, self.app_name)
        running.inc()
        status = 0

        async def _send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *extra_headers]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        except BaseException as exc:
            status = status or 500
            span.record_exception(exc)
            raise
        finally:
            running.dec()
            route = _route_template(scope)
            if route is not None:
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
                self.metrics.finished(
                    method, route, status or 500, self.app_name, time.perf_counter() - started
                )
            span.set_attribute("http.response.status_code", status)
            if status >= 500 or status == 0:
                span.set_status(StatusCode.ERROR)
            span.end()
            context.detach(token)
