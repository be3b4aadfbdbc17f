"""Feeds rebuilt from a real store: what a rebuild reads, and what it leaves out."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.webhook_helpers import make_event
from warnsvc.channels.feeds import FeedChannel, FeedSettings
from warnsvc.model import GCR2P_SCALE, EventType
from warnsvc.store.db import Store


async def test_partner_test_pings_never_push_real_events_out_of_the_feeds(
    tmp_path: Path,
) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'warnsvc.db'}")
    try:
        await store.record_event(make_event("evt_real"), {})
        for n in range(3):  # newer than the real event
            ping = make_event(f"evt_ping{n}", type_=EventType.WEBHOOK_TEST)
            await store.record_event(ping, {})
        settings = FeedSettings(out_dir=tmp_path / "feeds", base_url="https://alerts.example.org")
        channel = FeedChannel(store, {"gcr2p": GCR2P_SCALE}, settings)
        channel.history = 2  # a rebuild reads the two newest events
        await channel.rebuild()
        feed = json.loads((tmp_path / "feeds" / "alerts.json").read_text(encoding="utf-8"))
        assert [item["_warnsvc"]["id"] for item in feed["items"]] == ["evt_real"]
    finally:
        await store.close()
