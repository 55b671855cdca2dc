"""schemathesis against intake's own OpenAPI document, in-process over ASGI.

Every operation gets a bounded number of generated requests (with a valid key of the tenant, so
the handlers run rather than only the 401 path); the checks: never a 5xx, every status code is
documented, every response has a documented content type, and every JSON body matches its schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from civicsignals.devstack.nats import NatsServer
from civicsignals.intake.app import create_app
from civicsignals.intake.settings import IntakeSettings

from .conftest import GOUDA_ORIGIN, write_tenant_files
from .test_access_case_notes import routing_stand_in_on_a_thread

KEY: dict[str, str] = {}


@pytest.fixture
def intake_schema(nats_server: NatsServer, make_tenant: Any, tmp_path: Path) -> Iterator[Any]:
    tenant = make_tenant("gouda")
    write_tenant_files(tenant.folder, GOUDA_ORIGIN)
    KEY["authorization"] = f"Bearer {tenant.key}"
    # The access document asks notifier for the mails of the fuzzed signals (they have no case:
    # routing is not asked): a stand-in answers, so the route's own answers are what is checked.
    with routing_stand_in_on_a_thread(tmp_path / "data") as notifier:
        settings = IntakeSettings(
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'fuzz.db'}",
            nats_url=nats_server.url,
            tenants_dir=tenant.tenants_dir,
            data_dir=tmp_path / "data",
            open311_default_jurisdiction="gouda",
            rate_limit_burst=100_000,
            public_rate_limit_burst=100_000,
            notifier_url=notifier.url,
        )
        app = create_app(settings)
        try:
            yield schemathesis.openapi.from_asgi("/openapi.json", app)
        finally:
            asgi.shutdown_lifespans()


schema = schemathesis.pytest.from_fixture("intake_schema")


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors_and_every_response_matches_the_schema(case: Any) -> None:
    case.call_and_validate(
        headers={"Authorization": KEY["authorization"]},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
