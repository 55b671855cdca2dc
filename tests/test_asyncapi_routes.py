"""The AsyncAPI document's publishers and consumers (``asyncapi.ROUTES``) against the services'
real consumer definitions and the code that publishes each event.

Here, not in ``libs/common/tests``, because it reads every service: common must not depend on them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

from civicsignals.common import asyncapi
from civicsignals.common.events import ALL_EVENT_MODELS, EventData, SignalReceived

ROOT = Path(__file__).resolve().parents[1]


def _real_consumers() -> dict[str, str]:
    """Durable name → filter subject of every durable consumer the services define.

    The ``consumers(ctx)`` functions of intake, routing and classifier only keep ``ctx`` in the
    handlers' closures, so they are called without one; notifier's reads ``ctx.wake`` at once, so it
    gets an object with that method. Classifier's batched consumer and insights' consumers are read
    from the constants and the table they are built from.
    """
    from civicsignals.classifier import flows as classifier
    from civicsignals.insights import projection
    from civicsignals.intake import flows as intake
    from civicsignals.notifier import flows as notifier
    from civicsignals.routing import flows as routing

    class _Wakeable:
        def wake(self) -> None:
            """Nothing to wake: the specs are read, never run."""

    specs = [
        *intake.consumers(cast(Any, None)),
        *routing.consumers(cast(Any, None)),
        *classifier.consumers(cast(Any, None)),
        *notifier.consumers(cast(Any, _Wakeable())),
    ]
    found = {spec.durable: spec.filter_subject for spec in specs}
    found[classifier.CONSUMER] = SignalReceived.subscription()  # batching_consumer()'s spec
    found |= {kind.consumer: kind.model.subscription() for kind in projection.EVENT_KINDS}
    return found


def test_routes_name_the_durable_consumers_the_services_run() -> None:
    real = _real_consumers()
    by_subject: dict[str, set[str]] = {}
    for durable, subject in real.items():
        by_subject.setdefault(subject, set()).add(durable)
    documented: set[str] = set()
    for model, route in asyncapi.ROUTES.items():
        assert set(route.consumers) == by_subject.get(model.subscription(), set()), model.event_type()
        documented |= set(route.consumers)
        for durable in route.consumers:
            assert asyncapi.service_of(durable) in {"intake", "classifier", "routing", "notifier", "insights"}
    assert documented == set(real), f"consumers on subjects without an event model: {set(real) - documented}"


def _publishing_services(model: type[EventData]) -> set[str]:
    """Services whose source builds a subject for ``model`` to publish on (``Model.bus_subject(`` or
    ``Model.department_subject(``), or, like notifier, has a helper taking ``type[Model]`` in a module
    that calls ``make_event(``."""
    found = set()
    name = model.__name__
    for src in sorted((ROOT / "services").glob("*/src")):
        service = src.parent.name
        for path in src.rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            # \b: ``SignalErased.`` must not match inside ``DepartmentSignalErased.``
            builds_subject = re.search(rf"\b{name}\.(bus|department)_subject\(", text) is not None
            if builds_subject or ("make_event(" in text and f"type[{name}]" in text):
                found.add(service)
    return found


def test_routes_name_the_service_that_publishes_each_event() -> None:
    for model, route in asyncapi.ROUTES.items():
        assert _publishing_services(model) == {route.publisher}, model.event_type()


def test_routes_cover_every_event_model() -> None:
    assert set(asyncapi.ROUTES) == set(ALL_EVENT_MODELS)
