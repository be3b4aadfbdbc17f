"""Parsing off the event loop, in worker processes, each parse bounded in time and memory.

Every document a source fetches is parsed by :func:`parse_bounded` (``await``-ed by the polling
sources) or :func:`parse_bounded_sync` (``warnsvc parse``). A document of at most
:data:`INLINE_MAX` characters is parsed at once, in the calling process: it takes milliseconds,
and a worker's start would cost more. A larger one goes to a small pool of worker processes:

* the event loop only waits. A parser in pure Python (feedparser, the GCR2P parser) holds the
  worker's interpreter, not the service's, so ``/healthz``, the feeds and the API keep answering
  while a large document is read;
* each parse has a time limit (``parse.timeout`` of the source): a worker that overruns it is
  killed and replaced;
* each parse has a memory limit (``parse.max_memory``): the worker's address space may grow by
  at most that much while it parses (``RLIMIT_AS``, where the platform has it), so a parse that
  needs more fails with ``MemoryError`` inside the worker, which reports it and exits;
* a worker that dies (killed from outside, crashed in a C library) fails its parse the same way.

Every such failure raises :class:`ParseLimitError`, a
:class:`~warnsvc.errors.SourceParseError` naming the limit: the source is marked unhealthy and
nobody is alerted. The next parse gets a fresh worker. Errors the parser raises on purpose
(:class:`~warnsvc.errors.SourceError` and its subclasses) come back as themselves; any other
exception in a worker comes back as a SourceParseError naming its type, with the traceback
logged.

The pool starts lazily, with at most :data:`POOL_SIZE` workers; a worker left idle for
:data:`IDLE_SECONDS` is retired, so a service between polls keeps no worker in memory.
:func:`close_pool` (also run at exit) kills them all. What crosses to a worker must pickle: a
module-level parse function, and its arguments (the text, the rules, the scale).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, TypeVar, cast

from warnsvc.errors import SourceError, SourceParseError

__all__ = [
    "DEFAULT_LIMITS",
    "ParseLimitError",
    "ParseLimits",
    "close_pool",
    "limits_from_settings",
    "parse_bounded",
    "parse_bounded_sync",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

POOL_SIZE = max(1, min(2, os.cpu_count() or 1))
"""Parses that may run at once; further ones wait their turn."""
INLINE_MAX = 32 * 1024
"""A document of at most this many characters is parsed in the calling process: even the
slowest parser reads it in a few tens of milliseconds, and its size bounds its memory."""
IDLE_SECONDS = 60.0
"""A worker idle this long is retired (and one idle twice as long exits by itself)."""

NICENESS = 5
"""Workers run at a lower CPU priority than the service, so that on a busy machine the event
loop's short bursts of work come before a long parse."""

_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class ParseLimits:
    """The bounds of one parse."""

    timeout: float = 30.0
    """Seconds one parse may take, from handing the document over to the last observation."""
    max_memory: int = 512 * _MIB
    """Bytes a worker's address space may grow by while it parses."""

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.max_memory <= 0:
            raise ValueError("ParseLimits.timeout and max_memory must be positive")


DEFAULT_LIMITS = ParseLimits()


def limits_from_settings(settings: Any) -> ParseLimits:
    """The limits of a source's YAML settings (its ``parse`` section), else the defaults."""
    section = getattr(settings, "parse", None)
    if section is None:
        return DEFAULT_LIMITS
    return ParseLimits(timeout=float(section.timeout), max_memory=int(section.max_memory))


class ParseLimitError(SourceParseError):
    """The document could not be parsed within the limits."""


def parse_bounded_sync(
    function: Callable[..., T],
    body: str,
    /,
    *,
    limits: ParseLimits = DEFAULT_LIMITS,
    **kwargs: Any,
) -> T:
    """``function(body, **kwargs)`` within ``limits``, in a worker process unless ``body`` is
    at most :data:`INLINE_MAX` characters; blocks."""
    if len(body) <= INLINE_MAX:
        return function(body, **kwargs)
    return cast(T, _pool().run(_Request(function, (body,), kwargs, limits.max_memory), limits))


async def parse_bounded(
    function: Callable[..., T],
    body: str,
    /,
    *,
    limits: ParseLimits = DEFAULT_LIMITS,
    **kwargs: Any,
) -> T:
    """``function(body, **kwargs)`` within ``limits``, in a worker process unless ``body`` is
    at most :data:`INLINE_MAX` characters (then at once: it takes milliseconds).

    The event loop only waits on the worker; cancelling the wait kills the worker.
    """
    if len(body) <= INLINE_MAX:
        return function(body, **kwargs)
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    ticket = _Ticket()
    request = _Request(function, (body,), kwargs, limits.max_memory)

    def work() -> None:
        try:
            outcome: tuple[Any, BaseException | None] = (
                _pool().run(request, limits, ticket),
                None,
            )
        except BaseException as exc:  # handed over to the awaiting task
            outcome = (None, exc)
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(_settle, future, outcome)

    threading.Thread(target=work, name="warnsvc-parse", daemon=True).start()
    try:
        return await future
    except asyncio.CancelledError:
        ticket.cancel()
        raise


def close_pool() -> None:
    """Kill every worker; the next parse starts a new pool."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None:
        pool.close()


def _settle(future: asyncio.Future[Any], outcome: tuple[Any, BaseException | None]) -> None:
    if future.done():
        return
    value, error = outcome
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


# -- the parent's side -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Request:
    function: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    max_memory: int


class _WorkerGoneError(Exception):
    """The worker's pipe broke before it got the request."""


class _Ticket:
    """Lets an awaiting task kill the worker running its parse when it is cancelled."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._worker: _Worker | None = None
        self.cancelled = False

    def attach(self, worker: _Worker) -> None:
        with self._lock:
            self._worker = worker
            cancelled = self.cancelled
        if cancelled:
            worker.signal_kill()

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            worker = self._worker
        if worker is not None:
            worker.signal_kill()


class _Worker:
    """One worker process and the two pipes to it."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from warnsvc.sources.worker import serve; serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.requests = Connection(os.dup(self.process.stdin.fileno()), readable=False)
        self.replies = Connection(os.dup(self.process.stdout.fileno()), writable=False)
        self.process.stdin.close()
        self.process.stdout.close()
        self.idle_since = time.monotonic()
        self.used = False

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def call(self, request: _Request, timeout: float) -> tuple[str, Any]:
        """The worker's reply to ``request``; ParseLimitError when it overruns or dies."""
        try:
            self.requests.send(request)
        except (OSError, ValueError) as exc:
            self.kill()
            raise _WorkerGoneError(str(exc)) from None
        if not self.replies.poll(timeout):
            self.kill()
            raise ParseLimitError(
                f"parsing took longer than {timeout:g} s (parse.timeout): the parse was stopped"
            )
        try:
            return cast(tuple[str, Any], self.replies.recv())
        except (EOFError, OSError):
            self.kill()
            raise ParseLimitError(
                "the parse worker died while parsing (killed, or out of memory: "
                f"parse.max_memory is {request.max_memory // _MIB} MiB)"
            ) from None

    def signal_kill(self) -> None:
        """Kill the process, from any thread; the thread waiting on it sees the end of its
        pipe and cleans up (its pipes are never closed under it)."""
        with contextlib.suppress(OSError):
            self.process.kill()

    def kill(self) -> None:
        """Kill the process and close its pipes; only from the thread that uses it."""
        self.signal_kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        for connection in (self.requests, self.replies):
            with contextlib.suppress(OSError):
                connection.close()


class _Pool:
    def __init__(self, size: int) -> None:
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._closed = False

    def run(self, request: _Request, limits: ParseLimits, ticket: _Ticket | None = None) -> Any:
        with self._slots:
            for attempt in (1, 2):
                worker = self._checkout()
                if ticket is not None:
                    ticket.attach(worker)
                try:
                    status, payload = worker.call(request, limits.timeout)
                except _WorkerGoneError:
                    if attempt == 1 and worker.used:  # a stale idle worker: take a fresh one
                        continue
                    raise ParseLimitError("the parse worker could not be reached") from None
                finally:
                    self._checkin(worker)
                return _unpack(status, payload, limits)
        raise AssertionError("unreachable")  # pragma: no cover

    def _checkout(self) -> _Worker:
        now = time.monotonic()
        with self._lock:
            if self._closed:
                raise ParseLimitError("the parse workers are shut down")
            stale: list[_Worker] = []
            chosen: _Worker | None = None
            while self._idle and chosen is None:
                worker = self._idle.pop()
                if worker.alive and now - worker.idle_since < IDLE_SECONDS:
                    chosen = worker
                else:
                    stale.append(worker)
            stale += [w for w in self._idle if now - w.idle_since >= IDLE_SECONDS]
            self._idle = [w for w in self._idle if w not in stale]
        for worker in stale:
            worker.kill()
        if chosen is None:
            chosen = _Worker()
        with self._lock:
            self._busy.add(chosen)
        return chosen

    def _checkin(self, worker: _Worker) -> None:
        worker.used = True
        worker.idle_since = time.monotonic()
        with self._lock:
            self._busy.discard(worker)
            keep = worker.alive and not self._closed
            if keep:
                self._idle.append(worker)
        if not keep:
            worker.kill()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, busy = self._idle, self._busy
            self._idle, self._busy = [], set()
        for worker in idle:
            worker.kill()
        for worker in busy:  # their threads see the pipe end, then close it
            worker.signal_kill()


def _unpack(status: str, payload: Any, limits: ParseLimits) -> Any:
    if status == "ok":
        return payload
    if status == "error":
        raise _rebuild(payload)
    if status == "memory":
        raise ParseLimitError(
            f"parsing needed more than {limits.max_memory // _MIB} MiB (parse.max_memory): "
            "the parse was stopped"
        )
    name, message, details = payload
    log.error(
        "parser failed: %s: %s\n%s",
        name,
        message,
        details,
        extra={"action": "parser_failed", "error": name},
    )
    raise SourceParseError(f"the parser failed: {name}: {message}")


def _rebuild(payload: tuple[type[SourceError], tuple[Any, ...], dict[str, Any]]) -> SourceError:
    """A SourceError from its class, args and attributes, without calling ``__init__`` (whose
    signature may differ from its args: :class:`~warnsvc.errors.UnknownLevelError`)."""
    cls, args, attributes = payload
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(attributes)
    return error


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> _Pool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = _Pool(POOL_SIZE)
        return _POOL


atexit.register(close_pool)


# -- the worker's side -------------------------------------------------------------------------


def serve() -> None:
    """The worker's main loop: read a request, parse, reply; exit when the parent goes away,
    after a parse that ran out of memory, or when idle for twice :data:`IDLE_SECONDS`."""
    requests = Connection(os.dup(0), writable=False)
    replies = Connection(os.dup(1), readable=False)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # a stray print must never corrupt the replies
    with contextlib.suppress(AttributeError, OSError):  # no os.nice on Windows
        os.nice(NICENESS)
    while requests.poll(2 * IDLE_SECONDS):
        try:
            request = requests.recv()
        except (EOFError, OSError):
            return
        except Exception as exc:  # cannot unpickle: a function this worker cannot import
            reply: tuple[str, Any] = ("crash", (type(exc).__name__, str(exc), ""))
        else:
            reply = _answer(request)
        try:
            replies.send(reply)
        except (OSError, MemoryError):
            return
        if reply[0] == "memory":
            return  # a fresh worker for the next parse, not a fragmented heap


def _answer(request: _Request) -> tuple[str, Any]:
    try:
        with _address_space_limit(request.max_memory):
            value = request.function(*request.args, **request.kwargs)
    except MemoryError:
        return ("memory", None)
    except SourceError as exc:
        return ("error", (type(exc), exc.args, dict(vars(exc))))
    except RecursionError:
        message = "the document is nested too deeply to read"
        return ("error", (SourceParseError, (message,), {}))
    except Exception as exc:
        return ("crash", (type(exc).__name__, str(exc), traceback.format_exc()))
    return ("ok", value)


@contextlib.contextmanager
def _address_space_limit(extra: int) -> Any:
    """Let the address space grow by at most ``extra`` bytes inside the block."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        with open("/proc/self/statm", encoding="ascii") as statm:
            size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError):  # no RLIMIT_AS or no /proc: time limit only
        yield
        return
    limit = size + extra
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
