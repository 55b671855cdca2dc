"""Routing's orchestration: a classified signal becomes a case, with its events, in one transaction."""

from __future__ import annotations

from dataclasses import dataclass

from nats.aio.msg import Msg

from civicsignals.common.bus import ConsumerSpec, PermanentError
from civicsignals.common.events import CloudEvent, SignalClassified, make_event, read_data
from civicsignals.common.inbox import claim
from civicsignals.common.outbox import enqueue
from civicsignals.common.runtime import ServiceRuntime
from civicsignals.routing import service
from civicsignals.routing.rules import RulesCache, RulesError

CONSUMER = "routing-signal-classified"


@dataclass
class RoutingContext:
    runtime: ServiceRuntime
    rules: RulesCache


async def route_signal(ctx: RoutingContext, event: CloudEvent) -> bool:
    """Open the case for a classified signal; False when it was routed before (a redelivery)."""
    classified = read_data(event, SignalClassified)
    tenant_config = ctx.runtime.tenants.get(event.tenant)
    if tenant_config is None:
        raise PermanentError(f"unknown tenant {event.tenant!r}")
    try:
        rules = ctx.rules.get(event.tenant, set(tenant_config.departments) or None)
    except RulesError as exc:
        raise PermanentError(str(exc)) from exc
    async with ctx.runtime.sessions() as session, session.begin():
        if not await claim(session, CONSUMER, event.id):
            return False
        if await service.case_for_signal(session, classified.signal_id) is not None:
            return False
        case, history, events = service.open_case(event.tenant, classified, rules)
        session.add(case)
        await session.flush()
        session.add(history)
        for subject, data in events:
            enqueue(session, subject, make_event(tenant=event.tenant, service="routing", data=data))
    ctx.runtime.events_committed()
    return True


def consumers(ctx: RoutingContext) -> list[ConsumerSpec]:
    async def on_classified(event: CloudEvent, _msg: Msg) -> None:
        await route_signal(ctx, event)

    return [ConsumerSpec(CONSUMER, SignalClassified.subscription(), on_classified)]
