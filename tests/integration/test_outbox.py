"""The transactional outbox against a real SQLite file: claim, lease, complete, retry, dead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import select

from warnsvc.model import GCR2P_SCALE, Event, EventType
from warnsvc.outbox import (
    DEAD,
    DELIVERED,
    IN_FLIGHT,
    PENDING,
    Delivery,
    RetryDecision,
)
from warnsvc.store import schema
from warnsvc.store.db import Store
from warnsvc.store.outbox import Outbox

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
LEASE = 60.0
HOOK_A = "https://a.example/hook"
HOOK_B = "https://b.example/hook"


def seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


def event(event_id: str) -> Event:
    return Event(
        id=event_id,
        type=EventType.ESCALATED,
        source_id="gcr2p",
        source_name="Global Centre for the Responsibility to Protect",
        situation="gcr2p:nagorno-karabakh",
        situation_name="Nagorno-Karabakh",
        situation_url="https://www.globalr2p.org/countries/nagorno-karabakh/",
        scale="gcr2p",
        level=GCR2P_SCALE.get("imminent-risk"),
        previous_level=GCR2P_SCALE.get("serious-concern"),
        occurred_at=T0.replace(hour=0),
        detected_at=T0,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'warnsvc.db'}")
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def outbox(store: Store) -> Outbox:
    return Outbox(store.engine, lease=LEASE)


async def enqueue(
    store: Store,
    *event_ids: str,
    recipients: dict[str, list[str]] | None = None,
    now: datetime = T0,
) -> None:
    routes = recipients if recipients is not None else {"webhooks": [HOOK_A, HOOK_B]}
    for event_id in event_ids:
        await store.record_event(event(event_id), routes, now=now)


async def rows(store: Store) -> dict[int, dict[str, Any]]:
    async with store.engine.connect() as conn:
        result = await conn.execute(select(schema.outbox).order_by(schema.outbox.c.id))
        return {r["id"]: dict(r) for r in result.mappings().all()}


def ids(deliveries: list[Delivery]) -> list[int]:
    return [d.id for d in deliveries]


# -- claim --------------------------------------------------------------------------------------


async def test_claim_returns_due_rows_with_a_lease(store: Store, outbox: Outbox) -> None:
    await enqueue(store, "evt_1", recipients={"webhooks": [HOOK_A, HOOK_B], "email": ["x@y.z"]})
    assert await outbox.claim("webhooks", now=T0 - seconds(1)) == []  # not due yet
    claimed = await outbox.claim("webhooks", now=T0)
    assert claimed == [
        Delivery(
            id=1,
            event_id="evt_1",
            channel="webhooks",
            recipient=HOOK_A,
            attempts=0,
            payload=event("evt_1").payload(),
        ),
        Delivery(
            id=2,
            event_id="evt_1",
            channel="webhooks",
            recipient=HOOK_B,
            attempts=0,
            payload=event("evt_1").payload(),
        ),
    ]
    stored = await rows(store)
    for row_id in (1, 2):
        assert stored[row_id]["status"] == IN_FLIGHT
        assert stored[row_id]["lease_until"] == T0 + seconds(LEASE)
        assert stored[row_id]["lease_until"].tzinfo is UTC
        assert stored[row_id]["updated_at"] == T0
        assert stored[row_id]["attempts"] == 0
    assert (stored[3]["channel"], stored[3]["status"], stored[3]["lease_until"]) == (
        "email",
        PENDING,
        None,
    )


async def test_claimed_rows_are_not_claimed_again_while_leased(
    store: Store, outbox: Outbox
) -> None:
    await enqueue(store, "evt_1")
    assert ids(await outbox.claim("webhooks", now=T0)) == [1, 2]
    assert await outbox.claim("webhooks", now=T0) == []
    assert await outbox.claim("webhooks", now=T0 + seconds(30)) == []
    assert await outbox.claim("webhooks", now=T0 + seconds(LEASE)) == []  # lease still holds


async def test_expired_lease_is_claimable_again(store: Store, outbox: Outbox) -> None:
    """A process that died mid-delivery: its rows come back once the lease runs out."""
    await enqueue(store, "evt_1")
    assert ids(await outbox.claim("webhooks", now=T0)) == [1, 2]
    later = T0 + seconds(LEASE + 1)
    again = await Outbox(store.engine, lease=LEASE).claim("webhooks", now=later)
    assert ids(again) == [1, 2]
    assert [d.attempts for d in again] == [0, 0]
    stored = await rows(store)
    assert stored[1]["lease_until"] == later + seconds(LEASE)
    assert stored[1]["status"] == IN_FLIGHT


async def test_claim_limit_and_order(store: Store, outbox: Outbox) -> None:
    await enqueue(store, "evt_1", "evt_2")
    first = await outbox.claim("webhooks", now=T0, limit=3)
    assert [(d.id, d.event_id, d.recipient) for d in first] == [
        (1, "evt_1", HOOK_A),
        (2, "evt_1", HOOK_B),
        (3, "evt_2", HOOK_A),
    ]
    assert ids(await outbox.claim("webhooks", now=T0, limit=3)) == [4]
    assert await outbox.claim("email", now=T0) == []


async def test_claim_reads_each_payload_once_per_batch(store: Store, outbox: Outbox) -> None:
    """One UPDATE ... RETURNING claims the rows; each event's payload is read and decoded once."""
    many = [f"https://{n}.example/hook" for n in range(50)]
    await enqueue(store, "evt_1", "evt_2", recipients={"webhooks": many})
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(" ".join(statement.split()))

    sqlalchemy_event.listen(store.engine.sync_engine, "before_cursor_execute", record)
    try:
        claimed = await outbox.claim("webhooks", now=T0, limit=80)
    finally:
        sqlalchemy_event.remove(store.engine.sync_engine, "before_cursor_execute", record)

    assert ids(claimed) == list(range(1, 81))  # in id order
    assert [s.split(" ", 2)[:2] for s in statements] == [
        ["UPDATE", "outbox"],
        ["SELECT", "events.id,"],
    ]
    first = {d.event_id: d.payload for d in claimed}
    assert first == {"evt_1": event("evt_1").payload(), "evt_2": event("evt_2").payload()}
    assert all(d.payload is first[d.event_id] for d in claimed)  # shared, not copied per row
    assert {r["status"] for r in (await rows(store)).values()} == {IN_FLIGHT, PENDING}


async def test_concurrent_claims_never_share_a_row(store: Store, tmp_path: Path) -> None:
    """Two dispatchers (own engines, as two processes would be) racing for the same rows."""
    await enqueue(store, *(f"evt_{n}" for n in range(20)))
    other = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'warnsvc.db'}", migrate=False)
    try:
        first, second = Outbox(store.engine), Outbox(other.engine)
        for round_ in range(5):
            now = T0 + seconds(round_ * 1000)  # every earlier lease has run out
            a, b = await asyncio.gather(
                first.claim("webhooks", now=now, limit=25),
                second.claim("webhooks", now=now, limit=25),
            )
            assert set(ids(a)).isdisjoint(ids(b)), (round_, ids(a), ids(b))
            assert 25 <= len(a) + len(b) <= 40
            stored = await rows(store)
            assert all(stored[i]["lease_until"] == now + seconds(60) for i in ids(a) + ids(b))
    finally:
        await other.close()


# -- outcomes -----------------------------------------------------------------------------------


async def test_complete_marks_delivered(store: Store, outbox: Outbox) -> None:
    await enqueue(store, "evt_1")
    await outbox.claim("webhooks", now=T0)
    done = T0 + seconds(2)
    await outbox.complete([1], now=done, status=204)
    stored = await rows(store)
    assert {k: stored[1][k] for k in ("status", "attempts", "lease_until", "last_status")} == {
        "status": DELIVERED,
        "attempts": 1,
        "lease_until": None,
        "last_status": 204,
    }
    assert stored[1]["delivered_at"] == done
    assert stored[1]["delivered_at"].tzinfo is UTC
    assert stored[1]["updated_at"] == done
    assert stored[2]["status"] == IN_FLIGHT
    # delivered rows are never claimed again, even long after the lease
    assert ids(await outbox.claim("webhooks", now=T0 + timedelta(days=1))) == [2]


async def test_complete_nothing_is_a_no_op(store: Store, outbox: Outbox) -> None:
    await enqueue(store, "evt_1")
    await outbox.complete([], now=T0)
    assert {r["status"] for r in (await rows(store)).values()} == {PENDING}


async def test_fail_with_retry_reschedules(store: Store, outbox: Outbox) -> None:
    await enqueue(store, "evt_1")
    [delivery, _] = await outbox.claim("webhooks", now=T0)
    retry_at = T0 + seconds(45)
    await outbox.fail(
        delivery, error="HTTP 503", decision=RetryDecision(retry_at=retry_at), now=T0, status=503
    )
    stored = (await rows(store))[delivery.id]
    assert {
        k: stored[k] for k in ("status", "attempts", "next_attempt_at", "lease_until", "last_error")
    } == {
        "status": PENDING,
        "attempts": 1,
        "next_attempt_at": retry_at,
        "lease_until": None,
        "last_error": "HTTP 503",
    }
    assert stored["last_status"] == 503
    assert await outbox.claim("webhooks", now=retry_at - seconds(1)) == []
    [again] = await outbox.claim("webhooks", now=retry_at)
    assert (again.id, again.attempts) == (delivery.id, 1)

    await outbox.fail(
        again,
        error="y" * 5000,
        decision=RetryDecision(retry_at=retry_at + seconds(90)),
        now=retry_at,
    )
    stored = (await rows(store))[delivery.id]
    assert (stored["attempts"], stored["last_error"], stored["last_status"]) == (
        2,
        "y" * 2000,
        None,
    )


async def test_fail_with_dead_decision_dead_letters(store: Store, outbox: Outbox) -> None:
    await enqueue(store, "evt_1")
    [delivery, _] = await outbox.claim("webhooks", now=T0)
    await outbox.fail(delivery, error="HTTP 410", decision=RetryDecision(retry_at=None), now=T0)
    stored = (await rows(store))[delivery.id]
    assert (stored["status"], stored["attempts"], stored["lease_until"]) == (DEAD, 1, None)
    assert stored["next_attempt_at"] == T0  # untouched
    # much later only the other row comes back (its lease ran out); a dead row never does
    assert ids(await outbox.claim("webhooks", now=T0 + timedelta(days=30))) == [2]
    assert (await rows(store))[delivery.id]["status"] == DEAD


async def test_release_gives_rows_back(store: Store, outbox: Outbox) -> None:
    await enqueue(store, "evt_1")
    await outbox.claim("webhooks", now=T0)
    await outbox.complete([2], now=T0)
    await outbox.release([1, 2], now=T0 + seconds(5))
    stored = await rows(store)
    assert (stored[1]["status"], stored[1]["lease_until"], stored[1]["attempts"]) == (
        PENDING,
        None,
        0,
    )
    assert stored[1]["updated_at"] == T0 + seconds(5)
    assert stored[2]["status"] == DELIVERED  # only in-flight rows are released
    assert ids(await outbox.claim("webhooks", now=T0 + seconds(5))) == [1]


# -- views --------------------------------------------------------------------------------------


async def test_counts_by_channel_and_status(store: Store, outbox: Outbox) -> None:
    assert await outbox.counts() == {}
    await enqueue(store, "evt_1", "evt_2", recipients={"webhooks": [HOOK_A], "email": ["a@b.c"]})
    [w1, w2] = await outbox.claim("webhooks", now=T0)
    await outbox.complete([w1.id], now=T0)
    await outbox.fail(w2, error="gone", decision=RetryDecision(retry_at=None), now=T0)
    [e1] = await outbox.claim("email", now=T0, limit=1)
    assert await outbox.counts() == {
        ("webhooks", DELIVERED): 1,
        ("webhooks", DEAD): 1,
        ("email", IN_FLIGHT): 1,
        ("email", PENDING): 1,
    }
    assert e1.channel == "email"


async def test_next_due(store: Store, outbox: Outbox) -> None:
    assert await outbox.next_due("webhooks") is None
    await enqueue(store, "evt_1", now=T0)
    await enqueue(store, "evt_2", now=T0 + seconds(10))
    due = await outbox.next_due("webhooks")
    assert due == T0
    assert due is not None and due.tzinfo is UTC
    assert await outbox.next_due("email") is None
    claimed = await outbox.claim("webhooks", now=T0)
    assert ids(claimed) == [1, 2]
    assert await outbox.next_due("webhooks") == T0 + seconds(10)  # in-flight rows are not due
    await outbox.fail(
        claimed[0], error="x", decision=RetryDecision(retry_at=T0 + seconds(5)), now=T0
    )
    assert await outbox.next_due("webhooks") == T0 + seconds(5)
    await outbox.complete([1, 3, 4], now=T0)
    await outbox.fail(claimed[1], error="x", decision=RetryDecision(retry_at=None), now=T0)
    assert await outbox.next_due("webhooks") is None


async def test_prune_deletes_only_delivered_rows_older_than_the_cutoff(
    store: Store, outbox: Outbox
) -> None:
    await enqueue(store, "evt_1", "evt_2", recipients={"webhooks": [HOOK_A]})
    await enqueue(store, "evt_3", recipients={"webhooks": [HOOK_A, HOOK_B]})
    await outbox.claim("webhooks", now=T0)
    await outbox.complete([1], now=T0)  # old and delivered: pruned
    await outbox.complete([2], now=T0 + timedelta(days=40))  # delivered recently: kept
    await outbox.fail(  # dead-lettered long ago: kept for redelivery
        Delivery(
            id=3, event_id="evt_3", channel="webhooks", recipient=HOOK_A, attempts=0, payload={}
        ),
        error="gone",
        decision=RetryDecision(retry_at=None),
        now=T0,
    )
    removed = await outbox.prune(before=T0 + timedelta(days=30))
    assert removed == 1
    left = await rows(store)
    assert sorted(left) == [2, 3, 4]
    assert (left[3]["status"], left[4]["status"]) == (DEAD, IN_FLIGHT)
    assert await store.count_events() == 3  # events are history: never pruned


async def test_a_claim_walks_only_due_rows_whatever_the_history(
    store: Store, outbox: Outbox
) -> None:
    """Delivered rows stay for days: a claim must not read (or sort) them all every time, or
    a fan-out to N endpoints costs N**2. SQLite's plan must walk indexes and sort nothing."""
    plans: list[str] = []

    @sqlalchemy_event.listens_for(store.engine.sync_engine, "before_cursor_execute")
    def explain(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().startswith("UPDATE outbox SET status = 'in_flight'"):
            plans.append(statement)

    await enqueue(store, "evt_history", recipients={"webhooks": [f"ep_{n}" for n in range(50)]})
    history = await outbox.claim("webhooks", now=T0, limit=50)
    await outbox.complete([d.id for d in history], now=T0)
    await enqueue(store, "evt_new", recipients={"webhooks": [f"ep_{n}" for n in range(5)]})
    claimed = await outbox.claim("webhooks", now=T0 + seconds(1), limit=3)
    assert [d.recipient for d in claimed] == ["ep_0", "ep_1", "ep_2"]
    assert {d.event_id for d in claimed} == {"evt_new"}
    assert plans, "the claim statement was not seen"
    params = {
        "channel": "webhooks",
        "due_by": "2024-03-01 12:00:01",
        "now": "2024-03-01 12:00:01",
        "limit": 3,
        "lease": "2024-03-01 12:01:01",
    }
    async with store.engine.connect() as conn:
        plan = (await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + plans[-1], params)).all()
    searches = [str(row[-1]) for row in plan if "outbox" in str(row[-1])]
    assert searches, plan
    for step in searches:  # by primary key, or one (channel, status): never a whole channel
        assert "PRIMARY KEY" in step or "(channel=? AND status=?)" in step, searches
    assert not any("TEMP B-TREE" in str(row[-1]) for row in plan), plan
