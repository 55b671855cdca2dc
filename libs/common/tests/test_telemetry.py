"""Trace headers written the fast way are exactly what OpenTelemetry's propagators write; the
HTTP request span of ``RequestObserver``."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Response
from opentelemetry import baggage, context, propagate, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags, TraceState

from civicsignals.common.telemetry import (
    RequestObserver,
    extract_trace_context,
    inject_trace_headers,
    make_tracer_provider,
)

SAMPLED = SpanContext(
    trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
    span_id=0x00F067AA0BA902B7,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
)
WITH_STATE = SpanContext(
    trace_id=0xABC,
    span_id=0xDEF,
    is_remote=True,
    trace_flags=TraceFlags(0),
    trace_state=TraceState([("rojo", "00f067aa0ba902b7"), ("congo", "t61rcWkgMzE")]),
)


def _in_context(ctx: context.Context) -> tuple[dict[str, str], dict[str, str]]:
    token = context.attach(ctx)
    try:
        ours: dict[str, str] = {}
        theirs: dict[str, str] = {}
        inject_trace_headers(ours)
        propagate.inject(theirs)
        return ours, theirs
    finally:
        context.detach(token)


@pytest.mark.parametrize(
    "ctx",
    [
        trace.set_span_in_context(NonRecordingSpan(SAMPLED)),
        trace.set_span_in_context(NonRecordingSpan(WITH_STATE)),
        baggage.set_baggage("tenant", "demo", trace.set_span_in_context(NonRecordingSpan(SAMPLED))),
        context.Context(),
    ],
    ids=["sampled", "tracestate", "baggage", "no-span"],
)
def test_inject_writes_what_the_propagators_write(ctx: context.Context) -> None:
    ours, theirs = _in_context(ctx)
    assert ours == theirs


def test_the_sampled_context_round_trips() -> None:
    ours, _ = _in_context(trace.set_span_in_context(NonRecordingSpan(SAMPLED)))
    assert ours == {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    extracted = trace.get_current_span(extract_trace_context(ours)).get_span_context()
    assert (extracted.trace_id, extracted.span_id) == (SAMPLED.trace_id, SAMPLED.span_id)


async def test_request_observer_makes_one_server_span_per_request_under_the_callers_trace(
    spans: Any,
) -> None:
    """One SERVER span named after the route template, child of the caller's ``traceparent``,
    an error status for a 5xx, and the fixed headers on every response."""
    app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})  # as create_service_app

    @app.get("/v1/things/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    @app.get("/v1/broken")
    async def broken() -> Response:
        return Response(status_code=503)

    observed = RequestObserver(app, app_name="telemetry-test", extra_headers=[(b"api-version", b"9")])
    transport = httpx.ASGITransport(app=observed)
    caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        ok = await client.get("/v1/things/42", headers={"traceparent": caller})
        failed = await client.get("/v1/broken")
    assert ok.status_code == 200 and ok.headers["api-version"] == "9"
    assert failed.status_code == 503 and failed.headers["api-version"] == "9"
    finished = {span.name: span for span in spans.get_finished_spans()}
    assert set(finished) == {"GET /v1/things/{thing_id}", "GET /v1/broken"}
    first = finished["GET /v1/things/{thing_id}"]
    assert first.kind == SpanKind.SERVER and first.context is not None and first.parent is not None
    assert first.context.trace_id == SAMPLED.trace_id and first.parent.span_id == SAMPLED.span_id
    assert first.attributes is not None and first.attributes["http.route"] == "/v1/things/{thing_id}"
    assert finished["GET /v1/broken"].status.status_code == StatusCode.ERROR


def _child_of(provider: Any, parent: SpanContext | None) -> tuple[bool, dict[str, str]]:
    """Whether a span of ``provider`` under ``parent`` (a remote caller's context, or none: a root)
    records, and the trace headers an event published inside it would carry."""
    ctx = trace.set_span_in_context(NonRecordingSpan(parent)) if parent else context.Context()
    with provider.get_tracer("test").start_as_current_span("consume", context=ctx) as span:
        return span.is_recording(), inject_trace_headers({})


def test_without_an_exporter_spans_are_not_recorded_but_every_event_still_carries_its_trace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    provider = make_tracer_provider("test", "none")

    root, headers = _child_of(provider, None)
    assert not root
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert version == "00" and int(trace_id, 16) and int(span_id, 16)
    assert not int(flags, 16) & TraceFlags.SAMPLED

    unsampled, headers = _child_of(provider, WITH_STATE)
    assert not unsampled
    assert headers["traceparent"].startswith(f"00-{WITH_STATE.trace_id:032x}-")

    # A caller that samples its trace is followed: the flag goes on as it came.
    followed, headers = _child_of(provider, SAMPLED)
    assert followed
    assert headers["traceparent"].startswith(f"00-{SAMPLED.trace_id:032x}-")
    assert int(headers["traceparent"][-2:], 16) & TraceFlags.SAMPLED


def test_with_an_exporter_every_span_is_recorded_even_under_a_caller_that_does_not_trace(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    spans = tmp_path / "spans.jsonl"
    provider = make_tracer_provider("test", "jsonl", spans)
    span, headers = _child_of(provider, WITH_STATE)
    assert span and int(headers["traceparent"][-2:], 16) & TraceFlags.SAMPLED
    written = spans.read_text(encoding="utf-8").splitlines()
    assert len(written) == 1 and f"{WITH_STATE.trace_id:032x}" in written[0]


def test_opentelemetrys_own_sampler_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    root, _ = _child_of(make_tracer_provider("test", "none"), None)
    assert root
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    followed, _ = _child_of(make_tracer_provider("test", "jsonl", None), SAMPLED)
    assert not followed
