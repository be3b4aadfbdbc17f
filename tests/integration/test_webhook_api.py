"""The partner API over real HTTP, every answer checked against the OpenAPI document."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate as validate_spec
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from standardwebhooks import Webhook

from tests.integration.webhook_helpers import (
    KEY_A,
    KEY_B,
    Receiver,
    make_event,
    make_settings,
    serve_receiver,
)
from warnsvc.security.keys import KeyRing, Partner, RateLimiter, hash_key
from warnsvc.service import Components, build_components
from warnsvc.web.api import event_schema, make_api, openapi_document
from warnsvc.web.app import json_errors

DOC = openapi_document()
REGISTRY = Registry().with_resources(
    [
        ("urn:openapi", DRAFT202012.create_resource(DOC)),
        (event_schema()["$id"], DRAFT202012.create_resource(event_schema())),
    ]
)
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = DOC
        for part in node_ref(node_ref_stack.pop()):
            node = node[part]
    return node


node_ref_stack: list[str] = []


def node_ref(ref: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in ref.removeprefix("#/").split("/")]


def response_schema(method: str, template: str, status: int) -> dict[str, Any] | None:
    """The schema the document gives for this answer (None when it has no body)."""
    operation = DOC["paths"][template][method.lower()]
    responses = operation["responses"]
    assert str(status) in responses, f"{method} {template} -> {status} is not documented"
    response = responses[str(status)]
    if "$ref" in response:
        node_ref_stack.append(response["$ref"])
        response = _resolve(response)
    content = response.get("content")
    if content is None:
        return None
    return {"$ref": "urn:openapi#" + _pointer(method, template, status, content)}


def _pointer(method: str, template: str, status: int, content: dict[str, Any]) -> str:
    schema = content["application/json"]["schema"]
    if "$ref" in schema:
        return str(schema["$ref"]).removeprefix("#")
    escaped = template.replace("~", "~0").replace("/", "~1")
    return f"/paths/{escaped}/{method.lower()}/responses/{status}/content/application~1json/schema"


def check(method: str, template: str, status: int, body: Any) -> None:
    schema = response_schema(method, template, status)
    if schema is not None:
        validator = jsonschema.Draft202012Validator(
            schema, registry=REGISTRY, format_checker=jsonschema.FormatChecker()
        )
        validator.validate(body)


def request_schema_validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        {"$ref": f"urn:openapi#/components/schemas/{name}"}, registry=REGISTRY
    )


class Api:
    """A client that checks every JSON answer against the document."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client

    async def call(
        self,
        method: str,
        template: str,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        json: Any = None,
        data: Any = None,
        query: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        path = template
        for key, value in (params or {}).items():
            path = path.replace("{" + key + "}", value)
        async with self.client.request(
            method, "/api/v1" + path, headers=headers, json=json, data=data, params=query
        ) as response:
            body = await response.json() if response.content_type == "application/json" else None
            self.last_headers = response.headers
            if template in DOC["paths"]:
                check(method, template, response.status, body)
            return response.status, body


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Components]:
    components = await build_components(
        make_settings(tmp_path, rate_limit="{requests: 1000, per: 1m}", max_body="2KiB")
    )
    yield components
    await components.close()


@pytest.fixture
async def receiver(aiohttp_server) -> Receiver:
    return await serve_receiver(aiohttp_server)


@pytest.fixture
async def api(parts: Components, aiohttp_client) -> Api:
    assert parts.webhooks is not None
    root = web.Application(middlewares=[json_errors])
    root.add_subapp("/api/v1", make_api(parts.webhooks.api(parts.dispatcher.wake)))
    return Api(await aiohttp_client(root))


async def create(api: Api, url: str, headers: dict[str, str] = A, **body: Any) -> dict[str, Any]:
    status, created = await api.call(
        "POST", "/endpoints", headers=headers, json={"url": url, **body}
    )
    assert status == 201, created
    return created  # type: ignore[no-any-return]


# -- the document --------------------------------------------------------------------------------


def test_the_document_is_openapi_3_1_and_its_schemas_are_valid() -> None:
    assert DOC["openapi"].startswith("3.1")
    for name, schema in DOC["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema), name
    jsonschema.Draft202012Validator.check_schema(event_schema())


def test_the_document_passes_openapi_spec_validator() -> None:
    validate_spec(DOC)  # every $ref resolves within the document, as OpenAPI tools read it


def test_the_documents_event_is_the_event_schema() -> None:
    """The document's Event is event.schema.json, its level a component of its own: an
    embedded ``$id`` and ``#/$defs/...`` refs are not resolved that way by OpenAPI tools."""
    standalone = event_schema()
    components = DOC["components"]["schemas"]
    assert components["Level"] == standalone["$defs"]["level"]
    text = json.dumps({k: v for k, v in standalone.items() if k not in ("$schema", "$id", "$defs")})
    assert components["Event"] == json.loads(
        text.replace('"#/$defs/level"', '"#/components/schemas/Level"')
    )
    validator = jsonschema.Draft202012Validator(
        {"$ref": "urn:openapi#/components/schemas/Event"},
        registry=REGISTRY,
        format_checker=jsonschema.FormatChecker(),
    )
    payload = make_event().payload()
    validator.validate(payload)
    jsonschema.validate(payload, standalone)
    assert not validator.is_valid({**payload, "level": {"id": "x", "name": "X", "rank": 0}})


def test_every_route_is_documented_and_every_documented_path_exists(parts: Components) -> None:
    assert parts.webhooks is not None
    app = make_api(parts.webhooks.api(lambda: None))
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if route.method != "HEAD":
            routes.add((route.method.lower(), path))
    documented = {
        (method, path)
        for path, item in DOC["paths"].items()
        for method in item
        if method in ("get", "post", "patch", "delete", "put")
    }
    assert routes == documented


def test_request_examples_match_the_request_schemas() -> None:
    for name in ("EndpointCreate", "EndpointUpdate", "Redeliver"):
        for example in DOC["components"]["schemas"][name]["examples"]:
            request_schema_validator(name).validate(example)


# -- authentication and limits -------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": KEY_A}, {"Authorization": "Basic x"}],
)
async def test_a_missing_or_wrong_key_gets_401_and_nothing_else(
    api: Api, headers: dict[str, str]
) -> None:
    status, body = await api.call("GET", "/endpoints", headers=headers)
    assert status == 401
    assert body == {"error": {"status": 401, "message": "unauthorized"}}
    assert api.last_headers["WWW-Authenticate"] == "Bearer"


async def test_the_openapi_document_and_event_schema_are_served_without_a_key(api: Api) -> None:
    async with api.client.get("/api/v1/openapi.json") as response:
        assert response.status == 200
        assert await response.json() == DOC
    async with api.client.get("/api/v1/schemas/event.json") as response:
        assert response.status == 200
        assert await response.json(content_type=None) == event_schema()


async def test_one_partner_cannot_see_or_touch_anothers_endpoints(
    api: Api, receiver: Receiver
) -> None:
    mine = await create(api, receiver.url("/a"))
    params = {"endpoint_id": mine["id"]}
    for method, template, body in [
        ("GET", "/endpoints/{endpoint_id}", None),
        ("PATCH", "/endpoints/{endpoint_id}", {"enabled": False}),
        ("DELETE", "/endpoints/{endpoint_id}", None),
        ("POST", "/endpoints/{endpoint_id}/rotate-secret", None),
        ("POST", "/endpoints/{endpoint_id}/test", None),
        ("GET", "/endpoints/{endpoint_id}/deliveries", None),
        ("POST", "/endpoints/{endpoint_id}/redeliver", {"since": "2026-01-01T00:00:00Z"}),
    ]:
        status, answer = await api.call(method, template, params=params, headers=B, json=body)
        assert status == 404, (method, template, answer)
    status, listed = await api.call("GET", "/endpoints", headers=B)
    assert (status, listed) == (200, {"data": []})
    status, still = await api.call("GET", "/endpoints/{endpoint_id}", params=params, headers=A)
    assert status == 200 and still["enabled"] is True


async def test_each_key_is_rate_limited(tmp_path: Path, aiohttp_client) -> None:
    partners = [Partner(id="p", name="P", contact=None, key_sha256=hash_key(KEY_A))]
    components = await build_components(make_settings(tmp_path))
    try:
        assert components.webhooks is not None
        handlers = components.webhooks.api(components.dispatcher.wake)
        handlers.keys = KeyRing(partners)
        handlers.limiter = RateLimiter(3, 60)
        root = web.Application(middlewares=[json_errors])
        root.add_subapp("/api/v1", make_api(handlers))
        api = Api(await aiohttp_client(root))
        codes = [(await api.call("GET", "/endpoints", headers=A))[0] for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        assert int(api.last_headers["Retry-After"]) >= 1
    finally:
        await components.close()


def test_keys_are_compared_by_digest_and_never_shown() -> None:
    partner = Partner(id="p", name="P", contact=None, key_sha256=hash_key(KEY_A))
    ring = KeyRing([partner])
    assert ring.authenticate(KEY_A) is partner
    assert ring.authenticate(KEY_A[:-1]) is None
    assert ring.authenticate("") is None
    assert KEY_A not in repr(partner) and hash_key(KEY_A) not in repr(partner)


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field", "fragment"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[]", None, "JSON object"),
        (b'{"url": "https://example.org/", "colour": "red"}', "colour", "unknown field"),
        (b'{"description": "x"}', "url", "missing"),
        (b'{"url": 5}', "url", "string"),
        (b'{"url": "https://example.org/", "enabled": "yes"}', "enabled", "bool"),
        (
            b'{"url": "https://example.org/", "filters": {"event_types": ["nope"]}}',
            "filters.event_types[0]",
            "risk.escalated",
        ),
        (
            b'{"url": "https://example.org/", "filters": {"levels": []}}',
            "filters.levels",
            "unknown field",
        ),
    ],
)
async def test_bad_bodies_get_400_naming_the_field(
    api: Api, data: bytes, field: str | None, fragment: str
) -> None:
    status, body = await api.call(
        "POST", "/endpoints", headers={**A, "Content-Type": "application/json"}, data=data
    )
    assert status == 400
    assert body["error"].get("field") == field
    assert fragment in body["error"]["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"description": "situation\x00room"}, "description"),  # NUL
        ({"description": "\x1b[2J\x1b[31mALL CLEAR\x1b[0m"}, "description"),  # terminal escapes
        ({"description": "a\x9b31mb"}, "description"),  # C1 CSI
        ({"description": "two\nlines"}, "description"),
        ({"description": "bell\x07"}, "description"),
        ({"description": "abc\u202edcb"}, "description"),  # right-to-left override
        ({"description": "line\u2028break"}, "description"),
        ({"filters": {"situations": ["gcr2p:sudan", "gcr2p:\x1b[1m"]}}, "filters.situations[1]"),
        ({"filters": {"sources": ["gcr2p\x7f"]}}, "filters.sources[0]"),
        ({"filters": {"min_level": "imminent-risk\x00"}}, "filters.min_level"),
    ],
)
async def test_control_characters_in_a_text_field_get_400_naming_it(
    api: Api, receiver: Receiver, body: dict[str, Any], field: str
) -> None:
    new = {"url": receiver.url("/hook"), **body}
    assert not request_schema_validator("EndpointCreate").is_valid(new)  # as documented
    status, answer = await api.call("POST", "/endpoints", headers=A, json=new)
    assert status == 400, answer
    assert answer["error"]["field"] == field
    assert "control characters" in answer["error"]["message"]
    assert (await api.call("GET", "/endpoints", headers=A))[1] == {"data": []}  # nothing stored

    created = await create(api, receiver.url("/hook"), description="before")
    params = {"endpoint_id": created["id"]}
    status, answer = await api.call(
        "PATCH", "/endpoints/{endpoint_id}", params=params, headers=A, json=body
    )
    assert (status, answer["error"]["field"]) == (400, field)
    status, after = await api.call("GET", "/endpoints/{endpoint_id}", params=params, headers=A)
    assert after == {k: v for k, v in created.items() if k != "secret"}  # nothing changed


@pytest.mark.parametrize(
    "tail",
    [
        "/crlf\r\nX-Injected: 1",
        "/lf\nX-Injected: 1",
        "/a b",
        "/tab\there",
        "/trailing ",
        "/nul\x00",
        "/esc\x1b[0m",
        "/nbsp\u00a0",
        "/ideographic\u3000space",
        "/rlo\u202e",
    ],
)
async def test_whitespace_or_control_characters_in_a_url_get_400(
    api: Api, receiver: Receiver, tail: str
) -> None:
    url = receiver.url(tail)
    assert not request_schema_validator("EndpointCreate").is_valid({"url": url})
    status, answer = await api.call("POST", "/endpoints", headers=A, json={"url": url})
    assert status == 400, answer
    assert answer["error"]["field"] == "url"
    assert "whitespace or control characters" in answer["error"]["message"]
    status, answer = await api.call("POST", "/endpoints", headers=A, json={"url": " " + url})
    assert (status, answer["error"]["field"]) == (400, "url")  # leading blanks too
    assert (await api.call("GET", "/endpoints", headers=A))[1] == {"data": []}

    created = await create(api, receiver.url("/hook"))
    params = {"endpoint_id": created["id"]}
    status, answer = await api.call(
        "PATCH", "/endpoints/{endpoint_id}", params=params, headers=A, json={"url": url}
    )
    assert (status, answer["error"]["field"]) == (400, "url")
    status, after = await api.call("GET", "/endpoints/{endpoint_id}", params=params, headers=A)
    assert after["url"] == receiver.url("/hook")


async def test_ordinary_unicode_text_is_kept(api: Api, receiver: Receiver) -> None:
    text = "Salle de crise — غرفة\u200fالطوارئ 👩\u200d💻 ✓"  # RLM and ZWJ are not controls
    created = await create(
        api, receiver.url("/hook"), description=text, filters={"situations": ["gcr2p:côte"]}
    )
    assert created["description"] == text
    assert created["filters"]["situations"] == ["gcr2p:côte"]
    body = {"url": receiver.url("/hook"), "description": text}
    request_schema_validator("EndpointCreate").validate(body)  # the document agrees


@pytest.mark.parametrize(
    "body",
    [{"url": None}, {"description": None}, {"filters": None}, {"enabled": None}],
    ids=["url", "description", "filters", "enabled"],
)
async def test_a_null_in_a_patch_gets_400_naming_the_field(
    api: Api, receiver: Receiver, body: dict[str, Any]
) -> None:
    created = await create(api, receiver.url("/hook"), description="kept")
    params = {"endpoint_id": created["id"]}
    assert not request_schema_validator("EndpointUpdate").is_valid(body)
    status, answer = await api.call(
        "PATCH", "/endpoints/{endpoint_id}", params=params, headers=A, json=body
    )
    assert status == 400, answer
    [field] = body
    assert answer["error"]["field"] == field
    assert "must not be null" in answer["error"]["message"]
    status, after = await api.call("GET", "/endpoints/{endpoint_id}", params=params, headers=A)
    assert after == {k: v for k, v in created.items() if k != "secret"}


async def test_a_null_min_level_still_clears_it(api: Api, receiver: Receiver) -> None:
    created = await create(api, receiver.url("/hook"), filters={"min_level": "imminent-risk"})
    params = {"endpoint_id": created["id"]}
    status, updated = await api.call(
        "PATCH",
        "/endpoints/{endpoint_id}",
        params=params,
        headers=A,
        json={"filters": {"min_level": None}},
    )
    assert status == 200 and updated["filters"]["min_level"] is None


@pytest.mark.parametrize(
    ("method", "path", "allow", "headers"),
    [
        ("PUT", "/endpoints", "GET,HEAD,POST", A),
        ("DELETE", "/endpoints", "GET,HEAD,POST", A),
        ("POST", "/endpoints/ep_x", "DELETE,GET,HEAD,PATCH", A),
        ("GET", "/endpoints/ep_x/test", "POST", A),
        ("PUT", "/endpoints/ep_x/deliveries/1/redeliver", "POST", A),
        ("POST", "/openapi.json", "GET,HEAD", {}),  # public: no key needed to learn it
    ],
)
async def test_a_method_a_path_does_not_have_gets_405_with_allow(
    api: Api, method: str, path: str, allow: str, headers: dict[str, str]
) -> None:
    async with api.client.request(method, "/api/v1" + path, headers=headers) as response:
        assert response.status == 405
        assert response.headers["Allow"] == allow
        body = await response.json()
    jsonschema.validate(body, DOC["components"]["schemas"]["Error"])
    assert body["error"]["status"] == 405
    assert method in body["error"]["message"]
    assert allow.replace(",", ", ") in body["error"]["message"]


async def test_a_405_asks_for_the_key_first(api: Api) -> None:
    async with api.client.put("/api/v1/endpoints") as response:
        assert response.status == 401  # "a wrong or missing key gets 401 and nothing more"
        assert "Allow" not in response.headers


async def test_an_oversized_body_gets_413(api: Api) -> None:
    big = {"url": "https://example.org/", "description": "x" * 4000}
    status, body = await api.call("POST", "/endpoints", headers=A, json=big)
    assert status == 413 and "larger than" in body["error"]["message"]


@pytest.mark.parametrize(
    "url",
    [
        "http://example.org/hook",  # not https
        "https://10.1.2.3/hook",  # private
        "https://169.254.169.254/latest/meta-data/",  # link-local (cloud metadata)
        "https://[::1]/hook",  # loopback v6
        "https://[::ffff:10.0.0.1]/hook",  # IPv4-mapped private
        "https://224.0.0.1/hook",  # multicast
        "https://240.0.0.1/hook",  # reserved
        "https://user:pw@example.org/hook",  # credentials
        "ftp://example.org/",
        "https://nonexistent.invalid/hook",  # does not resolve
    ],
)
async def test_unsafe_urls_are_refused_with_422(api: Api, url: str) -> None:
    status, body = await api.call("POST", "/endpoints", headers=A, json={"url": url})
    assert status == 422, body
    assert body["error"]["field"] == "url"


async def test_loopback_needs_the_operators_allow_list(tmp_path: Path, aiohttp_client) -> None:
    components = await build_components(make_settings(tmp_path, allow_networks="[]"))
    try:
        assert components.webhooks is not None
        root = web.Application(middlewares=[json_errors])
        root.add_subapp("/api/v1", make_api(components.webhooks.api(lambda: None)))
        api = Api(await aiohttp_client(root))
        for url in ("https://127.0.0.1/hook", "https://localhost/hook"):
            status, body = await api.call("POST", "/endpoints", headers=A, json={"url": url})
            assert status == 422 and "not a public address" in body["error"]["message"]
    finally:
        await components.close()


async def test_an_unknown_min_level_is_refused_with_422(api: Api, receiver: Receiver) -> None:
    body = {"url": receiver.url("/x"), "filters": {"min_level": "dire"}}
    status, answer = await api.call("POST", "/endpoints", headers=A, json=body)
    assert status == 422 and answer["error"]["field"] == "filters.min_level"


# -- the life of an endpoint --------------------------------------------------------------------


async def test_create_read_update_list_and_delete(api: Api, receiver: Receiver) -> None:
    example = DOC["components"]["schemas"]["EndpointCreate"]["examples"][0]
    created = await create(
        api, receiver.url("/hook"), **{k: v for k, v in example.items() if k != "url"}
    )
    assert created["secret"].startswith("whsec_")
    assert created["filters"]["min_level"] == "imminent-risk"
    params = {"endpoint_id": created["id"]}

    status, read = await api.call("GET", "/endpoints/{endpoint_id}", params=params, headers=A)
    assert status == 200 and "secret" not in read
    assert read == {k: v for k, v in created.items() if k != "secret"}

    change = {"description": "changed", "filters": {"situations": ["gcr2p:sudan"]}}
    request_schema_validator("EndpointUpdate").validate(change)
    status, updated = await api.call(
        "PATCH", "/endpoints/{endpoint_id}", params=params, headers=A, json=change
    )
    assert status == 200
    assert updated["description"] == "changed" and updated["url"] == created["url"]
    assert updated["filters"] == {
        "event_types": [],
        "situations": ["gcr2p:sudan"],
        "sources": [],
        "min_level": None,
    }
    status, _ = await api.call(
        "PATCH",
        "/endpoints/{endpoint_id}",
        params=params,
        headers=A,
        json={"url": "https://10.0.0.1/"},
    )
    assert status == 422

    status, listed = await api.call("GET", "/endpoints", headers=A)
    assert [e["id"] for e in listed["data"]] == [created["id"]]

    status, _ = await api.call("DELETE", "/endpoints/{endpoint_id}", params=params, headers=A)
    assert status == 204
    status, _ = await api.call("GET", "/endpoints/{endpoint_id}", params=params, headers=A)
    assert status == 404


async def test_deleting_an_endpoint_drops_its_pending_deliveries(
    tmp_path: Path, aiohttp_client, receiver: Receiver
) -> None:
    """As docs/webhooks.md says: nothing is sent, dead-lettered or reported to operators."""
    settings = make_settings(tmp_path, "operators: {dead_letters: 1}\n")
    components = await build_components(settings)
    try:
        assert components.webhooks is not None and components.notices is not None
        root = web.Application(middlewares=[json_errors])
        root.add_subapp("/api/v1", make_api(components.webhooks.api(lambda: None)))
        api = Api(await aiohttp_client(root))
        gone = await create(api, receiver.url("/gone"))
        kept = await create(api, receiver.url("/kept"))
        for n in (1, 2):
            event = make_event(f"evt_000000000000{n}")
            await components.store.record_event(event, components.poller.recipients)
        params = {"endpoint_id": gone["id"]}
        status, _ = await api.call("DELETE", "/endpoints/{endpoint_id}", params=params, headers=A)
        assert status == 204

        await components.dispatcher.drain()

        assert receiver.paths() == ["/kept", "/kept"]
        counts = await components.store.outbox.counts()
        assert counts[("webhooks", "delivered")] == 2
        assert ("webhooks", "dead") not in counts
        assert await components.store.endpoints.deliveries(gone["id"]) == []
        assert await components.notices.check_dead_letters(now=datetime.now(UTC)) == 0
        assert await components.store.notices.recent(limit=10) == []
        params = {"endpoint_id": kept["id"]}
        status, page = await api.call(
            "GET", "/endpoints/{endpoint_id}/deliveries", params=params, headers=A
        )
        assert [d["status"] for d in page["data"]] == ["delivered", "delivered"]
    finally:
        await components.close()


async def test_test_event_rotation_deliveries_and_redelivery(
    api: Api, parts: Components, receiver: Receiver
) -> None:
    created = await create(api, receiver.url("/hook"))
    params = {"endpoint_id": created["id"]}

    status, sent = await api.call("POST", "/endpoints/{endpoint_id}/test", params=params, headers=A)
    assert status == 202
    await parts.dispatcher.drain()
    [got] = receiver.received
    payload = Webhook(created["secret"]).verify(got.body, got.headers)
    assert payload["type"] == "webhook.test" and payload["id"] == sent["event_id"]
    jsonschema.validate(payload, event_schema())

    status, rotated = await api.call(
        "POST", "/endpoints/{endpoint_id}/rotate-secret", params=params, headers=A
    )
    assert status == 200 and rotated["secret"] != created["secret"]
    assert rotated["previous_secret_expires_at"] is not None
    await api.call("POST", "/endpoints/{endpoint_id}/test", params=params, headers=A)
    await parts.dispatcher.drain()
    latest = receiver.received[-1]
    Webhook(rotated["secret"]).verify(latest.body, latest.headers)
    Webhook(created["secret"]).verify(latest.body, latest.headers)  # grace period

    status, page = await api.call(
        "GET", "/endpoints/{endpoint_id}/deliveries", params=params, headers=A
    )
    assert status == 200
    assert [d["status"] for d in page["data"]] == ["delivered", "delivered"]
    assert page["data"][1]["id"] == sent["delivery_id"]
    assert page["data"][0]["response_status"] == 204 and page["data"][0]["attempts"] == 1
    status, _ = await api.call(
        "GET",
        "/endpoints/{endpoint_id}/deliveries",
        params=params,
        headers=A,
        query={"limit": "1"},
    )
    status, paged = await api.call(
        "GET",
        "/endpoints/{endpoint_id}/deliveries",
        params=params,
        headers=A,
        query={"limit": "1", "before": str(page["data"][0]["id"])},
    )
    assert [d["id"] for d in paged["data"]] == [sent["delivery_id"]]
    status, bad = await api.call(
        "GET",
        "/endpoints/{endpoint_id}/deliveries",
        params=params,
        headers=A,
        query={"status": "lost"},
    )
    assert status == 400 and bad["error"]["field"] == "status"

    one = {**params, "delivery_id": str(sent["delivery_id"])}
    status, queued = await api.call(
        "POST",
        "/endpoints/{endpoint_id}/deliveries/{delivery_id}/redeliver",
        params=one,
        headers=A,
    )
    assert (status, queued) == (202, {"queued": 1})
    status, _ = await api.call(
        "POST",
        "/endpoints/{endpoint_id}/deliveries/{delivery_id}/redeliver",
        params=one,
        headers=A,
    )
    assert status == 409  # still pending
    await parts.dispatcher.drain()
    assert len(receiver.received) == 3
    assert receiver.received[-1].headers["webhook-id"] == sent["event_id"]  # same id: dedupe


async def test_redeliver_everything_dead_lettered_since_a_time(
    api: Api, parts: Components, receiver: Receiver
) -> None:
    created = await create(api, receiver.url("/hook"))
    params = {"endpoint_id": created["id"]}
    receiver.replies["/hook"] = (400, {})
    for _ in range(2):
        await api.call("POST", "/endpoints/{endpoint_id}/test", params=params, headers=A)
    async with parts.store.engine.begin() as conn:  # as if the whole schedule had passed
        from sqlalchemy import update

        from warnsvc.store import schema

        await conn.execute(update(schema.outbox).values(status="dead", attempts=20))
    receiver.replies.pop("/hook")
    since = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    status, queued = await api.call(
        "POST",
        "/endpoints/{endpoint_id}/redeliver",
        params=params,
        headers=A,
        json={"since": since},
    )
    assert (status, queued) == (202, {"queued": 2})
    await parts.dispatcher.drain()
    assert len(receiver.received) == 2
    status, bad = await api.call(
        "POST",
        "/endpoints/{endpoint_id}/redeliver",
        params=params,
        headers=A,
        json={"since": "2026-01-01T00:00:00"},
    )
    assert status == 400 and bad["error"]["field"] == "since"  # a time zone is required


async def test_static_endpoints_are_read_only_for_their_partner(
    tmp_path: Path, aiohttp_client, receiver: Receiver
) -> None:
    secret = "whsec_" + "A" * 43 + "="
    extra = f"""  endpoints:
    - {{id: situation-room, partner: ngo-a, url: "{receiver.url("/static")}", secret: "{secret}"}}
"""
    components = await build_components(make_settings(tmp_path, extra))
    try:
        assert components.webhooks is not None
        root = web.Application(middlewares=[json_errors])
        root.add_subapp("/api/v1", make_api(components.webhooks.api(lambda: None)))
        api = Api(await aiohttp_client(root))
        status, listed = await api.call("GET", "/endpoints", headers=A)
        [static] = listed["data"]
        assert static["id"] == "cfg_situation-room" and static["static"] is True
        params = {"endpoint_id": static["id"]}
        status, _ = await api.call(
            "PATCH", "/endpoints/{endpoint_id}", params=params, headers=A, json={"enabled": False}
        )
        assert status == 409
        status, _ = await api.call(
            "POST", "/endpoints/{endpoint_id}/test", params=params, headers=A
        )
        assert status == 202
        await components.dispatcher.drain()
        [got] = receiver.received
        Webhook(secret).verify(got.body, got.headers)
    finally:
        await components.close()


async def test_a_partner_has_an_endpoint_limit(tmp_path: Path, aiohttp_client) -> None:
    components = await build_components(make_settings(tmp_path, max_endpoints=1))
    try:
        assert components.webhooks is not None
        root = web.Application(middlewares=[json_errors])
        root.add_subapp("/api/v1", make_api(components.webhooks.api(lambda: None)))
        api = Api(await aiohttp_client(root))
        await create(api, "https://127.0.0.1/one")
        status, body = await api.call(
            "POST", "/endpoints", headers=A, json={"url": "https://127.0.0.1/two"}
        )
        assert status == 409 and re.search("at most 1", body["error"]["message"])
    finally:
        await components.close()
