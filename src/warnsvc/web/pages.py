"""The public pages: every situation at a glance, one situation's history, feeds in a browser.

Routes (added by :meth:`Site.routes`, before the feed files)::

    GET /                         situations grouped by current level (highest first), when each
                                  last changed and which way, the feeds, the sources' health
    GET /situations/{id}          one situation: level history as an inline SVG chart with a
                                  table as its text alternative, events newest first, its feeds,
                                  a subscribe button pre-filled for it
    GET /static/{name}            the stylesheet and the feeds' XSLT (nothing else)
    GET /feeds/{path}.atom|.rss   a browser (one asking for HTML) gets the feed as
                                  ``application/xml`` with the XSLT that renders it as a page with
                                  a "how to follow this feed" note; feed readers get the file as
                                  it is (``Vary: Accept``)

Pages are rendered on the server (Jinja2, autoescaped: everything from sources is text, links
only absolute http(s) URLs) and work without JavaScript; none is sent. They read the store and
the settings of the moment (a reload shows at once).
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web

from warnsvc.config import Settings
from warnsvc.model import Level, Scale, Status
from warnsvc.store.db import SourceHealth, Store
from warnsvc.web.app import feed_file
from warnsvc.web.security import html_headers

if TYPE_CHECKING:
    from jinja2 import Environment

__all__ = ["Site", "ago", "chart", "level_tone", "render_page"]

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff]")
_STATIC = {"style.css": "text/css", "feed.xsl": "text/xsl"}
_FEED_TYPES = ("application/atom+xml", "application/rss+xml", "application/feed+json")
_STYLESHEET_PI = b'<?xml-stylesheet href="/static/feed.xsl" type="text/xsl"?>\n'
_EVENT_WORDS = {
    "situation.listed": ("newly listed", "listed"),
    "risk.escalated": ("escalated", "up"),
    "risk.deescalated": ("de-escalated", "down"),
    "situation.delisted": ("delisted", "delisted"),
    "situation.updated": ("new analysis, same level", "same"),
    "event.retracted": ("corrected by the operator", "same"),
}


# --------------------------------------------------------------------------- rendering


@cache
def _environment() -> Environment:
    """The page templates, loaded with the first page served: a service nobody browses keeps
    no template engine in memory."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    return Environment(
        loader=PackageLoader("warnsvc", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )


def render_page(
    name: str,
    context: Mapping[str, Any],
    *,
    status: int = 200,
    private: bool = False,
) -> web.Response:
    """Template ``pages/{name}`` as an HTML answer with the service's page headers."""
    text = _environment().get_template(f"pages/{name}").render(context)
    response = web.Response(text=text, status=status, content_type="text/html")
    html_headers(response, private=private)
    return response


def clean(value: Any) -> str:
    """Text from a source on one line, without control characters ("" if not text)."""
    if not isinstance(value, str):
        return ""
    return " ".join(_CONTROL.sub("", unicodedata.normalize("NFC", value)).split())


def safe_url(value: Any) -> str | None:
    """``value`` if it is an absolute http(s) URL fit for a link, else None."""
    if not isinstance(value, str) or not value or len(value) > 2048 or clean(value) != value:
        return None
    if " " in value:
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    return value if parts.scheme.lower() in ("http", "https") and parts.hostname else None


def ago(moment: datetime | None, now: datetime) -> str:
    """``5 min ago``, ``3 h ago``, ``2 days ago``; ``in 4 h`` for the future; ``never``."""
    if moment is None:
        return "never"
    seconds = (now - moment).total_seconds()
    future, seconds = seconds < 0, abs(seconds)
    if seconds < 60:
        text = "less than a minute"
    elif seconds < 3600:
        text = f"{int(seconds // 60)} min"
    elif seconds < 2 * 86400:
        text = f"{int(seconds // 3600)} h"
    else:
        text = f"{int(seconds // 86400)} days"
    return f"in {text}" if future else f"{text} ago"


def day(moment: datetime | None) -> str:
    return f"{moment.day} {moment:%b %Y}" if moment else ""


def stamp(moment: datetime | None) -> str:
    """A moment as people read it, in UTC: ``3 Mar 2026, 14:05 UTC``."""
    if moment is None:
        return ""
    moment = moment.astimezone(UTC)
    return f"{moment.day} {moment:%b %Y, %H:%M} UTC"


def iso(moment: datetime | None) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else ""


def _parse(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- levels


def level_tone(level: Level | None, scale: Scale | None) -> int:
    """How alarming a level is, 0 (not listed) to 3 (the top third of its scale): the colour
    class of its badge (which always carries its name too)."""
    if level is None or scale is None or not scale.levels:
        return 0
    top = max(lv.rank for lv in scale.levels)
    return max(1, min(3, math.ceil(3 * level.rank / top)))


@dataclass(frozen=True, slots=True)
class LevelView:
    id: str
    name: str
    rank: int
    tone: int
    scale: str


_NOT_LISTED = LevelView("", "Not listed", 0, 0, "")


def _levels(scales: Mapping[str, Scale]) -> dict[str, LevelView]:
    found: dict[str, LevelView] = {}
    for scale in scales.values():
        for level in scale.levels:
            found.setdefault(
                level.id,
                LevelView(level.id, level.name, level.rank, level_tone(level, scale), scale.id),
            )
    return found


def used_scales(settings: Settings) -> list[str]:
    """The ids of the scales that enabled sources use, in the order of ``scale_map``."""
    used = {source.scale for source in settings.sources if source.enabled}
    return [scale_id for scale_id in settings.scale_map() if scale_id in used]


# --------------------------------------------------------------------------- the chart


def chart(
    steps: Sequence[tuple[datetime, LevelView]],
    scale_levels: Sequence[LevelView],
    *,
    now: datetime,
    width: int = 640,
) -> dict[str, Any] | None:
    """The geometry of a step chart of ``steps`` (moment, level; oldest first): levels up the
    side (``Not listed`` at the bottom), time along the bottom, each change a step."""
    if not steps:
        return None
    rows = [_NOT_LISTED, *sorted(scale_levels, key=lambda lv: lv.rank)]
    for _, level in steps:  # a level since dropped from the config still gets a row
        if level not in rows:
            rows.append(level)
    left, right, top, row_height = 132, 16, 16, 36
    height = top + row_height * (len(rows) - 1) + 48
    bottom = top + row_height * (len(rows) - 1)
    start, end = steps[0][0], max(now, steps[-1][0])
    span = max((end - start).total_seconds(), 1.0)

    def x(moment: datetime) -> float:
        return round(left + (moment - start).total_seconds() / span * (width - left - right), 1)

    def y(level: LevelView) -> float:
        return float(bottom - row_height * rows.index(level))

    path = f"M {x(steps[0][0])} {y(steps[0][1])}"
    points = []
    for moment, level in steps:
        path += f" H {x(moment)} V {y(level)}"
        points.append({"x": x(moment), "y": y(level), "label": f"{level.name}, {day(moment)}"})
    path += f" H {x(end)}"
    ticks = [start, end] if span < 86400 * 2 else [start, start + (end - start) / 2, end]
    anchors = ["start", "end"] if len(ticks) == 2 else ["start", "middle", "end"]
    return {
        "width": width,
        "height": height,
        "left": left,
        "right": width - right,
        "rows": [{"y": y(level), "name": level.name, "tone": level.tone} for level in rows],
        "path": path,
        "points": points,
        "ticks": [
            {"x": x(moment), "label": day(moment), "anchor": anchor}
            for moment, anchor in zip(ticks, anchors, strict=True)
        ],
        "axis_y": bottom + 24,
    }


# --------------------------------------------------------------------------- the site


NextPolls = Callable[[], Mapping[str, str]]


@dataclass(kw_only=True)
class Site:
    """What the public pages read: the store, the settings of the moment, the feeds directory,
    when each source polls next, and whether people may subscribe by mail here."""

    store: Store
    settings: Callable[[], Settings]
    feeds_dir: Path
    next_polls: NextPolls = dict
    signup: Callable[[], bool] = lambda: False

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.index),
            web.get("/situations/{situation_id}", self.situation),
            web.get("/static/{name}", static_file),
            web.get(r"/feeds/{path:.+\.(?:atom|rss)}", self.feed),
        ]

    # -- shared ---------------------------------------------------------------------------

    def _base(self, title: str) -> dict[str, Any]:
        settings = self.settings()
        return {
            "service_name": settings.service.name,
            "title": title,
            "signup": self.signup(),
            "noindex": False,
        }

    def _feeds(self, levels: Mapping[str, LevelView], used: Sequence[str]) -> list[dict[str, str]]:
        feeds = [
            {"href": "/feeds/alerts.atom", "name": "Every change (Atom)"},
            {"href": "/feeds/alerts.rss", "name": "Every change (RSS)"},
            {"href": "/feeds/alerts.json", "name": "Every change (JSON Feed)"},
        ]
        for level in sorted(levels.values(), key=lambda lv: -lv.rank):
            if level.scale in used and (self.feeds_dir / "levels" / f"{level.id}.atom").is_file():
                name = f"{level.name} and above (Atom)"
                feeds.append({"href": f"/feeds/levels/{level.id}.atom", "name": name})
        return feeds

    async def _sources(self, now: datetime) -> list[dict[str, Any]]:
        settings = self.settings()
        health: dict[str, SourceHealth] = {
            h.source_id: h for h in await self.store.all_source_health()
        }
        next_polls = self.next_polls()
        found = []
        for source in settings.sources:
            if not source.enabled:
                continue
            h = health.get(source.id)
            upcoming = _parse(next_polls[source.id]) if source.id in next_polls else None
            if h is None or h.last_poll_at is None:
                state, line = "unknown", "not read yet"
            elif h.healthy:
                state, line = "ok", f"last read {ago(h.last_success_at, now)}"
            else:
                state = "failing"
                since = h.last_success_at
                line = f"failing: {h.consecutive_failures} read(s) in a row failed; " + (
                    f"last good read {ago(since, now)}" if since else "never read"
                )
            found.append(
                {
                    "id": source.id,
                    "name": clean(source.name),
                    "state": state,
                    "line": line,
                    "next": ago(upcoming, now) if upcoming else "",
                    "url": safe_url(str(source.url)),
                }
            )
        return found

    # -- GET / ----------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        settings = self.settings()
        now = datetime.now(UTC)
        levels = _levels(settings.scale_map())
        situations = await self.store.all_situations()
        changes = await self.store.last_changes()
        last: dict[str, str] = {}
        for payload in await self.store.recent_events(limit=500, exclude_types=("webhook.test",)):
            situation = payload.get("situation") or {}
            sid = situation.get("id") if isinstance(situation, dict) else None
            if isinstance(sid, str) and sid not in last:
                last[sid] = str(payload.get("type"))
        groups: dict[str, dict[str, Any]] = {}
        for state in situations:
            listed = state.status is Status.ASSESSED and state.level in levels
            level = levels[state.level] if listed and state.level else _NOT_LISTED
            group = groups.setdefault(level.id, {"level": level, "items": []})
            changed = changes.get(state.situation)
            words = _EVENT_WORDS.get(last.get(state.situation, ""), ("", ""))
            group["items"].append(
                {
                    "id": state.situation,
                    "name": clean(state.name) or state.situation,
                    "changed": stamp(changed),
                    "changed_iso": iso(changed),
                    "changed_ago": ago(changed, now) if changed else "",
                    "change": words[0],
                    "direction": words[1],
                    "pending": bool(state.pending_count),
                }
            )
        ordered = sorted(groups.values(), key=lambda g: (-g["level"].rank, g["level"].name))
        for group in ordered:
            group["items"].sort(key=lambda item: item["name"].casefold())
        context = {
            **self._base("Situations"),
            "groups": ordered,
            "count": len(situations),
            "feeds": self._feeds(levels, used_scales(settings)),
            "sources": await self._sources(now),
            "now": stamp(now),
        }
        return render_page("index.html", context)

    # -- GET /situations/{id} -------------------------------------------------------------

    async def situation(self, request: web.Request) -> web.Response:
        situation_id = request.match_info["situation_id"]
        found = await self.store.situation(situation_id)
        if found is None:
            context = {
                **self._base("Situation not found"),
                "message": "No situation has this id. The list of situations is on the home page.",
                "link": "/",
                "link_text": "All situations",
            }
            return render_page("message.html", context, status=404)
        state, scale_id = found
        settings = self.settings()
        scales = settings.scale_map()
        levels = _levels(scales)
        now = datetime.now(UTC)
        steps = _steps(await self.store.level_history(situation_id), levels)
        scale_levels = [lv for lv in levels.values() if lv.scale == scale_id]
        listed = state.status is Status.ASSESSED and state.level in levels
        current = levels[state.level] if listed and state.level else _NOT_LISTED
        events = [
            _event_view(payload, levels)
            for payload in await self.store.recent_events(
                limit=50, situation=situation_id, exclude_types=("webhook.test",)
            )
        ]
        name = clean(state.name) or situation_id
        feed = (self.feeds_dir / "situations" / f"{situation_id}.atom").is_file()
        context = {
            **self._base(name),
            "situation": {
                "id": situation_id,
                "name": name,
                "level": current,
                "url": safe_url(state.url),
                "date": day(datetime(state.date.year, state.date.month, state.date.day))
                if state.date
                else "",
                "summary": clean(state.summary),
                "risk_factors": [f for f in (clean(x) for x in state.risk_factors) if f],
                "pending": bool(state.pending_count),
            },
            "chart": chart(steps, scale_levels, now=now),
            "steps": [
                {"when": stamp(moment), "iso": iso(moment), "level": level}
                for moment, level in reversed(steps)
            ],
            "events": events,
            "feed": f"/feeds/situations/{situation_id}.atom" if feed else None,
        }
        return render_page("situation.html", context)

    # -- feeds in a browser ---------------------------------------------------------------

    async def feed(self, request: web.Request) -> web.StreamResponse:
        if not wants_page(request.headers.get("Accept", "")):
            response = await feed_file(request)
            response.headers["Vary"] = "Accept"
            return response
        root = self.feeds_dir.resolve()
        relative = request.match_info["path"]
        target = (root / relative).resolve()
        if (
            any(part.startswith(".") for part in relative.split("/"))
            or not target.is_relative_to(root)
            or not target.is_file()
        ):
            raise web.HTTPNotFound(reason=f"no feed at /feeds/{relative}")
        body = with_stylesheet(target.read_bytes())
        response = web.Response(body=body, content_type="application/xml", charset="utf-8")
        response.headers["Vary"] = "Accept"
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        # the XSLT is the page's only "script": from this service, and nothing else
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
            "frame-ancestors 'none'; base-uri 'none'"
        )
        return response

    # -- the subscription form's choices --------------------------------------------------

    async def form_choices(self) -> tuple[list[tuple[str, str]], list[str]]:
        """Situations (id, name) to offer by name, and the scales whose levels to offer."""
        situations = sorted(
            (
                (s.situation, clean(s.name) or s.situation)
                for s in await self.store.all_situations()
            ),
            key=lambda pair: pair[1].casefold(),
        )
        return situations, used_scales(self.settings())


def wants_page(accept: str) -> bool:
    """Whether a request's ``Accept`` asks for a page (a browser) rather than a feed."""
    accept = accept.lower()
    return "text/html" in accept and not any(kind in accept for kind in _FEED_TYPES)


def with_stylesheet(document: bytes) -> bytes:
    """The feed document with the XSLT processing instruction after its XML declaration."""
    if b"<?xml-stylesheet" in document[:500]:
        return document
    if document.startswith(b"<?xml"):
        end = document.find(b"?>") + 2
        return document[:end] + b"\n" + _STYLESHEET_PI + document[end:].lstrip(b"\n")
    return _STYLESHEET_PI + document


def _steps(
    rows: Sequence[Mapping[str, Any]], levels: Mapping[str, LevelView]
) -> list[tuple[datetime, LevelView]]:
    """The level history as (moment, level) at each change, oldest first."""
    steps: list[tuple[datetime, LevelView]] = []
    for row in rows:
        moment = _parse(row.get("recorded_at"))
        if moment is None:
            continue
        level_id = row.get("level")
        assessed = row.get("status") == Status.ASSESSED.value
        if assessed and isinstance(level_id, str):
            level = levels.get(level_id) or LevelView(level_id, level_id, 0, 0, "")
        else:
            level = _NOT_LISTED
        if not steps or steps[-1][1] != level:
            steps.append((moment, level))
    return steps


def _event_view(payload: Mapping[str, Any], levels: Mapping[str, LevelView]) -> dict[str, Any]:
    def level_of(value: Any) -> LevelView | None:
        if not isinstance(value, Mapping):
            return None
        level_id = value.get("id")
        if isinstance(level_id, str) and level_id in levels:
            return levels[level_id]
        name = clean(value.get("name")) or clean(level_id)
        return LevelView(clean(level_id), name, 0, 0, "") if name else None

    situation = payload.get("situation")
    situation = situation if isinstance(situation, Mapping) else {}
    source = payload.get("source")
    source = source if isinstance(source, Mapping) else {}
    detected = _parse(payload.get("detected_at"))
    kind = str(payload.get("type") or "")
    summary = payload.get("summary")
    return {
        "id": clean(payload.get("id")),
        "type": kind,
        "change": _EVENT_WORDS.get(kind, (clean(kind), ""))[0],
        "direction": _EVENT_WORDS.get(kind, ("", ""))[1],
        "level": level_of(payload.get("level")),
        "previous": level_of(payload.get("previous_level")),
        "when": stamp(detected),
        "iso": iso(detected),
        "summary": clean(summary)[:600] if isinstance(summary, str) else "",
        "url": safe_url(situation.get("url")),
        "source": clean(source.get("name")) or clean(source.get("id")),
        "manual": bool(payload.get("manual")),
    }


# --------------------------------------------------------------------------- static files


@cache
def _static(name: str) -> tuple[bytes, str]:
    data = resources.files("warnsvc.web").joinpath("static", name).read_bytes()
    return data, '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _STATIC:
        raise web.HTTPNotFound(reason=f"no file /static/{name}")
    data, etag = _static(name)
    headers = {"ETag": etag, "Cache-Control": "public, max-age=3600"}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    response = web.Response(body=data, headers=headers)
    response.headers["Content-Type"] = f"{_STATIC[name]}; charset=utf-8"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
