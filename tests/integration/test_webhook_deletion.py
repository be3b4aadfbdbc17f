"""Deleting a webhook endpoint drops its deliveries not yet made, on SQLite and PostgreSQL.

docs/webhooks.md promises the partner that ``DELETE /endpoints/{id}`` drops the endpoint's
pending deliveries: none may be sent, dead-lettered or counted among the dead letters the
operators are told about. Rows already delivered or dead stay as history.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from tests.integration.webhook_helpers import make_event
from warnsvc.outbox import DEAD, DELIVERED, IN_FLIGHT, PENDING, RetryDecision
from warnsvc.store import schema
from warnsvc.store.db import Store
from warnsvc.store.webhooks import WEBHOOKS_CHANNEL

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(database_url)
    yield opened
    await opened.close()


async def webhook_rows(store: Store) -> list[tuple[str, str, str]]:
    """(recipient, event id, status) of every webhook row, by id."""
    outbox = schema.outbox
    query = (
        select(outbox.c.recipient, outbox.c.event_id, outbox.c.status)
        .where(outbox.c.channel == WEBHOOKS_CHANNEL)
        .order_by(outbox.c.id)
    )
    async with store.engine.connect() as conn:
        return [(r, e, s) for r, e, s in (await conn.execute(query)).all()]


async def test_deleting_an_endpoint_drops_its_pending_and_in_flight_rows_only(
    store: Store,
) -> None:
    gone, _ = await store.endpoints.create(url="https://a.example/", partner_id="p", now=T0)
    kept, _ = await store.endpoints.create(url="https://b.example/", partner_id="p", now=T0)
    for n in range(1, 5):
        event = make_event(f"evt_000000000000{n}")
        await store.record_event(event, {WEBHOOKS_CHANNEL: [gone.id]}, now=T0)
    await store.record_event(make_event("evt_0000000000005"), {WEBHOOKS_CHANNEL: [kept.id]}, now=T0)
    first, second, _third = await store.outbox.claim(WEBHOOKS_CHANNEL, now=T0, limit=3)
    await store.outbox.complete([first.id], now=T0, status=204)
    await store.outbox.fail(second, error="HTTP 500", decision=RetryDecision(retry_at=None), now=T0)
    # now: delivered, dead, in flight (a dispatcher holds it), pending; and one for ``kept``
    assert [s for _, _, s in await webhook_rows(store)] == [
        DELIVERED,
        DEAD,
        IN_FLIGHT,
        PENDING,
        PENDING,
    ]
    dead_before = (await store.outbox.counts())[(WEBHOOKS_CHANNEL, DEAD)]

    assert await store.endpoints.delete(gone.id) is True

    assert await webhook_rows(store) == [
        (gone.id, "evt_0000000000001", DELIVERED),  # history stays
        (gone.id, "evt_0000000000002", DEAD),
        (kept.id, "evt_0000000000005", PENDING),  # another endpoint's rows are untouched
    ]
    # Long after any lease: nothing of the deleted endpoint is claimed again, sent or
    # dead-lettered, and the dead letters the operators hear about did not grow.
    later = T0 + timedelta(days=2)
    claimed = await store.outbox.claim(WEBHOOKS_CHANNEL, now=later, limit=100)
    assert [d.recipient for d in claimed] == [kept.id]
    counts = await store.outbox.counts()
    assert counts[(WEBHOOKS_CHANNEL, DEAD)] == dead_before
    assert (WEBHOOKS_CHANNEL, PENDING) not in counts
    assert await store.outbox.oldest_pending() == {WEBHOOKS_CHANNEL: T0}  # kept's row only
    assert await store.endpoints.get(gone.id) is None
    assert await store.endpoints.delete(gone.id) is False  # gone already: nothing to drop


async def test_a_dispatcher_finishing_a_row_of_a_deleted_endpoint_changes_nothing(
    store: Store,
) -> None:
    endpoint, _ = await store.endpoints.create(url="https://a.example/", partner_id="p", now=T0)
    for n in (1, 2):
        event = make_event(f"evt_000000000000{n}")
        await store.record_event(event, {WEBHOOKS_CHANNEL: [endpoint.id]}, now=T0)
    one, two = await store.outbox.claim(WEBHOOKS_CHANNEL, now=T0, limit=10)

    await store.endpoints.delete(endpoint.id)  # while the dispatcher holds both rows

    dead = RetryDecision(retry_at=None)
    await store.outbox.fail(one, error="endpoint deleted", decision=dead, now=T0)
    await store.outbox.complete([two.id], now=T0, status=204)
    await store.outbox.release([one.id, two.id], now=T0)
    assert await webhook_rows(store) == []  # neither delivered nor dead: gone


async def test_rows_left_for_a_deleted_endpoint_can_be_dropped_by_id(store: Store) -> None:
    """An event recorded while its endpoint was being deleted may still add a row: the
    sender drops such rows with ``drop_orphans`` instead of dead-lettering them."""
    endpoint, _ = await store.endpoints.create(url="https://a.example/", partner_id="p", now=T0)
    routes = {WEBHOOKS_CHANNEL: ["ep_gone", endpoint.id]}
    in_flight, kept = await store.record_event(make_event("evt_0000000000001"), routes, now=T0)
    gone = {WEBHOOKS_CHANNEL: ["ep_gone"]}
    (pending,) = await store.record_event(make_event("evt_0000000000002"), gone, now=T0)
    (dead,) = await store.record_event(make_event("evt_0000000000003"), gone, now=T0)
    claimed = {d.id: d for d in await store.outbox.claim(WEBHOOKS_CHANNEL, now=T0, limit=10)}
    await store.outbox.release([pending], now=T0)
    await store.outbox.fail(claimed[dead], error="x", decision=RetryDecision(retry_at=None), now=T0)

    assert await store.endpoints.drop_orphans([in_flight, kept, pending, dead]) == 2

    assert await webhook_rows(store) == [
        (endpoint.id, "evt_0000000000001", IN_FLIGHT),  # its endpoint exists
        ("ep_gone", "evt_0000000000003", DEAD),  # already dead: history
    ]
    assert await store.endpoints.drop_orphans([]) == 0
