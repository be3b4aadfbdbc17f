"""A poll cycle over many sources: fetched many at once, politely per host, recorded together.

Real loopback sites, real SQLite and PostgreSQL (``database_url``, ``two_databases``).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import event, select

from warnsvc.config import Settings, parse_config
from warnsvc.errors import StoreConflictError
from warnsvc.model import GCR2P_SCALE, Event, EventType, SituationState, Status
from warnsvc.outbox import PENDING
from warnsvc.pipeline import Poller
from warnsvc.service import Components, build_components
from warnsvc.sources.fetch import PER_HOST
from warnsvc.store import schema
from warnsvc.store.db import PollWrite, Store

LEVELS = {"serious": "Serious Concern", "imminent": "Imminent Risk", "crisis": "Current Crisis"}


def page(title: str, level: str | None) -> str:
    risk = f"<p>Risk Level: {level}</p>" if level else "<p>No assessment today.</p>"
    return f"<html><body><h1>{title}</h1>{risk}<p>Some text.</p></body></html>"


@dataclass
class Pages:
    """A site of one-situation pages, ``/p/<name>``; counts requests in flight and their peers."""

    levels: dict[str, str | None] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)
    delay: float = 0.0
    etag: bool = False
    in_flight: int = 0
    most_in_flight: int = 0
    peers: set[tuple[str, int]] = field(default_factory=set)
    hits: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    server: TestServer | None = None
    shared: list[int] | None = None
    """In flight across several sites: [now, most]."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits += 1
        self.arrived.set()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            self.peers.add((peer[0], peer[1]))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if self.shared is not None:
            self.shared[0] += 1
            self.shared[1] = max(self.shared[1], self.shared[0])
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if name in self.broken:
                return web.Response(status=500, text="down")
            body = page(name.title(), self.levels[name])
            tag = f'"{abs(hash(body))}"'
            if self.etag and request.headers.get("If-None-Match") == tag:
                return web.Response(status=304, headers={"ETag": tag})
            headers = {"ETag": tag} if self.etag else {}
            return web.Response(text=body, content_type="text/html", headers=headers)
        finally:
            self.in_flight -= 1
            if self.shared is not None:
                self.shared[0] -= 1

    def url(self, name: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(f"/p/{name}"))


async def serve(aiohttp_server: Any, pages: Pages) -> Pages:
    app = web.Application()
    app.router.add_get("/p/{name}", pages.handle)
    pages.server = await aiohttp_server(app)
    return pages


def config(tmp_path: Path, database: str, sources: dict[str, str]) -> Settings:
    """Settings with one ``page`` source per (id, url)."""
    entries = "".join(
        f"""
  - id: {sid}
    kind: page
    url: {url}
    scale: gcr2p
    fields:
      title: {{css: h1}}
      level: {{regex: "Risk Level: (.+)"}}
    fetch: {{timeout: 5s, retries: 0}}
"""
        for sid, url in sources.items()
    )
    text = f"""
storage: {{url: "{database}"}}
detection: {{confirmations: 2, confirm_delay: 1s}}
feeds: {{dir: "{tmp_path}/feeds"}}
sources:{entries}
"""
    return parse_config(text, filename="test.yaml", environ={})


def names(count: int) -> list[str]:
    return [f"s{n:02d}" for n in range(count)]


@pytest.fixture
async def site(aiohttp_server: Any) -> Pages:
    return await serve(aiohttp_server, Pages())


async def components(tmp_path: Path, database: str, site: Pages, ids: list[str]) -> Components:
    return await build_components(config(tmp_path, database, {i: site.url(i) for i in ids}))


# -- fetching many at once, politely -----------------------------------------------------------


async def test_a_cycle_fetches_many_sources_at_once_but_never_more_than_the_host_limit(
    tmp_path: Path, aiohttp_server: Any
) -> None:
    shared = [0, 0]
    first = await serve(aiohttp_server, Pages(delay=0.05, shared=shared))
    second = await serve(aiohttp_server, Pages(delay=0.05, shared=shared))
    ids = names(12)
    for site in (first, second):
        site.levels = {name: LEVELS["serious"] for name in ids}
    sources = {f"a{n}": first.url(n) for n in ids} | {f"b{n}": second.url(n) for n in ids}
    parts = await build_components(
        config(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/t.db", sources)
    )
    try:
        reports = await parts.poller.poll_cycle(list(sources))
    finally:
        await parts.close()
    assert [r.source_id for r in reports] == list(sources)  # in the order asked
    assert all(r.ok for r in reports)
    assert first.hits == second.hits == 12
    # each site sees PER_HOST requests at once, at most; both sites are fetched together
    assert first.most_in_flight == second.most_in_flight == PER_HOST
    assert shared[1] > PER_HOST


async def test_sources_on_one_site_share_kept_alive_connections(
    tmp_path: Path, site: Pages
) -> None:
    ids = names(10)
    site.levels = {name: LEVELS["serious"] for name in ids}
    parts = await components(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/t.db", site, ids)
    try:
        for sid in ids:  # one after the other: each could reuse the last one's connection
            assert (await parts.poller.poll(sid)).ok
    finally:
        await parts.close()
    assert site.hits == 10
    assert len(site.peers) == 1  # ten sources, each with its own session, one connection


# -- one failing source among many -------------------------------------------------------------


async def test_one_failing_source_among_many_changes_nothing_for_the_others(
    tmp_path: Path, site: Pages, database_url: str
) -> None:
    ids = names(6)
    site.levels = {name: LEVELS["serious"] for name in ids}
    parts = await components(tmp_path, database_url, site, ids)
    try:
        baseline = await parts.poller.poll_cycle(ids)
        assert all(r.ok and r.baseline for r in baseline)

        site.levels |= {"s01": LEVELS["crisis"], "s04": LEVELS["imminent"]}
        site.broken = {"s02"}
        seen = await parts.poller.poll_cycle(ids)
        by_id = {r.source_id: r for r in seen}
        assert not by_id["s02"].ok and "HTTP 500" in (by_id["s02"].error or "")
        assert {sid for sid, r in by_id.items() if r.pending} == {"s01", "s04"}
        assert all(r.ok for sid, r in by_id.items() if sid != "s02")

        site.broken = set()
        site.levels["s02"] = LEVELS["crisis"]  # what it says once back must be confirmed too
        confirmed = await parts.poller.poll_cycle(ids)
        events = [(e.type, e.situation) for r in confirmed for e in r.events]
        assert sorted(events) == [
            (EventType.ESCALATED, "s01:s01"),
            (EventType.ESCALATED, "s04:s04"),
        ]
        assert {r.source_id: r.pending for r in confirmed}["s02"] == ["s02:s02"]

        health = {h.source_id: h for h in await parts.store.all_source_health()}
        assert (health["s02"].healthy, health["s02"].consecutive_failures) == (True, 0)
        assert all(h.healthy for h in health.values())
        states = await parts.store.situation_states("s02")
        assert states["s02:s02"].level == "serious-concern"  # not confirmed yet
        assert await parts.store.count_events() == 2
    finally:
        await parts.close()


async def test_a_failing_source_is_marked_unhealthy_and_the_others_recorded(
    tmp_path: Path, site: Pages, database_url: str
) -> None:
    ids = names(4)
    site.levels = {name: LEVELS["serious"] for name in ids}
    site.levels["s03"] = None  # the page has no risk line
    parts = await components(tmp_path, database_url, site, ids)
    try:
        reports = await parts.poller.poll_cycle(ids)
        assert [r.ok for r in reports] == [True, True, True, False]
        assert "matched nothing" in (reports[3].error or "")
        again = await parts.poller.poll_cycle(ids)
        assert [r.ok for r in again] == [True, True, True, False]
        health = {h.source_id: h for h in await parts.store.all_source_health()}
        assert (health["s03"].healthy, health["s03"].consecutive_failures) == (False, 2)
        assert all(health[s].healthy and health[s].baseline_done for s in ids[:3])
        assert await parts.store.situation_states("s03") == {}
        assert await parts.store.count_events() == 0
    finally:
        await parts.close()


# -- one read and one write per batch ----------------------------------------------------------


async def statements_of_a_steady_cycle(
    tmp_path: Path, site: Pages, database_url: str, count: int
) -> tuple[int, Components]:
    ids = names(count)
    site.levels = {name: LEVELS["serious"] for name in ids}
    parts = await components(tmp_path, database_url, site, ids)
    # one batch whatever the machine's speed: recorded when every poll is in
    parts.poller = Poller(
        parts.store, parts.sources, parts.poller.policy, parts.poller.recipients, linger=60
    )
    await parts.poller.poll_cycle(ids)  # the baseline
    await parts.poller.poll_cycle(ids)  # first compared
    seen: list[str] = []

    def count_statement(*args: Any) -> None:
        seen.append(args[2])

    event.listen(parts.store.engine.sync_engine, "before_cursor_execute", count_statement)
    try:
        reports = await parts.poller.poll_cycle(ids)
    finally:
        event.remove(parts.store.engine.sync_engine, "before_cursor_execute", count_statement)
    assert all(r.ok and not r.events and not r.pending for r in reports)
    return len(seen), parts


async def test_a_steady_cycle_costs_the_same_few_statements_for_3_or_30_sources(
    tmp_path: Path, site: Pages, database_url: str
) -> None:
    few, parts = await statements_of_a_steady_cycle(tmp_path / "few", site, database_url, 3)
    await parts.close()
    many, parts = await statements_of_a_steady_cycle(tmp_path / "many", site, database_url, 30)
    try:
        assert many == few <= 8
        async with parts.store.engine.connect() as conn:
            rows = (await conn.execute(select(schema.situations))).mappings().all()
        # nothing changed: no state was written again, only the sources' health
        assert len(rows) == 30 and all(r["updated_at"] == r["first_seen_at"] for r in rows)
        health = await parts.store.all_source_health()
        assert all(h.last_poll_at and h.last_poll_at > rows[0]["updated_at"] for h in health)
    finally:
        await parts.close()


async def test_the_fetch_cache_serves_a_cycle_with_conditional_gets(
    tmp_path: Path, site: Pages, database_url: str
) -> None:
    ids = names(5)
    site.levels = {name: LEVELS["serious"] for name in ids}
    site.etag = True
    parts = await components(tmp_path, database_url, site, ids)
    try:
        await parts.poller.poll_cycle(ids)
        site.levels["s03"] = LEVELS["crisis"]  # a new body, a new validator
        second = await parts.poller.poll_cycle(ids)
        assert [r.source_id for r in second if r.pending] == ["s03"]
        assert all(r.ok and len(r.observations) == 1 for r in second)  # 304s read the cache
        cached = await parts.store.cached_page(site.url("s03"))
        assert cached is not None and b"Current Crisis" in cached.body
    finally:
        await parts.close()


# -- a batch writes what polls one by one write ------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def two_databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two empty databases on one engine."""
    if request.param == "sqlite":
        yield (f"sqlite+aiosqlite:///{tmp_path}/a.db", f"sqlite+aiosqlite:///{tmp_path}/b.db")
        return
    server = request.getfixturevalue("postgres")
    made = [f"t{secrets.token_hex(4)}_cycle_{n}" for n in ("a", "b")]
    urls = [server.new_database(name) for name in made]
    try:
        yield urls[0], urls[1]
    finally:
        for name in made:
            server.drop_database(name)


TIMES = {"first_seen_at", "updated_at", "pending_since"}


async def contents(store: Store) -> dict[str, Any]:
    """What the database says, without ids and times."""
    async with store.engine.connect() as conn:
        situations = (await conn.execute(select(schema.situations))).mappings().all()
        history = (await conn.execute(select(schema.level_history))).mappings().all()
        events = (await conn.execute(select(schema.events))).mappings().all()
        outbox = (await conn.execute(select(schema.outbox))).mappings().all()
    health = await store.all_source_health()
    return {
        "situations": sorted(
            tuple(sorted((k, repr(v)) for k, v in s.items() if k not in TIMES)) for s in situations
        ),
        "history": sorted(
            (h["situation_id"], h["level"], h["status"], h["event_id"] is None) for h in history
        ),
        "events": sorted(
            (e["type"], e["situation_id"], repr(e["payload"]["level"]), e["situation_revision"])
            for e in events
        ),
        "outbox": sorted((o["channel"], o["recipient"]) for o in outbox),
        "health": [
            (h.source_id, h.healthy, h.consecutive_failures, h.last_error, h.observations)
            for h in health
        ],
    }


async def test_a_batched_cycle_records_what_polls_one_by_one_record(
    tmp_path: Path, site: Pages, two_databases: tuple[str, str]
) -> None:
    ids = names(8)
    site.levels = {name: LEVELS["serious"] for name in ids}
    batched = await components(tmp_path / "a", two_databases[0], site, ids)
    single = await components(tmp_path / "b", two_databases[1], site, ids)
    steps: list[tuple[dict[str, str | None], set[str]]] = [
        ({}, set()),  # the baseline
        ({"s01": LEVELS["crisis"], "s05": LEVELS["imminent"]}, {"s06"}),  # seen, s06 down
        ({}, set()),  # confirmed; s06 back
        ({"s01": LEVELS["serious"], "s02": None}, {"s00"}),  # s02 unreadable, s00 down
        ({"s01": LEVELS["crisis"]}, set()),  # s01 back before confirmation: nothing
        ({}, set()),
    ]
    try:
        for changes, broken in steps:
            site.levels |= changes
            site.broken = broken
            together = await batched.poller.poll_cycle(ids)
            apart = [await single.poller.poll(sid) for sid in ids]
            assert [(r.ok, r.pending, len(r.events)) for r in together] == [
                (r.ok, r.pending, len(r.events)) for r in apart
            ]
        assert await contents(batched.store) == await contents(single.store)
        assert len((await contents(batched.store))["events"]) == 2
    finally:
        await batched.close()
        await single.close()


# -- one event per change, also in a batch -----------------------------------------------------


def nk_state(sid: str, level: str, revision: int = 0) -> SituationState:
    return SituationState(
        situation=f"{sid}:nk",
        source_id=sid,
        name="Nagorno-Karabakh",
        level=level,
        status=Status.ASSESSED,
        revision=revision,
    )


def escalation(sid: str, event_id: str, now: datetime) -> Event:
    return Event(
        id=event_id,
        type=EventType.ESCALATED,
        source_id=sid,
        source_name=sid,
        situation=f"{sid}:nk",
        situation_name="Nagorno-Karabakh",
        situation_url=None,
        scale="gcr2p",
        level=GCR2P_SCALE.get("imminent-risk"),
        previous_level=GCR2P_SCALE.get("serious-concern"),
        occurred_at=now,
        detected_at=now,
    )


@pytest.fixture
async def two_replicas(database_url: str) -> AsyncIterator[tuple[Store, Store]]:
    first = await Store.open(database_url)
    second = await Store.open(database_url)
    yield first, second
    await first.close()
    await second.close()


async def test_a_change_another_replica_recorded_first_is_refused_and_the_batch_kept(
    two_replicas: tuple[Store, Store],
) -> None:
    first, second = two_replicas
    now = datetime(2025, 1, 1, tzinfo=UTC)
    sids = ["a", "b", "c"]
    base = [PollWrite(source_id=s, scale="gcr2p", states=[nk_state(s, "serious-concern")], now=now)
            for s in sids]  # fmt: skip
    assert await first.apply_polls(base, {}) == {}
    # both replicas read revision 0; the first records b's escalation
    won = PollWrite(
        source_id="b",
        scale="gcr2p",
        states=[nk_state("b", "imminent-risk")],
        events=[escalation("b", "evt_first", now)],
        now=now,
    )
    assert await first.apply_polls([won], {"webhooks": ["ep_1"]}) == {}
    writes = [
        PollWrite(
            source_id=s,
            scale="gcr2p",
            states=[nk_state(s, "imminent-risk")],
            events=[escalation(s, f"evt_second_{s}", now)],
            now=now,
        )
        for s in sids
    ]
    refused = await second.apply_polls(writes, {"webhooks": ["ep_1"]})
    assert list(refused) == ["b"] and isinstance(refused["b"], StoreConflictError)
    events = {e["id"] for e in await second.recent_events()}
    assert events == {"evt_first", "evt_second_a", "evt_second_c"}  # one event per change
    states = await second.situation_states("b")
    assert states["b:nk"].revision == 1
    assert (await second.outbox.counts()) == {("webhooks", PENDING): 3}


async def test_a_cycle_cancelled_midway_leaves_every_source_free_for_the_next(
    tmp_path: Path, site: Pages
) -> None:
    ids = names(6)
    site.levels = {name: LEVELS["serious"] for name in ids}
    site.delay = 0.5
    parts = await components(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/t.db", site, ids)
    try:
        cycle = asyncio.create_task(parts.poller.poll_cycle(ids))
        await site.arrived.wait()
        cycle.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cycle
        site.delay = 0
        async with asyncio.timeout(30):  # no lock of the cancelled cycle is still held
            reports = await parts.poller.poll_cycle(ids)
        assert all(r.ok and r.baseline for r in reports)
    finally:
        await parts.close()
