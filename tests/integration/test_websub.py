"""WebSub: hub links in the feeds, publish pings through the outbox to a loopback hub, retries
and dead letters, and a failing hub that never holds up the feeds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from warnsvc.channels.feeds import FeedChannel, FeedSettings
from warnsvc.channels.websub import WebSubChannel
from warnsvc.dispatch import Dispatcher
from warnsvc.model import BUILTIN_SCALES, GCR2P_SCALE, Event, EventType
from warnsvc.outbox import RetryPolicy
from warnsvc.pipeline import Routing
from warnsvc.security.ssrf import Guard
from warnsvc.store.db import Store

BASE = "https://alerts.example.org"
SCALES = {scale.id: scale for scale in BUILTIN_SCALES}
FAST = RetryPolicy(initial=0.001, factor=1.0, cap=0.001, max_attempts=3)


@dataclass
class Hub:
    """A loopback hub that records publish pings and answers ``status``."""

    status: int = 204
    pings: list[dict[str, str]] = field(default_factory=list)
    feeds_seen: list[bytes] = field(default_factory=list)
    feeds_dir: Path | None = None

    async def handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.pings.append({k: str(v) for k, v in form.items()})
        if self.feeds_dir is not None:  # what a hub would fetch right now
            self.feeds_seen.append((self.feeds_dir / "alerts.atom").read_bytes())
        return web.Response(status=self.status)


@pytest.fixture
async def hub() -> AsyncIterator[tuple[Hub, str]]:
    state = Hub()
    app = web.Application()
    app.router.add_post("/hub", state.handle)
    async with TestServer(app, host="127.0.0.1") as server:
        yield state, str(server.make_url("/hub"))


def event(n: int) -> Event:
    moment = datetime(2026, 11, 30, 7, n, tzinfo=UTC)
    return Event(
        id=f"evt_{n:04d}",
        type=EventType.ESCALATED,
        source_id="gcr2p",
        source_name="GCR2P",
        situation="gcr2p:sudan",
        situation_name="Sudan",
        situation_url="https://www.globalr2p.org/countries/sudan/",
        scale="gcr2p",
        level=GCR2P_SCALE.levels[1],
        previous_level=GCR2P_SCALE.levels[0],
        occurred_at=moment,
        detected_at=moment,
        summary="Worse.",
    )


async def parts(
    tmp_path: Path, hub_url: str | None, policy: RetryPolicy = FAST, guard: Guard | None = None
) -> tuple[Store, FeedChannel, WebSubChannel, Dispatcher]:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'warnsvc.db'}")
    settings = FeedSettings(out_dir=tmp_path / "feeds", base_url=BASE, hub=hub_url)
    feeds = FeedChannel(store, SCALES, settings)
    websub = WebSubChannel(
        feeds, guard or Guard.build(networks=["127.0.0.0/8"]), timeout=5, retry_policy=policy
    )
    channels: dict[str, Any] = {"feeds": feeds, "websub": websub}
    return store, feeds, websub, Dispatcher(store.outbox, channels, RetryPolicy())


EXPECTED_TOPICS = {
    f"{BASE}/feeds/alerts.atom",
    f"{BASE}/feeds/alerts.rss",
    f"{BASE}/feeds/alerts.json",
    f"{BASE}/feeds/situations/gcr2p:sudan.atom",
    f"{BASE}/feeds/levels/serious-concern.atom",
    f"{BASE}/feeds/levels/imminent-risk.atom",
    f"{BASE}/feeds/cap.atom",
}


async def test_feeds_name_the_hub_and_themselves(tmp_path: Path, hub: tuple[Hub, str]) -> None:
    _state, url = hub
    store, feeds, _websub, _dispatcher = await parts(tmp_path, url)
    try:
        await feeds.rebuild()
        atom = (tmp_path / "feeds" / "alerts.atom").read_text()
        rss = (tmp_path / "feeds" / "alerts.rss").read_text()
        assert f'<link href="{url}" rel="hub"/>' in atom
        assert f'href="{BASE}/feeds/alerts.atom" rel="self"' in atom
        assert f'<atom:link href="{url}" rel="hub"/>' in rss
        assert f'href="{BASE}/feeds/alerts.rss" rel="self"' in rss
        assert f'"url": "{url}"' in (tmp_path / "feeds" / "alerts.json").read_text()
    finally:
        await store.close()


async def test_each_changed_feed_is_published_after_the_files_are_written(
    tmp_path: Path, hub: tuple[Hub, str]
) -> None:
    state, url = hub
    state.feeds_dir = tmp_path / "feeds"
    store, feeds, websub, dispatcher = await parts(tmp_path, url)
    try:
        for n in (1, 2):
            await store.record_event(event(n), Routing({"feeds": feeds, "websub": websub}))
        # the websub rows alone: the hub must still find the events in the feeds
        await Dispatcher(store.outbox, {"websub": websub}, RetryPolicy()).drain()
        assert {p["hub.url"] for p in state.pings} == EXPECTED_TOPICS
        assert len(state.pings) == len(EXPECTED_TOPICS)  # two events, one ping per feed
        assert all(p["hub.mode"] == "publish" for p in state.pings)
        assert all(b"evt_0002" in seen for seen in state.feeds_seen)
        await dispatcher.drain()
        counts = await store.outbox.counts()
        assert counts == {("feeds", "delivered"): 2, ("websub", "delivered"): 14}
    finally:
        await store.close()


async def test_a_failing_hub_is_retried_then_dead_lettered_and_never_holds_up_the_feeds(
    tmp_path: Path, hub: tuple[Hub, str]
) -> None:
    state, url = hub
    state.status = 503
    store, feeds, websub, dispatcher = await parts(tmp_path, url)
    try:
        await store.record_event(event(1), Routing({"feeds": feeds, "websub": websub}))
        await dispatcher.drain()
        counts = await store.outbox.counts()
        assert counts[("feeds", "delivered")] == 1
        assert b"evt_0001" in (tmp_path / "feeds" / "alerts.atom").read_bytes()
        assert counts[("websub", "pending")] == 7  # to be retried
        state.status = 204
        await _drain_until_settled(dispatcher)
        assert (await store.outbox.counts())[("websub", "delivered")] == 7

        state.status = 500  # a hub down for good: dead letters after max_attempts
        await store.record_event(event(2), Routing({"feeds": feeds, "websub": websub}))
        await _drain_until_settled(dispatcher)
        counts = await store.outbox.counts()
        assert counts[("websub", "dead")] == 7
        assert counts[("feeds", "delivered")] == 2
    finally:
        await store.close()


async def test_a_hub_the_guard_refuses_is_dead_lettered_at_once(
    tmp_path: Path, hub: tuple[Hub, str]
) -> None:
    state, url = hub
    store, feeds, websub, dispatcher = await parts(tmp_path, url, guard=Guard())  # no allow-list
    try:
        await store.record_event(event(1), Routing({"feeds": feeds, "websub": websub}))
        await dispatcher.drain()
        assert state.pings == []
        assert (await store.outbox.counts())[("websub", "dead")] == 7
    finally:
        await store.close()


async def test_without_a_hub_nothing_is_routed(tmp_path: Path) -> None:
    store, feeds, websub, _dispatcher = await parts(tmp_path, None)
    try:
        await store.record_event(event(1), Routing({"feeds": feeds, "websub": websub}))
        assert await store.outbox.counts() == {("feeds", "pending"): 1}
    finally:
        await store.close()


async def _drain_until_settled(dispatcher: Dispatcher, rounds: int = 20) -> None:
    """Drain until no row is pending (the fast policy makes retries due at once)."""
    import asyncio

    for _ in range(rounds):
        await dispatcher.drain()
        counts = await dispatcher.outbox.counts()
        if not any(state == "pending" for (_channel, state) in counts):
            return
        await asyncio.sleep(0.01)
