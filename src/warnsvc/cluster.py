"""One replica among several on one database: leadership, heartbeats, and following events.

:class:`Cluster` runs beside the rest of a replica. Every ``leadership.interval`` seconds it
tries for the lead (or checks it still holds it) and writes this replica's heartbeat; when the
lead is won or lost it calls ``on_lead`` / ``on_follow``, which start or stop the work only one
replica may do (polling, confirmations, digests, pruning). Every second it looks at the newest
event's sequence number, and when another replica wrote events it calls ``on_events`` (the
feeds are rebuilt from the store and the dispatcher woken), so every replica serves the same
feeds within a few seconds.

On SQLite there is one process: it leads from the first check, and events are its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from warnsvc import __version__, metrics
from warnsvc.config import Settings
from warnsvc.errors import StoreError
from warnsvc.store.db import Store
from warnsvc.store.replicas import Replica

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None]]

FORGET_AFTER = timedelta(days=1)
"""A replica silent this long leaves ``warnsvc status`` (until then it shows as gone)."""


def config_digest(settings: Settings) -> str:
    """What replicas must agree on: the sources and scales, hashed."""
    data: dict[str, Any] = {
        "sources": [s.model_dump(mode="json") for s in settings.sources],
        "scales": [s.model_dump(mode="json") for s in settings.scales],
    }
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(slots=True)
class ReplicaView:
    """What this replica knows of the others, from the last heartbeat."""

    leader_id: str | None = None
    mismatch: str | None = None
    """Why this replica's config disagrees with the leader's, or None."""


class Cluster:
    """Lead or follow, beat, and follow the events other replicas write."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        url: str,
        on_lead: Hook,
        on_follow: Hook,
        on_events: Hook,
    ) -> None:
        self.store = store
        self.leadership = store.leadership(failover=settings.storage.failover)
        host = socket.gethostname()
        now = datetime.now(UTC)
        self.me = Replica(
            id=f"{host}:{url.rsplit(':', 1)[-1]}",
            host=host,
            pid=os.getpid(),
            url=url,
            version=__version__,
            config_digest=config_digest(settings),
            leader=False,
            started_at=now,
            seen_at=now,
        )
        self.on_lead = on_lead
        self.on_follow = on_follow
        self.on_events = on_events
        self.leading = False
        self.store_ok = True
        self.view = ReplicaView()
        self._seq: int | None = None
        self._stopping = asyncio.Event()

    @property
    def role(self) -> str:
        return "leader" if self.leading else "follower"

    def reconfigure(self, settings: Settings) -> None:
        self.me = replace(self.me, config_digest=config_digest(settings))

    async def begin(self) -> None:
        """The first leadership check and heartbeat, before :meth:`run` (on SQLite this
        process leads from here on)."""
        await self._lead_or_follow()
        await self._beat()

    async def run(self) -> None:
        """Until :meth:`stop`: the leadership check and heartbeat, and the events check."""
        interval = self.leadership.interval
        follow = self.store.shared
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + interval
        while not self._stopping.is_set():
            if loop.time() >= next_beat:
                next_beat = loop.time() + interval
                await self._lead_or_follow()
                await self._beat()
            if follow:
                await self._follow_events()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=min(1.0, interval))

    async def stop(self) -> None:
        """Leave cleanly: give up the lead and the heartbeat row."""
        self._stopping.set()
        if self.leading:
            self.leading = False
            metrics.LEADER.set(0)
            await self.on_follow()
        await self.leadership.release()
        try:
            await self.store.replicas.remove(self.me.id)
        except StoreError as exc:
            log.warning("cannot remove this replica's row: %s", exc)

    async def _lead_or_follow(self) -> None:
        leading = await self.leadership.check()
        if leading == self.leading:
            return
        self.leading = leading
        metrics.LEADER.set(1 if leading else 0)
        if leading:
            log.info("this replica leads now", extra={"action": "leader_elected"})
            await self.on_lead()
        else:
            log.warning("this replica follows now", extra={"action": "leader_lost"})
            await self.on_follow()

    async def _beat(self) -> None:
        now = datetime.now(UTC)
        self.me = replace(self.me, leader=self.leading, seen_at=now)
        try:
            await self.store.replicas.beat(self.me)
            if self.leading:
                await self.store.replicas.forget(silent_since=now - FORGET_AFTER)
            self._see(await self.store.replicas.all(), now)
        except StoreError as exc:
            if self.store_ok:
                log.error("the database is unreachable: %s", exc, extra={"action": "store_lost"})
            self.store_ok = False
            return
        if not self.store_ok:
            log.info("the database is reachable again", extra={"action": "store_back"})
        self.store_ok = True

    def _see(self, replicas: list[Replica], now: datetime) -> None:
        fresh = now - timedelta(seconds=3 * self.leadership.interval)
        leader = next((r for r in replicas if r.leader and r.seen_at >= fresh), None)
        mismatch = None
        if (
            leader is not None
            and leader.id != self.me.id
            and leader.config_digest != self.me.config_digest
        ):
            mismatch = (
                f"sources or scales differ from the leader's ({leader.id}); "
                "run every replica on the same config"
            )
        if mismatch and mismatch != self.view.mismatch:
            log.error("%s", mismatch, extra={"action": "config_mismatch"})
        self.view = ReplicaView(leader_id=leader.id if leader else None, mismatch=mismatch)

    async def _follow_events(self) -> None:
        try:
            seq = await self.store.last_event_seq()
        except StoreError:
            return  # the heartbeat reports it
        if self._seq is not None and seq != self._seq:
            try:
                await self.on_events()
            except Exception:
                log.exception("cannot follow new events", extra={"action": "follow_failed"})
                return
        self._seq = seq
