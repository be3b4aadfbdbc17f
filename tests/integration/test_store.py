"""The store against real SQLite files: migrations, one-transaction polls, queries."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, func, inspect, select, text

from warnsvc.errors import StoreConflictError, StoreError
from warnsvc.model import GCR2P_SCALE, Event, EventType, SituationState, Status
from warnsvc.store import schema
from warnsvc.store.db import CachedPage, HistoryEntry, Store

T0 = datetime(2023, 8, 31, 9, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=1)
T2 = T0 + timedelta(minutes=2)
NK = "gcr2p:nagorno-karabakh"
SUDAN = "gcr2p:sudan"
TABLES = {
    "situations",
    "level_history",
    "events",
    "source_health",
    "fetch_cache",
    "outbox",
    "notices",
    "replicas",
}


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(sqlite_url(tmp_path / "warnsvc.db"))
    try:
        yield opened
    finally:
        await opened.close()


def state(
    situation: str = NK,
    level: str | None = "serious-concern",
    *,
    status: Status = Status.ASSESSED,
    source_id: str = "gcr2p",
    pending_level: str | None = None,
    pending_since: datetime | None = None,
    day: date | None = date(2023, 8, 31),
) -> SituationState:
    return SituationState(
        situation=situation,
        source_id=source_id,
        name=situation.split(":", 1)[1].replace("-", " ").title(),
        level=level,
        status=status,
        date=day,
        url=f"https://www.globalr2p.org/countries/{situation.split(':', 1)[1]}/",
        summary="The blockade continues.",
        risk_factors=("Blockade", "Shelling"),
        content_hash="abc123",
        pending_level=pending_level,
        pending_status=Status.ASSESSED if pending_level else None,
        pending_count=1 if pending_level else 0,
        pending_since=pending_since,
    )


def event(
    event_id: str,
    situation: str = NK,
    *,
    type_: EventType = EventType.ESCALATED,
    at: datetime = T0,
) -> Event:
    return Event(
        id=event_id,
        type=type_,
        source_id="gcr2p",
        source_name="Global Centre for the Responsibility to Protect",
        situation=situation,
        situation_name="Nagorno-Karabakh",
        situation_url=None,
        scale="gcr2p",
        level=GCR2P_SCALE.get("imminent-risk"),
        previous_level=GCR2P_SCALE.get("serious-concern"),
        occurred_at=at.replace(hour=0, minute=0),
        detected_at=at,
        summary="Shelling resumed.",
        risk_factors=("Blockade",),
    )


async def poll(
    store: Store,
    *,
    states: Sequence[SituationState] = (),
    events: Sequence[Event] = (),
    history: Sequence[HistoryEntry] = (),
    recipients: dict[str, list[str]] | None = None,
    now: datetime = T0,
    source_id: str = "gcr2p",
) -> None:
    await store.apply_poll(
        source_id=source_id,
        scale="gcr2p",
        states=states,
        history=history,
        events=events,
        recipients=recipients if recipients is not None else {"webhooks": ["https://a.example"]},
        observations=len(states),
        now=now,
    )


async def count(store: Store, table: Any) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


# -- opening and migrating ---------------------------------------------------------------------


async def test_open_migrates_a_new_file_in_a_new_directory(tmp_path: Path) -> None:
    path = tmp_path / "data" / "nested" / "warnsvc.db"
    opened = await Store.open(sqlite_url(path))
    try:
        assert path.is_file()
        async with opened.engine.connect() as conn:
            names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        assert TABLES | {"alembic_version"} <= names  # channels add their own tables
        assert {v for (v,) in version} == _migration_heads()  # every head upgraded
        assert await opened.ping() is True
    finally:
        await opened.close()


def _migration_heads() -> set[str]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from warnsvc.store.db import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return set(ScriptDirectory.from_config(config).get_heads())


def _differences(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(
        conn, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, schema.metadata))


async def test_migrated_schema_equals_the_metadata(store: Store) -> None:
    async with store.engine.connect() as conn:
        differences = await conn.run_sync(_differences)
        indexes = await conn.run_sync(
            lambda c: {
                t: sorted(str(ix["name"]) for ix in inspect(c).get_indexes(t))
                for t in ("level_history", "events", "outbox")
            }
        )
    assert differences == []
    assert indexes == {
        "level_history": ["ix_level_history_situation_id_id"],
        "events": [
            "ix_events_situation_id_seq",
            "uq_events_situation_id_situation_revision",  # 0007_replicas: one event per change
        ],
        "outbox": [
            "ix_outbox_channel_recipient_id",  # 0002_webhooks: deliveries of an endpoint
            "ix_outbox_channel_status",
            "ix_outbox_status_next_attempt_at",
        ],
    }


async def test_sqlite_runs_in_wal_mode_with_foreign_keys(store: Store) -> None:
    async with store.engine.connect() as conn:
        assert (await conn.execute(text("PRAGMA journal_mode"))).scalar_one() == "wal"
        assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar_one() == 1
        assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar_one() == 10000


async def test_opening_waits_for_a_writer_to_let_the_file_switch_to_wal(tmp_path: Path) -> None:
    """Switching a file to WAL needs it to itself, and while another connection writes to it
    SQLite fails the switch at once ("database is locked") whatever the busy timeout: an opener
    that meets a writer (a replica starting beside it) must wait for it, not fail."""
    path = tmp_path / "warnsvc.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE earlier (x INTEGER)")  # a file in the default rollback mode
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO earlier VALUES (1)")  # a write in progress
    done = threading.Timer(0.3, writer.execute, ("COMMIT",))
    done.start()
    try:
        store = await Store.open(sqlite_url(path))
    finally:
        done.join()
        writer.close()
    try:
        async with store.engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar_one() == "wal"
    finally:
        await store.close()


async def test_opening_twice_is_idempotent(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "warnsvc.db")
    first = await Store.open(url)
    await poll(first, states=[state()], events=[event("evt_1")])
    await first.close()
    second = await Store.open(url)
    try:
        await second.migrate()  # and again on an open store
        async with second.engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            assert await conn.run_sync(_differences) == []
        assert {v for (v,) in version} == _migration_heads()
        assert list(await second.situation_states("gcr2p")) == [NK]
        assert await second.count_events() == 1
    finally:
        await second.close()


# -- apply_poll ---------------------------------------------------------------------------------


async def test_apply_poll_writes_states_history_events_outbox_and_health(store: Store) -> None:
    recipients = {"webhooks": ["https://a.example/hook", "https://b.example/hook"], "feeds": ["f"]}
    history = [
        HistoryEntry(
            situation=NK,
            source_id="gcr2p",
            level="imminent-risk",
            status=Status.ASSESSED,
            page_date=date(2023, 8, 31),
            event_id="evt_1",
        )
    ]
    await poll(
        store,
        states=[state(NK, "imminent-risk"), state(SUDAN, "current-crisis")],
        events=[event("evt_1")],
        history=history,
        recipients=recipients,
    )
    states = await store.situation_states("gcr2p")
    assert states == {  # the event moved NK's revision on; SUDAN had none
        NK: replace(state(NK, "imminent-risk"), revision=1),
        SUDAN: state(SUDAN, "current-crisis"),
    }
    assert await store.level_history(NK) == [
        {
            "id": 1,
            "situation_id": NK,
            "source_id": "gcr2p",
            "level": "imminent-risk",
            "status": "assessed",
            "page_date": date(2023, 8, 31),
            "event_id": "evt_1",
            "recorded_at": T0,
        }
    ]
    assert await store.recent_events() == [event("evt_1").payload()]
    async with store.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(
                    schema.outbox.c.event_id,
                    schema.outbox.c.channel,
                    schema.outbox.c.recipient,
                    schema.outbox.c.status,
                    schema.outbox.c.attempts,
                    schema.outbox.c.next_attempt_at,
                ).order_by(schema.outbox.c.id)
            )
        ).all()
        situation_row = (
            (await conn.execute(select(schema.situations).where(schema.situations.c.id == NK)))
            .mappings()
            .one()
        )
    assert [tuple(r) for r in rows] == [
        ("evt_1", "webhooks", "https://a.example/hook", "pending", 0, T0),
        ("evt_1", "webhooks", "https://b.example/hook", "pending", 0, T0),
        ("evt_1", "feeds", "f", "pending", 0, T0),
    ]
    assert situation_row["scale"] == "gcr2p"
    assert situation_row["first_seen_at"] == T0
    assert situation_row["updated_at"] == T0
    health = await store.source_health("gcr2p")
    assert health is not None
    assert (health.healthy, health.consecutive_failures, health.last_error) == (True, 0, None)
    assert (health.last_poll_at, health.last_success_at, health.last_failure_at) == (T0, T0, None)
    assert (health.observations, health.baseline_done) == (2, True)


async def test_apply_poll_updates_existing_states(store: Store) -> None:
    await poll(store, states=[state(NK, "serious-concern")])
    await poll(
        store,
        states=[state(NK, "serious-concern", pending_level="imminent-risk", pending_since=T1)],
        now=T1,
    )
    [stored] = (await store.situation_states("gcr2p")).values()
    assert (stored.pending_level, stored.pending_status, stored.pending_count) == (
        "imminent-risk",
        Status.ASSESSED,
        1,
    )
    assert stored.pending_since == T1
    async with store.engine.connect() as conn:
        row = (await conn.execute(select(schema.situations))).mappings().one()
    assert (row["first_seen_at"], row["updated_at"]) == (T0, T1)


async def test_apply_poll_is_one_transaction(store: Store) -> None:
    await poll(store, states=[state(NK, "serious-concern")], events=[event("evt_1")])
    before = await store.situation_states("gcr2p")
    health_before = await store.source_health("gcr2p")
    await store.record_failure("gcr2p", "timeout", now=T1)

    # a duplicate key that no other writer caused is an error of this poll, not a conflict
    with pytest.raises(StoreError, match="cannot record the poll of 'gcr2p'") as caught:
        await poll(
            store,
            states=[
                replace(state(NK, "imminent-risk"), revision=before[NK].revision),
                state(SUDAN, "current-crisis"),
            ],
            history=[
                HistoryEntry(
                    situation=NK,
                    source_id="gcr2p",
                    level="imminent-risk",
                    status=Status.ASSESSED,
                    page_date=None,
                    event_id="evt_2",
                )
            ],
            events=[event("evt_2"), event("evt_1")],  # evt_1 exists: fails after evt_2 went in
            now=T2,
        )

    assert not isinstance(caught.value, StoreConflictError)
    assert await store.situation_states("gcr2p") == before
    assert await store.count_events() == 1
    assert [p["id"] for p in await store.recent_events()] == ["evt_1"]
    assert await count(store, schema.outbox) == 1
    assert await count(store, schema.level_history) == 0
    health = await store.source_health("gcr2p")
    assert health is not None and health_before is not None
    assert (health.healthy, health.consecutive_failures, health.last_success_at) == (
        False,
        1,
        T0,
    )


async def test_apply_poll_rejects_naive_timestamps(store: Store) -> None:
    with pytest.raises(StoreError):
        await poll(store, states=[state()], now=T0.replace(tzinfo=None))
    assert await store.situation_states("gcr2p") == {}
    assert await store.source_health("gcr2p") is None


# -- source health -----------------------------------------------------------------------------


async def test_record_failure_counts_and_success_resets(store: Store) -> None:
    assert await store.source_health("gcr2p") is None
    first = await store.record_failure("gcr2p", "HTTP 503", now=T0)
    assert (first.healthy, first.consecutive_failures, first.last_error) == (False, 1, "HTTP 503")
    assert (first.last_poll_at, first.last_failure_at, first.last_success_at) == (T0, T0, None)
    assert (first.observations, first.baseline_done) == (0, False)
    second = await store.record_failure("gcr2p", "x" * 5000, now=T1)
    assert second.consecutive_failures == 2
    assert second.last_error == "x" * 2000
    assert (second.last_poll_at, second.last_failure_at) == (T1, T1)

    await poll(store, states=[state()], now=T2)
    health = await store.source_health("gcr2p")
    assert health is not None
    assert (health.healthy, health.consecutive_failures, health.last_error) == (True, 0, None)
    assert (health.last_poll_at, health.last_success_at, health.last_failure_at) == (T2, T2, T1)
    assert (health.observations, health.baseline_done) == (1, True)

    await store.record_failure("other", "boom", now=T2)
    assert [h.source_id for h in await store.all_source_health()] == ["gcr2p", "other"]


# -- queries ------------------------------------------------------------------------------------


async def test_situation_states_filters_by_namespace(store: Store) -> None:
    await poll(
        store,
        states=[
            state("gcr2p:a"),
            state("gcr2p:b"),
            state("gcr2p2:c", source_id="gcr2p2"),
            state("gcr2:d", source_id="gcr2"),
            state("xgcr2p:e", source_id="xgcr2p"),
            state("GCR2P:f", source_id="upper"),
            state("un_a:g", source_id="un_a"),
            state("unxa:h", source_id="unxa"),
            state("100%:i", source_id="pct"),
            state("100xx:j", source_id="pct2"),
        ],
    )
    assert sorted(await store.situation_states("gcr2p")) == ["gcr2p:a", "gcr2p:b"]
    assert sorted(await store.situation_states("gcr2")) == ["gcr2:d"]
    assert sorted(await store.situation_states("un_a")) == ["un_a:g"]
    assert sorted(await store.situation_states("100%")) == ["100%:i"]
    assert await store.situation_states("nothing") == {}
    assert [s.situation for s in await store.all_situations()] == [
        "100%:i",
        "100xx:j",
        "GCR2P:f",
        "gcr2:d",
        "gcr2p2:c",
        "gcr2p:a",
        "gcr2p:b",
        "un_a:g",
        "unxa:h",
        "xgcr2p:e",
    ]


async def test_states_round_trip_every_field(store: Store) -> None:
    odd = SituationState(
        situation="gcr2p:mali",
        source_id="gcr2p",
        name="Mali",
        level=None,
        status=Status.PREVIOUSLY_STUDIED,
        date=None,
        url=None,
        summary="",
        risk_factors=(),
        content_hash="",
        pending_level=None,
        pending_status=Status.DELISTED,
        pending_count=3,
        pending_since=T1,
    )
    await poll(store, states=[odd, state(NK, "current-crisis")])
    assert await store.situation_states("gcr2p") == {
        "gcr2p:mali": odd,
        NK: state(NK, "current-crisis"),
    }


async def test_fetch_cache_round_trip(store: Store) -> None:
    url = "https://www.globalr2p.org/populations-at-risk/"
    assert await store.cached_page(url) is None
    page = CachedPage(
        url=url,
        etag='"v1"',
        last_modified="Thu, 31 Aug 2023 09:00:00 GMT",
        content_type="text/html; charset=utf-8",
        body=b"<html>\x00\xff populations</html>",
    )
    await store.save_page(page, now=T0)
    assert await store.cached_page(url) == page
    newer = CachedPage(url=url, etag=None, last_modified=None, content_type=None, body=b"v2")
    await store.save_page(newer, now=T1)
    assert await store.cached_page(url) == newer
    assert await count(store, schema.fetch_cache) == 1
    async with store.engine.connect() as conn:
        fetched = (await conn.execute(select(schema.fetch_cache.c.fetched_at))).scalar_one()
    assert fetched == T1
    assert fetched.tzinfo is UTC


async def test_recent_events_newest_first(store: Store) -> None:
    await poll(
        store,
        states=[state(NK), state(SUDAN)],
        events=[event("evt_a", NK), event("evt_b", SUDAN)],
        now=T0,
    )
    stored = await store.situation_states("gcr2p")  # evt_c moves NK on from its revision
    await poll(store, states=[stored[NK]], events=[event("evt_c", NK, at=T1)], now=T1)
    assert [p["id"] for p in await store.recent_events()] == ["evt_c", "evt_b", "evt_a"]
    assert [p["id"] for p in await store.recent_events(limit=2)] == ["evt_c", "evt_b"]
    assert [p["id"] for p in await store.recent_events(situation=NK)] == ["evt_c", "evt_a"]
    assert [p["id"] for p in await store.recent_events(situation=NK, limit=1)] == ["evt_c"]
    assert await store.recent_events(situation="gcr2p:none") == []
    assert await store.count_events() == 3
    [latest] = await store.recent_events(limit=1)
    assert latest == event("evt_c", NK, at=T1).payload()


async def test_level_history_in_order(store: Store) -> None:
    await poll(store, states=[state(NK)])
    entries = [
        HistoryEntry(
            situation=NK,
            source_id="gcr2p",
            level=level,
            status=Status.ASSESSED,
            page_date=None,
            event_id=None,
        )
        for level in ("serious-concern", "imminent-risk", "current-crisis")
    ]
    await poll(store, history=entries[:2], now=T1)
    await poll(store, history=entries[2:], now=T2)
    history = await store.level_history(NK)
    assert [(h["level"], h["recorded_at"]) for h in history] == [
        ("serious-concern", T1),
        ("imminent-risk", T1),
        ("current-crisis", T2),
    ]
    assert await store.level_history(SUDAN) == []


async def test_timestamps_come_back_as_aware_utc(store: Store) -> None:
    plus_two = timezone(timedelta(hours=2))
    local = T0.astimezone(plus_two)
    await poll(
        store,
        states=[state(NK, pending_level="current-crisis", pending_since=local)],
        events=[event("evt_tz")],
        now=local,
    )
    [stored] = (await store.situation_states("gcr2p")).values()
    assert stored.pending_since == T0
    assert stored.pending_since is not None and stored.pending_since.tzinfo is UTC
    health = await store.source_health("gcr2p")
    assert health is not None and health.last_poll_at is not None
    assert health.last_poll_at.tzinfo is UTC
    assert health.last_poll_at == T0
    async with store.engine.connect() as conn:
        raw = (await conn.execute(text("SELECT updated_at FROM situations"))).scalar_one()
        ev = (await conn.execute(select(schema.events))).mappings().one()
    assert raw.startswith("2023-08-31 09:00:00")  # stored as UTC, not local time
    assert ev["detected_at"] == T0 and ev["detected_at"].tzinfo is UTC
    assert ev["occurred_at"].tzinfo is UTC


async def test_open_refuses_a_database_from_an_unknown_revision(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "warnsvc.db")
    first = await Store.open(url)
    async with first.engine.begin() as conn:
        await conn.execute(text("DELETE FROM alembic_version"))  # one row per head
        await conn.execute(text("INSERT INTO alembic_version VALUES ('9999')"))
    await first.close()
    with pytest.raises(StoreError, match="cannot migrate the database"):
        await Store.open(url)
    unmigrated = await Store.open(url, migrate=False)
    try:
        assert await unmigrated.ping() is True
    finally:
        await unmigrated.close()


# -- the migration line --------------------------------------------------------------------------

OLD_HEADS = ("0002_webhooks", "0004_source_warnings", "0005_operator_alerts")


def _script() -> Any:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from warnsvc.store.db import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config)


def test_migrations_form_one_line_to_a_single_head() -> None:
    script = _script()
    heads = script.get_heads()
    assert len(heads) == 1, heads  # one head: ``upgrade head`` and ``heads`` are the same
    assert _migration_heads() == set(heads)
    assert len(script.get_bases()) == 1
    every = {rev.revision for rev in script.walk_revisions()}
    reachable = {rev.revision for rev in script.iterate_revisions(heads[0], "base")}
    assert reachable == every  # no revision is left off the line to the head
    merge = script.get_revision("0006_merge")
    assert set(merge.down_revision) == set(OLD_HEADS)  # the old heads are joined there
    # from the merge on, every revision follows exactly one other: a line, no new branch
    line = [script.get_revision(heads[0])]
    while line[-1].revision != "0006_merge":
        assert isinstance(line[-1].down_revision, str), line[-1].revision
        line.append(script.get_revision(line[-1].down_revision))
    assert "0007_replicas" in {r.revision for r in line}
    assert all(len(r.nextrev) <= 1 for r in line)


def _upgrade(connection: Connection, *targets: str) -> None:
    from alembic import command
    from alembic.config import Config

    from warnsvc.store.db import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    for target in targets:
        command.upgrade(config, target)


@pytest.mark.parametrize(
    "engine_name", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
async def test_a_database_at_the_old_heads_upgrades_with_its_notices(
    engine_name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    import sqlalchemy as sa

    from warnsvc.store.aio import create_async_engine

    if engine_name == "sqlite":
        url = sqlite_url(tmp_path / "old.db")
    else:
        url = request.getfixturevalue("pg_url")
    engine = create_async_engine(url)
    old_operator = sa.table(
        "operator_notices",
        sa.column("kind"),
        sa.column("subject"),
        sa.column("detail", sa.JSON()),
        sa.column("created_at", schema.UTCDateTime()),
        sa.column("acknowledged_at", schema.UTCDateTime()),
        sa.column("forwarded_at", schema.UTCDateTime()),
    )
    old_webhook = sa.table(
        "webhook_notices",
        sa.column("kind"),
        sa.column("endpoint_id"),
        sa.column("partner_id"),
        sa.column("recipient"),
        sa.column("message"),
        sa.column("created_at", schema.UTCDateTime()),
        sa.column("sent_at", schema.UTCDateTime()),
    )
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade, *OLD_HEADS)
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            assert {v for (v,) in version} == set(OLD_HEADS)
            await conn.execute(
                old_operator.insert(),
                [
                    {
                        "kind": "source.unhealthy",
                        "subject": "source gcr2p is failing: 3 polls in a row",
                        "detail": {"source": "gcr2p", "failures": 3},
                        "created_at": T0,
                        "acknowledged_at": None,
                        "forwarded_at": T0,
                    },
                    {
                        "kind": "outbox.dead_letters",
                        "subject": "5 webhooks deliveries are dead-lettered",
                        "detail": {"channel": "webhooks", "dead": 5},
                        "created_at": T2,
                        "acknowledged_at": None,
                        "forwarded_at": None,
                    },
                ],
            )
            await conn.execute(
                old_webhook.insert(),
                [
                    {
                        "kind": "endpoint_disabled",
                        "endpoint_id": "ep_1",
                        "partner_id": "acme",
                        "recipient": "operators",
                        "message": "Webhook endpoint ep_1 was disabled: HTTP 410.",
                        "created_at": T1,
                        "sent_at": T1,
                    },
                    {
                        "kind": "endpoint_disabled",
                        "endpoint_id": "ep_1",
                        "partner_id": "acme",
                        "recipient": "ops@acme.example",
                        "message": "Webhook endpoint ep_1 was disabled: HTTP 410.",
                        "created_at": T1 + timedelta(seconds=1),
                        "sent_at": None,
                    },
                ],
            )
    finally:
        await engine.dispose()

    store = await Store.open(url)  # to the head
    try:
        async with store.engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
            assert await conn.run_sync(_differences) == []
            copied = (
                (await conn.execute(select(schema.notices).order_by(schema.notices.c.id)))
                .mappings()
                .all()
            )
        assert {v for (v,) in version} == _migration_heads()
        assert len(version) == 1
        assert {"operator_notices", "webhook_notices"}.isdisjoint(names)
        assert {"notices", "replicas"} <= names
        disabled = "Webhook endpoint ep_1 was disabled: HTTP 410."
        endpoint = {"endpoint": "ep_1", "partner": "acme"}
        assert [
            (
                r["kind"],
                r["subject"],
                r["detail"],
                r["recipient"],
                r["created_at"],
                r["forwarded_at"],
            )
            for r in copied
        ] == [  # in the order they were made
            (
                "source.unhealthy",
                "source gcr2p is failing: 3 polls in a row",
                {"source": "gcr2p", "failures": 3},
                None,
                T0,
                T0,
            ),
            ("webhook.endpoint_disabled", disabled, endpoint, None, T1, T1),  # "operators"
            (
                "webhook.endpoint_disabled",
                disabled,
                endpoint,
                "ops@acme.example",
                T1 + timedelta(seconds=1),
                None,
            ),
            (
                "outbox.dead_letters",
                "5 webhooks deliveries are dead-lettered",
                {"channel": "webhooks", "dead": 5},
                None,
                T2,
                None,
            ),
        ]
        recent = await store.notices.recent(kind="webhook.endpoint_disabled")
        assert [(n.recipient, n.forwarded_at) for n in recent] == [
            ("ops@acme.example", None),
            (None, T1),
        ]
    finally:
        await store.close()
