"""The operator console under ``/console``: what ``warnsvc status`` shows, and a few actions.

Routes (added by :meth:`Console.routes`; every page ``no-store``, every form CSRF-protected)::

    GET  /console                               sign-in form, or the console once signed in
    POST /console/login                         the token from ``WARNSVC_CONSOLE_TOKEN``
    POST /console/logout
    POST /console/sources/{id}/poll             poll now (the leader's schedule is moved)
    POST /console/deliveries/{id}/redeliver     queue a dead-lettered webhook delivery again
    POST /console/publish                       announce a level (the CLI's ``publish`` rules)
    POST /console/retract                       correct an event (the CLI's ``retract`` rules)

The console is on only when the environment has a token of at least 16 characters in
``WARNSVC_CONSOLE_TOKEN``; otherwise ``/console`` is a 404. The session cookie is signed with
a key derived from the token (changing it signs everyone out), ``HttpOnly``,
``SameSite=Strict`` and ``Secure`` when ``service.base_url`` is https. Five failed sign-ins from
one address in 15 minutes and that address waits (429).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web

from warnsvc.config import Settings
from warnsvc.errors import WarnsvcError
from warnsvc.store.db import Store
from warnsvc.web.pages import ago, clean, render_page, stamp
from warnsvc.web.security import Gate, Session, Sessions, see_other

__all__ = ["TOKEN_VARIABLE", "Console", "console_token"]

log = logging.getLogger(__name__)

TOKEN_VARIABLE = "WARNSVC_CONSOLE_TOKEN"
MIN_TOKEN = 16
_OPERATOR = "operator"


def console_token(environ: Mapping[str, str] | None = None) -> str | None:
    """The console's token from the environment, or None (console off) when unset or short."""
    token = (os.environ if environ is None else environ).get(TOKEN_VARIABLE, "").strip()
    if token and len(token) < MIN_TOKEN:
        log.warning(
            "%s is shorter than %d characters: the console stays off",
            TOKEN_VARIABLE,
            MIN_TOKEN,
            extra={"action": "console_token_too_short"},
        )
        return None
    return token or None


@dataclass(kw_only=True)
class Console:
    """What the console reads and does, handed over by the service."""

    token: str
    store: Store
    settings: Callable[[], Settings]
    next_polls: Callable[[], Mapping[str, str]]
    poll_now: Callable[[str], str]
    """Ask for a poll of a source now; returns what happened, in words."""
    reloads: Callable[[], Sequence[Mapping[str, Any]]]
    """The recent config reloads, oldest first."""
    publish: Callable[[str, str, str], Awaitable[str]]
    """(situation, level, note) -> the new event's id; raises WarnsvcError with the reason."""
    retract: Callable[[str, str], Awaitable[str]]
    """(event id, note) -> the correction's id; raises WarnsvcError with the reason."""
    wake: Callable[[], None]

    def __post_init__(self) -> None:
        key = hashlib.sha256(self.token.encode()).digest()
        secure = urlsplit(self.settings().service.base_url).scheme == "https"
        self.sessions = Sessions(
            cookie="warnsvc_console",
            path="/console",
            key_for=lambda subject: key if subject == _OPERATOR else None,
            secure=secure,
        )
        self.gate = Gate(self.sessions, area="console", home="/console", refused=self._refused)

    def _refused(self, message: str, status: int) -> web.Response:
        context = self._context("Sign in", error=message)
        return render_page("console_login.html", context, status=status, private=True)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/console", self.home),
            web.post("/console/login", self.login),
            web.post("/console/logout", self.logout),
            web.post("/console/sources/{source_id}/poll", self.poll),
            web.post("/console/deliveries/{delivery_id}/redeliver", self.redeliver),
            web.post("/console/publish", self.do_publish),
            web.post("/console/retract", self.do_retract),
        ]

    # -- plumbing --------------------------------------------------------------------------

    def _context(self, title: str, **extra: Any) -> dict[str, Any]:
        return {
            "service_name": self.settings().service.name,
            "title": title,
            "signup": False,
            **extra,
        }

    async def _form(self, request: web.Request) -> tuple[Session, Mapping[str, Any]]:
        return await self.gate.form(request)

    @staticmethod
    def _back(message: str, *, error: bool = False) -> web.Response:
        """Back to the console (303), which shows ``message``."""
        kind = "error" if error else "done"
        return see_other(f"/console?{kind}={quote(message[:300])}")

    # -- sign in and out -------------------------------------------------------------------

    async def login(self, request: web.Request) -> web.Response:
        expected = hashlib.sha256(self.token.encode()).digest()

        def operator(sent: str) -> str | None:
            given = hashlib.sha256(sent.encode()).digest()
            return _OPERATOR if hmac.compare_digest(given, expected) else None

        return await self.gate.sign_in(request, "token", operator, wrong="That token is not right.")

    async def logout(self, request: web.Request) -> web.Response:
        return await self.gate.sign_out(request)

    # -- the console -----------------------------------------------------------------------

    async def home(self, request: web.Request) -> web.Response:
        session = self.sessions.read(request)
        if session is None:
            return render_page("console_login.html", self._context("Sign in"), private=True)
        now = datetime.now(UTC)
        counts = await self.store.outbox.counts()
        channels = sorted({channel for channel, _ in counts})
        states = ["pending", "in_flight", "delivered", "dead"]
        context = self._context(
            "Operator console",
            csrf=session.csrf,
            done=request.query.get("done", ""),
            error=request.query.get("error", ""),
            sources=await self._sources(now),
            outbox={
                "states": states,
                "rows": [
                    {"channel": c, "counts": [counts.get((c, s), 0) for s in states]}
                    for c in channels
                ],
            },
            dead=await self._dead_letters(),
            reloads=self._reloads(),
            events=await self._events(),
            situations=[
                (s.situation, clean(s.name) or s.situation)
                for s in await self.store.all_situations()
            ],
            levels=[
                {"id": lv.id, "name": lv.name, "scale": scale.name}
                for scale in self.settings().scale_map().values()
                for lv in scale.levels
            ],
        )
        return render_page("console.html", context, private=True)

    async def _sources(self, now: datetime) -> list[dict[str, Any]]:
        health = {h.source_id: h for h in await self.store.all_source_health()}
        upcoming = self.next_polls()
        found = []
        for source in self.settings().sources:
            h = health.get(source.id)
            state = (
                "disabled"
                if not source.enabled
                else "never polled"
                if h is None or h.last_poll_at is None
                else "healthy"
                if h.healthy
                else f"failing ({h.consecutive_failures} in a row)"
            )
            nxt = upcoming.get(source.id)
            found.append(
                {
                    "id": source.id,
                    "name": clean(source.name),
                    "kind": source.kind,
                    "enabled": source.enabled,
                    "state": state,
                    "failing": bool(h and not h.healthy),
                    "last": f"{stamp(h.last_poll_at)} ({ago(h.last_poll_at, now)})"
                    if h and h.last_poll_at
                    else "never",
                    "next": stamp(datetime.fromisoformat(nxt)) if nxt else "not scheduled here",
                    "error": clean(h.last_error) if h and h.last_error else "",
                    "warning": clean(h.last_warning) if h and h.last_warning else "",
                }
            )
        return found

    async def _dead_letters(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for endpoint in await self.store.endpoints.owned(every=True):
            for record in await self.store.endpoints.deliveries(endpoint.id, status="dead"):
                found.append(
                    {
                        "id": record.id,
                        "endpoint": endpoint.id,
                        "url": endpoint.url,
                        "event": record.event_id,
                        "type": record.event_type,
                        "attempts": record.attempts,
                        "status": record.response_status,
                        "error": clean(record.error or ""),
                        "when": stamp(record.updated_at),
                    }
                )
        found.sort(key=lambda row: int(row["id"]), reverse=True)
        return found[:100]

    def _reloads(self) -> list[dict[str, Any]]:
        """The recent reloads, newest first, with their problems and what waits for a restart."""
        return [
            {
                "result": clean(reload.get("result") or ""),
                "at": clean(reload.get("at") or ""),
                "problems": [clean(p) for p in reload.get("problems") or []],
                "restart": [clean(k) for k in reload.get("restart_needed") or []],
            }
            for reload in reversed(self.reloads())
        ]

    async def _events(self) -> list[dict[str, Any]]:
        found = []
        for payload in await self.store.recent_events(limit=20):
            situation = payload.get("situation") or {}
            level = payload.get("level") or {}
            found.append(
                {
                    "id": clean(payload.get("id")),
                    "type": clean(payload.get("type")),
                    "situation": clean(
                        situation.get("name") if isinstance(situation, dict) else ""
                    ),
                    "level": clean(level.get("name") if isinstance(level, dict) else ""),
                    "when": clean(payload.get("detected_at")),
                    "manual": bool(payload.get("manual")),
                }
            )
        return found

    # -- actions ---------------------------------------------------------------------------

    async def poll(self, request: web.Request) -> web.Response:
        await self._form(request)
        source_id = request.match_info["source_id"]
        if source_id not in {s.id for s in self.settings().sources}:
            return self._back(f"no source {source_id!r}", error=True)
        return self._back(self.poll_now(source_id))

    async def redeliver(self, request: web.Request) -> web.Response:
        await self._form(request)
        raw = request.match_info["delivery_id"]
        delivery_id = int(raw) if raw.isdigit() and len(raw) < 18 else 0
        endpoint = await self.store.endpoints.delivery_endpoint(delivery_id)
        if endpoint is None:
            return self._back(f"no webhook delivery {raw}", error=True)
        if not await self.store.endpoints.redeliver(endpoint, delivery_id, now=datetime.now(UTC)):
            return self._back(f"delivery {delivery_id} is still pending or in flight", error=True)
        self.wake()
        log.info(
            "delivery %s queued again from the console",
            delivery_id,
            extra={"action": "console_redeliver", "delivery": delivery_id},
        )
        return self._back(f"delivery {delivery_id} to {endpoint} is queued again")

    async def do_publish(self, request: web.Request) -> web.Response:
        _, form = await self._form(request)
        situation, level, note = (
            str(form.get(k, "")).strip() for k in ("situation", "level", "note")
        )
        if not note:
            return self._back("publishing needs a note saying why", error=True)
        try:
            event_id = await self.publish(situation, level, note[:2000])
        except WarnsvcError as exc:
            return self._back(str(exc), error=True)
        return self._back(f"published {event_id}")

    async def do_retract(self, request: web.Request) -> web.Response:
        _, form = await self._form(request)
        event_id, note = (str(form.get(k, "")).strip() for k in ("event", "note"))
        try:
            correction = await self.retract(event_id, note[:2000] or "retracted by the operator")
        except WarnsvcError as exc:
            return self._back(str(exc), error=True)
        return self._back(f"retracted {event_id} with {correction}")
