"""Notify: short alerts to chat and messaging services through Apprise (``notify``).

Each target of ``notify.targets`` is an Apprise URL (``tgram://``, ``slack://``, ``msteams://``,
``matrix://``, ``ntfy://``, ``json://`` ...) with the email subscribers' filter keys. An event
gets one outbox row per matching target, written with the event (:meth:`NotifyChannel.
recipients`); the recipient is the target's id (its ``id``, or ``target-N`` from its place in
the list), never its URL, so no secret is stored in the outbox or shown with a delivery.

:meth:`NotifyChannel.deliver` sends a claimed batch:

- Apprise sends with blocking I/O (``requests``), so every send runs in the channel's own small
  thread pool (``notify.concurrency`` threads), never on the event loop; one target's rows go
  one after another (chat services rate-limit), different targets side by side;
- every attempt is bounded by ``notify.timeout``: the wait for the thread ends then, and
  Apprise's own connect and read timeouts (``cto``, ``rto``) are set a second past it unless
  the URL sets them, so a hung thread ends soon after;
- a failed attempt is retried ``notify.quick_retries`` times in process (tenacity), then left
  to the persisted schedule (``notify.retry``), then dead-lettered; one target's failures never
  hold up another's rows;
- the SSRF guard applies to every connection Apprise opens over HTTP(S) during a send: the host
  is resolved and every address checked with the :class:`~warnsvc.security.ssrf.Guard` built
  from ``notify.allow_hosts`` and ``notify.allow_networks`` (public addresses pass, others only
  when listed), and the connection goes to a checked address (no second lookup). The generic
  HTTP targets that name their own host without TLS (``json://``, ``xml://``, ``form://``) must
  be allow-listed, as plain-http webhook endpoints must. Services Apprise reaches by other
  protocols (SMTP for ``mailto://``, MQTT ...) are not checked: see docs/notify.md;
- a target that keeps failing (a row dead-lettered after its whole schedule with no success
  meanwhile, or no success for ``notify.disable_after``) is disabled, with an operator notice
  (``notify.target_disabled``) in the store's notices; the notices are the record every replica
  reads, so the target stays disabled until its URL changes or ``warnsvc notify enable ID``.

URLs are shown masked everywhere (logs, status, errors, ``warnsvc notify test``): Apprise's
privacy form of the URL without its query, path words that look like tokens shortened; and
whatever Apprise reports about a failure is scrubbed of every part of the URL the masked form
hides. Apprise's own log records never reach warnsvc's log: the channel reads them, per
thread, to tell why a send failed.

Apprise is imported only when ``notify`` is configured (or ``warnsvc notify test`` runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import re
import socket
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from tenacity import AsyncRetrying, stop_after_attempt, wait_random_exponential

from warnsvc import metrics
from warnsvc.channels.base import ChannelContext, ChannelKind, ChannelOptions, Outcome, Plugged
from warnsvc.filters import Filter, Levels
from warnsvc.model import Event, EventType
from warnsvc.outbox import Delivery, RetryPolicy
from warnsvc.security.ssrf import Guard, UnsafeAddressError, UnsafeUrlError, describe
from warnsvc.store.notices import OPERATOR_NOTICE

if TYPE_CHECKING:
    from warnsvc.config import NotifySettings, NotifyTargetSettings, Settings
    from warnsvc.store.db import RouteContext
    from warnsvc.store.notices import NoticeStore

__all__ = [
    "KIND",
    "NOTIFY_CHANNEL",
    "NotifyChannel",
    "Target",
    "build_notify",
    "message_for",
    "send_message",
    "send_test",
    "url_problem",
]

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "notify"
DISABLED = "notify.target_disabled"
ENABLED = "notify.target_enabled"
_PLAIN_HTTP = {"json": "jsons", "xml": "xmls", "form": "forms"}
"""Apprise's generic HTTP schemes that name their own host, and their TLS forms."""
_QUICK_WAIT_MAX = 1.0
_MAX_ERROR = 300


# -- Apprise, loaded on first use ------------------------------------------------------------


class _ThreadCapture(logging.Handler):
    """Apprise's log records, kept per thread while a send runs there (and dropped otherwise)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.local = threading.local()

    def start(self) -> None:
        self.local.lines = []

    def stop(self) -> list[str]:
        lines: list[str] = getattr(self.local, "lines", None) or []
        self.local.lines = None
        return lines

    def emit(self, record: logging.LogRecord) -> None:
        lines = getattr(self.local, "lines", None)
        if lines is not None and record.levelno >= logging.WARNING:
            with contextlib.suppress(Exception):  # an unformattable record says nothing useful
                lines.append(record.getMessage())


_capture = _ThreadCapture()
_guarded = threading.local()
"""Per worker thread during a send: ``guard`` (the SSRF guard) and ``refused`` (why not)."""
_apprise_module: ModuleType | None = None
_load_lock = threading.Lock()


def _apprise() -> ModuleType:
    """Import Apprise once: its records go to the per-thread capture only, and every HTTP
    connection urllib3 opens from a thread that is sending goes through the guard."""
    global _apprise_module
    with _load_lock:
        if _apprise_module is None:
            with warnings.catch_warnings():  # its plugins import modules Python deprecates
                warnings.simplefilter("ignore", DeprecationWarning)
                import apprise
                from apprise.manager_plugins import NotificationManager

                manager = NotificationManager()  # type: ignore[no-untyped-call]
                if "json" not in manager:  # loads its plugins, under the filter above
                    raise ImportError("Apprise came without its plugins")
            import urllib3.util.connection as connection

            logger = logging.getLogger("apprise")
            logger.handlers[:] = [_capture]
            logger.propagate = False  # its messages may carry URLs: never in our log as they are
            logger.setLevel(logging.INFO)
            if not getattr(connection.create_connection, "_warnsvc_guarded", False):
                connection.create_connection = _guarded_connection(connection.create_connection)
            _apprise_module = apprise
    return _apprise_module


def _guarded_connection(connect: Callable[..., socket.socket]) -> Callable[..., socket.socket]:
    """urllib3's ``create_connection``, checking every address with the sending thread's guard
    and connecting only to checked addresses (threads that are not sending are untouched)."""

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        guard: Guard | None = getattr(_guarded, "guard", None)
        if guard is None:
            return connect(address, *args, **kwargs)
        host, port = address
        if guard.host_allowed(host):
            return connect(address, *args, **kwargs)
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        addresses: list[str] = []
        for *_, sockaddr in infos:
            if str(sockaddr[0]) not in addresses:
                addresses.append(str(sockaddr[0]))
        import ipaddress

        for text in addresses:
            checked = ipaddress.ip_address(text.split("%", 1)[0])
            if not guard.address_allowed(checked):
                reason = (
                    f"refused by the SSRF guard: {host} resolves to {describe(checked)}, not a "
                    "public address (list it in notify.allow_hosts or notify.allow_networks)"
                )
                _guarded.refused = reason
                raise UnsafeAddressError(reason)
        error: OSError | None = None
        for text in addresses:
            try:
                return connect((text, port), *args, **kwargs)
            except OSError as exc:
                error = exc
        raise error or OSError(f"{host} has no address")

    create_connection._warnsvc_guarded = True  # type: ignore[attr-defined]
    return create_connection


# -- URLs --------------------------------------------------------------------------------------


def _scheme(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme) else ""


def url_problem(url: str) -> str | None:
    """Why Apprise cannot use ``url`` (naming its scheme, never its secrets), or None."""
    scheme = _scheme(url)
    if not scheme:
        return "must be an Apprise URL like tgram://TOKEN/CHAT_ID or jsons://host/path"
    apprise = _apprise()
    from apprise.manager_plugins import NotificationManager

    if scheme not in NotificationManager():  # type: ignore[no-untyped-call]
        return (
            f"Apprise does not understand the scheme {scheme!r} ({scheme}://); see "
            "https://github.com/caronc/apprise/wiki for the services and their URLs"
        )
    _capture.start()
    try:
        plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    finally:
        _capture.stop()
    if plugin is None:
        return (
            f"Apprise cannot read this {scheme}:// URL: a part it needs is missing or malformed "
            f"(see the Apprise wiki page for {scheme}://)"
        )
    return None


_TOKEN_LIKE = re.compile(r"[0-9]|.{13,}")


def _mask_path(path: str) -> str:
    """Path words that look like tokens (a digit, or 13 characters or more) shortened."""
    words = []
    for word in path.split("/"):
        if len(word) > 4 and _TOKEN_LIKE.search(word) and "..." not in word:
            word = f"{word[0]}...{word[-1]}"
        words.append(word)
    return "/".join(words)


def masked_url(plugin: Any) -> str:
    """The form of a target's URL that may be shown: Apprise's privacy form (passwords and
    known tokens hidden), without its query, token-like path words shortened."""
    private = str(plugin.url(privacy=True)).split("?", 1)[0]
    scheme, _, rest = private.partition("://")
    netloc, slash, path = rest.partition("/")
    return f"{scheme}://{netloc}{slash}{_mask_path(path)}"


def _secret_parts(url: str, shown: str) -> tuple[str, ...]:
    """The parts of ``url`` that ``shown`` hides, longest first (scrubbed from messages)."""
    pieces = set()
    for piece in re.split(r"[/:@?&=#,+]", url.partition("://")[2]):
        for form in (piece, unquote(piece)):
            if len(form) >= 3 and form not in shown:
                pieces.add(form)
    return tuple(sorted(pieces, key=len, reverse=True))


# -- targets -----------------------------------------------------------------------------------


@dataclass(slots=True, eq=False, kw_only=True)
class Target:
    """A target as the channel uses it: its Apprise plugin, masked URL and filter."""

    id: str
    name: str
    url: str = field(repr=False)
    masked: str
    filter: Filter
    plugin: Any = field(repr=False)
    plain_origin: str | None
    """``http://host:port/`` of a json/xml/form target without TLS (it must be allow-listed)."""
    secrets: tuple[str, ...] = field(repr=False, default=())
    fingerprint: str = ""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "****")
        return text


def make_target(
    url: str, *, id: str, name: str | None = None, filter: Filter | None = None, timeout: float
) -> Target:
    """A target from its URL; :class:`ValueError` (naming the scheme) when Apprise cannot use
    it. Apprise's connect and read timeouts are set a second past ``timeout`` unless the URL
    sets them."""
    problem = url_problem(url)
    if problem is not None:
        raise ValueError(problem)
    apprise = _apprise()
    plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    query = urlsplit(url).query
    if "cto=" not in query:  # a second past the wait's bound: the thread ends soon after it
        plugin.socket_connect_timeout = timeout + 1.0
    if "rto=" not in query:
        plugin.socket_read_timeout = timeout + 1.0
    masked = masked_url(plugin)
    scheme = _scheme(url)
    plain_origin = None
    if scheme in _PLAIN_HTTP and plugin.host:
        port = f":{plugin.port}" if plugin.port else ""
        plain_origin = f"http://{plugin.host}{port}/"
    return Target(
        id=id,
        name=name or id,
        url=url,
        masked=masked,
        filter=filter or Filter(),
        plugin=plugin,
        plain_origin=plain_origin,
        secrets=_secret_parts(url, masked),
        fingerprint=hashlib.sha256(url.encode()).hexdigest()[:16],
    )


def target_id(config: NotifyTargetSettings, position: int) -> str:
    """A target's id: its own, or ``target-N`` (N its 1-based place in the list)."""
    return config.id or f"target-{position}"


OPERATORS_TARGET = "operators-"
"""The operators' Apprise URLs (``operators.notify``) are targets ``operators-N``."""


def operator_target_ids(settings: Settings) -> list[str]:
    return [f"{OPERATORS_TARGET}{n}" for n in range(1, len(settings.operators.notify) + 1)]


def operator_targets_of(urls: Sequence[str], settings: NotifySettings) -> list[Target]:
    """Targets for operators' notices only: their filter passes no routed event."""
    return [
        make_target(
            url,
            id=f"{OPERATORS_TARGET}{n}",
            name="operators",
            filter=Filter(event_types=(OPERATOR_NOTICE,)),
            timeout=settings.timeout,
        )
        for n, url in enumerate(urls, 1)
    ]


def targets_of(settings: NotifySettings) -> list[Target]:
    return [
        make_target(
            config.url,
            id=target_id(config, n),
            name=config.name,
            filter=Filter.of(config),
            timeout=settings.timeout,
        )
        for n, config in enumerate(settings.targets, 1)
    ]


# -- the message -------------------------------------------------------------------------------


def _level_name(level: object) -> str:
    if isinstance(level, Mapping):
        return str(level.get("name") or level.get("id") or "?")
    return "?"


def message_for(payload: Mapping[str, Any], *, service: str = "warnsvc") -> tuple[str, str]:
    """The title and body of the short message for an event payload (or an operator notice)."""
    kind = str(payload.get("type") or "")
    if kind == "operator.notice":
        subject = str(payload.get("subject") or "notice")
        return f"[{service}] {subject}"[:250], subject
    found = payload.get("situation")
    situation: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    name = str(situation.get("name") or situation.get("id") or "a situation")
    link = str(situation.get("url") or "")
    new, old = _level_name(payload.get("level")), _level_name(payload.get("previous_level"))
    if kind == EventType.ESCALATED.value:
        title = f"{name}: risk up from {old} to {new}"
    elif kind == EventType.DEESCALATED.value:
        title = f"{name}: risk down from {old} to {new}"
    elif kind == EventType.LISTED.value:
        title = f"{name}: listed at {new}"
    elif kind == EventType.DELISTED.value:
        title = f"{name}: no longer assessed (was {old})"
    elif kind == EventType.UPDATED.value:
        title = f"{name}: new analysis, still {new}"
    elif kind == EventType.RETRACTED.value:
        title = f"{name}: correction of an earlier alert"
    else:
        title = f"{name}: {kind}"
    lines = [title]
    note = payload.get("note")
    if isinstance(note, str) and note:
        lines.append(note[:500])
    if link:
        lines.append(link)
    return title[:250], "\n".join(lines)


# -- sending -----------------------------------------------------------------------------------


class SendFailedError(Exception):
    """One attempt failed; the message is masked."""


def _send_blocking(target: Target, guard: Guard, title: str, body: str) -> None:
    """One Apprise send, in a worker thread, with the guard on every connection it opens."""
    _guarded.guard = guard
    _guarded.refused = None
    _capture.start()
    try:
        ok = bool(target.plugin.notify(body=body, title=title))
    except Exception as exc:  # Apprise catches most; anything else is this attempt's failure
        ok = False
        _capture.local.lines.append(f"{type(exc).__name__}: {exc}")
    finally:
        lines = _capture.stop()
        refused = _guarded.refused
        _guarded.guard = None
    if not ok:
        reason = refused or "; ".join(lines[-2:]) or "Apprise reported a failure"
        raise SendFailedError(target.scrub(reason)[:_MAX_ERROR])


class Sender:
    """Send to targets off the event loop, each attempt bounded, through the SSRF guard."""

    def __init__(self, guard: Guard, *, timeout: float, threads: int) -> None:
        self.guard = guard
        self.timeout = timeout
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="notify")

    async def check(self, target: Target) -> None:
        """Refuse a plain-http json/xml/form target that is not allow-listed."""
        if target.plain_origin is None:
            return
        try:
            await self.guard.check(target.plain_origin)
        except UnsafeUrlError as exc:
            text = str(exc).replace("https", "TLS (jsons://, xmls://, forms://)")
            raise SendFailedError(target.scrub(f"refused by the SSRF guard: {text}")) from None

    async def send(self, target: Target, title: str, body: str) -> None:
        """One attempt: :class:`SendFailedError` when it fails or takes longer than the timeout."""
        await self.check(target)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            self.executor, _send_blocking, target, self.guard, title, body
        )
        try:
            await asyncio.wait_for(future, self.timeout)
        except TimeoutError:
            raise SendFailedError(f"timed out after {self.timeout:g}s") from None

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


async def send_test(url: str, *, guard: Guard, seconds: float) -> tuple[str, str | None]:
    """Send a test message to ``url``: (its masked form, None or why it failed).

    :class:`ValueError` (naming the scheme) when Apprise cannot use the URL."""
    title = "warnsvc test message"
    body = "A test from `warnsvc notify test`: this target receives warnsvc's alerts."
    return await send_message(url, title, body, guard=guard, seconds=seconds)


async def send_message(
    url: str, title: str, body: str, *, guard: Guard, seconds: float
) -> tuple[str, str | None]:
    """Send one message to an Apprise URL, once (e.g. an operators' notice): (the masked URL,
    None or why it failed, masked). :class:`ValueError` when Apprise cannot use the URL."""
    target = make_target(url, id="once", timeout=seconds)
    sender = Sender(guard, timeout=seconds, threads=1)
    try:
        await sender.send(target, title, body)
    except SendFailedError as exc:
        return target.masked, str(exc)
    finally:
        sender.close()
    return target.masked, None


# -- the channel -------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class _Health:
    failing_since: float | None = None
    last_ok: float | None = None


class NotifyChannel:
    """Deliver outbox rows of channel ``notify`` to Apprise targets."""

    name = NOTIFY_CHANNEL

    def __init__(
        self,
        settings: NotifySettings,
        *,
        levels: Levels,
        notices: NoticeStore | None,
        service: str = "warnsvc",
        operators: Sequence[str] = (),
    ) -> None:
        self.levels = levels
        self.notices = notices
        self.service = service
        self._health: dict[str, _Health] = {}
        self._aborted = False
        self._apply(settings, operators)

    def _apply(self, settings: NotifySettings, operators: Sequence[str] = ()) -> None:
        self.settings = settings
        retry = settings.retry
        self.retry_policy = RetryPolicy(
            initial=retry.initial,
            factor=retry.factor,
            cap=retry.cap,
            max_attempts=retry.max_attempts,
        )
        longest = settings.timeout * (settings.quick_retries + 1) + settings.quick_retries
        self.lease = max(120.0, longest * 4 + 10)
        targets = [*targets_of(settings), *operator_targets_of(operators, settings)]
        self.targets = {t.id: t for t in targets}
        guard = Guard.build(settings.allow_hosts, settings.allow_networks)
        self.sender = Sender(guard, timeout=settings.timeout, threads=settings.concurrency)
        for target in self.targets.values():
            log.info(
                "notify target %s: %s",
                target.id,
                target.masked,
                extra={"action": "notify_target", "channel": self.name, "target": target.id},
            )

    @property
    def options(self) -> ChannelOptions:
        return ChannelOptions(
            batch_size=100, parallel_batches=1, lease=self.lease, retry_policy=self.retry_policy
        )

    async def reconfigure(self, settings: Settings) -> None:
        """Use the reloaded ``notify`` section (rows already queued keep their target ids)."""
        if settings.notify is None:
            return
        old = self.sender
        self.levels = Levels(settings.scale_map())
        self.service = settings.service.name
        self._apply(settings.notify, settings.operators.notify)
        old.close()

    def close(self) -> None:
        self.sender.close()

    def abort(self) -> None:
        """Shutdown: start no more sends; rows not started come back deferred."""
        self._aborted = True

    # -- routing -----------------------------------------------------------------------------

    async def recipients(self, routes: RouteContext, event: Event) -> Sequence[str]:
        if event.type is EventType.WEBHOOK_TEST:
            return []
        return [t.id for t in self.targets.values() if t.filter.matches(event, self.levels)]

    # -- delivery ----------------------------------------------------------------------------

    async def disabled(self) -> dict[str, str]:
        """Disabled targets (id -> reason), from the notices every replica shares: a target is
        disabled by its latest ``notify.target_disabled`` notice for its current URL, unless a
        later ``notify.target_enabled`` notice enabled it again."""
        if self.notices is None:
            return {}
        found = [
            *await self.notices.recent(kind=DISABLED, limit=200),
            *await self.notices.recent(kind=ENABLED, limit=200),
        ]
        state: dict[str, str] = {}
        for notice in sorted(found, key=lambda n: n.id):
            target = self.targets.get(str(notice.detail.get("target")))
            if target is None:
                continue
            if notice.kind == ENABLED:
                state.pop(target.id, None)
            elif notice.detail.get("fingerprint") == target.fingerprint:
                state[target.id] = str(notice.detail.get("reason") or "disabled")
        return state

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        start_by = loop.time() + self.lease * 0.5
        disabled = await self.disabled()
        outcomes: dict[int, Outcome] = {}
        by_target: dict[str, list[Delivery]] = {}
        for delivery in deliveries:
            reason = disabled.get(delivery.recipient)
            if delivery.recipient not in self.targets:
                outcomes[delivery.id] = _dead(delivery, "no such notify target in the config")
            elif reason is not None:
                outcomes[delivery.id] = _dead(delivery, f"target disabled: {reason}")
            else:
                by_target.setdefault(delivery.recipient, []).append(delivery)
        results = await asyncio.gather(
            *(self._target_rows(self.targets[t], rows, start_by) for t, rows in by_target.items())
        )
        for found in results:
            outcomes.update(found)
        ordered = [outcomes[d.id] for d in deliveries]
        await self._record_health(deliveries, ordered)
        return ordered

    async def _target_rows(
        self, target: Target, rows: Sequence[Delivery], start_by: float
    ) -> dict[int, Outcome]:
        """One target's rows, one after another."""
        found: dict[int, Outcome] = {}
        async with target.lock:
            for delivery in rows:
                if self._aborted or asyncio.get_running_loop().time() > start_by:
                    found[delivery.id] = _not_started(delivery)
                    continue
                found[delivery.id] = await self._attempt(target, delivery)
        return found

    async def _attempt(self, target: Target, delivery: Delivery) -> Outcome:
        title, body = message_for(delivery.payload, service=self.service)
        started = time.perf_counter()
        try:
            try:
                await self.sender.send(target, title, body)
            except SendFailedError:
                if self.settings.quick_retries == 0:
                    raise
                await asyncio.sleep(random.uniform(0.05, 0.2))
                async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(self.settings.quick_retries),
                    wait=wait_random_exponential(multiplier=0.2, max=_QUICK_WAIT_MAX),
                    reraise=True,
                ):
                    with attempt:
                        await self.sender.send(target, title, body)
        except SendFailedError as exc:
            metrics.NOTIFY_SENDS.labels(target=target.id, result="failed").inc()
            return Outcome(delivery_id=delivery.id, ok=False, error=str(exc))
        except Exception as exc:  # a bug must not lose the row: it is retried
            log.exception(
                "notify delivery %d crashed",
                delivery.id,
                extra={"action": "delivery_crashed", "channel": self.name},
            )
            error = target.scrub(f"internal error: {type(exc).__name__}")
            return Outcome(delivery_id=delivery.id, ok=False, error=error)
        metrics.NOTIFY_SENDS.labels(target=target.id, result="sent").inc()
        metrics.NOTIFY_SECONDS.labels(target=target.id).observe(time.perf_counter() - started)
        return Outcome(delivery_id=delivery.id, ok=True)

    # -- target health -----------------------------------------------------------------------

    async def _record_health(
        self, deliveries: Sequence[Delivery], outcomes: Sequence[Outcome]
    ) -> None:
        now = time.time()
        exhausted: set[str] = set()
        failed: set[str] = set()
        for delivery, outcome in zip(deliveries, outcomes, strict=True):
            if outcome.deferred or outcome.permanent or delivery.recipient not in self.targets:
                continue
            health = self._health.setdefault(delivery.recipient, _Health())
            if outcome.ok:
                health.failing_since = None
                health.last_ok = now
            else:
                failed.add(delivery.recipient)
                if health.failing_since is None:
                    health.failing_since = now
                if delivery.attempts + 1 >= self.retry_policy.max_attempts:
                    exhausted.add(delivery.recipient)
        span = self.retry_policy.total_span()
        for target_id in sorted(failed):
            health = self._health[target_id]
            if health.failing_since is None:
                continue  # a later row of the batch succeeded
            if target_id in exhausted and (health.last_ok is None or now - health.last_ok > span):
                reason = "a delivery failed its whole retry schedule, with no success meanwhile"
            elif now - health.failing_since >= self.settings.disable_after:
                since = datetime.fromtimestamp(health.failing_since, UTC)
                reason = f"failing since {since:%Y-%m-%d %H:%M} UTC"
            else:
                continue
            await self._disable(self.targets[target_id], reason)

    async def _disable(self, target: Target, reason: str) -> None:
        self._health.pop(target.id, None)
        if self.notices is None:
            return
        subject = (
            f"Notify target {target.id} ({target.masked}) was disabled: {reason}. Fix the "
            f"target, then `warnsvc notify enable {target.id}` (or change its URL)."
        )
        await self.notices.record(
            kind="notify.target_disabled",  # DISABLED, spelt out for the docs' check
            subject=subject,
            detail={"target": target.id, "fingerprint": target.fingerprint, "reason": reason},
            now=datetime.now(UTC),
        )
        log.warning(
            "notify target %s disabled: %s",
            target.id,
            reason,
            extra={"action": "target_disabled", "channel": self.name, "target": target.id},
        )


async def enable(notices: NoticeStore, settings: NotifySettings, target: str) -> bool:
    """Record that ``target`` is enabled again (False: no such target in the config)."""
    ids = [target_id(config, n) for n, config in enumerate(settings.targets, 1)]
    if target not in ids:
        return False
    await notices.record(
        kind="notify.target_enabled",  # ENABLED
        subject=f"Notify target {target} was enabled again by an operator",
        detail={"target": target},
        now=datetime.now(UTC),
    )
    return True


def build_notify(settings: Settings, notices: NoticeStore | None) -> NotifyChannel | None:
    """The channel, or None without a ``notify`` section with targets (Apprise stays unloaded)."""
    if settings.notify is None or not (settings.notify.targets or settings.operators.notify):
        return None
    return NotifyChannel(
        settings.notify,
        levels=Levels(settings.scale_map()),
        notices=notices,
        service=settings.service.name,
        operators=settings.operators.notify,
    )


class Notify(Plugged):
    """The notify channel in the service: reconfigured on a reload, its threads closed."""

    def __init__(self, channel: NotifyChannel) -> None:
        super().__init__(channel)
        self.channel = channel

    async def reconfigure(self, old: Settings, new: Settings) -> list[str]:
        if new.notify is None or not (new.notify.targets or new.operators.notify):
            return ["notify (the section was removed: its targets keep their rows until restart)"]
        await self.channel.reconfigure(new)
        return []

    async def close(self) -> None:
        self.channel.close()


async def build(settings: Settings, context: ChannelContext) -> Notify | None:
    channel = build_notify(settings, context.store.notices)
    return Notify(channel) if channel is not None else None


KIND = ChannelKind(name=NOTIFY_CHANNEL, build=build)


def _dead(delivery: Delivery, error: str) -> Outcome:
    return Outcome(delivery_id=delivery.id, ok=False, permanent=True, error=error)


def _not_started(delivery: Delivery) -> Outcome:
    return Outcome(delivery_id=delivery.id, ok=False, deferred=True, error="not started")
