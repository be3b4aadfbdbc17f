"""Email addresses and display names from untrusted input: pure checks, no I/O.

:func:`normalize_address` accepts the plain ``local@domain`` addresses people type (dot-atom
local part, a domain with at least one dot; an international domain becomes punycode) and
rejects everything else, including anything that could smuggle a header or a second
recipient: whitespace, control characters, ``<``, ``>``, ``,``, quotes. :func:`check_name`
rejects display names with line breaks or other control characters (header injection).
"""

from __future__ import annotations

import re
import unicodedata
from email.utils import formataddr, getaddresses

__all__ = ["check_name", "format_mailbox", "normalize_address", "parse_mailbox"]

MAX_ADDRESS = 254
MAX_NAME = 200
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def normalize_address(text: str) -> str:
    """``text`` as a canonical address (domain lower-cased); :class:`ValueError` if invalid."""
    if not isinstance(text, str):
        raise ValueError("must be a string")
    address = text.strip()
    if not address:
        raise ValueError("must not be empty")
    if len(address) > MAX_ADDRESS:
        raise ValueError(f"must be at most {MAX_ADDRESS} characters")
    if any(ch.isspace() or _control(ch) for ch in address):
        raise ValueError("must not contain spaces, line breaks or control characters")
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"must be an address like name@example.org, not {text!r}")
    if len(local) > 64 or not _LOCAL.fullmatch(local):
        raise ValueError(f"has an invalid part before the '@': {local!r}")
    return f"{local.lower()}@{_domain(domain)}"


def _domain(text: str) -> str:
    try:
        ascii_domain = text.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise ValueError(f"has an invalid domain: {text!r}") from None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"has an invalid domain: {text!r}")
    if labels[-1].isdigit():
        raise ValueError(f"has an invalid domain: {text!r}")
    return ascii_domain


def _control(ch: str) -> bool:
    """Control, format, surrogate or private characters, and line or paragraph separators."""
    category = unicodedata.category(ch)
    return category.startswith("C") or category in ("Zl", "Zp")


def check_name(text: str | None) -> str | None:
    """A display name without line breaks or control characters, trimmed; None if empty."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError("must be a string")
    if any(_control(ch) for ch in text):
        raise ValueError("must not contain line breaks or control characters")
    name = " ".join(text.split())
    if len(name) > MAX_NAME:
        raise ValueError(f"must be at most {MAX_NAME} characters")
    return name or None


def parse_mailbox(text: str) -> tuple[str | None, str]:
    """``"Name <a@b.org>"`` or ``"a@b.org"`` -> (name, address), both checked."""
    if any(_control(ch) for ch in text):
        raise ValueError("must not contain line breaks or control characters")
    found = getaddresses([text])
    name, address = found[0] if len(found) == 1 else ("", "")
    if not address:
        raise ValueError(f"must be an address like 'Alerts <alerts@example.org>', not {text!r}")
    return check_name(name), normalize_address(address)


def format_mailbox(name: str | None, address: str) -> str:
    """A header value for a mailbox; the name is quoted or encoded as needed."""
    return formataddr((name, address)) if name else address
