"""docs/channels.md, followed: a channel added as one module and one registry entry receives a
real escalation through the real pipeline and dispatcher on SQLite.

This file is the channel's module (``KIND`` below) and its test. The channel appends every
event at or above Imminent Risk to a file, one JSON object a line; the file's path comes from
the environment, since a config section would need an edit of config.py.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import Site, country_html
from warnsvc.channels.base import BaseChannel, ChannelContext, ChannelKind, Outcome, Plugged
from warnsvc.channels.registry import CHANNELS, Entry
from warnsvc.config import Settings, parse_config
from warnsvc.filters import Filter, Levels
from warnsvc.model import Event
from warnsvc.outbox import Delivery
from warnsvc.service import Components, build_components
from warnsvc.store import schema
from warnsvc.store.db import RouteContext

NAME = "jsonlines"
PATH_VARIABLE = "WARNSVC_TEST_JSONLINES"


# --------------------------------------------------------------------------- the channel module


class JsonLinesChannel(BaseChannel):
    name = NAME

    def __init__(self, path: Path, wanted: Filter, levels: Levels) -> None:
        self.path, self.wanted, self.levels = path, wanted, levels

    async def recipients(self, routes: RouteContext, event: Event) -> Sequence[str]:
        return [str(self.path)] if self.wanted.matches(event, self.levels) else []

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        lines = "".join(json.dumps(d.payload) + "\n" for d in deliveries)
        try:
            await asyncio.to_thread(_append, self.path, lines)
        except OSError as exc:
            return [Outcome(delivery_id=d.id, ok=False, error=str(exc)) for d in deliveries]
        return [Outcome(delivery_id=d.id, ok=True) for d in deliveries]


def _append(path: Path, lines: str) -> None:
    with path.open("a", encoding="utf-8") as file:
        file.write(lines)


async def build(settings: Settings, context: ChannelContext) -> Plugged | None:
    path = os.environ.get(PATH_VARIABLE)
    if not path:
        return None
    wanted = Filter.from_json({"min_level": "imminent-risk"})
    return Plugged(JsonLinesChannel(Path(path), wanted, Levels(settings.scale_map())))


KIND = ChannelKind(name=NAME, build=build)


# --------------------------------------------------------------------------- the test


@pytest.fixture
def registered() -> Iterator[None]:
    """The registry entry (in the registry's own dict it is one line)."""
    CHANNELS.register(NAME, Entry(__name__))
    try:
        yield
    finally:
        CHANNELS.unregister(NAME)


@pytest.fixture
async def parts(
    tmp_path: Path, site: Site, registered: None, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Components]:
    monkeypatch.setenv(PATH_VARIABLE, str(tmp_path / "alerts.jsonl"))
    text = f"""
storage: {{url: "sqlite+aiosqlite:///{tmp_path}/t.db"}}
feeds: {{dir: "{tmp_path}/feeds"}}
sources:
  - id: mali
    kind: gcr2p-page
    url: {site.url("/countries/mali/")}
    fetch: {{timeout: 1s, retries: 0}}
"""
    components = await build_components(parse_config(text, filename="t.yaml"))
    yield components
    await components.close()


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def rows(parts: Components) -> list[tuple[str, int]]:
    async with parts.store.engine.connect() as conn:
        query = select(schema.outbox.c.status, schema.outbox.c.attempts).where(
            schema.outbox.c.channel == NAME
        )
        return [(r.status, r.attempts) for r in await conn.execute(query)]


async def change(
    parts: Components, site: Site, level: str, *, date: str = "1 June 2022"
) -> list[Event]:
    """Serve the page at ``level`` and poll until the change is confirmed (or is none)."""
    site.set("/countries/mali/", country_html("Mali", level=level, date=date))
    seen = await parts.poller.poll("mali")
    if not seen.pending:
        return seen.events
    return (await parts.poller.poll("mali")).events


async def test_a_channel_added_by_the_howto_receives_a_real_escalation(
    parts: Components, site: Site, tmp_path: Path
) -> None:
    out = tmp_path / "alerts.jsonl"
    assert NAME in parts.plugged and parts.dispatcher.channels[NAME].name == NAME

    assert await change(parts, site, "Serious Concern") == []  # the baseline: no event
    [escalated] = await change(parts, site, "Imminent Risk")
    await parts.dispatcher.drain()

    [line] = lines(out)
    assert line == escalated.payload()
    assert (line["type"], line["previous_level"]["id"], line["level"]["id"]) == (
        "risk.escalated",
        "serious-concern",
        "imminent-risk",
    )
    assert await rows(parts) == [("delivered", 1)]
    assert (tmp_path / "feeds" / "alerts.atom").is_file()  # the other channels carry on


async def test_the_filter_keeps_changes_below_the_level_out(
    parts: Components, site: Site, tmp_path: Path
) -> None:
    await change(parts, site, "Serious Concern")
    [updated] = await change(parts, site, "Serious Concern", date="2 July 2022")
    [escalated] = await change(parts, site, "Imminent Risk", date="2 July 2022")
    [back] = await change(parts, site, "Serious Concern", date="2 July 2022")
    assert [e.type.value for e in (updated, escalated, back)] == [
        "situation.updated",
        "risk.escalated",
        "risk.deescalated",  # from imminent-risk: at or above it, so it passes
    ]
    await parts.dispatcher.drain()

    got = [line["id"] for line in lines(out_of(tmp_path))]
    assert got == [escalated.id, back.id]
    assert len(await rows(parts)) == 2  # no row at all for the update


async def test_a_failed_append_is_retried_through_the_outbox(
    parts: Components, site: Site, tmp_path: Path
) -> None:
    out = out_of(tmp_path)
    out.mkdir()  # appending to a folder fails
    await change(parts, site, "Serious Concern")
    await change(parts, site, "Imminent Risk")
    await parts.dispatcher.drain()
    [(status, attempts)] = await rows(parts)
    assert (status, attempts) == ("pending", 1)  # rescheduled by the retry policy

    out.rmdir()
    async with parts.store.engine.begin() as conn:  # due now, not in half a minute
        await conn.execute(
            schema.outbox.update()
            .where(schema.outbox.c.channel == NAME)
            .values(next_attempt_at=schema.outbox.c.created_at)
        )
    await parts.dispatcher.drain()
    assert [line["type"] for line in lines(out)] == ["risk.escalated"]
    assert await rows(parts) == [("delivered", 2)]


def out_of(tmp_path: Path) -> Path:
    return tmp_path / "alerts.jsonl"
