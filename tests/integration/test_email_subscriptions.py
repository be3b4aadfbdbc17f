"""Self-service subscriptions over HTTP: double opt-in, one-click unsubscribe, bad input."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select, update

from tests.integration.email_harness import Harness, make_event, options
from tests.smtp_sink import Sink, free_port, start_sink
from warnsvc.model import GCR2P_SCALE
from warnsvc.store import schema
from warnsvc.store.db import Store
from warnsvc.web.app import make_app
from warnsvc.web.subscriptions import MAX_BODY, SubscriptionPages, add_subscription_routes

Client = TestClient[Any, Any]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'warnsvc.db'}")
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def sink(port: int) -> Iterator[Sink]:
    handler = Sink()
    controller = start_sink(handler, port)
    try:
        yield handler
    finally:
        controller.stop()


@pytest.fixture
async def harness(store: Store, port: int) -> AsyncIterator[Harness]:
    built = Harness.build(store, options(port))
    try:
        yield built
    finally:
        await built.mailer.close()


async def ready(replica_only: bool = False) -> tuple[bool, dict[str, Any]]:
    return True, {}


def pages(harness: Harness, **changes: Any) -> SubscriptionPages:
    values: dict[str, Any] = {
        "subscribers": harness.store.subscribers,
        "templates": harness.mailer.templates,
        "service_name": "warnsvc",
        "scales": {GCR2P_SCALE.id: GCR2P_SCALE},
        "sources": {"gcr2p": "Global Centre for the Responsibility to Protect"},
        "digest_hour": 7,
        "confirm_within": 3600.0,
        "resend_after": 600.0,
        "requests_per_minute": 100,
        **changes,
    }
    return SubscriptionPages(**values)


@pytest.fixture
async def client(aiohttp_client: Any, harness: Harness, tmp_path: Path) -> Client:
    app = make_app(feeds_dir=tmp_path, readiness=ready)
    add_subscription_routes(app, pages(harness))
    result: Client = await aiohttp_client(app)
    return result


async def confirmations(harness: Harness) -> int:
    table = schema.email_confirmations
    async with harness.store.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


def link(sink: Sink, kind: str) -> str:
    text = sink.received[-1].message().get_body(("plain",))
    assert text is not None
    found = re.search(
        rf"https://alerts\.example\.org(/email/{kind}\?token=[\w-]+)", text.get_content()
    )
    assert found is not None
    return found.group(1)


async def subscribe(client: Client, **body: Any) -> Any:
    return await client.post("/api/v1/subscriptions", json={"address": "ana@example.org", **body})


# --------------------------------------------------------------------------- double opt-in


async def test_double_opt_in_then_one_click_unsubscribe(
    client: Client, harness: Harness, sink: Sink
) -> None:
    response = await subscribe(client, name="Ana", min_level="imminent-risk")
    assert response.status == 202
    assert (await response.json())["status"] == "pending_confirmation"

    await harness.emit(make_event("evt_before"))  # not confirmed yet: nothing for Ana
    assert await harness.rows() == []
    assert await harness.worker.send_confirmations() == 1
    [received] = sink.received
    msg = received.message()
    assert received.rcpt_tos == ["ana@example.org"]
    assert msg["Subject"] == "Confirm your subscription to warnsvc alerts"
    assert msg["To"] == "Ana <ana@example.org>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "Imminent Risk and above" in msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    confirm = link(sink, "confirm")

    page = await client.get(confirm)  # a link scanner's GET changes nothing
    assert page.status == 200 and "<button" in await page.text()
    assert await harness.rows() == []
    token = confirm.split("token=")[1]
    done = await client.post("/email/confirm", data={"token": token})
    assert done.status == 200 and "Subscription confirmed" in await done.text()

    await harness.emit(make_event("evt_after"))
    await harness.dispatcher.drain()
    assert [r.rcpt_tos for r in sink.received[1:]] == [["ana@example.org"]]
    mail = sink.received[-1].message()
    assert mail["Subject"].startswith("[Imminent Risk ↑]")
    one_click = mail["List-Unsubscribe"].strip("<>").removeprefix("https://alerts.example.org")

    bye = await client.post(one_click, data="List-Unsubscribe=One-Click")
    assert bye.status == 200 and "Unsubscribed" in await bye.text()
    again = await client.post(one_click, data="List-Unsubscribe=One-Click")
    assert again.status == 200 and "Already unsubscribed" in await again.text()
    await harness.emit(make_event("evt_gone"))
    assert [r["event_id"] for r in await harness.rows()] == ["evt_after"]


async def test_the_confirmation_link_works_once(
    client: Client, harness: Harness, sink: Sink
) -> None:
    await subscribe(client)
    await harness.worker.send_confirmations()
    token = link(sink, "confirm").split("token=")[1]
    assert (await client.post("/email/confirm", data={"token": token})).status == 200
    reused = await client.post("/email/confirm", data={"token": token})
    assert reused.status == 410 and "already been used" in await reused.text()
    assert (await client.get(f"/email/confirm?token={token}")).status == 410


async def test_forged_and_expired_tokens_get_a_page_and_change_nothing(
    client: Client, harness: Harness, sink: Sink
) -> None:
    await subscribe(client)
    await harness.worker.send_confirmations()
    token = link(sink, "confirm").split("token=")[1]
    for forged in ("x" * 43, "", "../../etc", "a" * 500):
        response = await client.post("/email/confirm", data={"token": forged})
        assert response.status == 404
        assert "not valid. Nothing was changed" in await response.text()
        assert response.content_type == "text/html"
        assert (await client.post(f"/email/unsubscribe?token={forged}")).status == 404
    table = schema.email_confirmations
    async with harness.store.engine.begin() as conn:
        await conn.execute(update(table).values(expires_at=datetime.now(UTC) - timedelta(1)))
    expired = await client.post("/email/confirm", data={"token": token})
    assert expired.status == 410 and "expired" in await expired.text()
    assert await harness.store.subscribers.subscriber_by_address("ana@example.org") is None


async def test_a_confirmation_link_can_withdraw_the_request(
    client: Client, harness: Harness, sink: Sink
) -> None:
    await subscribe(client)
    await harness.worker.send_confirmations()
    void = link(sink, "unsubscribe")
    assert (await client.post(void, data="List-Unsubscribe=One-Click")).status == 200
    token = link(sink, "confirm").split("token=")[1]
    assert (await client.post("/email/confirm", data={"token": token})).status == 410


async def test_repeated_requests_send_one_confirmation(
    client: Client, harness: Harness, sink: Sink
) -> None:
    for _ in range(5):
        assert (await subscribe(client)).status == 202
    assert (await subscribe(client, address="ANA@Example.org")).status == 202
    await harness.worker.send_confirmations()
    assert len(sink.received) == 1
    assert await confirmations(harness) == 1


async def test_a_client_that_floods_is_told_to_wait(
    aiohttp_client: Any, harness: Harness, tmp_path: Path
) -> None:
    app = make_app(feeds_dir=tmp_path, readiness=ready)
    add_subscription_routes(app, pages(harness, requests_per_minute=3))
    client: Client = await aiohttp_client(app)
    statuses = [(await subscribe(client, address=f"r{n}@example.org")).status for n in range(5)]
    assert statuses == [202, 202, 202, 429, 429]
    response = await subscribe(client)
    assert int(response.headers["Retry-After"]) > 0
    assert (await response.json())["error"]["status"] == 429
    assert await confirmations(harness) == 3


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"address": "not-an-address"}, "address"),
        ({"address": "ana@example.org\r\nBcc: all@example.org"}, "address"),
        ({"address": "ana@example.org", "name": "Ana\r\nBcc: all@example.org"}, "name"),
        ({"address": "ana@example.org", "name": "Ana\nX"}, "name"),
        ({"address": "ana@example.org", "mode": "hourly"}, "mode"),
        ({"address": "ana@example.org", "min_level": "apocalypse"}, "min_level"),
        ({"address": "ana@example.org", "sources": ["nope"]}, "sources.0"),
        ({"address": "ana@example.org", "event_types": ["webhook.test"]}, "event_types.0"),
        ({"address": "ana@example.org", "situations": ["Sudan!"]}, "situations.0"),
        ({"address": "ana@example.org", "admin": True}, "admin"),
        ({"address": 42}, "address"),
        ({}, "address"),
        (["ana@example.org"], "body"),
    ],
)
async def test_bad_requests_get_400_naming_the_field_and_queue_nothing(
    client: Client, harness: Harness, body: Any, field: str
) -> None:
    response = await client.post("/api/v1/subscriptions", json=body)
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["status"] == 400 and error["field"] == field
    assert error["message"].startswith(f"{field}: ")
    assert await confirmations(harness) == 0


async def test_malformed_and_oversized_bodies_are_400(client: Client, harness: Harness) -> None:
    cases = [
        ("{not json", "application/json"),
        (json.dumps({"address": "a@example.org", "name": "x" * MAX_BODY}), "application/json"),
        ("address=a@example.org", "application/x-www-form-urlencoded"),
        (b"\xff\xfe", "application/json"),
    ]
    for data, content_type in cases:
        response = await client.post(
            "/api/v1/subscriptions", data=data, headers={"Content-Type": content_type}
        )
        assert response.status == 400, data
        assert (await response.json())["error"]["field"] == "body"
    too_big = await client.post(
        "/api/v1/subscriptions", data=b"x" * 200_000, headers={"Content-Type": "application/json"}
    )
    assert too_big.status in (400, 413)
    assert await confirmations(harness) == 0


# --------------------------------------------------------------------------- the form


async def test_the_form_subscribes_and_shows_errors(
    client: Client, harness: Harness, sink: Sink
) -> None:
    page = await client.get("/subscribe")
    html = await page.text()
    assert page.status == 200 and '<form method="post" action="/subscribe">' in html
    assert "Imminent Risk" in html

    bad = await client.post("/subscribe", data={"address": "<script>@x", "mode": "immediate"})
    text = await bad.text()
    assert bad.status == 400 and "address:" in text and "<script>" not in text
    assert await confirmations(harness) == 0

    good = await client.post(
        "/subscribe",
        data={
            "address": "ben@example.org",
            "name": "Ben",
            "mode": "digest",
            "min_level": "current-crisis",
            "situations": "gcr2p:sudan, gcr2p:ukraine",
            "event_types": ["risk.escalated", "situation.listed"],
        },
    )
    assert good.status == 200 and "Check your inbox" in await good.text()
    await harness.worker.send_confirmations()
    token = link(sink, "confirm").split("token=")[1]
    await client.post("/email/confirm", data={"token": token})
    ben = await harness.subscriber("ben@example.org")
    assert ben.mode == "digest" and ben.name == "Ben"
    assert ben.filters.situations == ("gcr2p:sudan", "gcr2p:ukraine")
    assert ben.filters.min_level == "current-crisis"
    assert ben.filters.event_types == ("risk.escalated", "situation.listed")


async def test_signup_can_be_switched_off(
    aiohttp_client: Any, harness: Harness, tmp_path: Path
) -> None:
    app = make_app(feeds_dir=tmp_path, readiness=ready)
    add_subscription_routes(app, pages(harness, signup=False))
    client: Client = await aiohttp_client(app)
    assert (await subscribe(client)).status in (404, 405)
    assert (await client.get("/subscribe")).status == 404
    assert (await client.get("/email/unsubscribe?token=x")).status == 404  # still served


def _unused(app: web.Application) -> None:
    del app
