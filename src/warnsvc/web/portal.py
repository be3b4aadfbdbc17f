"""The partner portal under ``/partners``: a partner's webhook endpoints, their health and
deliveries, and the operations of ``/api/v1`` behind a sign-in with the partner's API key.

Routes (added by :meth:`Portal.routes`; every page ``no-store``, every form CSRF-protected)::

    GET  /partners                                             sign-in form, or your endpoints
    POST /partners/login                                       the API key ``/api/v1`` takes
    POST /partners/logout
    GET  /partners/endpoints/{id}                              one endpoint and its deliveries
    POST /partners/endpoints/{id}/test                         send a webhook.test event
    POST /partners/endpoints/{id}/rotate-secret                new secret, shown once
    POST /partners/endpoints/{id}/deliveries/{delivery}/redeliver
    POST /partners/endpoints/{id}/redeliver                    every dead letter since a time

Every operation is :class:`~warnsvc.web.api.WebhookApi`'s, as ``/api/v1`` runs it: the same
key ring, ownership check (another partner's endpoint is a 404), rate limit and store calls.

The session cookie ``warnsvc_partner`` (path ``/partners``, ``HttpOnly``, ``SameSite=Strict``,
``Secure`` when ``service.base_url`` is https) is signed with a key derived from the partner's
key digest and a server secret, ``WARNSVC_PORTAL_SECRET`` (at least 16 characters; without it a
random one per process, so sessions end with the process and hold on one replica only). A
digest in the configuration therefore cannot forge a session, and changing a partner's key or
removing the partner signs them out. Five failed sign-ins from one address in 15 minutes and
that address waits (429).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web

from warnsvc.config import Settings
from warnsvc.security.keys import Partner
from warnsvc.store.webhooks import DeliveryRecord, Endpoint
from warnsvc.web.api import ApiError, WebhookApi
from warnsvc.web.pages import ago, clean, render_page, stamp
from warnsvc.web.security import Gate, Session, Sessions, see_other

__all__ = ["SECRET_VARIABLE", "Portal", "portal_secret"]

log = logging.getLogger(__name__)

SECRET_VARIABLE = "WARNSVC_PORTAL_SECRET"
MIN_SECRET = 16
RECENT = 5
"""Deliveries per endpoint on the overview; an endpoint's own page shows :data:`PAGE`."""
PAGE = 50
_STATES = {
    "pending": "pending",
    "in_flight": "being sent",
    "delivered": "delivered",
    "dead": "gave up",
}


def portal_secret(environ: Mapping[str, str] | None = None) -> bytes:
    """The server secret portal sessions are signed with: ``WARNSVC_PORTAL_SECRET``, or a
    random one for this process when it is unset or shorter than 16 characters."""
    value = (os.environ if environ is None else environ).get(SECRET_VARIABLE, "").strip()
    if len(value) >= MIN_SECRET:
        return value.encode()
    if value:
        log.warning(
            "%s is shorter than %d characters: portal sessions use a secret of this process",
            SECRET_VARIABLE,
            MIN_SECRET,
            extra={"action": "portal_secret_too_short"},
        )
    return secrets.token_bytes(32)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Answer(Exception):
    """An HTML answer that ends a handler early (a 404 page, a 429 page)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _answering(handler: Handler) -> Handler:
    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except _Answer as exc:
            return exc.response

    return run


def _grace(seconds: float) -> str:
    if seconds <= 0:
        return "none: the old secret stopped signing at once"
    if seconds % 86400 == 0:
        return f"{int(seconds // 86400)} day(s)"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 60)} min"


@dataclass(kw_only=True)
class Portal:
    """The portal over the service's :class:`WebhookApi` (its keys follow config reloads)."""

    api: WebhookApi
    settings: Callable[[], Settings]
    secret: bytes

    def __post_init__(self) -> None:
        secure = urlsplit(self.settings().service.base_url).scheme == "https"
        self.sessions = Sessions(
            cookie="warnsvc_partner", path="/partners", key_for=self._key_for, secure=secure
        )
        self.gate = Gate(self.sessions, area="portal", home="/partners", refused=self._refused)

    def routes(self) -> list[web.RouteDef]:
        one = "/partners/endpoints/{endpoint_id}"
        return [
            web.get("/partners", _answering(self.home)),
            web.post("/partners/login", self.login),
            web.post("/partners/logout", self.gate.sign_out),
            web.get(one, _answering(self.endpoint_page)),
            web.post(one + "/test", _answering(self.send_test)),
            web.post(one + "/rotate-secret", _answering(self.rotate)),
            web.post(one + "/deliveries/{delivery_id}/redeliver", _answering(self.redeliver_one)),
            web.post(one + "/redeliver", _answering(self.redeliver_dead)),
        ]

    # -- plumbing --------------------------------------------------------------------------

    def _key_for(self, subject: str) -> bytes | None:
        partner = self.api.keys.get(subject)
        if partner is None:
            return None
        return hmac.new(self.secret, bytes.fromhex(partner.key_sha256), hashlib.sha256).digest()

    def _context(self, title: str, **extra: Any) -> dict[str, Any]:
        return {"service_name": self.settings().service.name, "title": title, **extra}

    def _refused(self, message: str, status: int) -> web.Response:
        context = self._context("Partner sign-in", error=message)
        return render_page("partners_login.html", context, status=status, private=True)

    def _page(self, name: str, context: dict[str, Any], status: int = 200) -> web.Response:
        return render_page(name, context, status=status, private=True)

    def _partner(self, session: Session) -> Partner:
        """The signed-in partner, within the API's rate limit (a 429 page beyond it)."""
        partner = self.api.keys.get(session.subject)
        if partner is None:  # the signature held a moment ago: removed by a reload since
            raise _Answer(see_other("/partners"))
        wait = self.api.limiter.take(partner.id)
        if wait > 0:
            context = self._context(
                "Too many requests",
                message="Too many requests for your key. Wait a moment and reload the page.",
            )
            response = self._page("message.html", context, status=429)
            response.headers["Retry-After"] = str(max(1, int(wait + 0.999)))
            raise _Answer(response)
        return partner

    async def _endpoint(
        self, partner: Partner, request: web.Request, *, change: bool = False
    ) -> Endpoint:
        """The partner's endpoint the path names; anyone else's is a 404 page."""
        endpoint_id = request.match_info["endpoint_id"]
        try:
            return await self.api.find(partner, endpoint_id, change=change)
        except ApiError as exc:
            if exc.status != 404:
                raise
            context = self._context(
                "Not found",
                message=f"You have no endpoint {clean(endpoint_id)!r}.",
                link="/partners",
                link_text="Your endpoints",
            )
            raise _Answer(self._page("message.html", context, status=404)) from None

    @staticmethod
    def _back(endpoint_id: str, message: str, *, error: bool = False) -> web.Response:
        """Back to the endpoint's page (303), which shows ``message``."""
        kind = "error" if error else "done"
        path = f"/partners/endpoints/{quote(endpoint_id, safe='')}"
        return see_other(f"{path}?{kind}={quote(message[:300])}")

    async def _action(
        self, request: web.Request, *, change: bool = False
    ) -> tuple[Session, Partner, Endpoint, Mapping[str, Any]]:
        session, form = await self.gate.form(request)
        partner = self._partner(session)
        return session, partner, await self._endpoint(partner, request, change=change), form

    # -- sign in ---------------------------------------------------------------------------

    async def login(self, request: web.Request) -> web.Response:
        def partner_id(key: str) -> str | None:
            partner = self.api.keys.authenticate(key)  # constant time over every partner
            return partner.id if partner else None

        return await self.gate.sign_in(
            request, "api_key", partner_id, wrong="That API key is not right."
        )

    # -- pages -----------------------------------------------------------------------------

    async def home(self, request: web.Request) -> web.Response:
        session = self.sessions.read(request)
        if session is None:
            return self._page("partners_login.html", self._context("Partner sign-in"))
        partner = self._partner(session)
        now = datetime.now(UTC)
        endpoints = []
        for endpoint in await self.api.endpoints.owned(partner.id):
            records = await self.api.endpoints.deliveries(endpoint.id, limit=RECENT)
            endpoints.append(
                {**self._endpoint_view(endpoint, now), "deliveries": self._deliveries(records)}
            )
        context = self._context(
            "Your webhook endpoints",
            partner=clean(partner.name) or partner.id,
            csrf=session.csrf,
            endpoints=endpoints,
        )
        return self._page("partners.html", context)

    async def endpoint_page(self, request: web.Request) -> web.Response:
        session = self.sessions.read(request)
        if session is None:
            return see_other("/partners")
        partner = self._partner(session)
        endpoint = await self._endpoint(partner, request)
        return await self._show(
            session,
            partner,
            endpoint,
            done=request.query.get("done", ""),
            error=request.query.get("error", ""),
        )

    async def _show(
        self,
        session: Session,
        partner: Partner,
        endpoint: Endpoint,
        *,
        done: str = "",
        error: str = "",
        secret: str = "",
    ) -> web.Response:
        now = datetime.now(UTC)
        records = await self.api.endpoints.deliveries(endpoint.id, limit=PAGE)
        context = self._context(
            f"Endpoint {endpoint.id}",
            partner=clean(partner.name) or partner.id,
            csrf=session.csrf,
            done=clean(done),
            error=clean(error),
            secret=secret,
            grace=_grace(self.api.secret_grace),
            endpoint=self._endpoint_view(endpoint, now),
            deliveries=self._deliveries(records),
            since=(now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M"),
        )
        return self._page("partners_endpoint.html", context)

    def _endpoint_view(self, endpoint: Endpoint, now: datetime) -> dict[str, Any]:
        filters = endpoint.filters
        names = {
            lv.id: lv.name for scale in self.settings().scale_map().values() for lv in scale.levels
        }
        if endpoint.consecutive_failures:
            since = endpoint.failing_since
            health = f"failing: {endpoint.consecutive_failures} attempt(s) in a row failed"
            if since is not None:
                health += f", since {stamp(since)} ({ago(since, now)})"
        else:
            health = "healthy"
        return {
            "id": endpoint.id,
            "url": endpoint.url,
            "description": clean(endpoint.description),
            "enabled": endpoint.enabled,
            "disabled_reason": clean(endpoint.disabled_reason or ""),
            "static": endpoint.static,
            "failing": endpoint.consecutive_failures > 0,
            "health": health,
            "filters": [
                ("Event types", ", ".join(filters.event_types) or "all"),
                ("Situations", ", ".join(filters.situations) or "all"),
                ("Sources", ", ".join(filters.sources) or "all"),
                (
                    "Lowest level",
                    f"{names.get(filters.min_level, filters.min_level)} ({filters.min_level})"
                    if filters.min_level
                    else "any",
                ),
            ],
            "previous_until": stamp(endpoint.previous_secret_until)
            if endpoint.previous_secret_until and endpoint.previous_secret_until > now
            else "",
        }

    @staticmethod
    def _deliveries(records: list[DeliveryRecord]) -> list[dict[str, Any]]:
        return [
            {
                "id": r.id,
                "event": r.event_id,
                "type": r.event_type,
                "status": _STATES.get(r.status, r.status),
                "dead": r.status == "dead",
                "again": r.status in ("dead", "delivered"),
                "code": r.response_status,
                "attempts": r.attempts,
                "error": clean(r.error or ""),
                "when": stamp(r.updated_at),
                "next": stamp(r.next_attempt_at) if r.next_attempt_at else "",
            }
            for r in records
        ]

    # -- operations (WebhookApi's, as /api/v1 runs them) -----------------------------------

    async def send_test(self, request: web.Request) -> web.Response:
        _, partner, endpoint, _ = await self._action(request)
        try:
            event_id, delivery_id = await self.api.test(endpoint)
        except ApiError as exc:
            return self._back(endpoint.id, exc.message, error=True)
        log.info(
            "portal test event %s to %s",
            event_id,
            endpoint.id,
            extra={"action": "portal_test", "partner": partner.id, "endpoint": endpoint.id},
        )
        return self._back(
            endpoint.id, f"a test event ({event_id}) is queued as delivery {delivery_id}"
        )

    async def rotate(self, request: web.Request) -> web.Response:
        session, partner, endpoint, _ = await self._action(request)
        try:
            rotated, secret = await self.api.rotate(endpoint)
        except ApiError as exc:
            return self._back(endpoint.id, exc.message, error=True)
        log.info(
            "portal secret rotation of %s",
            endpoint.id,
            extra={"action": "portal_rotate", "partner": partner.id, "endpoint": endpoint.id},
        )
        # the new secret is in this answer only (no redirect: it never goes into a URL)
        return await self._show(session, partner, rotated, secret=secret)

    async def redeliver_one(self, request: web.Request) -> web.Response:
        _, partner, endpoint, _ = await self._action(request)
        raw = request.match_info["delivery_id"]
        delivery_id = int(raw) if raw.isdigit() and len(raw) < 18 else 0
        try:
            await self.api.redeliver(endpoint, delivery_id, raw=raw)
        except ApiError as exc:
            return self._back(endpoint.id, exc.message, error=True)
        log.info(
            "portal redelivery of %s",
            delivery_id,
            extra={"action": "portal_redeliver", "partner": partner.id, "delivery": delivery_id},
        )
        return self._back(endpoint.id, f"delivery {delivery_id} is queued again")

    async def redeliver_dead(self, request: web.Request) -> web.Response:
        _, partner, endpoint, form = await self._action(request)
        raw = str(form.get("since", "")).strip()
        try:
            since = datetime.fromisoformat(raw)
        except ValueError:
            return self._back(endpoint.id, "give a date and time to redeliver from", error=True)
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)  # the form says UTC
        try:
            count = await self.api.redeliver_since(endpoint, since)
        except ApiError as exc:
            return self._back(endpoint.id, exc.message, error=True)
        log.info(
            "portal redelivery of %d dead letter(s) of %s",
            count,
            endpoint.id,
            extra={"action": "portal_redeliver_dead", "partner": partner.id},
        )
        return self._back(
            endpoint.id, f"{count} dead delivery(ies) since {stamp(since)} queued again"
        )
