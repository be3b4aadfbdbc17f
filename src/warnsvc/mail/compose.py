"""Mail and page rendering: Jinja2 templates -> multipart text + HTML messages.

Templates live in ``src/warnsvc/templates`` (``email/`` for mail, ``pages/`` for the
subscription pages). An operator may override any of them by putting a file of the same
relative name in ``email.templates_dir``; the rest keep their built-in version.

HTML templates are autoescaped; plain-text ones are not (they are plain text). Everything
that came from a source is untrusted: text is stripped of control characters and links are kept
only when they are absolute http(s) URLs (:func:`safe_url`). Subjects are folded onto one line.

:func:`build_message` makes the MIME message: ``multipart/alternative`` with quoted-printable
UTF-8 parts, RFC 2047-encoded headers, ``Date``, a stable ``Message-ID`` (the same for a
retried delivery, so mail clients can drop duplicates), ``Auto-Submitted`` and the RFC 8058
one-click headers ``List-Unsubscribe: <https://...>`` and
``List-Unsubscribe-Post: List-Unsubscribe=One-Click``.
"""

from __future__ import annotations

import binascii
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.header import Header
from email.utils import format_datetime, formataddr
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    PackageLoader,
    StrictUndefined,
    TemplateError,
    select_autoescape,
)

from warnsvc.addresses import parse_mailbox
from warnsvc.model import EventType

__all__ = [
    "MailTemplates",
    "Rendered",
    "Sender",
    "build_message",
    "event_view",
    "finish_subject",
    "quoted_printable",
    "safe_url",
    "subject_tag",
]

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff]")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_MAX_SUBJECT = 250
_MAX_URL = 2048


# --------------------------------------------------------------------------- untrusted text


def clean_text(value: Any) -> str:
    """Text without control characters (tabs and newlines kept), or ``""`` if not text."""
    if not isinstance(value, str):
        return ""
    return _CONTROL.sub("", unicodedata.normalize("NFC", value))


def clean_line(value: Any) -> str:
    """Text folded onto one line with single spaces."""
    return " ".join(clean_text(value).split())


def safe_url(value: Any) -> str | None:
    """``value`` if it is an absolute http(s) URL without spaces or control characters."""
    url = clean_line(value)
    if not url or url != value or len(url) > _MAX_URL or " " in url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return url


# --------------------------------------------------------------------------- event views


def _level_name(value: Any) -> str:
    if not isinstance(value, Mapping):
        return ""
    return clean_line(value.get("name")) or clean_line(value.get("id"))


def subject_tag(payload: Mapping[str, Any]) -> str:
    """What changed, at a glance: ``Imminent Risk ↑``, ``Serious Concern ↓``, ``Delisted``."""
    kind = payload.get("type")
    level = _level_name(payload.get("level"))
    if kind == EventType.ESCALATED:
        return f"{level} ↑" if level else "Escalated"
    if kind == EventType.DEESCALATED:
        return f"{level} ↓" if level else "De-escalated"
    if kind == EventType.LISTED:
        return f"{level}, newly listed" if level else "Newly listed"
    if kind == EventType.DELISTED:
        studied = payload.get("status") == "previously-studied"
        return "No longer assessed" if studied else "Delisted"
    if kind == EventType.UPDATED:
        return f"{level}, updated analysis" if level else "Updated analysis"
    return clean_line(kind) or "Alert"


def _change(payload: Mapping[str, Any]) -> str:
    level = _level_name(payload.get("level"))
    previous = _level_name(payload.get("previous_level"))
    if previous and level and previous != level:
        return f"{previous} → {level}"
    if level:
        return level
    return f"{previous} → not listed" if previous else "not listed"


def _date(value: Any) -> str:
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return ""
    return f"{moment.day} {moment:%B %Y}"


def event_view(payload: Mapping[str, Any]) -> dict[str, Any]:
    """What the templates see of an event: cleaned text, safe links, display strings."""
    situation = payload.get("situation")
    situation = situation if isinstance(situation, Mapping) else {}
    source = payload.get("source")
    source = source if isinstance(source, Mapping) else {}
    factors = payload.get("risk_factors")
    factors = factors if isinstance(factors, Sequence) and not isinstance(factors, str) else []
    summary = clean_text(payload.get("summary"))
    return {
        "id": clean_line(payload.get("id")),
        "type": clean_line(payload.get("type")),
        "tag": subject_tag(payload),
        "situation_name": clean_line(situation.get("name"))
        or clean_line(situation.get("id"))
        or "Unknown situation",
        "situation_id": clean_line(situation.get("id")),
        "url": safe_url(situation.get("url")),
        "source_name": clean_line(source.get("name")) or clean_line(source.get("id")),
        "level": _level_name(payload.get("level")),
        "previous_level": _level_name(payload.get("previous_level")),
        "change": _change(payload),
        "date": _date(payload.get("occurred_at")),
        "detected": _date(payload.get("detected_at")),
        "summary": [p for p in (clean_line(x) for x in _PARAGRAPH_BREAK.split(summary)) if p],
        "risk_factors": [f for f in (clean_line(x) for x in factors) if f],
    }


# --------------------------------------------------------------------------- templates


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str
    html: str


class MailTemplates:
    """The built-in templates, overridden file by file from ``override_dir``."""

    def __init__(self, override_dir: Path | None = None) -> None:
        loaders: list[BaseLoader] = []
        if override_dir is not None:
            loaders.append(FileSystemLoader(str(override_dir)))
        loaders.append(PackageLoader("warnsvc", "templates"))
        self.env = Environment(
            loader=ChoiceLoader(loaders),
            autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            auto_reload=False,
        )

    def render(self, name: str, context: Mapping[str, Any]) -> str:
        return self.env.get_template(name).render(context)

    def mail(self, kind: str, context: Mapping[str, Any]) -> Rendered:
        """The subject, text and HTML of mail ``kind`` (``event``, ``digest``, ``confirm``)."""
        return Rendered(
            subject=finish_subject(self.render(f"email/{kind}_subject.txt", context)),
            text=self.render(f"email/{kind}.txt", context),
            html=self.render(f"email/{kind}.html", context),
        )

    def check(self, samples: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Render every mail kind with sample data; the problems found (empty when fine)."""
        problems = []
        for kind, context in samples.items():
            try:
                self.mail(kind, context)
            except TemplateError as exc:
                problems.append(f"template for {kind!r} mail: {type(exc).__name__}: {exc}")
        return problems


def finish_subject(rendered: str) -> str:
    """A rendered subject template as the subject: one clean line, not too long."""
    return clean_line(rendered)[:_MAX_SUBJECT] or "(no subject)"


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True, kw_only=True)
class Sender:
    """Who the mail is from: ``From`` and ``Reply-To`` header values, the envelope sender."""

    from_header: str
    envelope: str
    reply_to: str | None = None
    list_id: str | None = None

    @property
    def domain(self) -> str:
        return self.envelope.rpartition("@")[2]


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """One message to send: envelope addresses and the bytes."""

    sender: str
    recipient: str
    data: bytes = field(repr=False)


def build_message(
    *,
    sender: Sender,
    to_address: str,
    to_name: str | None,
    rendered: Rendered,
    message_id: str,
    unsubscribe_url: str | None,
    date: datetime,
    headers: Mapping[str, str] | None = None,
    encoded: tuple[str, str] | None = None,
) -> Envelope:
    """A ``multipart/alternative`` message (text, then HTML) ready for SMTP: 7-bit, CRLF.

    Written directly rather than through :class:`email.message.EmailMessage`, whose header
    machinery costs milliseconds per message (most of a fan-out's time); the output is the same
    standard MIME, and the tests parse it back with :mod:`email.parser`. ``encoded``: the text
    and HTML already made :func:`quoted_printable` (then ``rendered.text`` and ``.html`` are
    not read).
    """
    fields = [
        ("From", _mailbox_header(sender.from_header)),
        ("To", _address_header(to_name, to_address)),
    ]
    if sender.reply_to:
        fields.append(("Reply-To", _mailbox_header(sender.reply_to)))
    fields += [
        ("Subject", _unstructured("Subject", rendered.subject)),
        ("Date", _date_header(date)),
        ("Message-ID", f"<{message_id}@{sender.domain}>"),
        ("Auto-Submitted", "auto-generated"),
    ]
    if sender.list_id:
        fields.append(("List-Id", sender.list_id))
    if unsubscribe_url:
        fields.append(("List-Unsubscribe", f"<{unsubscribe_url}>"))
        fields.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    fields += [(name, _unstructured(name, value)) for name, value in (headers or {}).items()]
    boundary = _BOUNDARY
    fields += [
        ("MIME-Version", "1.0"),
        ("Content-Type", f'multipart/alternative; boundary="{boundary}"'),
    ]
    head = "".join(f"{name}: {value}\r\n" for name, value in fields)
    text, html = encoded or (quoted_printable(rendered.text), quoted_printable(rendered.html))
    parts = [_PLAIN + text, _HTML + html]
    body = "".join(f"--{boundary}\r\n{part}\r\n" for part in parts) + f"--{boundary}--\r\n"
    data = (head + "\r\n" + body).encode("ascii")
    return Envelope(sender=sender.envelope, recipient=to_address, data=data)


@lru_cache(maxsize=1024)  # one subject serves every recipient of an event
def _unstructured(name: str, value: str) -> str:
    """A header value on one line of printable ASCII, or RFC 2047 encoded words, folded."""
    value = clean_line(value)
    if value.isascii() and len(name) + len(value) < 76:
        return value
    charset = "us-ascii" if value.isascii() else "utf-8"
    return Header(value, charset, maxlinelen=78, header_name=name).encode(linesep="\r\n")


@lru_cache(maxsize=64)
def _mailbox_header(value: str) -> str:
    return _address_header(*parse_mailbox(value))


def _address_header(name: str | None, address: str) -> str:
    """``Name <a@example.org>``: the name quoted, or encoded when it is not ASCII."""
    if not name:
        return address
    if _PLAIN_PHRASE.fullmatch(name) and address.isascii():  # as formataddr writes it, sooner
        return f"{name} <{address}>"
    return formataddr((name, address), charset="utf-8")


@lru_cache(maxsize=16)  # one date serves a whole batch
def _date_header(date: datetime) -> str:
    return format_datetime(date, usegmt=True)


def quoted_printable(text: str) -> str:
    """UTF-8 ``text`` quoted-printable, with CRLF line ends.

    Line by line: encoding the lines of a text one at a time gives the same as encoding it
    whole (a line's soft breaks and escapes depend on that line only).
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    return binascii.b2a_qp(lines, istext=True).replace(b"\n", b"\r\n").decode("ascii")


_BOUNDARY = "=_warnsvc_alternative"
"""The MIME boundary. The same in every message, and safe: both parts are quoted-printable, in
which ``=`` is always followed by two hex digits or a line break, so ``=_`` (and with it the
boundary) can never occur in a part (RFC 2045, section 6.7, note 8)."""
_PLAIN_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
"""A display name formataddr leaves as it is: atoms (RFC 5322 atext) single-spaced."""
_PART = (
    'Content-Type: text/{}; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
)
_PLAIN, _HTML = _PART.format("plain"), _PART.format("html")
