"""Shared pieces of the webhook tests: a loopback receiver, settings and events."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from warnsvc.config import Settings, parse_config
from warnsvc.model import GCR2P_SCALE, Event, EventType

KEY_A = "key-of-partner-a-0123456789abcdef"
KEY_B = "key-of-partner-b-0123456789abcdef"
T0 = datetime(2023, 8, 31, 9, 0, tzinfo=UTC)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook receiver on loopback. ``reply`` picks the answer for a path."""

    received: list[Received] = field(default_factory=list)
    replies: dict[str, tuple[int, dict[str, str]]] = field(default_factory=dict)
    delay: float = 0.0
    delays: dict[str, float] = field(default_factory=dict)
    hang: bool = False
    active: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    peak_total: int = 0
    base: str = ""
    hook: Callable[[Received], None] | None = None

    def url(self, path: str) -> str:
        return self.base + path

    def paths(self) -> list[str]:
        return [r.path for r in self.received]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        body = await request.read()
        item = Received(path, dict(request.headers), body)
        self.received.append(item)
        if self.hook:
            self.hook(item)
        self.active[path] = self.active.get(path, 0) + 1
        self.peak[path] = max(self.peak.get(path, 0), self.active[path])
        self.peak_total = max(self.peak_total, sum(self.active.values()))
        try:
            if self.hang:
                await asyncio.sleep(3600)
            delay = self.delays.get(path, self.delay)
            if delay:
                await asyncio.sleep(delay)
        finally:
            self.active[path] -= 1
        status, headers = self.replies.get(path, (204, {}))
        return web.Response(status=status, headers=headers)


async def serve_receiver(aiohttp_server: Any, method: str = "*") -> Receiver:
    """A :class:`Receiver` answering every path on loopback (pytest-aiohttp's server)."""
    state = Receiver()
    app = web.Application()
    app.router.add_route(method, "/{tail:.*}", state.handle)
    server = await aiohttp_server(app)
    state.base = str(server.make_url("")).rstrip("/")
    return state


def settings_text(tmp_path: Path, extra: str = "", **webhooks: Any) -> str:
    options = {
        "allow_networks": '["127.0.0.0/8"]',
        "timeout": "2s",
        "quick_retries": 1,
        "lease": "20s",
        **{k: v for k, v in webhooks.items()},
    }
    lines = "".join(f"  {k}: {v}\n" for k, v in options.items())
    return f"""
service: {{name: warnsvc-test, shutdown_timeout: 3s}}
storage: {{url: "sqlite+aiosqlite:///{tmp_path}/t.db"}}
feeds: {{dir: "{tmp_path}/feeds"}}
webhooks:
{lines}  partners:
    - {{id: ngo-a, name: NGO A, contact: ops@ngo-a.example, api_key: "{KEY_A}"}}
    - {{id: ngo-b, api_key: "{KEY_B}"}}
{extra}"""


def make_settings(tmp_path: Path, extra: str = "", **webhooks: Any) -> Settings:
    return parse_config(settings_text(tmp_path, extra, **webhooks), filename="test.yaml")


def make_event(
    event_id: str = "evt_0000000000001",
    *,
    type_: EventType = EventType.ESCALATED,
    situation: str = "gcr2p:sudan",
    level: str | None = "current-crisis",
    previous: str | None = "imminent-risk",
    source: str = "gcr2p",
) -> Event:
    return Event(
        id=event_id,
        type=type_,
        source_id=source,
        source_name="Global Centre for the Responsibility to Protect",
        situation=situation,
        situation_name=situation.split(":", 1)[1].title(),
        situation_url="https://www.globalr2p.org/countries/sudan/",
        scale="gcr2p",
        level=GCR2P_SCALE.get(level) if level else None,
        previous_level=GCR2P_SCALE.get(previous) if previous else None,
        occurred_at=T0,
        detected_at=T0,
        summary="Populations face atrocity crimes.",
        risk_factors=("A factor.", "Ünïcode — factor."),
    )
