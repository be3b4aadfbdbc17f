"""Webhook delivery against a real loopback receiver: signing, filters, retries, limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from sqlalchemy import select
from standardwebhooks import Webhook, WebhookVerificationError

from tests.integration.webhook_helpers import Receiver, make_event, make_settings, serve_receiver
from warnsvc.channels.webhooks import retry_after_seconds
from warnsvc.filters import Filter as Filters
from warnsvc.model import Event, EventType
from warnsvc.service import Components, build_components
from warnsvc.store import schema
from warnsvc.store.webhooks import filters_of
from warnsvc.web.api import event_schema


@pytest.fixture
async def receiver(aiohttp_server) -> Receiver:
    return await serve_receiver(aiohttp_server)


async def open_parts(tmp_path: Path, **webhooks: Any) -> Components:
    return await build_components(make_settings(tmp_path, **webhooks))


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Components]:
    components = await open_parts(tmp_path)
    yield components
    await components.close()


async def emit(parts: Components, *events: Event) -> None:
    for event in events:
        await parts.store.record_event(event, parts.poller.recipients, now=datetime.now(UTC))


async def add(parts: Components, url: str, *, filters: Filters | None = None, partner="ngo-a"):
    assert parts.webhooks is not None
    return await parts.webhooks.endpoints.create(
        url=url, partner_id=partner, filters=filters, now=datetime.now(UTC)
    )


async def rows(parts: Components) -> list[dict[str, Any]]:
    async with parts.store.engine.connect() as conn:
        query = select(schema.outbox).where(schema.outbox.c.channel == "webhooks")
        return [dict(r) for r in (await conn.execute(query.order_by("id"))).mappings()]


async def test_a_delivery_is_signed_per_standard_webhooks_and_matches_the_schema(
    parts: Components, receiver: Receiver
) -> None:
    endpoint, secret = await add(parts, receiver.url("/hook"))
    assert secret.startswith("whsec_")
    await emit(parts, make_event())

    assert await parts.dispatcher.drain() == 2  # the feeds row and the webhook row

    [got] = receiver.received
    assert got.headers["webhook-id"] == "evt_0000000000001"
    assert got.headers["Content-Type"] == "application/json"
    payload = Webhook(secret).verify(got.body, got.headers)  # the official library
    jsonschema.validate(payload, event_schema(), format_checker=jsonschema.FormatChecker())
    assert payload == make_event().payload()
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(got.body + b" ", got.headers)
    [row] = await rows(parts)
    assert (row["status"], row["attempts"], row["last_status"]) == ("delivered", 1, 204)
    assert row["recipient"] == endpoint.id


async def test_after_rotation_both_secrets_verify_during_the_grace_period(
    parts: Components, receiver: Receiver
) -> None:
    assert parts.webhooks is not None
    endpoint, old = await add(parts, receiver.url("/hook"))
    rotated = await parts.webhooks.endpoints.rotate(endpoint.id, grace=3600, now=datetime.now(UTC))
    assert rotated is not None
    _, new = rotated
    await emit(parts, make_event())
    await parts.dispatcher.drain()
    [got] = receiver.received
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(got.body, got.headers)
    Webhook(new).verify(got.body, got.headers)

    await parts.webhooks.endpoints.rotate(endpoint.id, grace=0, now=datetime.now(UTC))
    await emit(parts, make_event("evt_0000000000002"))
    await parts.dispatcher.drain()
    latest = receiver.received[-1]
    assert len(latest.headers["webhook-signature"].split(" ")) == 1
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(latest.body, latest.headers)


async def test_filters_choose_the_endpoints_of_each_event(
    parts: Components, receiver: Receiver
) -> None:
    await add(parts, receiver.url("/all"))
    await add(parts, receiver.url("/escalations"), filters=Filters(event_types=("risk.escalated",)))
    await add(parts, receiver.url("/mali"), filters=Filters(situations=("gcr2p:mali",)))
    await add(parts, receiver.url("/other-source"), filters=Filters(sources=("cap",)))
    await add(parts, receiver.url("/crisis"), filters=Filters(min_level="current-crisis"))
    await add(parts, receiver.url("/gdacs-red"), filters=Filters(min_level="red"))

    await emit(
        parts,
        make_event("evt_1"),  # sudan escalated to current crisis
        make_event(
            "evt_2",
            type_=EventType.LISTED,
            situation="gcr2p:mali",
            level="serious-concern",
            previous=None,
        ),
        make_event(
            "evt_3", type_=EventType.DEESCALATED, level="imminent-risk", previous="current-crisis"
        ),
    )
    await parts.dispatcher.drain()

    seen: dict[str, set[str]] = {}
    for item in receiver.received:
        seen.setdefault(item.path, set()).add(item.headers["webhook-id"])
    assert seen == {
        "/all": {"evt_1", "evt_2", "evt_3"},
        "/escalations": {"evt_1"},
        "/mali": {"evt_2"},
        "/crisis": {"evt_1", "evt_3"},  # either side of the change
    }


async def test_410_disables_the_endpoint_and_records_notices(
    parts: Components, receiver: Receiver
) -> None:
    assert parts.webhooks is not None
    endpoint, _ = await add(parts, receiver.url("/gone"))
    receiver.replies["/gone"] = (410, {})
    await emit(parts, make_event())
    await parts.dispatcher.drain()

    [row] = await rows(parts)
    assert (row["status"], row["last_status"]) == ("dead", 410)
    assert len(receiver.received) == 1  # never retried
    stored = await parts.webhooks.endpoints.get(endpoint.id)
    assert stored is not None and not stored.enabled and "410" in (stored.disabled_reason or "")
    notices = await parts.store.notices.recent(kind="webhook.endpoint_disabled")
    assert {n.recipient for n in notices} == {None, "ops@ngo-a.example"}  # None: the operators

    await emit(parts, make_event("evt_0000000000002"))  # a disabled endpoint gets no new rows
    assert len(await rows(parts)) == 1


async def test_429_waits_for_retry_after_on_the_persisted_schedule(
    parts: Components, receiver: Receiver
) -> None:
    await add(parts, receiver.url("/busy"))
    receiver.replies["/busy"] = (429, {"Retry-After": "600"})
    await emit(parts, make_event())
    before = datetime.now(UTC)
    await parts.dispatcher.drain()

    assert len(receiver.received) == 1  # no quick retry on 429
    [row] = await rows(parts)
    assert (row["status"], row["attempts"], row["last_status"]) == ("pending", 1, 429)
    assert row["next_attempt_at"] >= before + timedelta(seconds=599)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after_seconds("120", now=now) == 120
    assert retry_after_seconds("Thu, 01 Jan 2026 00:02:00 GMT", now=now) == 120
    assert retry_after_seconds("soon", now=now) is None
    assert retry_after_seconds(None, now=now) is None


async def test_errors_get_quick_retries_then_the_schedule_then_dead_letter(
    tmp_path: Path, receiver: Receiver
) -> None:
    parts = await open_parts(
        tmp_path, quick_retries=2, retry="{initial: 0.1s, cap: 0.1s, max_attempts: 2}"
    )
    try:
        endpoint, _ = await add(parts, receiver.url("/down"))
        receiver.replies["/down"] = (503, {})
        await emit(parts, make_event())
        await parts.dispatcher.drain()
        assert len(receiver.received) == 3  # one attempt and two quick retries
        [row] = await rows(parts)
        assert (row["status"], row["attempts"], row["last_error"]) == ("pending", 1, "HTTP 503")

        await asyncio.sleep(0.15)
        await parts.dispatcher.drain()
        [row] = await rows(parts)
        assert (row["status"], row["attempts"]) == ("dead", 2)
        assert len(receiver.received) == 6
        # a whole schedule failed with no success between: the endpoint is disabled
        assert parts.webhooks is not None
        stored = await parts.webhooks.endpoints.get(endpoint.id)
        assert stored is not None and not stored.enabled
        assert "failed attempts in a row" in (stored.disabled_reason or "")

        # fixed receiver, enabled again, redeliver what was dead-lettered
        receiver.replies.pop("/down")
        await parts.webhooks.endpoints.update(endpoint.id, enabled=True, now=datetime.now(UTC))
        since = datetime.now(UTC) - timedelta(minutes=1)
        queued = await parts.webhooks.endpoints.redeliver_dead(
            endpoint.id, since=since, now=datetime.now(UTC)
        )
        assert queued == 1
        await parts.dispatcher.drain()
        [row] = await rows(parts)
        assert row["status"] == "delivered"
    finally:
        await parts.close()


async def test_timeouts_are_failures_and_redirects_are_not_followed(
    tmp_path: Path, receiver: Receiver
) -> None:
    parts = await open_parts(tmp_path, timeout="0.3s", quick_retries=0, lease="10s")
    try:
        await add(parts, receiver.url("/slow"))
        await add(parts, receiver.url("/moved"))
        receiver.replies["/moved"] = (302, {"Location": receiver.url("/elsewhere")})
        receiver.delays["/slow"] = 1.0
        await emit(parts, make_event())
        await parts.dispatcher.drain()
        by_recipient = {r["last_error"] for r in await rows(parts)}
        assert by_recipient == {"timed out after 0.3s", "HTTP 302"}
        assert "/elsewhere" not in receiver.paths()
    finally:
        await parts.close()


async def test_send_time_guard_refuses_a_host_that_resolves_to_loopback(
    tmp_path: Path, receiver: Receiver
) -> None:
    # Registered when allowed, then the operator removed the allow-list: sends are refused.
    parts = await open_parts(tmp_path, allow_networks="[]", quick_retries=0)
    try:
        port = receiver.base.rsplit(":", 1)[1]
        await add(parts, f"http://localhost:{port}/hook")
        await add(parts, f"https://127.0.0.1:{port}/hook")
        await emit(parts, make_event())
        await parts.dispatcher.drain()
        errors = [str(r["last_error"]) for r in await rows(parts)]
        assert all("SSRF guard" in e for e in errors), errors
        assert receiver.received == []
    finally:
        await parts.close()


async def test_concurrency_is_bounded_overall_and_per_endpoint(
    tmp_path: Path, receiver: Receiver
) -> None:
    parts = await open_parts(tmp_path, concurrency=6, per_endpoint=2)
    try:
        for n in range(4):
            await add(parts, receiver.url(f"/e{n}"))
        receiver.delay = 0.05
        await emit(parts, *(make_event(f"evt_{i:04d}") for i in range(8)))
        await parts.dispatcher.drain()
        assert len(receiver.received) == 32
        assert max(receiver.peak.values()) <= 2
        assert receiver.peak_total <= 6
        assert max(receiver.peak.values()) == 2  # and the limits are actually used
    finally:
        await parts.close()


async def test_shutdown_releases_rows_in_flight_within_the_grace(
    tmp_path: Path, receiver: Receiver
) -> None:
    parts = await open_parts(tmp_path)
    parts.dispatcher.grace = 0.3
    try:
        for n in range(3):
            await add(parts, receiver.url(f"/h{n}"))
        receiver.hang = True
        await emit(parts, make_event())
        task = asyncio.create_task(parts.dispatcher.run())
        for _ in range(100):
            if len(receiver.received) == 3:
                break
            await asyncio.sleep(0.02)
        assert len(receiver.received) == 3
        started = asyncio.get_running_loop().time()
        parts.dispatcher.stop()
        await asyncio.wait_for(task, timeout=3)
        assert asyncio.get_running_loop().time() - started < 1.5
        states = {(r["status"], r["attempts"], r["lease_until"]) for r in await rows(parts)}
        assert states == {("pending", 0, None)}  # released untouched, due again at once
    finally:
        await parts.close()


async def test_a_deleted_endpoint_drops_its_rows(parts: Components, receiver: Receiver) -> None:
    assert parts.webhooks is not None
    endpoint, _ = await add(parts, receiver.url("/hook"))
    await emit(parts, make_event())
    await parts.webhooks.endpoints.delete(endpoint.id)
    await parts.dispatcher.drain()
    assert await rows(parts) == []
    assert receiver.received == []


async def test_a_row_routed_just_before_its_endpoint_was_deleted_is_dropped(
    parts: Components, receiver: Receiver
) -> None:
    """An event whose routes were read before a delete can add a row after it: the channel
    drops that row instead of dead-lettering it."""
    assert parts.webhooks is not None
    endpoint, _ = await add(parts, receiver.url("/hook"))
    await parts.webhooks.endpoints.delete(endpoint.id)
    await parts.store.record_event(make_event(), {"webhooks": [endpoint.id]})  # the late row
    await parts.dispatcher.drain()
    assert await rows(parts) == []
    assert receiver.received == []
    assert ("webhooks", "dead") not in await parts.store.outbox.counts()


def test_the_payload_schema_accepts_every_event_type() -> None:
    for type_ in EventType:
        payload = json.loads(make_event(type_=type_).payload_json())
        jsonschema.validate(payload, event_schema())


def senders() -> list[asyncio.Task[object]]:
    return [
        t
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "") == "WebhookChannel._sender"
    ]


async def test_one_pool_of_senders_keeps_the_limits_across_parallel_batches(
    tmp_path: Path, receiver: Receiver
) -> None:
    parts = await open_parts(tmp_path, concurrency=5, per_endpoint=2, batch=7, parallel_batches=3)
    try:
        secrets = {}
        for n in range(3):
            _, secrets[f"/p{n}"] = await add(parts, receiver.url(f"/p{n}"))
        receiver.delay = 0.02
        await emit(parts, *(make_event(f"evt_{i:04d}") for i in range(10)))
        assert await parts.dispatcher.drain() == 10 + 30  # feeds rows and webhook rows
        assert len(receiver.received) == 30
        assert max(receiver.peak.values()) == 2
        assert receiver.peak_total <= 5
        for got in receiver.received:  # each signed with its own endpoint's secret
            Webhook(secrets[got.path]).verify(got.body, got.headers)
        assert {r["status"] for r in await rows(parts)} == {"delivered"}
        assert senders() == []  # an idle channel holds no task
    finally:
        await parts.close()


async def test_a_cancelled_batch_stops_its_sends_and_leaves_the_others_going(
    tmp_path: Path, receiver: Receiver
) -> None:
    parts = await open_parts(tmp_path, concurrency=2, per_endpoint=1)
    try:
        assert parts.webhooks is not None
        channel = parts.webhooks.channel
        hang, _ = await add(parts, receiver.url("/hang"))
        await add(parts, receiver.url("/ok"))
        receiver.delays["/hang"] = 3600
        await emit(parts, make_event("evt_1"), make_event("evt_2"))
        claimed = await parts.dispatcher.outbox.claim("webhooks", now=datetime.now(UTC))
        stuck = [d for d in claimed if d.recipient == hang.id]
        other = [d for d in claimed if d.recipient != hang.id]
        assert (len(stuck), len(other)) == (2, 2)

        first = asyncio.create_task(channel.deliver(stuck))
        for _ in range(100):
            if receiver.paths():
                break
            await asyncio.sleep(0.01)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        outcomes = await asyncio.wait_for(channel.deliver(other), timeout=5)
        assert [o.ok for o in outcomes] == [True, True]
        await asyncio.sleep(0)
        assert senders() == []
        assert receiver.paths().count("/hang") == 1  # the second row of /hang never started
    finally:
        await parts.close()


def test_stored_filters_are_parsed_once_per_distinct_text() -> None:
    raw = '{"event_types": ["risk.escalated"], "situations": [], "min_level": null}'
    assert filters_of(raw) is filters_of(raw)
    assert filters_of(raw) == Filters(event_types=("risk.escalated",))
    assert filters_of(None) == filters_of("{}") == Filters()
