"""The console's gate over HTTP: token, throttling, session cookie, CSRF, caching."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.site_data import filled_store
from warnsvc.config import parse_config
from warnsvc.errors import WarnsvcError
from warnsvc.store.db import Store
from warnsvc.web.app import make_app
from warnsvc.web.console import Console, console_token
from warnsvc.web.security import CSP

Client = TestClient[Any, Any]
TOKEN = "a-console-token-of-some-length"


async def ready(replica_only: bool = False) -> tuple[bool, dict[str, Any]]:
    return True, {}


async def refuse(*args: str) -> str:
    raise WarnsvcError(f"refused: {' '.join(args)}")


def make_console(store: Store, base_url: str) -> Console:
    config = parse_config(f"service: {{base_url: '{base_url}'}}\n", filename="test.yaml")
    return Console(
        token=TOKEN,
        store=store,
        settings=lambda: config,
        next_polls=dict,
        poll_now=lambda source: f"{source} is being polled now",
        reloads=lambda: [
            {"result": "ok", "at": "earlier", "problems": [], "restart_needed": ["storage"]},
            {"result": "failed", "at": "now", "problems": ["x: <bad>"]},
        ],
        publish=refuse,
        retract=refuse,
        wake=lambda: None,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with filled_store(tmp_path) as opened:
        yield opened


async def client_for(aiohttp_client: Any, store: Store, tmp_path: Path, base: str) -> Client:
    app = make_app(feeds_dir=tmp_path, readiness=ready, routes=make_console(store, base).routes())
    client: Client = await aiohttp_client(app)
    return client


async def sign_in(client: Client) -> str:
    response = await client.post("/console/login", data={"token": TOKEN}, allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/console"
    page = await (await client.get("/console")).text()
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


def test_the_token_comes_from_the_environment_and_must_be_long() -> None:
    assert console_token({"WARNSVC_CONSOLE_TOKEN": TOKEN}) == TOKEN
    assert console_token({"WARNSVC_CONSOLE_TOKEN": "short"}) is None
    assert console_token({}) is None


async def test_signing_in_sets_a_strict_cookie_and_pages_are_never_stored(
    aiohttp_client: Any, store: Store, tmp_path: Path
) -> None:
    client = await client_for(aiohttp_client, store, tmp_path, "https://alerts.example.org")
    login = await client.get("/console")
    assert login.status == 200 and "Console token" in await login.text()
    assert login.headers["Cache-Control"] == "no-store"
    assert login.headers["Content-Security-Policy"] == CSP
    response = await client.post("/console/login", data={"token": TOKEN}, allow_redirects=False)
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("warnsvc_console=") and TOKEN not in cookie
    for flag in ("HttpOnly", "Path=/console", "SameSite=Strict", "Secure"):
        assert flag in cookie


async def test_over_http_the_cookie_is_not_secure(
    aiohttp_client: Any, store: Store, tmp_path: Path
) -> None:
    client = await client_for(aiohttp_client, store, tmp_path, "http://127.0.0.1:8080")
    response = await client.post("/console/login", data={"token": TOKEN}, allow_redirects=False)
    assert "Secure" not in response.headers["Set-Cookie"]
    console = await client.get("/console")
    text = await console.text()
    assert console.headers["Cache-Control"] == "no-store"
    assert "Operator console" in text and "x: &lt;bad&gt;" in text  # a reload's problems
    # the recent reloads, newest first: the refused one, then the applied one
    assert text.index("refused</strong> at now") < text.index("applied</strong> at earlier")
    assert "Waiting for a restart: storage" in text
    assert "Dead letters" in text and "Sudan (gcr2p:sudan)" in text


async def test_failed_sign_ins_are_throttled(
    aiohttp_client: Any, store: Store, tmp_path: Path
) -> None:
    client = await client_for(aiohttp_client, store, tmp_path, "http://127.0.0.1:8080")
    for _ in range(5):
        wrong = await client.post("/console/login", data={"token": "wrong"})
        assert wrong.status == 403
    throttled = await client.post("/console/login", data={"token": TOKEN})
    assert throttled.status == 429 and int(throttled.headers["Retry-After"]) > 0
    assert "console_session" not in throttled.headers.get("Set-Cookie", "")


async def test_every_action_needs_the_session_and_its_csrf_token(
    aiohttp_client: Any, store: Store, tmp_path: Path
) -> None:
    client = await client_for(aiohttp_client, store, tmp_path, "http://127.0.0.1:8080")
    anonymous = await client.post("/console/sources/gcr2p/poll", allow_redirects=False)
    assert anonymous.status == 303 and anonymous.headers["Location"] == "/console"
    csrf = await sign_in(client)
    missing = await client.post("/console/sources/gcr2p/poll", data={})
    assert missing.status == 403
    forged = await client.post("/console/sources/gcr2p/poll", data={"csrf": csrf + "x"})
    assert forged.status == 403
    elsewhere = await client.post(
        "/console/sources/gcr2p/poll",
        data={"csrf": csrf},
        headers={"Origin": "https://evil.example"},
    )
    assert elsewhere.status == 403
    published = await client.post(
        "/console/publish",
        data={"csrf": csrf, "situation": "gcr2p:sudan", "level": "x", "note": "why"},
        allow_redirects=False,
    )
    assert published.status == 303 and "error=refused" in published.headers["Location"]
    page = await client.get(published.headers["Location"])
    assert "refused: gcr2p:sudan x why" in await page.text()
    signed_out = await client.post("/console/logout", data={"csrf": csrf}, allow_redirects=False)
    assert signed_out.status == 303
    after = await client.post("/console/sources/gcr2p/poll", data={"csrf": csrf})
    assert "Console token" in await after.text()  # the cookie is gone: back to signing in
