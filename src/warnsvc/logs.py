"""Logging set-up: readable text by default, JSON lines for machines.

Records about work carry an ``action`` and the ids they concern (``source``, ``situation``,
``event``, ``delivery``) through ``extra=``; both formats print them.

A request that aiohttp cannot parse (a header over its size limit, a malformed line) is logged
by aiohttp with a traceback and the offending bytes, which may be a credential (an oversized
``Authorization`` header starts with the key). :class:`MalformedRequests` turns those records
into one short warning that names the problem, never the bytes.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{_timestamp(record)} {record.levelname:<7} {record.getMessage()}"
        if fields:
            line += f"  [{fields}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False, default=str)


class MalformedRequests(logging.Filter):
    """One short line, without the request's bytes, for requests the HTTP parser refused."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is None or type(error).__module__ != "aiohttp.http_exceptions":
            return True
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        status = getattr(error, "code", 400)
        record.msg = "refused a malformed HTTP request from %s: %s (%s)"
        record.args = (remote, _PARSER_ERRORS.get(type(error).__name__, "unparsable"), status)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text = None, None
        record.__dict__["action"] = "request_refused"
        return True


_PARSER_ERRORS = {
    "LineTooLong": "a header or the request line is too long",
    "InvalidHeader": "an invalid header",
    "BadStatusLine": "an invalid request line",
    "BadHttpMethod": "an invalid method",
    "TransferEncodingError": "an invalid transfer encoding",
    "ContentLengthError": "an invalid content length",
}


_current = ("info", "text")


def current_logging() -> tuple[str, str]:
    """The level and format :func:`setup_logging` last set: a child process logs alike."""
    return _current


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    global _current
    _current = (level.lower(), fmt)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("apscheduler", "aiohttp.access", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequests) for f in server.filters):
        server.addFilter(MalformedRequests())
