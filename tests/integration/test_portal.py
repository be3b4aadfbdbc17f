"""The partner portal over HTTP: its gate (API key, throttling, cookie, CSRF), what a partner
sees of its own endpoints and nobody else's, and its operations, which are the API's: a test
ping reaches a loopback receiver signed as Standard Webhooks."""

from __future__ import annotations

import html
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from standardwebhooks import Webhook

from tests.integration.webhook_helpers import KEY_A, KEY_B, Receiver, make_settings, serve_receiver
from warnsvc.config import Settings
from warnsvc.service import Components, build_components
from warnsvc.web.api import WebhookApi, make_api
from warnsvc.web.app import make_app
from warnsvc.web.portal import Portal, portal_secret
from warnsvc.web.security import CSP

Client = TestClient[Any, Any]
SECRET = re.compile(r'<code class="secret" id="new-secret">(whsec_[^<]+)</code>')


async def ready(replica_only: bool = False) -> tuple[bool, dict[str, Any]]:
    return True, {}


def with_base(settings: Settings, base_url: str) -> Settings:
    service = settings.service.model_copy(update={"base_url": base_url})
    return settings.model_copy(update={"service": service})


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Components]:
    components = await build_components(
        make_settings(tmp_path, rate_limit="{requests: 1000, per: 1m}", secret_grace="2h")
    )
    yield components
    await components.close()


@pytest.fixture
def api(parts: Components) -> WebhookApi:
    assert parts.webhooks is not None
    return parts.webhooks.api(parts.dispatcher.wake)


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Receiver:
    return await serve_receiver(aiohttp_server)


async def portal_client(
    aiohttp_client: Any, parts: Components, api: WebhookApi, base: str = "http://127.0.0.1:8080"
) -> Client:
    settings = with_base(parts.settings, base)
    portal = Portal(api=api, settings=lambda: settings, secret=b"a server secret of 32 bytes....")
    app = make_app(feeds_dir=parts.settings.feeds.dir, readiness=ready, routes=portal.routes())
    app.add_subapp("/api/v1", make_api(api))
    client: Client = await aiohttp_client(app)
    return client


@pytest.fixture
async def client(aiohttp_client: Any, parts: Components, api: WebhookApi) -> Client:
    return await portal_client(aiohttp_client, parts, api)


async def register(client: Client, url: str, key: str = KEY_A, **body: Any) -> dict[str, Any]:
    """An endpoint registered through ``/api/v1``, with its secret."""
    response = await client.post(
        "/api/v1/endpoints", json={"url": url, **body}, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status == 201, await response.text()
    created: dict[str, Any] = await response.json()
    return created


async def sign_in(client: Client, key: str = KEY_A) -> str:
    """Sign in; the CSRF token of the session's forms."""
    response = await client.post("/partners/login", data={"api_key": key}, allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/partners"
    page = await (await client.get("/partners")).text()
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


def test_without_a_configured_secret_each_process_makes_its_own() -> None:
    given = "a portal secret shared by the replicas"
    assert portal_secret({"WARNSVC_PORTAL_SECRET": given}) == given.encode()
    one, two = portal_secret({}), portal_secret({"WARNSVC_PORTAL_SECRET": "short"})
    assert len(one) == len(two) == 32 and one != two


async def test_a_wrong_key_is_refused_and_the_right_one_sets_a_strict_cookie(
    aiohttp_client: Any, parts: Components, api: WebhookApi, caplog: pytest.LogCaptureFixture
) -> None:
    client = await portal_client(aiohttp_client, parts, api, "https://alerts.example.org")
    caplog.set_level(logging.DEBUG)
    login = await client.get("/partners")
    assert login.status == 200 and "API key" in await login.text()
    assert login.headers["Cache-Control"] == "no-store"
    assert login.headers["Content-Security-Policy"] == CSP
    assert login.headers["Referrer-Policy"] == "no-referrer"
    wrong = await client.post("/partners/login", data={"api_key": KEY_A + "x"})
    assert wrong.status == 403 and "That API key is not right." in await wrong.text()
    assert "Set-Cookie" not in wrong.headers
    elsewhere = await client.post(
        "/partners/login", data={"api_key": KEY_A}, headers={"Origin": "https://evil.example"}
    )
    assert elsewhere.status == 403 and "Set-Cookie" not in elsewhere.headers
    right = await client.post("/partners/login", data={"api_key": KEY_A}, allow_redirects=False)
    assert right.status == 303 and right.headers["Cache-Control"] == "no-store"
    cookie = right.headers["Set-Cookie"]
    assert cookie.startswith("warnsvc_partner=") and KEY_A not in cookie
    for flag in ("HttpOnly", "Path=/partners", "SameSite=Strict", "Secure"):
        assert flag in cookie
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "portal sign-in refused" in logged and "ngo-a" in logged
    assert KEY_A not in logged  # neither the right key nor the wrong one


async def test_over_http_the_cookie_is_not_secure_and_pages_are_never_stored(
    client: Client, receiver: Receiver
) -> None:
    await register(client, receiver.url("/a"), description="Field <b>office</b> & co")
    response = await client.post("/partners/login", data={"api_key": KEY_A}, allow_redirects=False)
    assert "Secure" not in response.headers["Set-Cookie"]
    page = await client.get("/partners")
    text = await page.text()
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["Content-Security-Policy"] == CSP
    assert "Your webhook endpoints" in text and "Signed in for NGO A" in text
    assert "Field &lt;b&gt;office&lt;/b&gt; &amp; co" in text and "<b>office" not in text
    assert receiver.url("/a") in text and "healthy" in text and "Nothing delivered yet." in text


async def test_failed_sign_ins_are_throttled(client: Client) -> None:
    for _ in range(5):
        wrong = await client.post("/partners/login", data={"api_key": "wrong"})
        assert wrong.status == 403
    throttled = await client.post("/partners/login", data={"api_key": KEY_A})
    assert throttled.status == 429 and int(throttled.headers["Retry-After"]) > 0
    assert "Set-Cookie" not in throttled.headers
    assert "Too many failed attempts" in await throttled.text()


async def test_every_action_needs_the_session_and_its_csrf_token(
    client: Client, api: WebhookApi, receiver: Receiver
) -> None:
    mine = await register(client, receiver.url("/a"))
    action = f"/partners/endpoints/{mine['id']}/test"
    anonymous = await client.post(action, allow_redirects=False)
    assert anonymous.status == 303 and anonymous.headers["Location"] == "/partners"
    csrf = await sign_in(client)
    assert (await client.post(action, data={})).status == 403
    assert (await client.post(action, data={"csrf": csrf + "x"})).status == 403
    elsewhere = await client.post(
        action, data={"csrf": csrf}, headers={"Origin": "https://evil.example"}
    )
    assert elsewhere.status == 403
    assert await api.endpoints.deliveries(mine["id"]) == []  # nothing was sent
    sent = await client.post(action, data={"csrf": csrf}, allow_redirects=False)
    assert sent.status == 303 and "done=" in sent.headers["Location"]
    assert len(await api.endpoints.deliveries(mine["id"])) == 1
    signed_out = await client.post("/partners/logout", data={"csrf": csrf}, allow_redirects=False)
    assert signed_out.status == 303
    after = await client.get("/partners")
    assert "API key" in await after.text()  # the cookie is gone: back to signing in


async def test_another_partners_endpoint_is_not_found(
    client: Client, api: WebhookApi, receiver: Receiver
) -> None:
    theirs = await register(client, receiver.url("/b"), key=KEY_B)
    csrf = await sign_in(client, KEY_A)
    overview = await (await client.get("/partners")).text()
    assert theirs["id"] not in overview and receiver.url("/b") not in overview
    base = f"/partners/endpoints/{theirs['id']}"
    page = await client.get(base)
    assert page.status == 404 and page.headers["Cache-Control"] == "no-store"
    assert receiver.url("/b") not in await page.text()
    for path, form in [
        ("/test", {}),
        ("/rotate-secret", {}),
        ("/redeliver", {"since": "2020-01-01T00:00"}),
        ("/deliveries/1/redeliver", {}),
    ]:
        refused = await client.post(base + path, data={"csrf": csrf, **form})
        assert refused.status == 404, path
    after = await api.endpoints.get(theirs["id"])
    assert after is not None and after.secret == theirs["secret"]
    assert await api.endpoints.deliveries(theirs["id"]) == []


async def test_rotating_shows_the_new_secret_once_with_the_grace_period(
    client: Client, api: WebhookApi, receiver: Receiver
) -> None:
    mine = await register(client, receiver.url("/a"))
    csrf = await sign_in(client)
    path = f"/partners/endpoints/{mine['id']}"
    rotated = await client.post(path + "/rotate-secret", data={"csrf": csrf})
    text = await rotated.text()
    assert rotated.status == 200 and rotated.headers["Cache-Control"] == "no-store"
    found = SECRET.search(text)
    assert found is not None
    secret = html.unescape(found.group(1))
    stored = await api.endpoints.get(mine["id"])
    assert stored is not None and stored.secret == secret != mine["secret"]
    assert stored.previous_secret == mine["secret"]
    assert "keeps signing beside it for 2 h" in text
    again = await (await client.get(path)).text()
    assert secret not in again and "Previous secret" in again  # shown once


async def test_a_test_ping_arrives_signed_and_its_delivery_is_listed(
    client: Client, parts: Components, receiver: Receiver
) -> None:
    mine = await register(client, receiver.url("/hook"), description="Field office")
    csrf = await sign_in(client)
    path = f"/partners/endpoints/{mine['id']}"
    sent = await client.post(path + "/test", data={"csrf": csrf})
    assert sent.status == 200 and "a test event (evt_" in await sent.text()
    await parts.dispatcher.drain()
    [got] = receiver.received
    payload = Webhook(mine["secret"]).verify(got.body, got.headers)
    assert payload["type"] == "webhook.test"
    page = await (await client.get(path)).text()
    assert "webhook.test" in page and "delivered" in page and "HTTP 204" in page
    assert payload["id"] in page

    [delivery] = await parts.store.endpoints.deliveries(mine["id"])
    again = await client.post(
        f"{path}/deliveries/{delivery.id}/redeliver", data={"csrf": csrf}, allow_redirects=False
    )
    assert "queued%20again" in again.headers["Location"]
    await parts.dispatcher.drain()
    assert len(receiver.received) == 2
    Webhook(mine["secret"]).verify(receiver.received[1].body, receiver.received[1].headers)

    dead = await client.post(f"{path}/redeliver", data={"csrf": csrf, "since": "2020-01-01T00:00"})
    assert "0 dead delivery(ies) since 1 Jan 2020, 00:00 UTC queued again" in await dead.text()
    bad = await client.post(f"{path}/redeliver", data={"csrf": csrf, "since": "yesterday"})
    assert "give a date and time" in await bad.text()
