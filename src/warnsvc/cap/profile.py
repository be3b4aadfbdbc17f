"""Who publishes the CAP alerts and how levels become CAP values: the ``cap`` settings as one
record (no lxml here: the web app builds it per request and loads lxml only to render)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from warnsvc.cap.mapping import DEFAULT_CATEGORY, CapOverride, Overrides
from warnsvc.model import Scale

if TYPE_CHECKING:
    from warnsvc.config import Settings

INDEX_PATH = "/feeds/cap.atom"
_CAP_TOKEN_UNSAFE = re.compile(r"[\s,<&]")


@dataclass(frozen=True, slots=True, kw_only=True)
class CapProfile:
    """What the documents say of their publisher, and how levels become CAP values."""

    base_url: str
    sender: str
    sender_name: str = "warnsvc"
    category: str = DEFAULT_CATEGORY
    categories: Mapping[str, str] = field(default_factory=dict)
    """Source id -> the category of its events (``sources[].cap_category``)."""
    scales: Mapping[str, Scale] = field(default_factory=dict)
    overrides: Overrides = field(default_factory=dict)
    title: str = "warnsvc alerts"
    max_entries: int = 100
    hub: str | None = None

    def document_url(self, event_id: str) -> str:
        return f"{self.base_url.rstrip('/')}/cap/{quote(event_id, safe='')}.xml"

    @property
    def index_url(self) -> str:
        return self.base_url.rstrip("/") + INDEX_PATH


def default_sender(base_url: str) -> str:
    """The sender when ``cap.sender`` is not set: ``service.base_url``'s host."""
    host = urlsplit(base_url).hostname or ""
    try:
        host = host.rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        host = ""
    host = _CAP_TOKEN_UNSAFE.sub("", host).strip("[]")
    return host or "warnsvc"


def profile_from_settings(settings: Settings) -> CapProfile:
    """The profile the ``cap`` section (and ``service``, ``feeds``, ``sources``) describe."""
    cap = settings.cap
    websub = settings.feeds.websub
    return CapProfile(
        base_url=settings.service.base_url,
        sender=cap.sender or default_sender(settings.service.base_url),
        sender_name=settings.service.name,
        category=cap.category,
        categories={s.id: s.cap_category for s in settings.sources if s.cap_category},
        scales=settings.scale_map(),
        overrides={
            scale_id: {
                level_id: CapOverride(
                    urgency=values.urgency, severity=values.severity, certainty=values.certainty
                )
                for level_id, values in levels.items()
            }
            for scale_id, levels in cap.mapping.items()
        },
        title=settings.feeds.title,
        max_entries=settings.feeds.max_entries,
        hub=websub.hub if websub is not None else None,
    )
