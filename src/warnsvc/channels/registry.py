"""The registry of channels: a channel's name -> the module that builds it.

Each entry names the module and the attribute that hold a channel's
:class:`~warnsvc.channels.base.ChannelKind`, and the config section that switches it on
(None: always on). The module is imported only when its section is in the config, so a service
without ``email:`` never loads the SMTP client or the template engine, and one without
``notify:`` never loads Apprise. The service builds the channels in the order listed here.

Adding a channel is one module, one entry here and its docs: see docs/channels.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from warnsvc.channels.base import ChannelKind

if TYPE_CHECKING:
    from warnsvc.config import Settings


@dataclass(frozen=True, slots=True)
class Entry:
    """Where a channel kind lives, and the config section that switches it on."""

    module: str
    attribute: str = "KIND"
    section: str | None = None
    """A top-level config key: the channel is built when it is set and not ``enabled: false``."""


_CHANNEL_AT: dict[str, Entry] = {
    "feeds": Entry("warnsvc.channels.feeds"),  # and websub, when feeds.websub.hub is set
    "webhooks": Entry("warnsvc.channels.webhooks"),
    "email": Entry("warnsvc.channels.email", section="email"),
    "notify": Entry("warnsvc.channels.notify", section="notify"),
}
"""Channel name -> where its :class:`ChannelKind` is. Add new channels here."""


class _Kinds(Mapping[str, ChannelKind]):
    """The channel kinds by name; a kind's module is imported when it is first looked up."""

    def __init__(self, where: Mapping[str, Entry]) -> None:
        self._where = dict(where)
        self._loaded: dict[str, ChannelKind] = {}

    def __getitem__(self, name: str) -> ChannelKind:
        found = self._loaded.get(name)
        if found is None:
            entry = self._where[name]
            found = getattr(importlib.import_module(entry.module), entry.attribute)
            if not isinstance(found, ChannelKind) or found.name != name:
                raise TypeError(f"{entry.module}.{entry.attribute} is not the channel {name!r}")
            self._loaded[name] = found
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def wanted(self, name: str, settings: Settings) -> bool:
        """Whether ``settings`` switch channel ``name`` on (decided without importing it)."""
        section = self._where[name].section
        if section is None:
            return True
        value = getattr(settings, section, None)  # a config section, by its YAML key
        return value is not None and getattr(value, "enabled", True) is not False

    def register(self, name: str, entry: Entry) -> None:
        """Add (or replace) a channel; it is built after those already listed."""
        self._where[name] = entry
        self._loaded.pop(name, None)

    def unregister(self, name: str) -> None:
        self._where.pop(name, None)
        self._loaded.pop(name, None)


CHANNELS = _Kinds(_CHANNEL_AT)
"""Every channel kind by name, each loaded on first use."""


def get_kind(name: str) -> ChannelKind:
    """The channel registered under ``name``; KeyError naming the known channels otherwise."""
    try:
        return CHANNELS[name]
    except KeyError:
        if name in CHANNELS:
            raise  # a known channel's module failed to load: say so, not "unknown"
        raise KeyError(f"unknown channel {name!r} (known: {', '.join(sorted(CHANNELS))})") from None
