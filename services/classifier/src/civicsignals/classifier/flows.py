"""Classifier's orchestration: signals and conversations get their topics, corrections are kept.

Consumers (one durable each, DESIGN §2):

* ``classifier-signal-received``: classifies each signal with its tenant's model and writes
  ``signal.classified`` to the outbox. Messages are classified **in batches**: the consumer
  fetches up to ``batch_size`` messages, one onnxruntime call per tenant classifies all of them
  (:class:`BatchingConsumer`), and the batch's ``signal.classified`` events and inbox claims commit
  in one transaction (:class:`~civicsignals.common.inbox.TransactionalConsumer`); a failing batch
  is settled message by message (its own transaction, ack, nak or dead letter), so batching changes
  neither the acks nor the idempotency;
* ``classifier-conversation-received``: classifies the citizen's turns of a phone or chat
  conversation; one conversation may carry several topics (``topics`` in the event);
* ``classifier-signal-reclassified``: stores staff's correction as training data for ``retrain``;
* ``classifier-signal-erased``: the person's data of a signal was erased on request (AVG article
  17): its corrections, whose text is training data, are deleted, and the signal is remembered as
  erased so that a correction arriving later is not stored (see :func:`erase_signal`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from nats.aio.msg import Msg
from prometheus_client import Histogram
from pydantic import ValidationError
from sqlmodel.ext.asyncio.session import AsyncSession

from civicsignals.classifier import service
from civicsignals.classifier.model.inference import Prediction, TopicModel
from civicsignals.classifier.registry import ModelNotReady, ModelRegistry
from civicsignals.common.bus import Bus, ConsumerSpec, TransientError
from civicsignals.common.events import (
    Alternative,
    CloudEvent,
    ConversationReceived,
    SignalClassified,
    SignalErased,
    SignalReceived,
    SignalReclassified,
    make_event,
    read_data,
)
from civicsignals.common.inbox import TransactionalConsumer, claim
from civicsignals.common.language import detect_language
from civicsignals.common.outbox import enqueue
from civicsignals.common.runtime import ServiceRuntime
from civicsignals.common.tasks import cancel_requested

log = logging.getLogger(__name__)

CONSUMER = "classifier-signal-received"
CONVERSATION_CONSUMER = "classifier-conversation-received"
CORRECTION_CONSUMER = "classifier-signal-reclassified"
ERASURE_CONSUMER = "classifier-signal-erased"
#: Citizen turns shorter than this many characters ("ja", "dank u") carry no topic of their own.
MIN_TURN_CHARS = 12

BATCH_SIZE = Histogram(
    "civic_classifier_batch_size",
    "Signals classified in one onnxruntime call",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
INFERENCE_SECONDS = Histogram("civic_classifier_inference_seconds", "Time of one batch classification")


@dataclass
class ClassifierContext:
    runtime: ServiceRuntime
    registry: ModelRegistry
    #: Predictions made for a fetched batch, by event id, waiting for their message's handler.
    prefetched: dict[str, Prediction] = field(default_factory=dict)
    #: Per tenant, what was last handed to the registry: the taxonomy object of the tenant as
    #: loaded (the tenant registry replaces it on a reload, so identity tells whether it changed;
    #: the object itself is kept, as an id could be reused), or the refusal of a folder never loaded.
    _taxonomies: dict[str, object] = field(default_factory=dict)

    def threshold(self, tenant: str, model: TopicModel | None = None) -> float | None:
        """The tenant's review threshold for ``model`` (None: the model's card threshold applies).

        ``classifier.review_threshold`` in tenant.yaml applies to trained models only: it is tuned
        for their confidences. A cold-start model (trained on the taxonomy alone, confidences
        typically 0.02-0.5) keeps its card threshold unless the tenant sets
        ``classifier.cold_start_review_threshold``; otherwise a threshold tuned for a trained model
        would send nearly everything to triage after a rollback to the cold start.
        """
        config = self.runtime.tenants.get(tenant)
        if config is None:
            return None
        settings = config.settings.get("classifier") or {}
        name = "cold_start_review_threshold" if is_coldstart(model) else "review_threshold"
        value = settings.get(name)
        return float(value) if value is not None else None

    def threshold_in_force(self, tenant: str, model: TopicModel) -> float:
        """The review threshold ``model`` uses for ``tenant``: the tenant's (see :meth:`threshold`)
        or the model's card threshold."""
        threshold = self.threshold(tenant, model)
        return model.threshold if threshold is None else threshold

    def serving_model(self, tenant: str) -> TopicModel:
        """The tenant's model now (its own taxonomy checked first); :class:`ModelNotReady` while it
        loads, :class:`~.registry.TaxonomyRefused` while its own taxonomy cannot be used."""
        self._check_taxonomy(tenant)
        return self.registry.model_for(tenant)

    def model_for(self, tenant: str) -> TopicModel:
        """The tenant's model; a :class:`TransientError` (redelivery later) while it loads."""
        try:
            return self.serving_model(tenant)
        except ModelNotReady as exc:
            raise TransientError(str(exc)) from exc

    def _check_taxonomy(self, code: str) -> None:
        tenants = self.runtime.tenants
        tenant = tenants.get(code)
        if tenant is not None:
            taxonomy = tenant.taxonomy
            if self._taxonomies.get(code, _UNSEEN) is not taxonomy:
                self.registry.set_tenant_taxonomy(code, taxonomy, source=str(tenant.folder / "taxonomy.yaml"))
                self._taxonomies[code] = taxonomy
            return
        # Not loaded: no such tenant (the default taxonomy, as ever), or a folder refused since
        # this process started, with no last good version. If that folder has a taxonomy of its
        # own, the default one must not stand in for it.
        error = tenants.errors.get(code)
        if error is None:
            if self._taxonomies.get(code, _UNSEEN) is not None:
                self.registry.set_tenant_taxonomy(code, None)
                self._taxonomies[code] = None
            return
        if self._taxonomies.get(code, _UNSEEN) is error:
            return
        self._taxonomies[code] = error
        path = tenants.root / code / "taxonomy.yaml"
        if _has_content(path):
            self.registry.refuse_taxonomy(
                code, f"the tenant folder was refused and has a taxonomy of its own ({path}): {error}"
            )
        else:
            self.registry.set_tenant_taxonomy(code, None)

    def refresh_taxonomies(self) -> None:
        """Tell the registry each tenant's own taxonomy (or none), so its cold start matches it."""
        for code in self.runtime.tenants.codes():
            self._check_taxonomy(code)


_UNSEEN = object()


def is_coldstart(model: TopicModel | None) -> bool:
    """A cold-start model (its card says ``"kind": "coldstart"``): trained on a taxonomy alone."""
    return model is not None and model.card.get("kind") == "coldstart"


def _has_content(path: Path) -> bool:
    try:
        return bool(path.read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError):
        return path.exists()


async def classify_texts(ctx: ClassifierContext, tenant: str, texts: Sequence[str]) -> list[Prediction]:
    """Classify texts with the tenant's model and threshold, in a worker thread."""
    model = ctx.model_for(tenant)
    started = time.perf_counter()
    predictions = await asyncio.to_thread(model.predict, list(texts), threshold=ctx.threshold(tenant, model))
    INFERENCE_SECONDS.observe(time.perf_counter() - started)
    BATCH_SIZE.observe(len(texts))
    return predictions


def _alternatives(prediction: Prediction) -> list[Alternative]:
    return [Alternative(**a.to_dict()) for a in prediction.alternatives]


def _main_topic(prediction: Prediction) -> Alternative:
    return Alternative(
        topic=prediction.topic, subtopic=prediction.subtopic, probability=prediction.confidence
    )


async def _publish(ctx: ClassifierContext, event: CloudEvent, consumer: str, data: SignalClassified) -> bool:
    async with ctx.runtime.sessions() as session, session.begin():
        if not await claim(session, consumer, event.id):
            return False
        out = make_event(tenant=event.tenant, service="classifier", data=data)
        enqueue(session, SignalClassified.bus_subject(event.tenant), out)
    ctx.runtime.events_committed()
    return True


async def apply_signal_received(ctx: ClassifierContext, session: AsyncSession, event: CloudEvent) -> None:
    """Classify one received signal (using the batch's prediction when there is one) and put its
    ``signal.classified`` in the caller's transaction."""
    received = read_data(event, SignalReceived)
    prediction = ctx.prefetched.get(event.id)
    if prediction is None:
        [prediction] = await classify_texts(ctx, event.tenant, [received.text])
    classified = SignalClassified(
        signal_id=received.signal_id,
        topic=prediction.topic,
        subtopic=prediction.subtopic,
        confidence=prediction.confidence,
        alternatives=_alternatives(prediction),
        language=received.language or detect_language(received.text),
        kind=received.kind,
        needs_review=prediction.needs_review,
        model_version=prediction.model_version,
        topics=[_main_topic(prediction)],
        imported=bool(getattr(received, "imported", False)),
        tracking_code=received.tracking_code,
        channel=received.channel,
        text=received.text,
        location=received.location,
        received_at=received.received_at,
    )
    out = make_event(tenant=event.tenant, service="classifier", data=classified)
    enqueue(session, SignalClassified.bus_subject(event.tenant), out)


async def classify_signal(ctx: ClassifierContext, event: CloudEvent) -> bool:
    """``apply_signal_received`` in a transaction of its own; False for an event handled before."""
    async with ctx.runtime.sessions() as session, session.begin():
        if not await claim(session, CONSUMER, event.id):
            return False
        await apply_signal_received(ctx, session, event)
    ctx.runtime.events_committed()
    return True


async def prefetch(ctx: ClassifierContext, messages: Sequence[Msg]) -> None:
    """Classify a fetched batch of ``signal.received`` messages: one model call per tenant.

    Messages that cannot be read are left alone: their handler meets the same error and settles
    them (dead letter); a tenant whose model is not ready is left to its handlers too (nak).
    """
    ctx.prefetched.clear()
    by_tenant: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for msg in messages:
        try:
            event = CloudEvent.from_json(msg.data)
            received = read_data(event, SignalReceived)
        except (ValidationError, ValueError):
            continue
        by_tenant[event.tenant].append((event.id, received.text))
    for tenant, items in by_tenant.items():
        try:
            predictions = await classify_texts(ctx, tenant, [text for _, text in items])
        except TransientError:
            continue
        for (event_id, _), prediction in zip(items, predictions, strict=True):
            ctx.prefetched[event_id] = prediction


class BatchingConsumer(TransactionalConsumer):
    """The transactional consumer, with one extra step: classify a fetched batch in one model call
    per tenant before its events are applied (in one transaction)."""

    def __init__(self, bus: Bus, spec: ConsumerSpec, ctx: ClassifierContext) -> None:
        super().__init__(bus, spec, ctx.runtime.sessions, on_commit=ctx.runtime.events_committed)
        self.ctx = ctx

    async def handle_fetched(self, messages: list[Msg], limit: asyncio.Semaphore) -> None:
        try:
            await prefetch(self.ctx, messages)
        except Exception:
            # Batching is an optimisation: on any surprise, each event is classified on its own.
            log.exception("consumer %s: batch classification failed", self.spec.durable)
            self.ctx.prefetched.clear()
        try:
            await super().handle_fetched(messages, limit)
        finally:
            self.ctx.prefetched.clear()


async def classify_conversation(ctx: ClassifierContext, event: CloudEvent) -> bool:
    """Classify a conversation's citizen turns; the main topic is that of all of them together.

    Further topics: each citizen turn of at least :data:`MIN_TURN_CHARS` is classified on its own;
    its most probable *topic* (the probabilities of its subtopics added up: a turn may be clearly
    about street furniture without saying which piece) is added to ``topics`` when that sum is at
    or above the review threshold (once per topic, with the turn's best subtopic). A conversation without any citizen
    text is acknowledged and publishes nothing.
    """
    conversation = read_data(event, ConversationReceived)
    turns = [t.text.strip() for t in conversation.turns if t.speaker == "citizen" and t.text.strip()]
    if not turns:
        async with ctx.runtime.sessions() as session, session.begin():
            await claim(session, CONVERSATION_CONSUMER, event.id)
        return False
    whole = "\n".join(turns)
    singles = [t for t in turns if len(t) >= MIN_TURN_CHARS] if len(turns) > 1 else []
    model = ctx.model_for(event.tenant)
    limit = ctx.threshold_in_force(event.tenant, model)
    probabilities = await asyncio.to_thread(model.predict_proba, [whole, *singles])
    [main] = model.decide(probabilities[:1], threshold=limit)
    topics: dict[str, Alternative] = {main.topic: _main_topic(main)}
    found = [_top_topic(model, row) for row in probabilities[1:]]
    for topic in sorted(found, key=lambda t: -t.probability):
        if topic.probability >= limit and topic.topic not in topics:
            topics[topic.topic] = topic
    classified = SignalClassified(
        signal_id=conversation.signal_id,
        topic=main.topic,
        subtopic=main.subtopic,
        confidence=main.confidence,
        alternatives=_alternatives(main),
        language=conversation.language or detect_language(whole),
        kind="question",
        needs_review=main.needs_review,
        model_version=main.model_version,
        topics=list(topics.values()),
        channel=conversation.channel,
        text=whole,
        received_at=conversation.started_at,
    )
    return await _publish(ctx, event, CONVERSATION_CONSUMER, classified)


def _top_topic(model: TopicModel, row: npt.NDArray[np.float32]) -> Alternative:
    """The most probable topic of one row of probabilities, with its best subtopic."""
    mass: dict[str, float] = defaultdict(float)
    best: dict[str, tuple[float, str | None]] = {}
    for (topic, subtopic), probability in zip(model.labels, row.tolist(), strict=True):
        mass[topic] += probability
        if topic not in best or probability > best[topic][0]:
            best[topic] = (probability, subtopic)
    topic = max(mass, key=lambda t: mass[t])
    return Alternative(topic=topic, subtopic=best[topic][1], probability=round(mass[topic], 6))


async def store_correction(ctx: ClassifierContext, event: CloudEvent) -> bool:
    """Keep a correction from triage as training data; idempotent per event and per signal.

    A correction of a signal whose person's data was erased is acknowledged and not kept.
    """
    data = read_data(event, SignalReclassified)
    async with ctx.runtime.sessions() as session, session.begin():
        if not await claim(session, CORRECTION_CONSUMER, event.id):
            return False
        stored = await service.store_correction(session, event.tenant, event.id, event.time, data)
    if stored is None:
        log.info("correction %s of erased signal %s not kept", event.id, data.signal_id)
    return True


async def erase_signal(ctx: ClassifierContext, event: CloudEvent) -> bool:
    """Drop what the classifier keeps of an erased signal; False for an event handled before.

    The classifier keeps a signal's text only in staff's corrections (``retrain`` trains on
    them), so those are deleted; bundles already trained hold no text (hashed n-gram features
    and weights), and the next ``retrain`` no longer sees it. The erasure may come before the
    correction: staff can still change the topic of the case afterwards, and the two events have
    consumers of their own, so either may be applied first. The signal's id is therefore kept as
    erased and :func:`~civicsignals.classifier.service.store_correction` stores nothing for it.
    """
    data = read_data(event, SignalErased)
    async with ctx.runtime.sessions() as session, session.begin():
        if not await claim(session, ERASURE_CONSUMER, event.id):
            return False
        deleted = await service.erase_signal(session, event.tenant, event.id, data)
    log.info("signal %s of tenant %s erased: %d correction(s) deleted", data.signal_id, event.tenant, deleted)
    return True


def consumers(ctx: ClassifierContext) -> list[ConsumerSpec]:
    """The consumers the shared runtime runs (the batched one is added by :func:`batching_consumer`)."""

    async def on_conversation(event: CloudEvent, _msg: Msg) -> None:
        await classify_conversation(ctx, event)

    async def on_reclassified(event: CloudEvent, _msg: Msg) -> None:
        await store_correction(ctx, event)

    async def on_erased(event: CloudEvent, _msg: Msg) -> None:
        await erase_signal(ctx, event)

    return [
        ConsumerSpec(CONVERSATION_CONSUMER, ConversationReceived.subscription(), on_conversation),
        ConsumerSpec(CORRECTION_CONSUMER, SignalReclassified.subscription(), on_reclassified),
        ConsumerSpec(ERASURE_CONSUMER, SignalErased.subscription(), on_erased),
    ]


def batching_consumer(ctx: ClassifierContext, batch_size: int) -> BatchingConsumer:
    """The ``signal.received`` consumer, configured like the runtime configures its own."""

    async def on_received(session: AsyncSession, event: CloudEvent, _msg: Msg) -> None:
        await apply_signal_received(ctx, session, event)

    settings = ctx.runtime.settings
    spec = ConsumerSpec(CONSUMER, SignalReceived.subscription(), apply=on_received, batch_size=batch_size)
    spec.max_deliver = settings.consumer_max_deliver
    spec.ack_wait_s = settings.consumer_ack_wait_s
    return BatchingConsumer(ctx.runtime.bus, spec, ctx)


async def refresh_loop(ctx: ClassifierContext, interval_s: float) -> None:
    """Keep this replica's models in step with the database and the tenants' taxonomies."""
    while True:
        try:
            ctx.refresh_taxonomies()
            read_after = ctx.registry.applied
            async with ctx.runtime.sessions() as session:
                wanted = await service.active_versions(session)
            await ctx.registry.sync(wanted, read_after=read_after)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if cancel_requested():  # a cancel that the database driver turned into an error
                raise asyncio.CancelledError from exc
            log.exception("model registry refresh failed; trying again")
        await asyncio.sleep(interval_s)
