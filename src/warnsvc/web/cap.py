"""CAP over HTTP: ``GET /cap/{event id}.xml`` and ``GET /feeds/cap.atom``.

Both are rendered from the store on request, with lxml (loaded on the first request), so every
replica answers alike with no files to keep in step. They carry a strong ETag and
``Cache-Control``; ``If-None-Match`` gets a 304. An alert is the same document every time it is
served, so it may be cached for a day; the index for a minute, like the other feeds. An unknown
event id (or a partner's test ping, which has no alert) is a JSON 404.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from warnsvc.model import EventType

if TYPE_CHECKING:
    from warnsvc.cap.profile import CapProfile

CAP_TYPE = "application/cap+xml"
INDEX_PATH = "/feeds/cap.atom"
ALERT_MAX_AGE = 86_400
INDEX_MAX_AGE = 60
_EVENT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class CapEvents(Protocol):
    """What the pages read of the store."""

    async def situation_history(
        self, event_id: str, *, limit: int = 1000
    ) -> list[dict[str, Any]] | None: ...

    async def recent_events(
        self,
        *,
        limit: int = 100,
        situation: str | None = None,
        exclude_types: Iterable[str] = (),
    ) -> list[dict[str, Any]]: ...


class CapPages:
    """The two handlers; ``profile`` is read per request, so a reloaded config applies."""

    def __init__(self, events: CapEvents, profile: Callable[[], CapProfile]) -> None:
        self.events = events
        self.profile = profile
        self.started = datetime.now(UTC)
        """The index's ``updated`` while it has no entries."""

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/cap/{event_id}.xml", self.alert),
            web.get(INDEX_PATH, self.index),
        ]

    async def alert(self, request: web.Request) -> web.StreamResponse:
        from warnsvc.cap.document import build_alert, is_alert, parse_time  # lxml: on first use

        event_id = request.match_info["event_id"]
        history = (
            await self.events.situation_history(event_id) if _EVENT_ID.fullmatch(event_id) else None
        )
        if not history or history[-1].get("id") != event_id or not is_alert(history[-1]):
            raise web.HTTPNotFound(reason=f"no CAP alert for event {event_id!r}")
        body = await asyncio.to_thread(build_alert, history, self.profile())
        modified = parse_time(history[-1].get("detected_at"))
        return _cached(request, body, CAP_TYPE, ALERT_MAX_AGE, modified)

    async def index(self, request: web.Request) -> web.StreamResponse:
        from warnsvc.cap.document import build_index  # lxml: on first use

        profile = self.profile()
        payloads = await self.events.recent_events(
            limit=profile.max_entries, exclude_types=(EventType.WEBHOOK_TEST.value,)
        )
        body = await asyncio.to_thread(build_index, payloads, profile, empty_since=self.started)
        return _cached(request, body, "application/atom+xml", INDEX_MAX_AGE, None)


def _cached(
    request: web.Request, body: bytes, mime: str, max_age: int, modified: datetime | None
) -> web.StreamResponse:
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": f"public, max-age={max_age}"}
    if modified is not None:
        headers["Last-Modified"] = modified.strftime("%a, %d %b %Y %H:%M:%S GMT")
    if etag in _etags(request.headers.get("If-None-Match", "")):
        return web.Response(status=304, headers=headers)
    response = web.Response(body=body, headers=headers)
    response.content_type = mime
    response.charset = "utf-8"
    return response


def _etags(header: str) -> set[str]:
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return tags - {""}
