"""Classifier's orchestration: a received signal gets its topic, and the result goes out by outbox."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from nats.aio.msg import Msg

from civicsignals.classifier.registry import ModelRegistry
from civicsignals.common.bus import ConsumerSpec, TransientError
from civicsignals.common.events import (
    Alternative,
    CloudEvent,
    SignalClassified,
    SignalReceived,
    make_event,
    read_data,
)
from civicsignals.common.inbox import claim
from civicsignals.common.outbox import enqueue
from civicsignals.common.runtime import ServiceRuntime

CONSUMER = "classifier-signal-received"


@dataclass
class ClassifierContext:
    runtime: ServiceRuntime
    registry: ModelRegistry

    def threshold(self, tenant: str) -> float | None:
        config = self.runtime.tenants.get(tenant)
        if config is None:
            return None
        value = (config.settings.get("classifier") or {}).get("review_threshold")
        return float(value) if value is not None else None


async def classify_signal(ctx: ClassifierContext, event: CloudEvent) -> bool:
    received = read_data(event, SignalReceived)
    if not ctx.registry.loaded:
        raise TransientError("the model is still loading")
    model = ctx.registry.model()
    [prediction] = await asyncio.to_thread(
        model.predict, [received.text], threshold=ctx.threshold(event.tenant)
    )
    classified = SignalClassified(
        signal_id=received.signal_id,
        topic=prediction.topic,
        subtopic=prediction.subtopic,
        confidence=prediction.confidence,
        alternatives=[Alternative(**a.to_dict()) for a in prediction.alternatives],
        language=received.language,
        kind=received.kind,
        needs_review=prediction.needs_review,
        model_version=prediction.model_version,
        tracking_code=received.tracking_code,
        channel=received.channel,
        text=received.text,
        location=received.location,
        received_at=received.received_at,
    )
    async with ctx.runtime.sessions() as session, session.begin():
        if not await claim(session, CONSUMER, event.id):
            return False
        out = make_event(tenant=event.tenant, service="classifier", data=classified)
        enqueue(session, SignalClassified.bus_subject(event.tenant), out)
    ctx.runtime.events_committed()
    return True


def consumers(ctx: ClassifierContext) -> list[ConsumerSpec]:
    async def on_received(event: CloudEvent, _msg: Msg) -> None:
        await classify_signal(ctx, event)

    return [ConsumerSpec(CONSUMER, SignalReceived.subscription(), on_received)]
