"""The partner API under ``/api/v1``: webhook endpoints, their secrets and deliveries.

Routes (bearer API key; the OpenAPI document says the same in detail)::

    GET    /api/v1/openapi.json                                   this API (no key needed)
    GET    /api/v1/schemas/event.json                             the event payload's JSON Schema
    GET    /api/v1/endpoints                                      your endpoints
    POST   /api/v1/endpoints                                      register one (secret shown once)
    GET    /api/v1/endpoints/{id}                                 read
    PATCH  /api/v1/endpoints/{id}                                 change url, description, ...
    DELETE /api/v1/endpoints/{id}                                 remove; pending rows dropped
    POST   /api/v1/endpoints/{id}/rotate-secret                   new secret; old one in grace
    POST   /api/v1/endpoints/{id}/test                            send a webhook.test event
    GET    /api/v1/endpoints/{id}/deliveries                      deliveries, newest first
    POST   /api/v1/endpoints/{id}/deliveries/{delivery}/redeliver one delivery again
    POST   /api/v1/endpoints/{id}/redeliver                       every dead letter since a time

A wrong or missing key gets 401 and nothing more; another partner's endpoint is a 404; bad
bodies get 400 (413 when too large) naming the field, control characters in any text field,
whitespace or control characters in a URL and a JSON null in a PATCH included; a refused URL
422; too many requests 429; a method a path does not have 405 with ``Allow``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any, Literal, TypeVar

from aiohttp import web
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError

from warnsvc.filters import Filter as Filters
from warnsvc.model import new_event_id
from warnsvc.security.keys import KeyRing, Partner, RateLimiter
from warnsvc.security.ssrf import Guard, UnsafeUrlError
from warnsvc.store.db import Store
from warnsvc.store.webhooks import (
    WEBHOOKS_CHANNEL,
    Endpoint,
    EndpointStore,
    refused_character,
    test_event,
)

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)

API: web.AppKey[WebhookApi] = web.AppKey("webhook_api")
PARTNER: Any = (  # typed request storage where aiohttp has it (3.12+)
    web.RequestKey("partner", Partner) if hasattr(web, "RequestKey") else "warnsvc.partner"
)
_PUBLIC = {"/api/v1/openapi.json", "/api/v1/schemas/event.json"}


def _document(name: str) -> bytes:
    return resources.files("warnsvc.web").joinpath("schemas", name).read_bytes()


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of this API, as kept in the repository."""
    document: dict[str, Any] = json.loads(_document("openapi.json"))
    return document


def event_schema() -> dict[str, Any]:
    """The JSON Schema of the event payload (the webhook body), as kept in the repository."""
    document: dict[str, Any] = json.loads(_document("event.schema.json"))
    return document


# -- request bodies --------------------------------------------------------------------------

EventTypeName = Literal[
    "situation.listed",
    "risk.escalated",
    "risk.deescalated",
    "situation.delisted",
    "situation.updated",
]


def _text(value: str) -> str:
    problem = refused_character(value)
    if problem is not None:
        raise PydanticCustomError(
            "control_character",
            "must not contain control characters (found {problem})",
            {"problem": problem},
        )
    return value


def _url(value: str) -> str:
    problem = refused_character(value, url=True)
    if problem is not None:
        raise PydanticCustomError(
            "url_character",
            "must not contain whitespace or control characters (found {problem})",
            {"problem": problem},
        )
    return value


ShortText = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_text)]
Description = Annotated[str, Field(max_length=500), AfterValidator(_text)]
Url = Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(_url)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FiltersBody(_Body):
    event_types: list[EventTypeName] = Field(default=[], max_length=10)
    situations: list[ShortText] = Field(default=[], max_length=200)
    sources: list[ShortText] = Field(default=[], max_length=50)
    min_level: ShortText | None = None

    def to_filters(self) -> Filters:
        return Filters(
            event_types=tuple(dict.fromkeys(self.event_types)),
            situations=tuple(dict.fromkeys(self.situations)),
            sources=tuple(dict.fromkeys(self.sources)),
            min_level=self.min_level,
        )


class EndpointCreateBody(_Body):
    url: Url
    description: Description = ""
    filters: FiltersBody = FiltersBody()
    enabled: bool = True


class EndpointUpdateBody(_Body):
    """Only the fields sent change. None stands for "not sent": a JSON null is refused."""

    url: Url | None = None
    description: Description | None = None
    filters: FiltersBody | None = None
    enabled: bool | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Runs on sent values only (defaults are not validated): a null is a client's
        # mistake (it would otherwise change nothing and answer 200), never "leave as is".
        if value is None:
            raise PydanticCustomError("null", "must not be null; leave the field out to keep it")
        return value


class RedeliverBody(_Body):
    since: AwareDatetime


class EmptyBody(_Body):
    pass


# -- errors ----------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = dict(headers or {})
        self.extra = extra

    def response(self) -> web.Response:
        error: dict[str, Any] = {"status": self.status, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        error.update(self.extra)
        return web.json_response({"error": error}, status=self.status, headers=self.headers)


def _field(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _validation_error(exc: ValidationError) -> ApiError:
    problems: list[dict[str, str | None]] = []
    for error in exc.errors(include_url=False, include_input=False):
        field = _field(tuple(error["loc"]))
        kind = error["type"]
        if kind == "json_invalid":
            message = f"the body is not valid JSON: {error.get('ctx', {}).get('error', '')}"
        elif kind == "extra_forbidden":
            message = f"unknown field {field!r}"
        elif kind == "missing":
            message = f"missing required field {field!r}"
        elif kind == "model_type":
            message = "expected a JSON object"
        else:
            message = f"{field}: {error['msg']}" if field else error["msg"]
        problems.append({"field": field or None, "message": message})
    first = problems[0]
    return ApiError(400, str(first["message"]), field=first["field"], errors=problems)


# -- the API ---------------------------------------------------------------------------------


@dataclass(kw_only=True)
class WebhookApi:
    """What the handlers need: the endpoint store, keys, limits and the SSRF guard."""

    store: Store
    keys: KeyRing
    limiter: RateLimiter
    guard: Guard
    ranks: Mapping[str, tuple[str, int]]
    service_name: str
    secret_grace: float
    max_endpoints: int
    max_body: int
    wake: Callable[[], None]

    # -- plumbing --------------------------------------------------------------------------

    @property
    def endpoints(self) -> EndpointStore:
        return self.store.endpoints

    def partner(self, request: web.Request) -> Partner:
        partner: Partner = request[PARTNER]
        return partner

    async def body(self, request: web.Request, model: type[M]) -> M:
        length = request.content_length
        if length is not None and length > self.max_body:
            raise ApiError(413, f"the body is larger than {self.max_body} bytes", field=None)
        data = bytearray()
        while chunk := await request.content.read(65536):
            data += chunk
            if len(data) > self.max_body:
                raise ApiError(413, f"the body is larger than {self.max_body} bytes", field=None)
        if not data.strip() and model is EmptyBody:
            data = bytearray(b"{}")
        try:
            return model.model_validate_json(bytes(data))
        except ValidationError as exc:
            raise _validation_error(exc) from None

    async def owned(self, request: web.Request, *, change: bool = False) -> Endpoint:
        return await self.find(
            self.partner(request), request.match_info["endpoint_id"], change=change
        )

    # -- operations (the handlers and the partner portal share them) -------------------------

    async def find(self, partner: Partner, endpoint_id: str, *, change: bool = False) -> Endpoint:
        """``partner``'s endpoint (404 for anyone else's); ``change``: refuse (409) one the
        configuration declares."""
        endpoint = await self.endpoints.get(endpoint_id)
        if endpoint is None or endpoint.partner_id != partner.id:
            raise ApiError(404, f"no endpoint {endpoint_id!r}")
        if change:
            self.changeable(endpoint)
        return endpoint

    @staticmethod
    def changeable(endpoint: Endpoint) -> None:
        """Refuse (409) to change an endpoint the service's configuration declares."""
        if endpoint.static:
            raise ApiError(
                409, "this endpoint is declared in the service's configuration; ask the operator"
            )

    async def rotate(self, endpoint: Endpoint) -> tuple[Endpoint, str]:
        """A new secret for ``endpoint``; the old one keeps signing for ``secret_grace``
        seconds."""
        self.changeable(endpoint)
        rotated = await self.endpoints.rotate(endpoint.id, grace=self.secret_grace, now=_now())
        if rotated is None:
            raise ApiError(404, f"no endpoint {endpoint.id!r}")
        return rotated

    async def test(self, endpoint: Endpoint) -> tuple[str, int]:
        """Queue a ``webhook.test`` event to ``endpoint``: its event id and delivery id."""
        if not endpoint.enabled:
            raise ApiError(409, "the endpoint is disabled; enable it first")
        now = _now()
        event = test_event(service=self.service_name, now=now, event_id=new_event_id(now))
        (delivery_id,) = await self.store.record_event(event, {WEBHOOKS_CHANNEL: [endpoint.id]})
        self.wake()
        return event.id, delivery_id

    async def redeliver(self, endpoint: Endpoint, delivery_id: int, *, raw: str) -> None:
        """Queue one delivered or dead delivery of ``endpoint`` again (``raw``: its id as sent)."""
        if await self.endpoints.delivery_endpoint(delivery_id) != endpoint.id:
            raise ApiError(404, f"no delivery {raw!r} for this endpoint")
        if not await self.endpoints.redeliver(endpoint.id, delivery_id, now=_now()):
            raise ApiError(409, "the delivery is still pending or in flight")
        self.wake()

    async def redeliver_since(self, endpoint: Endpoint, since: datetime) -> int:
        """Queue again every delivery of ``endpoint`` dead-lettered since ``since``."""
        count = await self.endpoints.redeliver_dead(
            endpoint.id, since=since.astimezone(UTC), now=_now()
        )
        if count:
            self.wake()
        return count

    async def check_url(self, url: str) -> None:
        try:
            await self.guard.check(url)
        except UnsafeUrlError as exc:
            raise ApiError(422, f"url {exc}", field="url") from None

    def check_filters(self, filters: FiltersBody) -> None:
        if filters.min_level is not None and filters.min_level not in self.ranks:
            known = ", ".join(self.ranks)
            raise ApiError(
                422,
                f"unknown level {filters.min_level!r}; known levels: {known}",
                field="filters.min_level",
            )

    # -- handlers ----------------------------------------------------------------------------

    async def list_endpoints(self, request: web.Request) -> web.Response:
        found = await self.endpoints.owned(self.partner(request).id)
        return web.json_response({"data": [e.to_json() for e in found]})

    async def create_endpoint(self, request: web.Request) -> web.Response:
        partner = self.partner(request)
        body = await self.body(request, EndpointCreateBody)
        self.check_filters(body.filters)
        await self.check_url(body.url)
        if await self.endpoints.count(partner.id) >= self.max_endpoints:
            raise ApiError(409, f"a partner may register at most {self.max_endpoints} endpoints")
        endpoint, secret = await self.endpoints.create(
            url=body.url,
            partner_id=partner.id,
            description=body.description,
            filters=body.filters.to_filters(),
            enabled=body.enabled,
            now=_now(),
        )
        log.info(
            "webhook endpoint %s registered",
            endpoint.id,
            extra={"action": "endpoint_created", "partner": partner.id, "endpoint": endpoint.id},
        )
        return web.json_response({**endpoint.to_json(), "secret": secret}, status=201)

    async def get_endpoint(self, request: web.Request) -> web.Response:
        return web.json_response((await self.owned(request)).to_json())

    async def update_endpoint(self, request: web.Request) -> web.Response:
        endpoint = await self.owned(request, change=True)
        body = await self.body(request, EndpointUpdateBody)
        changes: dict[str, Any] = {}
        if body.url is not None:
            await self.check_url(body.url)
            changes["url"] = body.url
        if body.description is not None:
            changes["description"] = body.description
        if body.filters is not None:
            self.check_filters(body.filters)
            changes["filters"] = body.filters.to_filters()
        if body.enabled is not None:
            changes["enabled"] = body.enabled
        updated = await self.endpoints.update(endpoint.id, now=_now(), **changes)
        if updated is None:
            raise ApiError(404, f"no endpoint {endpoint.id!r}")
        return web.json_response(updated.to_json())

    async def delete_endpoint(self, request: web.Request) -> web.Response:
        endpoint = await self.owned(request, change=True)
        await self.endpoints.delete(endpoint.id)
        return web.Response(status=204)

    async def rotate_secret(self, request: web.Request) -> web.Response:
        endpoint = await self.owned(request, change=True)
        await self.body(request, EmptyBody)
        updated, secret = await self.rotate(endpoint)
        return web.json_response({**updated.to_json(), "secret": secret})

    async def send_test(self, request: web.Request) -> web.Response:
        endpoint = await self.owned(request)
        await self.body(request, EmptyBody)
        event_id, delivery_id = await self.test(endpoint)
        return web.json_response({"event_id": event_id, "delivery_id": delivery_id}, status=202)

    async def list_deliveries(self, request: web.Request) -> web.Response:
        endpoint = await self.owned(request)
        query = request.query
        unknown = sorted(set(query) - {"status", "limit", "before"})
        if unknown:
            raise ApiError(400, f"unknown query parameter {unknown[0]!r}", field=unknown[0])
        status = query.get("status")
        if status is not None and status not in ("pending", "in_flight", "delivered", "dead"):
            raise ApiError(
                400, "status must be pending, in_flight, delivered or dead", field="status"
            )
        limit = _int_param(query.get("limit"), "limit", default=50, low=1, high=500)
        before = _int_param(query.get("before"), "before", default=None, low=1, high=2**62)
        records = await self.endpoints.deliveries(
            endpoint.id, status=status, limit=limit, before=before
        )
        next_before = records[-1].id if len(records) == limit else None
        return web.json_response(
            {"data": [r.to_json() for r in records], "next_before": next_before}
        )

    async def redeliver_one(self, request: web.Request) -> web.Response:
        endpoint = await self.owned(request)
        await self.body(request, EmptyBody)
        raw = request.match_info["delivery_id"]
        delivery_id = _int_param(raw, "delivery_id", default=None, low=1, high=2**62)
        assert delivery_id is not None
        await self.redeliver(endpoint, delivery_id, raw=raw)
        return web.json_response({"queued": 1}, status=202)

    async def redeliver_dead(self, request: web.Request) -> web.Response:
        endpoint = await self.owned(request)
        body = await self.body(request, RedeliverBody)
        count = await self.redeliver_since(endpoint, body.since)
        return web.json_response({"queued": count}, status=202)


def _int_param(raw: str | None, name: str, *, default: int | None, low: int, high: int) -> Any:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer", field=name) from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low} and {high}", field=name)
    return value


def _now() -> datetime:
    return datetime.now(UTC)


# -- middleware and app ----------------------------------------------------------------------


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


@web.middleware
async def _guard_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate, rate-limit, and turn :class:`ApiError` into a JSON answer."""
    api = request.app[API]
    try:
        if request.path not in _PUBLIC:
            partner = api.keys.authenticate(_bearer(request))
            if partner is None:
                raise ApiError(401, "unauthorized", headers={"WWW-Authenticate": "Bearer"})
            wait = api.limiter.take(partner.id)
            if wait > 0:
                retry = str(max(1, int(wait + 0.999)))
                raise ApiError(429, "too many requests", headers={"Retry-After": retry})
            request[PARTNER] = partner
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPMethodNotAllowed as exc:  # a known path, another method: say which ones
        allowed = exc.headers["Allow"]
        message = f"{request.method} is not allowed here; allowed: {allowed.replace(',', ', ')}"
        return ApiError(405, message, headers={"Allow": allowed}).response()


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(body=_document("openapi.json"), content_type="application/json")


async def _event_schema(request: web.Request) -> web.Response:
    return web.Response(body=_document("event.schema.json"), content_type="application/schema+json")


def make_api(api: WebhookApi) -> web.Application:
    """The ``/api/v1`` sub-application (mount it with ``app.add_subapp("/api/v1", ...)``)."""
    app = web.Application(middlewares=[_guard_requests])
    app[API] = api
    app.router.add_get("/openapi.json", _openapi)
    app.router.add_get("/schemas/event.json", _event_schema)
    app.router.add_get("/endpoints", api.list_endpoints)
    app.router.add_post("/endpoints", api.create_endpoint)
    app.router.add_get("/endpoints/{endpoint_id}", api.get_endpoint)
    app.router.add_patch("/endpoints/{endpoint_id}", api.update_endpoint)
    app.router.add_delete("/endpoints/{endpoint_id}", api.delete_endpoint)
    app.router.add_post("/endpoints/{endpoint_id}/rotate-secret", api.rotate_secret)
    app.router.add_post("/endpoints/{endpoint_id}/test", api.send_test)
    app.router.add_get("/endpoints/{endpoint_id}/deliveries", api.list_deliveries)
    app.router.add_post(
        "/endpoints/{endpoint_id}/deliveries/{delivery_id}/redeliver", api.redeliver_one
    )
    app.router.add_post("/endpoints/{endpoint_id}/redeliver", api.redeliver_dead)
    return app
