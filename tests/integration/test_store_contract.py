"""The store's contract, on both engines: every test runs on SQLite and on PostgreSQL.

SQLite is a file under the test's temporary directory; PostgreSQL a fresh database on the
session's throw-away server (tests/pgserver.py). What the service relies on across replicas
(one event per change, claims that take only their batch, leadership, start-up together) is
checked here with several Store objects on one database, as several replicas would open it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, date, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, func, select, text
from sqlalchemy.exc import IntegrityError

from warnsvc.errors import StoreConflictError, StoreUnavailableError
from warnsvc.filters import Filter as Filters
from warnsvc.filters import Filter as MailFilters
from warnsvc.model import GCR2P_SCALE, Event, EventType, SituationState, Status
from warnsvc.outbox import DEAD, DELIVERED, IN_FLIGHT, PENDING, RetryDecision
from warnsvc.store import schema
from warnsvc.store.db import Store
from warnsvc.store.migrations import head_revisions
from warnsvc.store.replicas import Replica
from warnsvc.store.subscriptions import Declared
from warnsvc.store.webhooks import Endpoint

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
NK = "gcr2p:nagorno-karabakh"

Opener = Callable[[], Awaitable[Store]]


@pytest.fixture
async def open_store(database_url: str) -> AsyncIterator[Opener]:
    """Open as many stores on the one database as a test needs (replicas); all closed after."""
    opened: list[Store] = []

    async def opener() -> Store:
        store = await Store.open(database_url)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_store: Opener) -> Store:
    return await open_store()


def state(level: str = "serious-concern", *, revision: int = 0) -> SituationState:
    return SituationState(
        situation=NK,
        source_id="gcr2p",
        name="Nagorno-Karabakh",
        level=level,
        status=Status.ASSESSED,
        date=date(2026, 11, 30),
        url="https://www.globalr2p.org/countries/nagorno-karabakh/",
        summary="The blockade continues.",
        risk_factors=("Blockade",),
        content_hash="abc",
        revision=revision,
    )


def escalation(event_id: str, *, at: datetime = T0) -> Event:
    return Event(
        id=event_id,
        type=EventType.ESCALATED,
        source_id="gcr2p",
        source_name="Global Centre for the Responsibility to Protect",
        situation=NK,
        situation_name="Nagorno-Karabakh",
        situation_url=None,
        scale="gcr2p",
        level=GCR2P_SCALE.get("imminent-risk"),
        previous_level=GCR2P_SCALE.get("serious-concern"),
        occurred_at=at,
        detected_at=at,
        summary="Shelling resumed.",
    )


async def record_poll(
    store: Store,
    states: list[SituationState],
    events: list[Event],
    routes: dict[str, list[str]] | None = None,
) -> None:
    await store.apply_poll(
        source_id="gcr2p",
        scale="gcr2p",
        states=states,
        history=[],
        events=events,
        recipients=routes or {},
        observations=len(states),
        now=T0,
    )


async def fan_out(store: Store, rows: int) -> None:
    """One event with ``rows`` webhook rows, all due at T0."""
    await store.record_event(
        escalation("evt_fan"), {"webhooks": [f"ep_{i:04d}" for i in range(rows)]}, now=T0
    )


# -- schema ------------------------------------------------------------------------------------


def _differences(conn: Connection) -> list[object]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, schema.metadata))


async def test_migrations_build_exactly_the_schema(store: Store) -> None:
    async with store.engine.connect() as conn:
        assert await conn.run_sync(_differences) == []
        versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
    assert [v for (v,) in versions] == sorted(head_revisions())  # one line, at its head
    assert len(head_revisions()) == 1


async def test_replicas_opening_a_new_database_together_migrate_once(open_store: Opener) -> None:
    stores = await asyncio.gather(*(open_store() for _ in range(3)))
    async with stores[0].engine.connect() as conn:
        versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
    assert [v for (v,) in versions] == sorted(head_revisions())
    assert all([await s.ping() for s in stores])


# -- situations and events ---------------------------------------------------------------------


async def test_an_event_moves_the_situation_revision_on(store: Store) -> None:
    await record_poll(store, [state()], [])
    [before] = (await store.situation_states("gcr2p")).values()
    assert before.revision == 0
    after = dataclasses.replace(before, level="imminent-risk")
    await record_poll(store, [after], [escalation("evt_1")])
    [now] = (await store.situation_states("gcr2p")).values()
    assert (now.level, now.revision) == ("imminent-risk", 1)
    assert [e["id"] for e in await store.recent_events()] == ["evt_1"]


async def test_a_second_event_for_the_same_change_is_refused(open_store: Opener) -> None:
    first, second = await open_store(), await open_store()
    await record_poll(first, [state()], [])
    [read] = (await first.situation_states("gcr2p")).values()  # both replicas read revision 0
    changed = dataclasses.replace(read, level="imminent-risk")
    await record_poll(first, [changed], [escalation("evt_a")], {"webhooks": ["ep_1"]})
    with pytest.raises(StoreConflictError):
        await record_poll(second, [changed], [escalation("evt_b")], {"webhooks": ["ep_1"]})
    assert [e["id"] for e in await second.recent_events()] == ["evt_a"]
    assert await second.outbox.counts() == {("webhooks", PENDING): 1}  # nothing of evt_b


async def test_the_transition_key_is_in_the_schema(store: Store) -> None:
    """Even a writer that skips the revision check cannot add a second event."""
    await record_poll(store, [state()], [escalation("evt_a")])
    row = {
        "type": "risk.escalated",
        "source_id": "gcr2p",
        "situation_id": NK,
        "occurred_at": T0,
        "detected_at": T0,
        "payload": {},
        "situation_revision": 0,
    }
    with pytest.raises(IntegrityError, match=r"(?i)unique"):
        async with store.engine.begin() as conn:
            await conn.execute(schema.events.insert().values(id="evt_b", **row))


async def test_events_feed_the_sequence_followers_watch(store: Store) -> None:
    assert await store.last_event_seq() == 0
    await record_poll(store, [state()], [escalation("evt_1")])
    first = await store.last_event_seq()
    await store.record_event(escalation("evt_test"), {}, now=T0)
    assert await store.last_event_seq() > first > 0


# -- outbox ------------------------------------------------------------------------------------


async def test_a_claim_takes_its_batch_and_no_more(store: Store) -> None:
    await fan_out(store, 100)
    claimed = await store.outbox.claim("webhooks", now=T0, limit=20)
    assert [d.recipient for d in claimed] == [f"ep_{i:04d}" for i in range(20)]
    counts = await store.outbox.counts()
    assert counts == {("webhooks", IN_FLIGHT): 20, ("webhooks", PENDING): 80}


async def test_replicas_claim_disjoint_batches_side_by_side(open_store: Opener) -> None:
    replicas = [await open_store() for _ in range(3)]
    await fan_out(replicas[0], 300)

    async def drain(store: Store) -> list[int]:
        taken: list[int] = []
        while batch := await store.outbox.claim("webhooks", now=T0, limit=25):
            taken += [d.id for d in batch]
            await store.outbox.complete([d.id for d in batch], now=T0, status=200)
        return taken

    shares = await asyncio.gather(*(drain(s) for s in replicas))
    every = [i for share in shares for i in share]
    assert len(every) == len(set(every)) == 300  # each row claimed once
    assert await replicas[0].outbox.counts() == {("webhooks", DELIVERED): 300}


async def test_a_dead_replicas_claims_return_when_the_lease_ends(store: Store) -> None:
    await fan_out(store, 5)
    claimed = await store.outbox.claim("webhooks", now=T0, limit=5, lease=60)
    assert len(claimed) == 5
    assert await store.outbox.claim("webhooks", now=T0 + timedelta(seconds=30)) == []
    again = await store.outbox.claim("webhooks", now=T0 + timedelta(seconds=61))
    assert sorted(d.id for d in again) == sorted(d.id for d in claimed)


async def test_fail_reschedules_or_dead_letters_and_redeliver_requeues(store: Store) -> None:
    await fan_out(store, 2)
    first, second = await store.outbox.claim("webhooks", now=T0)
    retry_at = T0 + timedelta(minutes=5)
    await store.outbox.fail(
        first, error="HTTP 503", decision=RetryDecision(retry_at=retry_at), now=T0, status=503
    )
    await store.outbox.fail(
        second, error="HTTP 410", decision=RetryDecision(retry_at=None), now=T0, status=410
    )
    assert await store.outbox.counts() == {("webhooks", PENDING): 1, ("webhooks", DEAD): 1}
    assert await store.outbox.next_due("webhooks") == retry_at
    assert await store.endpoints.redeliver(second.recipient, second.id, now=T0) is True
    [requeued] = [
        r for r in await store.endpoints.deliveries(second.recipient) if r.id == second.id
    ]
    assert (requeued.status, requeued.attempts) == (PENDING, 0)


# -- endpoints, subscribers, notices -----------------------------------------------------------


def static_endpoint(endpoint_id: str) -> Endpoint:
    return Endpoint(
        id=endpoint_id,
        partner_id=None,
        url=f"https://hooks.example.org/{endpoint_id}",
        description="from the YAML",
        enabled=True,
        disabled_reason=None,
        static=True,
        filters=Filters(min_level="imminent-risk"),
        secret="whsec_" + "A" * 43 + "=",
        created_at=T0,
        updated_at=T0,
    )


async def test_replicas_syncing_the_yaml_endpoints_together_agree(open_store: Opener) -> None:
    replicas = [await open_store() for _ in range(3)]
    declared = [static_endpoint(f"ep_static_{i}") for i in range(5)]
    await asyncio.gather(*(s.endpoints.sync_static(declared, now=T0) for s in replicas))
    found = await replicas[0].endpoints.owned(every=True)
    assert sorted(e.id for e in found) == [f"ep_static_{i}" for i in range(5)]


async def test_an_endpoint_lives_through_create_rotate_disable(store: Store) -> None:
    endpoint, secret = await store.endpoints.create(
        url="https://hooks.example.org/a", partner_id="ngo", now=T0
    )
    assert secret.startswith("whsec_")
    rotated = await store.endpoints.rotate(endpoint.id, grace=3600, now=T0)
    assert rotated is not None and rotated[1] != secret
    assert await store.endpoints.disable(
        endpoint, reason="HTTP 410", notify=["ops@example.org"], now=T0
    )
    assert not await store.endpoints.disable(endpoint, reason="again", notify=[], now=T0)
    [notice] = await store.notices.recent()
    assert (notice.kind, notice.recipient) == ("webhook.endpoint_disabled", "ops@example.org")
    assert notice.detail == {"endpoint": endpoint.id, "partner": "ngo"}


async def test_a_subscriber_confirms_then_unsubscribes(store: Store) -> None:
    subscribers = store.subscribers
    result = await subscribers.request_confirmation(
        address="ana@example.org",
        name="Ana",
        mode="immediate",
        filters=MailFilters(),
        now=T0,
        valid_for=86400,
        resend_after=60,
    )
    assert result == "queued"
    [mail] = await subscribers.claim_confirmations(now=T0, lease=60)
    await subscribers.confirmation_sent(mail.id, now=T0)
    assert await subscribers.confirm(mail.token, now=T0) == "valid"
    found = await subscribers.subscriber_by_address("ana@example.org")
    assert found is not None and found.status == "active"
    assert await subscribers.unsubscribe(found.unsubscribe_token, now=T0) == "unsubscribed"


async def test_subscribers_are_read_by_id_with_their_filters(store: Store) -> None:
    subscribers = store.subscribers
    declared = [
        Declared(address="ana@example.org", name="Ana", mode="immediate", filters=MailFilters()),
        Declared(
            address="bo@example.org",
            name=None,
            mode="daily",
            filters=MailFilters(situations=("gcr2p:sudan",), min_level="imminent-risk"),
        ),
    ]
    await subscribers.sync_declared(declared, now=T0)
    ana = await subscribers.subscriber_by_address("ana@example.org")
    bo = await subscribers.subscriber_by_address("bo@example.org")
    assert ana is not None and bo is not None
    found = await subscribers.subscribers_by_id([bo.id, ana.id, bo.id, 10**6])
    assert found == {ana.id: ana, bo.id: bo}  # as the one-row read gives them; unknown ids left out
    assert found[bo.id].filters == declared[1].filters and found[bo.id].name is None
    many = await subscribers.subscribers_by_id(range(1, 1200))  # more than one query's worth
    assert set(many) == {ana.id, bo.id}


async def test_replicas_forward_each_notice_once(open_store: Opener) -> None:
    replicas = [await open_store() for _ in range(3)]
    for n in range(4):
        await replicas[0].notices.record(
            kind="source.unhealthy", subject=f"s{n}", detail={}, now=T0
        )
    counter = iter(range(1000))
    forwarded = await asyncio.gather(
        *(
            s.notices.forward(
                lambda notice: {"operators": ["mailto:ops@example.org"]},
                lambda notice: {"id": f"ntc_{notice.id}", "subject": notice.subject},
                new_id=lambda: f"evt_n{next(counter)}",
                now=T0,
            )
            for s in replicas
        )
    )
    assert sum(forwarded) == 4
    assert await replicas[0].outbox.counts() == {("operators", PENDING): 4}
    async with replicas[0].engine.connect() as conn:
        events = (await conn.execute(select(func.count()).select_from(schema.events))).scalar()
    assert events == 4


# -- replicas and leadership -------------------------------------------------------------------


def replica(replica_id: str, *, leader: bool, seen: datetime = T0) -> Replica:
    return Replica(
        id=replica_id,
        host="host",
        pid=1,
        url=f"http://127.0.0.1:{replica_id}",
        version="0.1.0",
        config_digest="d" * 64,
        leader=leader,
        started_at=T0,
        seen_at=seen,
    )


async def test_heartbeats_list_the_replicas_and_one_leader(store: Store) -> None:
    await store.replicas.beat(replica("8081", leader=True))
    await store.replicas.beat(replica("8082", leader=False))
    await store.replicas.beat(replica("8082", leader=True, seen=T0 + timedelta(seconds=5)))
    found = {r.id: r.leader for r in await store.replicas.all()}
    assert found == {"8081": False, "8082": True}  # the new leader's beat clears the old flag
    await store.replicas.remove("8081")
    assert [r.id for r in await store.replicas.all()] == ["8082"]
    assert await store.replicas.forget(silent_since=T0 + timedelta(hours=1)) == 1


async def test_exactly_one_replica_leads_and_another_takes_over(open_store: Opener) -> None:
    stores = [await open_store() for _ in range(3)]
    leaders = [s.leadership(failover=3) for s in stores]
    try:
        held = [await lead.check() for lead in leaders]
        if stores[0].shared:
            assert held == [True, False, False]
            await leaders[0].release()  # a clean stop
            assert [await lead.check() for lead in leaders[1:]] == [True, False]
        else:
            assert held == [True, True, True]  # SQLite: one process owns the file
    finally:
        for lead in leaders:
            await lead.release()


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("problem", ["missing database", "nobody listening"])
async def test_an_unreachable_database_is_one_clear_error(
    problem: str, postgres: object, pg_url: str
) -> None:
    url = pg_url.rsplit("/", 1)[0] + "/no_such_database"
    if problem == "nobody listening":
        url = "postgresql+asyncpg://warnsvc:secret@127.0.0.1:9/warnsvc"
    with pytest.raises(StoreUnavailableError) as caught:
        await Store.open(url)
    message = str(caught.value)
    assert message.startswith("storage.url: cannot connect: ")
    assert "secret" not in message  # the password is masked
    assert "\n" not in message


async def test_a_leader_cut_off_from_the_database_steps_down(pg_url: str) -> None:
    """PostgreSQL: the lock goes with the leader's connection, and the leader notices."""
    stores = [await Store.open(pg_url) for _ in range(2)]
    leader, follower = (s.leadership(failover=3) for s in stores)
    try:
        assert await leader.check() is True
        assert await follower.check() is False
        async with stores[1].engine.begin() as conn:  # as if the network dropped it
            await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
                )
            )
        assert await follower.check() is True
        assert await leader.check() is False
    finally:
        for lead in (leader, follower):
            await lead.release()
        for store in stores:
            await store.close()
