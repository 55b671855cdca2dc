"""The partner registry, delivery log and template preview APIs: auth, tenants, bad input."""

from __future__ import annotations

import httpx
import yaml


async def test_bad_input_is_a_problem_with_a_pointer_and_writes_nothing(
    notifier_factory, make_tenant
) -> None:
    tenant = make_tenant("gouda", scopes=["rules:admin"])
    (tenant.folder / "partners.yaml").write_text(
        yaml.safe_dump({"partners": [{"code": "woonpartners", "name": "Woonpartners Midden-Holland"}]})
    )
    notifier = await notifier_factory(tenant, allow_private_endpoints=False)
    client = notifier.client

    unknown = await client.post("/v1/partners", json={"code": "onbekend"})
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["pointer"] == "/code"
    invalid = await client.post("/v1/partners", json={"code": "Not A Code", "contact_email": "nope"})
    assert invalid.status_code == 422
    assert {e["pointer"] for e in invalid.json()["errors"]} == {"/code", "/contact_email"}
    created = await client.post("/v1/partners", json={"code": "woonpartners"})
    assert created.status_code == 201 and created.json()["name"] == "Woonpartners Midden-Holland"
    again = await client.post("/v1/partners", json={"code": "woonpartners"})
    assert again.status_code == 409 and again.headers["content-type"] == "application/problem+json"

    endpoints = "/v1/partners/woonpartners/endpoints"
    cases = [
        ({"url": "http://127.0.0.1:9/hook"}, "/url"),  # loopback, not allowed by this setting
        ({"url": "ftp://example.org/hook"}, "/url"),
        ({"url": "https://hooks.example/", "event_types": ["signal.received"]}, "/event_types"),
        ({"url": "https://hooks.example/", "secret": "whsec_tooshort"}, "/secret"),
    ]
    for body, pointer in cases:
        response = await client.post(endpoints, json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["errors"][0]["pointer"] == pointer, response.json()
    malformed = await client.post(endpoints, content=b"{", headers={"content-type": "application/json"})
    assert malformed.status_code == 400
    assert (await client.get(endpoints)).json()["items"] == []

    bad_filter = await client.get("/v1/deliveries", params={"status": "lost"})
    assert bad_filter.status_code == 422 and bad_filter.json()["errors"][0]["pointer"] == "/status"


async def test_keys_scopes_and_tenants_are_kept_apart(notifier_factory, make_tenant) -> None:
    gouda = make_tenant("gouda", scopes=["rules:admin"])
    notifier = await notifier_factory(gouda, allow_private_endpoints=True)
    partner = (await notifier.client.post("/v1/partners", json={"code": "woonpartners"})).json()

    other = make_tenant("delft", scopes=["admin"])
    _, reader_key = gouda.add_key(["cases:read"])
    transport = httpx.ASGITransport(app=notifier.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://notifier") as client:
        assert (await client.get("/v1/partners")).status_code == 401
        forbidden = await client.get("/v1/partners", headers={"Authorization": f"Bearer {reader_key}"})
        assert forbidden.status_code == 403
        foreign = await client.get(f"/v1/partners/{partner['id']}", headers=other.authorization)
        assert foreign.status_code == 404
        assert (await client.get("/v1/partners", headers=other.authorization)).json()["items"] == []


async def test_templates_are_listed_and_previewed_with_drafts(notifier_factory, make_tenant) -> None:
    tenant = make_tenant("gouda", scopes=["rules:admin"], name="Gouda")
    (tenant.folder / "templates").mkdir()
    (tenant.folder / "templates" / "status_update.en.txt").write_text(
        "{% block subject %}Update {{ tracking_code }}{% endblock %}{% block body %}Now {{ status_label }}{% endblock %}"
    )
    notifier = await notifier_factory(tenant)
    listed = (await notifier.client.get("/v1/templates")).json()
    sources = {(t["name"], t["language"]): t["source"] for t in listed["items"]}
    assert sources[("status_update", "en")] == "tenant" and sources[("status_update", "nl")] == "default"
    assert "feedback_urls" in listed["variables"]["resolution"]

    stored = await notifier.client.post("/v1/templates/status_update/preview", json={"language": "en"})
    assert stored.status_code == 200 and stored.json()["subject"] == "Update 7KQ2-M9XD-4HTC"
    resolution = (
        await notifier.client.post("/v1/templates/resolution/preview", json={"language": "nl"})
    ).json()
    assert "Gouda" in resolution["text"] and "feedback?score=5" in resolution["html"]
    assert "reopen_within_days" in listed["variables"]["resolution"]
    assert "binnen 30 dagen heropenen" in resolution["text"]
    draft = await notifier.client.post(
        "/v1/templates/acknowledgement/preview",
        json={
            "language": "en",
            "text": "{% block subject %}Hi {{ name }}{% endblock %}{% block body %}{{ service_promise }}{% endblock %}",
            "values": {"name": "Bea"},
        },
    )
    assert draft.json()["subject"] == "Hi Bea" and "5 working days" in draft.json()["text"]
    broken = await notifier.client.post(
        "/v1/templates/acknowledgement/preview", json={"html": "<p>{{ nonexistent_variable }}</p>"}
    )
    assert broken.status_code == 422 and broken.json()["errors"][0]["pointer"] == "/html"
    assert (await notifier.client.post("/v1/templates/nope/preview")).status_code == 404
