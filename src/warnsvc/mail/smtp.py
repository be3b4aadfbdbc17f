"""SMTP delivery: a small pool of reused aiosmtplib connections, bounded and rate-limited.

:class:`SmtpPool` keeps at most ``connections`` client connections open and lends one to each
send, so at most that many messages are in flight; each connection carries up to
``messages_per_connection`` messages before it is replaced. :class:`RateLimiter` spaces sends
to the configured messages per second across the whole pool. Each mail is one
:func:`transaction` (MAIL FROM, RCPT TO, DATA) on the lent connection.

Every failure becomes a :class:`SendError` that says whether retrying can help:

- transient: connection refused or dropped, timeouts, TLS or login problems, 4xx replies, and a
  refused sender (a configuration problem: the mail must survive until it is fixed);
- permanent: a 5xx reply to RCPT TO (``recipient_rejected``: counts against the address) or to
  DATA (the message was refused).

:meth:`SmtpPool.send` retries transient failures a few times in-process (tenacity) for blips;
longer outages are the outbox's persisted schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

__all__ = ["RateLimiter", "SendError", "SmtpConfig", "SmtpPool", "classify"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class SmtpConfig:
    """How to reach the SMTP server (built from ``email.smtp`` and ``email.rate``)."""

    host: str
    port: int
    security: str = "starttls"
    """``starttls``, ``tls`` (implicit TLS, usually port 465) or ``none``."""
    user: str | None = None
    password: str | None = None
    verify_certificate: bool = True
    ca_file: Path | None = None
    timeout: float = 30.0
    connections: int = 4
    messages_per_connection: int = 100
    rate: float = 0.0
    """Messages per second across the pool; 0 means no limit."""
    quick_retries: int = 2
    quick_wait: float = 0.5


class SendError(Exception):
    """A message was not accepted. ``permanent``: retrying cannot help."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        permanent: bool = False,
        recipient_rejected: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.permanent = permanent
        self.recipient_rejected = recipient_rejected


def classify(exc: BaseException) -> SendError:
    """The :class:`SendError` for an aiosmtplib or network exception."""
    if isinstance(exc, SendError):
        return exc
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        refused = exc.recipients[0] if exc.recipients else None
        code = refused.code if refused else None
        text = f"recipient refused: {code} {refused.message if refused else ''}".strip()
        hard = code is not None and code >= 500
        return SendError(text, code=code, permanent=hard, recipient_rejected=hard)
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        hard = exc.code >= 500
        text = f"recipient refused: {exc.code} {exc.message}"
        return SendError(text, code=exc.code, permanent=hard, recipient_rejected=hard)
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return SendError(f"sender refused: {exc.code} {exc.message}", code=exc.code)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return SendError(f"login failed: {exc.code} {exc.message}", code=exc.code)
    if isinstance(exc, aiosmtplib.SMTPDataError):
        return SendError(
            f"message refused: {exc.code} {exc.message}", code=exc.code, permanent=exc.code >= 500
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException) and not isinstance(
        exc, aiosmtplib.SMTPConnectResponseError | aiosmtplib.SMTPHeloError
    ):
        return SendError(f"SMTP error: {exc.code} {exc.message}", code=exc.code)
    if isinstance(exc, TimeoutError | aiosmtplib.SMTPTimeoutError):
        return SendError(f"SMTP timeout: {exc}")
    if isinstance(exc, aiosmtplib.SMTPException | OSError | ssl.SSLError):
        return SendError(f"SMTP unavailable: {type(exc).__name__}: {exc}")
    return SendError(f"SMTP failure: {type(exc).__name__}: {exc}")


class RateLimiter:
    """Spaces calls to at most ``rate`` per second (0: unlimited), shared by all callers."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._clock = clock
        self._next = 0.0

    async def acquire(self) -> None:
        if not self.interval:
            return
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


_UNSAFE_IN_PATH = re.compile(r"[\s<>\x00]")
"""What must never be in an address put between ``<`` and ``>`` on a command line."""
_LINE_ENDING = re.compile(rb"\r\n|\r|\n")


def smtp_path(address: str) -> bytes:
    """``<address>``, as MAIL FROM and RCPT TO carry it (an empty sender: the null path).

    Addresses reach here already normalised (subscribers' when they signed up, the sender's
    when the config was read); this refuses, with a :class:`ValueError`, whatever could still
    break out of the command line.
    """
    if _UNSAFE_IN_PATH.search(address):
        raise ValueError(f"{address!r} cannot be sent in an SMTP command")
    return b"<" + address.encode() + b">"


def wire_length(message: bytes) -> int:
    """The message's size as DATA sends it, every line ending CRLF (RFC 1870's SIZE)."""
    pairs = message.count(b"\r\n")
    if message.count(b"\r") == pairs == message.count(b"\n"):  # already CRLF throughout
        return len(message)
    return len(_LINE_ENDING.sub(b"\r\n", message))


async def transaction(client: aiosmtplib.SMTP, sender: str, recipient: str, message: bytes) -> None:
    """One mail to one recipient on a connected client: MAIL FROM, RCPT TO, DATA.

    This is what ``aiosmtplib.SMTP.sendmail`` does for one recipient, with its replies and
    exceptions (and an RSET after a refusal, so the connection stays usable), but each
    address is checked once by :func:`smtp_path` instead of being parsed four times by
    ``email.utils``: a fan-out sends thousands of these.
    """
    if client.is_ehlo_or_helo_needed:
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError:
            if not client.is_connected:
                raise
            await client.helo()
    utf8 = not (sender.isascii() and recipient.isascii())
    if utf8 and not client.supports_extension("smtputf8"):
        raise ValueError("a non-ASCII address needs SMTPUTF8, which the server does not offer")
    options = [b"SMTPUTF8"] if utf8 else []
    if client.supports_extension("size"):
        options.append(b"SIZE=%d" % wire_length(message))
    mail_from, rcpt_to = smtp_path(sender), smtp_path(recipient)
    try:
        reply = await client.execute_command(b"MAIL", b"FROM:" + mail_from, *options)
        if reply.code != aiosmtplib.SMTPStatus.completed:
            raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender)
        reply = await client.execute_command(b"RCPT", b"TO:" + rcpt_to)
        if reply.code not in (aiosmtplib.SMTPStatus.completed, aiosmtplib.SMTPStatus.will_forward):
            refused = aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)
            raise aiosmtplib.SMTPRecipientsRefused([refused])
        await client.data(message)
    except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
        with contextlib.suppress(ConnectionError, aiosmtplib.SMTPResponseException):
            await client.rset()  # a clean envelope for the connection's next mail
        raise


@dataclass(slots=True)
class _Connection:
    client: aiosmtplib.SMTP
    sent: int = 0


class SmtpPool:
    """At most ``connections`` reused SMTP connections; :meth:`send` lends one per message."""

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self.rate = RateLimiter(config.rate)
        self._slots = asyncio.Semaphore(config.connections)
        self._idle: list[_Connection] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False
        self._down_until = 0.0
        self.connects = 0
        """How many connections were opened (for tests and the benchmark)."""

    async def send(self, sender: str, recipient: str, message: bytes) -> None:
        """Send one message to one recipient; retry blips; raise :class:`SendError`."""
        try:
            await self.send_once(sender, recipient, message)
            return
        except SendError as exc:
            if exc.permanent or not self.config.quick_retries:
                raise
        await asyncio.sleep(random.uniform(self.config.quick_wait / 2, self.config.quick_wait))
        retrying = AsyncRetrying(  # the first attempt failed: tenacity takes over
            stop=stop_after_attempt(self.config.quick_retries),
            wait=wait_exponential(multiplier=self.config.quick_wait, max=5.0)
            + wait_random(0, self.config.quick_wait),
            retry=retry_if_exception(lambda e: isinstance(e, SendError) and not e.permanent),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self.send_once(sender, recipient, message)

    async def send_once(self, sender: str, recipient: str, message: bytes) -> None:
        async with self._slots:
            conn = self._idle.pop() if self._idle else None
            try:
                if conn is None or not conn.client.is_connected:
                    self._check_breaker()
                    try:
                        conn = await self._connect()
                    except (aiosmtplib.SMTPException, OSError, TimeoutError):
                        # fail the rest of the batch fast instead of one timeout per message
                        self._down_until = time.monotonic() + self.breaker
                        raise
                await self.rate.acquire()
                await transaction(conn.client, sender, recipient, message)
            except aiosmtplib.SMTPResponseException as exc:
                # The server answered: the connection stays usable (transaction sent RSET).
                self._put_back(conn)
                raise classify(exc) from exc
            except (aiosmtplib.SMTPException, OSError, TimeoutError, ValueError) as exc:
                if conn is not None:
                    await _close(conn.client)
                if isinstance(exc, ValueError) and not isinstance(exc, OSError):
                    # an address no SMTP command can carry (ssl errors are ValueErrors too)
                    raise SendError(f"cannot send to {recipient!r}: {exc}", permanent=True) from exc
                raise classify(exc) from exc
            conn.sent += 1
            self._put_back(conn)

    @property
    def breaker(self) -> float:
        """Seconds to stop connecting after a connection failed: longer than the quick retries."""
        return float(self.config.quick_wait * 2 ** (self.config.quick_retries + 1))

    def _check_breaker(self) -> None:
        if time.monotonic() < self._down_until:
            raise SendError("SMTP unavailable: the last connection attempt failed moments ago")

    def _put_back(self, conn: _Connection | None) -> None:
        if conn is None:
            return
        if self._closed or conn.sent >= self.config.messages_per_connection:
            task = asyncio.get_running_loop().create_task(_close(conn.client))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        elif conn.client.is_connected:
            self._idle.append(conn)

    async def _connect(self) -> _Connection:
        cfg = self.config
        client = aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            use_tls=cfg.security == "tls",
            start_tls=cfg.security == "starttls",
            validate_certs=cfg.verify_certificate,
            cert_bundle=str(cfg.ca_file) if cfg.ca_file else None,
            timeout=cfg.timeout,
        )
        await client.connect()
        try:
            if cfg.user is not None and cfg.password is not None:
                await client.login(cfg.user, cfg.password)
        except BaseException:
            await _close(client)
            raise
        self.connects += 1
        return _Connection(client)

    async def close(self) -> None:
        """Say QUIT on every idle connection."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_close(c.client) for c in idle), *self._closing)


async def _close(client: aiosmtplib.SMTP) -> None:
    if client.is_connected:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            await asyncio.wait_for(client.quit(), timeout=5)
    if client.is_connected:
        client.close()
