"""Email subscriptions over HTTP: the API, a plain HTML form, confirm and unsubscribe pages.

Routes (added to the app by :func:`add_subscription_routes`)::

    POST /api/v1/subscriptions   JSON request -> 202; a confirmation mail is queued
    GET  /subscribe              the form;  POST /subscribe: the same request from the form
    GET  /email/confirm?token=   a page with a "Confirm" button (link scanners only GET)
    POST /email/confirm          confirm: the subscription becomes active
    GET  /email/unsubscribe?token=   a page with an "Unsubscribe" button
    POST /email/unsubscribe?token=   RFC 8058 one-click unsubscribe (no login, no cookie)

Bad input gets ``400 {"error": {"status": 400, "message": ..., "field": ...}}`` and queues
nothing: an invalid address, a name with line breaks (header injection), unknown keys, sources,
levels or event types, a body that is not JSON or larger than :data:`MAX_BODY` bytes. Each client
address may make ``requests_per_minute`` requests (429 beyond). The answer to a valid request
is the same whether or not a mail is sent (a recent confirmation to the address, or a suppressed
address, sends none), so the API does not reveal who subscribes.

A forged, used or expired token gets a page that says so and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from warnsvc.addresses import check_name, normalize_address
from warnsvc.filters import EVENT_TYPES as EMAIL_EVENT_TYPES
from warnsvc.filters import Filter as Filters
from warnsvc.mail.compose import MailTemplates
from warnsvc.model import Scale
from warnsvc.store import subscriptions as mailstore
from warnsvc.store.subscriptions import SubscriberStore
from warnsvc.web.app import json_error
from warnsvc.web.security import html_headers

__all__ = [
    "FORM_CHOICES",
    "MAX_BODY",
    "FormChoices",
    "SubscriptionPages",
    "SubscriptionRequest",
    "add_subscription_routes",
]

log = logging.getLogger(__name__)

MAX_BODY = 8192
"""Largest subscription request body, in bytes."""
_MAX_TOKEN = 100
_EVENT_LABELS = {
    "situation.listed": "a situation is listed",
    "risk.escalated": "risk escalates",
    "risk.deescalated": "risk de-escalates",
    "situation.delisted": "a situation is delisted",
    "situation.updated": "a new analysis at the same level",
}


class FieldError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _address(value: str) -> str:
    return normalize_address(value)


def _name(value: str | None) -> str | None:
    return check_name(value)


class SubscriptionRequest(BaseModel):
    """The body of ``POST /api/v1/subscriptions``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    address: Annotated[str, Field(max_length=320), AfterValidator(_address)]
    name: Annotated[str | None, Field(max_length=400), AfterValidator(_name)] = None
    mode: Literal["immediate", "digest"] = "immediate"
    situations: Annotated[
        list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*:[a-z0-9][a-z0-9-]*$")]],
        Field(max_length=100),
    ] = []
    sources: Annotated[list[Annotated[str, Field(max_length=100)]], Field(max_length=50)] = []
    min_level: Annotated[str | None, Field(max_length=100)] = None
    event_types: Annotated[list[str], Field(max_length=10)] = []

    def filters(self) -> Filters:
        return Filters(
            situations=tuple(dict.fromkeys(self.situations)),
            sources=tuple(dict.fromkeys(self.sources)),
            min_level=self.min_level or None,
            event_types=tuple(dict.fromkeys(self.event_types)),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriptionPages:
    """What the subscription routes need."""

    subscribers: SubscriberStore
    templates: MailTemplates
    service_name: str
    scales: Mapping[str, Scale]
    sources: Mapping[str, str]
    """Source ids and display names (the ones a subscriber may choose)."""
    digest_hour: int
    confirm_within: float
    resend_after: float
    requests_per_minute: int
    signup: bool = True
    on_request: Callable[[], None] | None = None
    """Called after a confirmation mail is queued (wakes the email worker)."""


FormChoices = Callable[[], Awaitable[tuple[Sequence[tuple[str, str]], Collection[str]]]]
"""What the form offers: the known situations (id, name), by name, and the ids of the scales
whose levels to offer (those enabled sources use). Without it: every level, situations by id."""

_PAGES: web.AppKey[SubscriptionPages] = web.AppKey("subscription_pages")
FORM_CHOICES: web.AppKey[FormChoices] = web.AppKey("subscription_form_choices")
_LIMITER: web.AppKey[RateLimit] = web.AppKey("subscription_limiter")
_LOCK: web.AppKey[asyncio.Lock] = web.AppKey("subscription_lock")


class RateLimit:
    """At most ``limit`` requests per client address in any 60 seconds (in memory)."""

    def __init__(self, limit: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock
        self._hits: dict[str, deque[float]] = {}

    def retry_after(self, client: str) -> float:
        """0 if ``client`` may go ahead now (the request is counted), else seconds to wait."""
        now = self.clock()
        hits = self._hits.setdefault(client, deque())
        while hits and hits[0] <= now - 60:
            hits.popleft()
        if len(hits) >= self.limit:
            return hits[0] + 60 - now
        hits.append(now)
        if len(self._hits) > 10_000:
            self._hits = {k: v for k, v in self._hits.items() if v and v[-1] > now - 60}
        return 0.0


def add_subscription_routes(app: web.Application, pages: SubscriptionPages) -> None:
    app[_PAGES] = pages
    app[_LIMITER] = RateLimit(pages.requests_per_minute)
    app[_LOCK] = asyncio.Lock()
    if pages.signup:
        app.router.add_post("/api/v1/subscriptions", api_subscribe)
        app.router.add_get("/subscribe", form_page)
        app.router.add_post("/subscribe", form_subscribe)
    app.router.add_get("/email/confirm", confirm_page)
    app.router.add_post("/email/confirm", confirm_post)
    app.router.add_get("/email/unsubscribe", unsubscribe_page)
    app.router.add_post("/email/unsubscribe", unsubscribe_post)


# --------------------------------------------------------------------------- requests


def _validate(data: object, pages: SubscriptionPages) -> SubscriptionRequest:
    if not isinstance(data, dict):
        raise FieldError("body", "must be a JSON object")
    try:
        request = SubscriptionRequest.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in error["loc"]) or "body"
        if error["type"] == "extra_forbidden":
            allowed = ", ".join(SubscriptionRequest.model_fields)
            raise FieldError(field, f"unknown field; allowed: {allowed}") from None
        message = error["msg"].removeprefix("Value error, ")
        raise FieldError(field, message) from None
    for index, source in enumerate(request.sources):
        if source not in pages.sources:
            known = ", ".join(pages.sources) or "none"
            raise FieldError(f"sources.{index}", f"unknown source {source!r}; known: {known}")
    levels = {lv.id for scale in pages.scales.values() for lv in scale.levels}
    if request.min_level and request.min_level not in levels:
        known = ", ".join(sorted(levels))
        raise FieldError("min_level", f"unknown level {request.min_level!r}; known: {known}")
    for index, kind in enumerate(request.event_types):
        if kind not in EMAIL_EVENT_TYPES:
            known = ", ".join(EMAIL_EVENT_TYPES)
            raise FieldError(f"event_types.{index}", f"unknown event type {kind!r}; known: {known}")
    return request


def _client(request: web.Request) -> str:
    return request.remote or "unknown"


async def _read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise FieldError("body", f"must be at most {MAX_BODY} bytes")
    body = await request.content.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise FieldError("body", f"must be at most {MAX_BODY} bytes")
    return body


async def _submit(request: web.Request, subscription: SubscriptionRequest) -> None:
    pages = request.app[_PAGES]
    async with request.app[_LOCK]:  # one check-then-insert at a time: no duplicate mails
        result = await pages.subscribers.request_confirmation(
            address=subscription.address,
            name=subscription.name,
            mode=subscription.mode,
            filters=subscription.filters(),
            now=_now(),
            valid_for=pages.confirm_within,
            resend_after=pages.resend_after,
        )
    log.info(
        "subscription request: %s",
        result.value,
        extra={"action": "email_subscription_requested", "result": result.value},
    )
    if result is mailstore.RequestResult.QUEUED and pages.on_request:
        pages.on_request()


def _limited(request: web.Request) -> float:
    return request.app[_LIMITER].retry_after(_client(request))


_ACCEPTED = (
    "If the address can receive mail, a confirmation link is on its way. Nothing else is sent "
    "until it is used."
)


async def api_subscribe(request: web.Request) -> web.Response:
    wait = _limited(request)
    if wait:
        response = json_error(429, "too many subscription requests; try again later")
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    pages = request.app[_PAGES]
    try:
        if request.content_type != "application/json":
            raise FieldError("body", "must be JSON (Content-Type: application/json)")
        body = await _read_body(request)
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FieldError("body", f"is not valid JSON: {exc}") from None
        subscription = _validate(data, pages)
    except FieldError as exc:
        return json_error(400, f"{exc.field}: {exc.message}", field=exc.field)
    await _submit(request, subscription)
    return web.json_response({"status": "pending_confirmation", "message": _ACCEPTED}, status=202)


# --------------------------------------------------------------------------- pages


def _page(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    pages = request.app[_PAGES]
    text = pages.templates.render(
        f"pages/{template}",
        {"service_name": pages.service_name, "signup": pages.signup, **context},
    )
    response = web.Response(text=text, status=status, content_type="text/html")
    html_headers(response, private=True)  # no-store; tokens stay out of Referer headers
    return response


async def _choices(
    request: web.Request,
) -> tuple[Sequence[tuple[str, str]], Collection[str] | None]:
    provider = request.app.get(FORM_CHOICES)
    if provider is None:
        return (), None
    return await provider()


def _form_context(
    pages: SubscriptionPages,
    values: Mapping[str, Any],
    choices: tuple[Sequence[tuple[str, str]], Collection[str] | None] = ((), None),
) -> dict[str, Any]:
    situations, used = choices
    scales = [s for s in pages.scales.values() if used is None or s.id in used]
    levels = [
        {"id": lv.id, "name": lv.name, "scale": scale.name}
        for scale in scales
        for lv in scale.levels
    ]
    sources = [{"id": sid, "name": name} for sid, name in pages.sources.items()]
    return {
        "title": "Subscribe to email alerts",
        "action": "/subscribe",
        "levels": levels,
        "sources": sources,
        "event_types": list(_EVENT_LABELS.items()),
        "digest_time": f"{pages.digest_hour:02d}:00 UTC",
        "situation_choices": list(situations),
        "show_scales": len(scales) > 1,
        "values": {
            "address": "",
            "name": "",
            "min_level": "",
            "situations": "",
            "situations_list": [],
            "mode": "immediate",
            "sources_list": [],
            "event_types_list": [],
            **values,
        },
    }


async def form_page(request: web.Request) -> web.Response:
    """The form; ``?situation=ID`` (repeatable) ticks those situations."""
    chosen = request.query.getall("situation", [])[:100]
    context = _form_context(
        request.app[_PAGES], {"situations_list": chosen}, await _choices(request)
    )
    return _page(request, "subscribe.html", **context)


async def form_subscribe(request: web.Request) -> web.Response:
    pages = request.app[_PAGES]
    wait = _limited(request)
    if wait:
        return _page(
            request,
            "message.html",
            429,
            title="Too many requests",
            message="Too many subscription requests from your address. Try again in a minute.",
        )
    data: dict[str, Any] = {}
    try:
        body = await _read_body(request)
        form = _parse_form(body)
        data = {
            "address": form.get("address", [""])[-1],
            "name": form.get("name", [""])[-1] or None,
            "mode": form.get("mode", ["immediate"])[-1],
            "situations": [
                s.strip() for s in ",".join(form.get("situations", [])).split(",") if s.strip()
            ],
            "sources": form.get("sources", []),
            "min_level": form.get("min_level", [""])[-1] or None,
            "event_types": form.get("event_types", []),
        }
        subscription = _validate(data, pages)
    except FieldError as exc:
        values = {
            "address": data.get("address", ""),
            "name": data.get("name") or "",
            "situations_list": data.get("situations", []),
        }
        context = _form_context(pages, values, await _choices(request))
        context["error"] = f"{exc.field}: {exc.message}"
        return _page(request, "subscribe.html", 400, **context)
    await _submit(request, subscription)
    return _page(request, "message.html", title="Check your inbox", message=_ACCEPTED)


def _parse_form(body: bytes) -> dict[str, list[str]]:
    from urllib.parse import parse_qs

    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise FieldError("body", "must be UTF-8 form data") from None
    return parse_qs(text, keep_blank_values=True, max_num_fields=200)


async def _token(request: web.Request) -> str:
    token = request.query.get("token", "")
    if (
        not token
        and request.method == "POST"
        and request.content_type
        in (
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        )
    ):
        form = await request.post()
        value = form.get("token", "")
        token = value if isinstance(value, str) else ""
    return token if 0 < len(token) <= _MAX_TOKEN else ""


_INVALID = {
    mailstore.TokenState.UNKNOWN: (
        404,
        "Link not recognised",
        "This confirmation link is not valid. Nothing was changed. Copy the whole link from "
        "the mail, or subscribe again.",
    ),
    mailstore.TokenState.USED: (
        410,
        "Link already used",
        "This confirmation link has already been used or was withdrawn. Nothing was changed.",
    ),
    mailstore.TokenState.EXPIRED: (
        410,
        "Link expired",
        "This confirmation link has expired. Nothing was changed. Subscribe again to get a "
        "new one.",
    ),
}


def _invalid_confirmation(request: web.Request, state: mailstore.TokenState) -> web.Response:
    status, title, message = _INVALID[state]
    link = "/subscribe" if request.app[_PAGES].signup else None
    return _page(
        request,
        "message.html",
        status,
        title=title,
        message=message,
        link=link,
        link_text="Subscribe again",
    )


async def confirm_page(request: web.Request) -> web.Response:
    pages = request.app[_PAGES]
    token = await _token(request)
    state, address = (
        await pages.subscribers.confirmation_state(token, now=_now())
        if token
        else (mailstore.TokenState.UNKNOWN, None)
    )
    if state is not mailstore.TokenState.VALID:
        return _invalid_confirmation(request, state)
    return _page(
        request,
        "action.html",
        title="Confirm your subscription",
        message=f"Send {pages.service_name} alerts to {address}?",
        action="/email/confirm",
        token=token,
        button="Confirm",
    )


async def confirm_post(request: web.Request) -> web.Response:
    pages = request.app[_PAGES]
    token = await _token(request)
    state = (
        await pages.subscribers.confirm(token, now=_now())
        if token
        else mailstore.TokenState.UNKNOWN
    )
    if state is not mailstore.TokenState.VALID:
        return _invalid_confirmation(request, state)
    return _page(
        request,
        "message.html",
        title="Subscription confirmed",
        message="You will receive alerts by email. Every mail has a link to unsubscribe.",
    )


async def unsubscribe_page(request: web.Request) -> web.Response:
    pages = request.app[_PAGES]
    token = await _token(request)
    state = (
        await pages.subscribers.unsubscribe_state(token)
        if token
        else mailstore.UnsubscribeResult.UNKNOWN
    )
    if state is mailstore.UnsubscribeResult.UNKNOWN:
        return _unknown_unsubscribe(request)
    if state is mailstore.UnsubscribeResult.ALREADY:
        return _page(
            request,
            "message.html",
            title="Already unsubscribed",
            message="This address receives no more alerts from this link. Nothing was changed.",
        )
    cancel = state is mailstore.UnsubscribeResult.CANCELLED
    return _page(
        request,
        "action.html",
        title="Withdraw the request" if cancel else "Unsubscribe",
        message="Withdraw this subscription request?"
        if cancel
        else f"Stop sending {pages.service_name} alerts to this address?",
        action="/email/unsubscribe?token=" + token,
        token=token,
        button="Withdraw" if cancel else "Unsubscribe",
    )


def _unknown_unsubscribe(request: web.Request) -> web.Response:
    return _page(
        request,
        "message.html",
        404,
        title="Link not recognised",
        message="This unsubscribe link is not valid. Nothing was changed. Copy the whole link "
        "from the mail.",
    )


async def unsubscribe_post(request: web.Request) -> web.Response:
    pages = request.app[_PAGES]
    token = await _token(request)
    result = (
        await pages.subscribers.unsubscribe(token, now=_now())
        if token
        else mailstore.UnsubscribeResult.UNKNOWN
    )
    if result is mailstore.UnsubscribeResult.UNKNOWN:
        return _unknown_unsubscribe(request)
    messages = {
        mailstore.UnsubscribeResult.UNSUBSCRIBED: (
            "Unsubscribed",
            "You will receive no more alerts at this address.",
        ),
        mailstore.UnsubscribeResult.ALREADY: (
            "Already unsubscribed",
            "This address receives no more alerts from this link. Nothing was changed.",
        ),
        mailstore.UnsubscribeResult.CANCELLED: (
            "Request withdrawn",
            "The subscription request is withdrawn; its confirmation link no longer works.",
        ),
    }
    title, message = messages[result]
    return _page(request, "message.html", title=title, message=message)


def _now() -> datetime:
    return datetime.now(UTC)
