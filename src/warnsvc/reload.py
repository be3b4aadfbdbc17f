"""Noticing config edits: a file watcher with debouncing, and the diff a reload applies.

Editors save in bursts (write a temp file, rename, touch), sometimes many times a second. The
watcher compares the file's content digest, not only its modification time, and waits until the
file has been stable for ``debounce`` seconds before it asks for one reload.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from warnsvc.config import Settings

log = logging.getLogger(__name__)


def digest(path: Path) -> str | None:
    """The SHA-256 of the file, or None when it cannot be read (mid-save, deleted)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class ConfigWatcher:
    """Call ``on_change`` once per settled change of the file's content."""

    def __init__(
        self,
        path: Path,
        on_change: Callable[[], Awaitable[object]],
        *,
        interval: float = 1.0,
        debounce: float = 1.0,
    ) -> None:
        self.path = path
        self.on_change = on_change
        self.interval = interval
        self.debounce = debounce
        self.seen = digest(path)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            current = await asyncio.to_thread(digest, self.path)
            if current is None or current == self.seen:
                continue
            current = await self._settle(current)
            if current is not None and current != self.seen:
                self.seen = current
                log.info("config file changed: %s", self.path, extra={"action": "config_changed"})
                await self.on_change()

    async def _settle(self, current: str) -> str | None:
        """Wait until the content stops changing for ``debounce`` seconds."""
        while True:
            await asyncio.sleep(self.debounce)
            later = await asyncio.to_thread(digest, self.path)
            if later == current:
                return current
            if later is None:
                return None
            current = later

    def accept(self) -> None:
        """Remember the file as it is now (after a reload triggered another way)."""
        self.seen = digest(self.path)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadPlan:
    """What a valid new config changes about the sources, and what it cannot change."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    restart_needed: tuple[str, ...]

    def summary(self) -> str:
        parts = [
            f"{label}: {', '.join(ids)}"
            for label, ids in (
                ("sources added", self.added),
                ("removed", self.removed),
                ("changed", self.changed),
            )
            if ids
        ]
        return "; ".join(parts) or "no source changed"


def plan_reload(old: Settings, new: Settings) -> ReloadPlan:
    """Compare two configs: enabled sources added, removed, changed; keys that need a restart."""
    before = {s.id: s for s in old.sources if s.enabled}
    after = {s.id: s for s in new.sources if s.enabled}
    scales_changed = old.scale_map() != new.scale_map()
    changed = tuple(
        sorted(
            sid
            for sid in before.keys() & after.keys()
            if before[sid] != after[sid]
            or (scales_changed and before[sid].scale in new.scale_map())
        )
    )
    return ReloadPlan(
        added=tuple(sorted(after.keys() - before.keys())),
        removed=tuple(sorted(before.keys() - after.keys())),
        changed=changed,
        restart_needed=_restart_keys(old, new),
    )


def _restart_keys(old: Settings, new: Settings) -> tuple[str, ...]:
    keys: Sequence[tuple[str, object, object]] = (
        ("storage.url", old.storage.url, new.storage.url),
        ("service.http", old.service.http, new.service.http),
        ("feeds.dir", old.feeds.dir, new.feeds.dir),
    )
    return tuple(key for key, a, b in keys if a != b)
