"""Configuration: one YAML file -> typed, frozen settings.

Loading happens in three steps, and every step reports *all* of its problems, each located by
file, line and key path (``config/warnsvc.yaml:14: sources[0].interval: must be a duration ...``):

1. **Read** the YAML with PyYAML's safe loader. The node tree is composed first, so every key
   path (``("sources", 0, "interval")``) maps to its line; then ``${VAR}`` and
   ``${VAR:-default}`` references in string values are replaced from the environment. This
   happens after parsing, so a variable can never inject YAML. ``$${`` is a literal ``${``.
2. **Validate** with pydantic models (``extra="forbid"``, frozen). Durations (``"6h"``) become
   float seconds and sizes (``"5MB"``) int bytes; pydantic's errors are rewritten into short,
   specific messages.
3. **Cross-check** what one model cannot see alone: unique source, scale and level ids, and
   that every source names a known scale.

Sources form a discriminated union on ``kind``: adding a kind means adding one settings class
and naming it in :data:`SourceSettings`.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

from warnsvc.cap.mapping import Category as CapCategory
from warnsvc.cap.mapping import Certainty as CapCertainty
from warnsvc.cap.mapping import Severity as CapSeverity
from warnsvc.cap.mapping import Urgency as CapUrgency
from warnsvc.errors import ConfigError, ConfigProblem
from warnsvc.model import BUILTIN_SCALES, Scale, normalize_name

__all__ = [
    "SOURCE_KINDS",
    "BaseSourceSettings",
    "CapSourceSettings",
    "DetectionSettings",
    "EmailSettings",
    "EmailSignupSettings",
    "EmailSmtpSettings",
    "EmailSubscriberSettings",
    "FeedsSettings",
    "FetchSettings",
    "Gcr2pIndexSourceSettings",
    "Gcr2pPageSourceSettings",
    "HttpSettings",
    "JsonSourceSettings",
    "LevelSettings",
    "OperatorWebhookSettings",
    "OperatorsSettings",
    "PageSourceSettings",
    "ScaleSettings",
    "ServiceSettings",
    "Settings",
    "SourceSettings",
    "StorageSettings",
    "format_duration",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_size",
]

Loc = tuple[str | int, ...]
"""A key path: ``("sources", 0, "interval")`` is printed ``sources[0].interval``."""

T = TypeVar("T")

# --------------------------------------------------------------------------- durations, sizes

_DURATION_HINT = "a duration like 90s, 5m, 6h or 1d"
_DURATION_UNITS = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_NUMBER = r"\d+(?:\.\d+)?"
_DURATION_PART = re.compile(rf"({_NUMBER})\s*([wdhms])")
_DURATION_TEXT = re.compile(rf"(?:{_NUMBER}\s*[wdhms]\s*)+")
_PLAIN_NUMBER = re.compile(_NUMBER)

_SIZE_HINT = "a size like 1048576, 512KiB or 5MB"
_SIZE_TEXT = re.compile(rf"({_NUMBER})\s*([a-z]*)", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def parse_duration(value: str | int | float) -> float:
    """Seconds in a duration: ``90``, ``"90s"``, ``"5m"``, ``"6h"``, ``"1d"``, ``"1h30m"``.

    Units are ``s``, ``m``, ``h``, ``d`` and ``w``; parts may carry decimals (``"1.5h"``) and be
    separated by spaces. A bare number is seconds. Raises :class:`ValueError` for anything else,
    including negative or infinite values.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected {_DURATION_HINT}, found {_describe(value)}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _duration_seconds(value.strip())
    else:
        raise TypeError(f"expected {_DURATION_HINT}, found {_describe(value)}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"must be {_DURATION_HINT}, not {_describe(value)}")
    return seconds


def _duration_seconds(text: str) -> float:
    if _PLAIN_NUMBER.fullmatch(text):
        return float(text)
    if _DURATION_TEXT.fullmatch(text):
        return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
    raise ValueError(f"must be {_DURATION_HINT}, not {text!r}")


def format_duration(seconds: float) -> str:
    """The shortest duration text for ``seconds``: ``5400`` -> ``"1h30m"``, ``0`` -> ``"0s"``.

    Whole seconds round-trip through :func:`parse_duration`; fractions are shown to the
    millisecond (``"1.5s"``).
    """
    if seconds != int(seconds):
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    rest = int(seconds)
    parts = []
    for unit in ("d", "h", "m", "s"):
        amount, rest = divmod(rest, _DURATION_UNITS[unit])
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts) or "0s"


def parse_size(value: str | int) -> int:
    """Bytes in a size: ``1048576``, ``"5MB"``, ``"512KiB"``, ``"1 MB"``, ``"1.5GB"``.

    ``kB``/``MB``/``GB`` (or ``k``/``m``/``g``) are powers of 1000, ``KiB``/``MiB``/``GiB``
    powers of 1024; units ignore case. Raises :class:`ValueError` unless the result is a whole,
    non-negative number of bytes.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected {_SIZE_HINT}, found {_describe(value)}")
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, str):
        amount = _size_bytes(value.strip())
    else:
        raise TypeError(f"expected {_SIZE_HINT}, found {_describe(value)}")
    if amount < 0 or amount != amount.to_integral_value():
        raise ValueError(f"must be {_SIZE_HINT} (a whole number of bytes), not {value!r}")
    return int(amount)


def _size_bytes(text: str) -> Decimal:
    match = _SIZE_TEXT.fullmatch(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"must be {_SIZE_HINT}, not {text!r}")
    try:
        return Decimal(match.group(1)) * _SIZE_UNITS[unit]
    except InvalidOperation:  # pragma: no cover - the regex admits only decimal numbers
        raise ValueError(f"must be {_SIZE_HINT}, not {text!r}") from None


# --------------------------------------------------------------------------- field types


def _describe(value: object) -> str:
    """How a value read from YAML is named in messages: ``'often'``, ``true``, ``a list``."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def _duration(minimum: float = 0.0) -> BeforeValidator:
    def validate(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"expected {_DURATION_HINT}, found {_describe(value)}")
        seconds = parse_duration(value)
        if seconds < minimum:
            low, got = format_duration(minimum), format_duration(seconds)
            raise ValueError(f"must be at least {low}, not {got}")
        return seconds

    return BeforeValidator(validate)


def _size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"expected {_SIZE_HINT}, found {_describe(value)}")
    return parse_size(value)


_INTEGER_TEXT = re.compile(r"\s*[+-]?\d+\s*")


def _integer(value: object) -> object:
    """Let ``"8080"`` (from ``${PORT}``) through as an int, but not ``true``."""
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, found {_describe(value)}")
    if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value):
        return int(value)
    return value


_SLUG = re.compile(r"[a-z0-9][a-z0-9-]*")


def _slug(value: str) -> str:
    if not _SLUG.fullmatch(value):
        raise ValueError(
            "must be lower-case letters, digits and hyphens (like 'gcr2p' or 'my-source'), "
            f"not {value!r}"
        )
    return value


def _http_url(value: str) -> str:
    try:
        parts = urlsplit(value)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"must be an http(s) URL like https://example.org/, not {value!r}")
    return value


def _base_url(value: str) -> str:
    parts = urlsplit(_http_url(value))
    if parts.query or parts.fragment:
        raise ValueError(f"must not have a query or fragment, not {value!r}")
    return value.rstrip("/")


_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
_DATABASE_URL = re.compile(
    r"""
    (?P<driver>[\w+]+)://
    (?:[^:/]*(?::[^@]*)?@)?                   # user and password
    (?:(?:\[[^/?]+\]|[^/:?]+)?(?::(?P<port>[^/?]*))?)?  # host and port
    """,
    re.VERBOSE,
)
"""What SQLAlchemy's ``make_url`` accepts up to the database name (checked here without
importing SQLAlchemy, so that reading the config stays cheap)."""


def _database_driver(value: str) -> str:
    match = _DATABASE_URL.match(value)
    try:
        if match is None:
            raise ValueError(value)
        port = match.group("port")
        if port is not None:
            int(port)  # as SQLAlchemy: an empty port is no port number either
    except ValueError:
        raise ValueError(
            f"must be an SQLAlchemy URL like 'sqlite+aiosqlite:///data/warnsvc.db', not {value!r}"
        ) from None
    return match.group("driver")


def _database_url(value: str) -> str:
    driver = _database_driver(value)
    if driver in _ASYNC_DRIVERS:
        example = _ASYNC_DRIVERS[driver]
        raise ValueError(f"needs an async driver: write '{example}://...', not '{driver}'")
    if driver not in _ASYNC_DRIVERS.values():
        supported = " or ".join(f"'{d}://...'" for d in _ASYNC_DRIVERS.values())
        raise ValueError(f"warnsvc runs on {supported}, not '{driver}'")
    return value


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


Int = Annotated[int, BeforeValidator(_integer)]
Duration = Annotated[float, _duration()]
Size = Annotated[int, BeforeValidator(_size)]
Slug = Annotated[str, AfterValidator(_slug)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
LogLevel = Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)]
LogFormat = Annotated[Literal["text", "json"], BeforeValidator(_lower)]

_SKIP_CROSS_CHECKS = "warnsvc.config.skip_cross_checks"


def _default_name(data: Any, make: Callable[[str], str]) -> Any:
    """Fill a missing ``name`` from ``id`` before validation."""
    if isinstance(data, dict) and "name" not in data and isinstance(data.get("id"), str):
        return {**data, "name": make(data["id"])}
    return data


# --------------------------------------------------------------------------- models


class _Section(BaseModel):
    """Every settings model rejects unknown keys and is immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class HttpSettings(_Section):
    """Where the web server listens."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: Int = Field(default=8080, ge=0, le=65535)


class ServiceSettings(_Section):
    """The service as a whole: its name, public URL, web server and logging."""

    name: str = Field(default="warnsvc", min_length=1)
    base_url: Annotated[str, AfterValidator(_base_url)] = "http://127.0.0.1:8080"
    http: HttpSettings = Field(default_factory=HttpSettings)
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"
    user_agent: str | None = None
    shutdown_timeout: Duration = 10.0
    pid_file: Path | None = Path("data/warnsvc.pid")
    watch_config: bool = True


class StorageSettings(_Section):
    """The database."""

    url: Annotated[str, AfterValidator(_database_url)] = "sqlite+aiosqlite:///data/warnsvc.db"
    retention: Annotated[float, _duration(minimum=3600)] = 30 * 86_400.0
    failover: Annotated[float, _duration(minimum=3)] = 30.0
    """PostgreSQL: the longest time replicas go without a leader after it dies or is cut off."""


class DetectionSettings(_Section):
    """How a change is confirmed before it becomes an event."""

    confirmations: Int = Field(default=2, ge=1, le=10)
    confirm_delay: Duration = 60.0
    announce_initial: bool = False
    failure_threshold: Int = Field(default=3, ge=1)


class LevelSettings(_Section):
    """One level of a configured scale."""

    id: Slug
    name: str = Field(default="", min_length=1)  # the default comes from the id
    aliases: list[str] = []

    @model_validator(mode="before")
    @classmethod
    def _fill_name(cls, data: Any) -> Any:
        return _default_name(data, lambda level_id: level_id.replace("-", " ").title())


class ScaleSettings(_Section):
    """An extra scale, its levels ordered from lowest to highest."""

    id: Slug
    name: str = Field(default="", min_length=1)  # the default comes from the id
    levels: list[LevelSettings] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _fill_name(cls, data: Any) -> Any:
        return _default_name(data, str)

    def to_scale(self) -> Scale:
        """The :class:`~warnsvc.model.Scale` these settings describe."""
        levels = [(level.id, level.name, level.aliases) for level in self.levels]
        return Scale.build(self.id, self.name, levels)


class FetchSettings(_Section):
    """How a source's pages are fetched."""

    timeout: Annotated[float, _duration(minimum=1)] = 30.0
    max_bytes: Size = Field(default=5_000_000, ge=1)
    max_redirects: Int = Field(default=5, ge=0, le=20)
    retries: Int = Field(default=3, ge=0, le=10)


class ParseSettings(_Section):
    """The bounds of one parse of a source's document (in a worker process)."""

    timeout: Annotated[float, _duration(minimum=1)] = 30.0
    max_memory: Size = Field(default=512 * 1024 * 1024, ge=16 * 1024 * 1024)


class BaseSourceSettings(_Section):
    """What every source kind shares. Subclasses add ``kind`` (a Literal) and their own keys."""

    id: Slug
    name: str = Field(default="", min_length=1)  # the default comes from the id
    url: HttpUrl
    enabled: bool = True
    critical: bool = True
    interval: Annotated[float, _duration(minimum=10)] = 21_600.0
    jitter: Duration = 300.0
    scale: Slug
    namespace: Slug
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    parse: ParseSettings = Field(default_factory=ParseSettings)
    cap_category: CapCategory | None = None
    """The CAP ``<category>`` of this source's alerts (default: ``cap.category``)."""

    @model_validator(mode="before")
    @classmethod
    def _fill_name(cls, data: Any) -> Any:
        return _default_name(data, str)

    @model_validator(mode="after")
    def _check_jitter(self) -> BaseSourceSettings:
        if self.jitter >= self.interval:
            message = (
                f"must be shorter than interval ({format_duration(self.interval)}), "
                f"not {format_duration(self.jitter)}"
            )
            if "jitter" not in self.model_fields_set:
                message += " (the default); set a smaller jitter"
            raise PydanticCustomError("field_error", message, {"field": "jitter"})
        return self


class Gcr2pIndexSourceSettings(BaseSourceSettings):
    """GCR2P's populations-at-risk index: every listed situation, optionally with its page."""

    kind: Literal["gcr2p-index"] = "gcr2p-index"
    scale: Slug = "gcr2p"
    namespace: Slug = "gcr2p"
    authoritative: bool = True
    follow_pages: bool = True
    page_delay: Duration = 2.0


class Gcr2pPageSourceSettings(BaseSourceSettings):
    """One GCR2P country or situation page."""

    kind: Literal["gcr2p-page"] = "gcr2p-page"
    scale: Slug = "gcr2p"
    namespace: Slug = "gcr2p"


# -- the declarative kinds: feed, cap, page, json (see docs/sources.md) ----------------------


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"must be a regular expression: {exc} in {value!r}") from None
    return value


def _css(value: str) -> str:
    if not _parses_as_css(value):
        raise ValueError(f"must be a CSS selector like 'div.alert h2', not {value!r}")
    return value


@functools.lru_cache(maxsize=4096)
def _parses_as_css(selector: str) -> bool:
    """Whether lexbor parses ``selector`` (many sources share their selectors: asked once;
    the document is not kept, a lexbor parser holds a megabyte)."""
    from selectolax.lexbor import LexborHTMLParser

    try:
        LexborHTMLParser("<p></p>").css(selector)
    except Exception:  # selectolax raises its own error class for a bad selector
        return False
    return True


def _json_path(value: str) -> str:
    from warnsvc.sources.jsonpath import JsonPath

    JsonPath.parse(value)
    return value


Regex = Annotated[str, AfterValidator(_regex)]
CssSelector = Annotated[str, AfterValidator(_css)]
JsonPathText = Annotated[str, AfterValidator(_json_path)]


def _one_of(model: BaseModel, keys: tuple[str, str]) -> None:
    given = [key for key in keys if getattr(model, key) is not None]
    if len(given) != 1:
        message = f"give exactly one of {keys[0]!r} and {keys[1]!r}"
        raise PydanticCustomError("field_error", message, {"field": keys[1 if given else 0]})


class _DeclarativeSourceSettings(BaseSourceSettings):
    """What the feed, cap, page and json kinds share. ``namespace`` defaults to the id."""

    namespace: Slug
    authoritative: bool = False
    levels: dict[str, str] = {}

    @model_validator(mode="before")
    @classmethod
    def _fill_namespace(cls, data: Any) -> Any:
        if isinstance(data, dict) and "namespace" not in data and isinstance(data.get("id"), str):
            return {**data, "namespace": data["id"]}
        return data


class FeedValueSettings(_Section):
    """Where one value of a feed entry comes from: a standard ``field`` or an ``element``."""

    field: Literal["id", "title", "summary", "link", "category", "published", "updated"] | None = (
        None
    )
    element: str | None = Field(default=None, min_length=1)
    attribute: str | None = Field(default=None, min_length=1)
    regex: Regex | None = None

    @model_validator(mode="after")
    def _check_one(self) -> FeedValueSettings:
        _one_of(self, ("field", "element"))
        return self


class FeedFieldsSettings(_Section):
    """Where a feed entry's id, name, level and date come from."""

    id: FeedValueSettings = FeedValueSettings(field="id")
    name: FeedValueSettings = FeedValueSettings(field="title")
    level: FeedValueSettings = FeedValueSettings(field="category")
    date: FeedValueSettings | None = None


class FeedSourceSettings(_DeclarativeSourceSettings):
    """An RSS or Atom feed: one situation per entry."""

    kind: Literal["feed"] = "feed"
    fields: FeedFieldsSettings = Field(default_factory=FeedFieldsSettings)
    namespaces: dict[str, str] = {}


class CapSourceSettings(_DeclarativeSourceSettings):
    """CAP alerts: one CAP document, or an Atom/RSS index of them."""

    kind: Literal["cap"] = "cap"
    scale: Slug = "cap-severity"
    authoritative: bool = True
    follow_links: bool = True
    max_links: Int = Field(default=50, ge=0, le=1000)
    link_delay: Duration = 1.0


class PageSelectorSettings(_Section):
    """Where one value of a page is: a CSS selector (and attribute), a regex, or both."""

    css: CssSelector | None = None
    attribute: str | None = Field(default=None, min_length=1)
    regex: Regex | None = None

    @model_validator(mode="after")
    def _check_some(self) -> PageSelectorSettings:
        if self.css is None and self.regex is None:
            message = "give 'css', 'regex' or both"
            raise PydanticCustomError("field_error", message, {"field": "css"})
        if self.attribute is not None and self.css is None:
            message = "'attribute' needs a 'css' selector"
            raise PydanticCustomError("field_error", message, {"field": "attribute"})
        return self


class PageFieldsSettings(_Section):
    """The selectors of a page's title, level, date, summary, id and link."""

    title: PageSelectorSettings
    level: PageSelectorSettings
    date: PageSelectorSettings | None = None
    summary: PageSelectorSettings | None = None
    id: PageSelectorSettings | None = None
    link: PageSelectorSettings | None = None


class PageSourceSettings(_DeclarativeSourceSettings):
    """A generic HTML page: one situation, or one per repeated ``block``."""

    kind: Literal["page"] = "page"
    block: CssSelector | None = None
    fields: PageFieldsSettings


class JsonFieldsSettings(_Section):
    """Paths, inside each item, to its id, name, level, date, summary and link."""

    id: JsonPathText = "id"
    name: JsonPathText = "name"
    level: JsonPathText = "level"
    date: JsonPathText | None = "date"
    summary: JsonPathText | None = None
    link: JsonPathText | None = None


class JsonSourceSettings(_DeclarativeSourceSettings):
    """A JSON API: the path to the list of items, and paths inside each item."""

    kind: Literal["json"] = "json"
    items: JsonPathText = ""
    fields: JsonFieldsSettings = Field(default_factory=JsonFieldsSettings)


SourceSettings = Annotated[
    Gcr2pIndexSourceSettings
    | Gcr2pPageSourceSettings
    | FeedSourceSettings
    | CapSourceSettings
    | PageSourceSettings
    | JsonSourceSettings,
    Field(discriminator="kind"),
]
"""The settings of one source; ``kind`` picks the class. Add new kinds here."""

SOURCE_KINDS: Mapping[str, type[BaseSourceSettings]] = {
    get_args(cls.model_fields["kind"].annotation)[0]: cls
    for cls in get_args(get_args(SourceSettings)[0])
}
"""Every source kind and its settings class, in declaration order."""


class FeedsSettings(_Section):
    """The Atom, RSS and JSON feeds written to disk."""

    dir: Path = Path("feeds")
    title: str = Field(default="warnsvc alerts", min_length=1)
    max_entries: Int = Field(default=100, ge=1, le=10_000)
    websub: WebSubSettings | None = None


# --------------------------------------------------------------------------- email

EmailEventType = Literal[
    "situation.listed",
    "risk.escalated",
    "risk.deescalated",
    "situation.delisted",
    "situation.updated",
]
_SITUATION_ID = re.compile(r"[a-z0-9][a-z0-9-]*:[a-z0-9][a-z0-9-]*")


def _email_address(value: str) -> str:
    from warnsvc.addresses import normalize_address

    return normalize_address(value)


def _mailbox(value: str) -> str:
    from warnsvc.addresses import format_mailbox, parse_mailbox

    return format_mailbox(*parse_mailbox(value))


def _display_name(value: str | None) -> str | None:
    from warnsvc.addresses import check_name

    return check_name(value)


def _situation_ref(value: str) -> str:
    if not _SITUATION_ID.fullmatch(value):
        raise ValueError(f"must be a situation id like 'gcr2p:sudan', not {value!r}")
    return value


class EmailSmtpSettings(_Section):
    """The SMTP server that sends the mail, and how to talk to it."""

    host: str = Field(default="localhost", min_length=1)
    port: Int | None = Field(default=None, ge=1, le=65535)
    security: Annotated[Literal["starttls", "tls", "none"], BeforeValidator(_lower)] = "starttls"
    user: str | None = None
    password: str | None = Field(default=None, repr=False)
    verify_certificate: bool = True
    ca_file: Path | None = None
    timeout: Annotated[float, _duration(minimum=1)] = 30.0
    connections: Int = Field(default=4, ge=1, le=32)
    messages_per_connection: Int = Field(default=100, ge=1)

    @model_validator(mode="after")
    def _check_login(self) -> EmailSmtpSettings:
        if (self.user is None) != (self.password is None):
            missing = "password" if self.password is None else "user"
            message = "give both user and password (the password from the environment)"
            raise PydanticCustomError("field_error", message, {"field": missing})
        return self

    def port_or_default(self) -> int:
        """The port, or the usual one for ``security``: 587, 465 or 25."""
        if self.port is not None:
            return self.port
        return {"starttls": 587, "tls": 465, "none": 25}[self.security]


class EmailSignupSettings(_Section):
    """Self-service subscriptions through the API and the form, with double opt-in."""

    enabled: bool = True
    confirm_within: Annotated[float, _duration(minimum=60)] = 172_800.0
    resend_after: Duration = 3600.0
    requests_per_minute: Int = Field(default=10, ge=1, le=10_000)


class EmailSubscriberSettings(_Section):
    """A subscriber declared by the operator: needs no confirmation."""

    address: Annotated[str, AfterValidator(_email_address)]
    name: Annotated[str | None, AfterValidator(_display_name)] = None
    mode: Literal["immediate", "digest"] = "immediate"
    situations: list[Annotated[str, AfterValidator(_situation_ref)]] = []
    sources: list[Slug] = []
    min_level: Slug | None = None
    event_types: list[EmailEventType] = []


class EmailSettings(_Section):
    """Email alerts: SMTP, sender, rate, digest hour, templates, signup and subscribers."""

    enabled: bool = True
    smtp: EmailSmtpSettings = Field(default_factory=EmailSmtpSettings)
    from_address: Annotated[str, AfterValidator(_mailbox)]
    reply_to: Annotated[str | None, AfterValidator(lambda v: v and _mailbox(v))] = None
    rate: float = Field(default=10.0, ge=0)
    digest_hour: Int = Field(default=7, ge=0, le=23)
    templates_dir: Path | None = None
    suppress_after: Int = Field(default=3, ge=1, le=100)
    signup: EmailSignupSettings = Field(default_factory=EmailSignupSettings)
    subscribers: list[EmailSubscriberSettings] = []

    @field_validator("smtp", "signup", mode="before")
    @classmethod
    def _empty_section(cls, value: object) -> object:
        return {} if value is None else value

    @model_validator(mode="after")
    def _check_subscribers(self) -> EmailSettings:
        addresses = [s.address.lower() for s in self.subscribers]
        for index, address in enumerate(addresses):
            if address in addresses[:index]:
                first = addresses.index(address)
                message = f"duplicate address {address!r}, already used by subscribers[{first}]"
                field = f"subscribers[{index}].address"
                raise PydanticCustomError("field_error", message, {"field": field})
        return self


# --------------------------------------------------------------------------- webhooks

WebhookEventType = Literal[
    "situation.listed",
    "risk.escalated",
    "risk.deescalated",
    "situation.delisted",
    "situation.updated",
]
_SECRET = re.compile(r"whsec_[A-Za-z0-9+/]{32,}={0,2}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _webhook_secret(value: str) -> str:
    if not _SECRET.fullmatch(value):
        raise ValueError(
            "must be a Standard Webhooks secret: 'whsec_' and base64 of at least 24 random bytes"
        )
    return value


API_KEY_MIN_LENGTH = 24
_API_KEY_RULE = (
    f"must be at least {API_KEY_MIN_LENGTH} characters with no whitespace or control characters"
)


def _api_key(value: str | None) -> str | None:
    """A partner's bearer key: too long to guess, and sendable as one ``Bearer`` token.

    The message says what is wrong with the key and never shows the key.
    """
    if value is None:
        return None
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValueError(
            f"{_API_KEY_RULE}; this one has some (a stray space or line break in the "
            "environment variable?)"
        )
    if len(value) < API_KEY_MIN_LENGTH:
        raise ValueError(f"{_API_KEY_RULE}, not {len(value)} characters")
    return value


def _network(value: str) -> str:
    import ipaddress

    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"must be an address or network like 127.0.0.0/8, not {value!r}") from None
    return value


def _cap_token(value: str) -> str:
    if not value or re.search(r"[\s,<&]", value):
        raise ValueError(f"must have no spaces, commas, '<' or '&' (CAP 1.2), not {value!r}")
    return value


class WebhookFiltersSettings(_Section):
    """What a webhook endpoint receives; an empty list means everything."""

    event_types: list[WebhookEventType] = []
    situations: list[str] = []
    sources: list[str] = []
    min_level: str | None = None


class WebhookRetrySettings(_Section):
    """The persisted retry schedule: exponential backoff with full jitter, then dead-letter."""

    initial: Annotated[float, _duration(minimum=0.1)] = 30.0
    factor: float = Field(default=2.0, ge=1.0, le=10.0)
    cap: Annotated[float, _duration(minimum=0.1)] = 7200.0
    max_attempts: Int = Field(default=20, ge=1, le=1000)


class RateLimitSettings(_Section):
    """Requests allowed per API key: ``requests`` in every ``per``."""

    requests: Int = Field(default=120, ge=1)
    per: Annotated[float, _duration(minimum=1)] = 60.0


class PartnerSettings(_Section):
    """A partner organisation that may use the webhook API with its key."""

    id: Slug
    name: str = Field(default="", min_length=1)  # the default comes from the id
    contact: str | None = None
    api_key: Annotated[str | None, AfterValidator(_api_key)] = Field(default=None, repr=False)
    api_key_sha256: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _fill_name(cls, data: Any) -> Any:
        return _default_name(data, str)

    @model_validator(mode="after")
    def _one_key(self) -> PartnerSettings:
        if (self.api_key is None) == (self.api_key_sha256 is None):
            message = "give exactly one of api_key (from the environment) and api_key_sha256"
            raise PydanticCustomError("field_error", message, {"field": "api_key"})
        if self.api_key_sha256 is not None and not _SHA256_HEX.fullmatch(self.api_key_sha256):
            message = "must be 64 lower-case hex digits (sha256sum of the key)"
            raise PydanticCustomError("field_error", message, {"field": "api_key_sha256"})
        return self


class StaticEndpointSettings(_Section):
    """A webhook endpoint declared by the operator (managed here, not through the API)."""

    id: Slug
    url: Annotated[str, AfterValidator(_http_url)]
    partner: Slug | None = None
    description: str = ""
    secret: Annotated[str, AfterValidator(_webhook_secret)] = Field(repr=False)
    enabled: bool = True
    filters: WebhookFiltersSettings = Field(default_factory=WebhookFiltersSettings)


class WebhooksSettings(_Section):
    """Webhook delivery to partners: API, limits, retries, SSRF allow-list, static endpoints."""

    allow_hosts: list[str] = []
    allow_networks: list[Annotated[str, AfterValidator(_network)]] = []
    timeout: Annotated[float, _duration(minimum=0.1)] = 10.0
    concurrency: Int = Field(default=64, ge=1, le=10_000)
    per_endpoint: Int = Field(default=4, ge=1, le=100)
    batch: Int = Field(default=500, ge=1, le=10_000)
    parallel_batches: Int = Field(default=2, ge=1, le=16)
    lease: Annotated[float, _duration(minimum=1)] = 120.0
    quick_retries: Int = Field(default=2, ge=0, le=5)
    retry: WebhookRetrySettings = Field(default_factory=WebhookRetrySettings)
    disable_after: Annotated[float, _duration(minimum=1)] = 172_800.0
    secret_grace: Duration = 86_400.0
    max_endpoints: Int = Field(default=50, ge=1)
    max_body: Size = Field(default=16_384, ge=256)
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    partners: list[PartnerSettings] = []
    endpoints: list[StaticEndpointSettings] = []

    @model_validator(mode="after")
    def _check_refs(self) -> WebhooksSettings:
        longest = self.timeout * (self.quick_retries + 1) + self.quick_retries + 5
        if longest > self.lease:
            message = (
                "must be longer than one delivery can take, timeout x (quick_retries + 1) + "
                f"quick_retries x 1s + 5s ({format_duration(longest)}), "
                f"not {format_duration(self.lease)}"
            )
            raise PydanticCustomError("field_error", message, {"field": "lease"})
        partners = [p.id for p in self.partners]
        for ids, what in ((partners, "partner"), ([e.id for e in self.endpoints], "endpoint")):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                message = f"duplicate {what} id {dupes[0]!r}"
                raise PydanticCustomError("field_error", message, {"field": f"{what}s"})
        for index, endpoint in enumerate(self.endpoints):
            if endpoint.partner is not None and endpoint.partner not in partners:
                message = (
                    f"unknown partner {endpoint.partner!r}; known partners: "
                    f"{', '.join(partners) or 'none'}"
                )
                field = f"endpoints[{index}].partner"
                raise PydanticCustomError("field_error", message, {"field": field})
        return self


class OperatorWebhookSettings(_Section):
    """Where operators' notices are POSTed: through the webhooks channel (JSON, signed like
    partner webhooks, through its SSRF guard)."""

    url: HttpUrl
    secret: Annotated[str | None, AfterValidator(lambda v: v and _webhook_secret(v))] = None


class OperatorsSettings(_Section):
    """Who hears about trouble: a source failing or recovering, a level word outside the scale,
    a webhook endpoint disabled, an address suppressed, dead letters piling up."""

    emails: list[Annotated[str, AfterValidator(_email_address)]] = []
    webhooks: list[OperatorWebhookSettings] = []
    notify: list[str] = Field(default=[], repr=False)
    """Apprise URLs, sent through the notify channel (its section is then required)."""
    dead_letters: Int = Field(default=10, ge=1)

    @field_validator("notify")
    @classmethod
    def _check_notify(cls, urls: list[str]) -> list[str]:
        return [_apprise_url(url) for url in urls]


def _apprise_url(value: str) -> str:
    """An Apprise URL that Apprise understands (Apprise is loaded only to check one)."""
    from warnsvc.channels.notify import url_problem

    problem = url_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


class NotifyTargetSettings(_Section):
    """One chat or messaging target (an Apprise URL) and what it receives."""

    url: Annotated[str, AfterValidator(_apprise_url)] = Field(repr=False)
    id: Slug | None = None
    name: str | None = None
    situations: list[Annotated[str, AfterValidator(_situation_ref)]] = []
    sources: list[Slug] = []
    min_level: Slug | None = None
    event_types: list[EmailEventType] = []


class NotifySettings(_Section):
    """Alerts to chat and messaging services through Apprise (``notify``)."""

    targets: list[NotifyTargetSettings] = []
    allow_hosts: list[str] = []
    allow_networks: list[Annotated[str, AfterValidator(_network)]] = []
    timeout: Annotated[float, _duration(minimum=0.1)] = 10.0
    quick_retries: Int = Field(default=1, ge=0, le=5)
    retry: WebhookRetrySettings = Field(default_factory=WebhookRetrySettings)
    disable_after: Annotated[float, _duration(minimum=1)] = 172_800.0
    concurrency: Int = Field(default=4, ge=1, le=64)

    @model_validator(mode="after")
    def _check_ids(self) -> NotifySettings:
        ids = [t.id or f"target-{n}" for n, t in enumerate(self.targets, 1)]
        for index, target_id in enumerate(ids):
            if target_id in ids[:index]:
                first = ids.index(target_id)
                message = f"duplicate target id {target_id!r}, already used by targets[{first}]"
                field = f"targets[{index}].id"
                raise PydanticCustomError("field_error", message, {"field": field})
        return self


class WebSubSettings(_Section):
    """A WebSub hub that hears of every change of the feeds (``feeds.websub``)."""

    hub: HttpUrl
    allow_hosts: list[str] = []
    allow_networks: list[Annotated[str, AfterValidator(_network)]] = []
    timeout: Annotated[float, _duration(minimum=0.1)] = 10.0


class CapLevelSettings(_Section):
    """The CAP values of one level; a value left out keeps the default."""

    urgency: CapUrgency | None = None
    severity: CapSeverity | None = None
    certainty: CapCertainty | None = None


class CapSettings(_Section):
    """The CAP 1.2 alerts (``/cap/{event id}.xml``) and their index (``/feeds/cap.atom``)."""

    sender: Annotated[str, AfterValidator(_cap_token)] | None = None
    category: CapCategory = "Safety"
    mapping: dict[str, dict[str, CapLevelSettings]] = {}


class Settings(_Section):
    """The whole configuration. ``path`` is the file it came from (set by :func:`load_config`)."""

    path: Path | None = None
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    scales: list[ScaleSettings] = []
    detection: DetectionSettings = Field(default_factory=DetectionSettings)
    sources: list[SourceSettings] = []
    feeds: FeedsSettings = Field(default_factory=FeedsSettings)
    webhooks: WebhooksSettings = Field(default_factory=WebhooksSettings)
    email: EmailSettings | None = None
    operators: OperatorsSettings = Field(default_factory=OperatorsSettings)
    cap: CapSettings = Field(default_factory=CapSettings)
    notify: NotifySettings | None = None

    @field_validator(
        "service", "storage", "detection", "feeds", "webhooks", "operators", "cap", mode="before"
    )
    @classmethod
    def _empty_section(cls, value: object) -> object:
        return {} if value is None else value

    @field_validator("scales", "sources", mode="before")
    @classmethod
    def _empty_list(cls, value: object) -> object:
        return [] if value is None else value

    @model_validator(mode="after")
    def _check_operator_mail(self) -> Settings:
        if self.operators.emails and (self.email is None or not self.email.enabled):
            message = "operators.emails are sent through the email section's SMTP server; add it"
            raise PydanticCustomError("field_error", message, {"field": "operators"})
        if self.operators.notify and self.notify is None:
            message = "operators.notify are sent through the notify channel; add its section"
            raise PydanticCustomError("field_error", message, {"field": "operators"})
        return self

    @model_validator(mode="after")
    def _check_across(self, info: ValidationInfo) -> Settings:
        if info.context and info.context.get(_SKIP_CROSS_CHECKS):
            return self
        found = _cross_check(
            list(enumerate(self.scales)),
            _source_refs(self.sources),
            _scale_ids(self.scales),
            {},
        )
        found += _check_cap_and_websub(self) + _check_notify_levels(self)
        if found:
            raise ValueError("; ".join(f"{_format_loc(loc)}: {msg}" for loc, msg in found))
        return self

    def scale_map(self) -> dict[str, Scale]:
        """Every scale by id: the built-in ``gcr2p`` first, then configured ones in file order.

        A configured scale with id ``gcr2p`` replaces the built-in one (in its place).
        """
        scales = {scale.id: scale for scale in BUILTIN_SCALES}
        for scale in self.scales:
            scales[scale.id] = scale.to_scale()
        return scales

    def source(self, source_id: str) -> SourceSettings:
        """The settings of the source with this id; :class:`KeyError` if there is none."""
        for source in self.sources:
            if source.id == source_id:
                return source
        raise KeyError(source_id)


_INTERNAL_FIELDS: Mapping[type[BaseModel], frozenset[str]] = {Settings: frozenset({"path"})}
"""Fields that are set by code, never read from the file."""


@functools.cache
def _scale_adapter() -> TypeAdapter[ScaleSettings]:
    """Validates one scale alone (only a config with problems needs it)."""
    return TypeAdapter(ScaleSettings)


# --------------------------------------------------------------------------- public API


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, validate and cross-check the config file at ``path``.

    Raises :class:`ConfigError` listing every problem (a missing file is one problem).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(str(path), None, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        problem = ConfigProblem(str(path), None, "", f"cannot read the file: {reason}")
        raise ConfigError([problem]) from exc
    settings = parse_config(text, filename=str(path), environ=environ)
    return settings.model_copy(update={"path": path})


def parse_config(text: str, *, filename: str, environ: Mapping[str, str] | None = None) -> Settings:
    """Validate config ``text``; ``filename`` is only used in problems.

    ``environ`` (default: :data:`os.environ`) resolves ``${VAR}`` references.
    """
    document = _read_yaml(text, filename, os.environ if environ is None else environ)
    if document.fatal:
        raise ConfigError(document.problems)
    checker = _Checker(filename, document)
    settings = checker.validate()
    if checker.problems or settings is None:
        raise ConfigError(sorted(checker.problems, key=lambda p: p.line or 0))
    return settings


# --------------------------------------------------------------------------- YAML reading


@dataclass
class _Document:
    """YAML data with the line of every key path, and the problems met while reading it."""

    data: object = None
    lines: dict[Loc, int] = field(default_factory=dict)
    problems: list[ConfigProblem] = field(default_factory=list)
    tainted: set[Loc] = field(default_factory=set)
    fatal: bool = False


_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_REFERENCE = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)\}|\$\{")
_REFERENCE_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)


try:
    from yaml import CSafeLoader as _LibyamlLoader

    _LIBYAML = True
except ImportError:  # pragma: no cover - a PyYAML built without libyaml
    _LibyamlLoader = yaml.SafeLoader  # type: ignore[misc,assignment]
    _LIBYAML = False


class _FastLoader(_LibyamlLoader):
    """libyaml's safe loader (several times faster than the pure-Python one, with the same
    line marks), remembering the tag each plain scalar resolves to: a config repeats its keys
    and values (``kind: page`` for every source), and PyYAML resolves each one in Python."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._tags: dict[tuple[str, tuple[bool, bool]], str] = {}

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: Any) -> str:
        key = (value, implicit)
        tag = self._tags.get(key) if kind is yaml.ScalarNode else None
        if tag is None:
            tag = super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]
            if kind is yaml.ScalarNode:
                self._tags[key] = tag
        return str(tag)


_Loader = _FastLoader | yaml.SafeLoader


def _read_yaml(text: str, filename: str, environ: Mapping[str, str]) -> _Document:
    document = _read_with(_FastLoader, text, filename, environ)
    if document.fatal and _LIBYAML:
        # invalid YAML: the pure-Python parser finds the same line and says more about it
        # ("found undefined alias 'base'" rather than "found undefined alias")
        document = _read_with(yaml.SafeLoader, text, filename, environ)
    return document


def _read_with(
    loader_class: type[_Loader], text: str, filename: str, environ: Mapping[str, str]
) -> _Document:
    document = _Document()
    loader: _Loader | None = None
    try:
        loader = loader_class(text)  # the pure-Python reader checks the characters here
        root = loader.get_single_node()
        if root is not None:
            reader = _NodeReader(filename, environ, loader, document)
            document.data = reader.read(root, ())
    except yaml.MarkedYAMLError as exc:
        document.problems.append(_syntax_problem(filename, exc))
        document.fatal = True
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        message = f"invalid YAML: character {exc.character:#06x} is not allowed"
        document.problems.append(ConfigProblem(filename, line, "", message))
        document.fatal = True
    except yaml.YAMLError as exc:
        document.problems.append(ConfigProblem(filename, None, "", f"invalid YAML: {exc}"))
        document.fatal = True
    finally:
        if loader is not None:
            loader.dispose()
    return document


def _syntax_problem(filename: str, exc: yaml.MarkedYAMLError) -> ConfigProblem:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else None
    what = exc.problem or "syntax error"
    if exc.context:
        what = f"{what} ({exc.context})"
    return ConfigProblem(filename, line, "", f"invalid YAML: {what}")


def _short_tag(tag: str) -> str:
    return tag.replace("tag:yaml.org,2002:", "!!")


class _NodeReader:
    """Turns a composed YAML node tree into plain data, recording the line of every path."""

    def __init__(
        self,
        filename: str,
        environ: Mapping[str, str],
        loader: _Loader,
        document: _Document,
    ) -> None:
        self.filename = filename
        self.environ = environ
        self.loader = loader
        self.document = document
        self.active: set[int] = set()
        self.own_keys: dict[int, set[int]] = {}

    def read(self, node: yaml.Node, loc: Loc) -> object:
        self.document.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, loc)
        if id(node) in self.active:
            self._fail(loc, "an alias refers to itself")
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, loc)
            if isinstance(node, yaml.SequenceNode):
                return self._sequence(node, loc)
            return None  # pragma: no cover - a YAML node is a scalar, a sequence or a mapping
        finally:
            self.active.discard(id(node))

    def _problem(self, loc: Loc, message: str, line: int | None = None) -> None:
        line = line if line is not None else self.document.lines.get(loc)
        self.document.problems.append(ConfigProblem(self.filename, line, _format_loc(loc), message))

    def _fail(self, loc: Loc, message: str) -> None:
        """A problem that makes the value at ``loc`` meaningless: validation stays quiet there."""
        self._problem(loc, message)
        self.document.tainted.add(loc)

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> object:
        if node.tag != _MAP_TAG:
            self._fail(loc, f"unsupported YAML tag {_short_tag(node.tag)!r}")
            return None
        # Keys written in this mapping (not merged in with `<<`); an alias visits a node twice.
        own = self.own_keys.get(id(node))
        if own is None and any(key.tag == _MERGE_TAG for key, _ in node.value):
            own = self.own_keys[id(node)] = {id(key) for key, _ in node.value}
            self.loader.flatten_mapping(node)
        result: dict[str, object] = {}
        written: set[str] = set()
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self._problem(loc, "keys must be plain strings", line)
                continue
            child = (*loc, key_node.value)
            if own is None or id(key_node) in own:
                if key_node.value in written:
                    first = self.document.lines[child]
                    message = f"duplicate key {key_node.value!r} (first at line {first})"
                    self._problem(child, message, line)
                written.add(key_node.value)
            self.document.lines[child] = line
            result[key_node.value] = self.read(value_node, child)
        return result

    def _sequence(self, node: yaml.SequenceNode, loc: Loc) -> object:
        if node.tag != _SEQ_TAG:
            self._fail(loc, f"unsupported YAML tag {_short_tag(node.tag)!r}")
            return None
        return [self.read(item, (*loc, index)) for index, item in enumerate(node.value)]

    def _scalar(self, node: yaml.ScalarNode, loc: Loc) -> object:
        if node.tag == _STR_TAG:  # most values: the text as written
            value: object = node.value
        else:
            try:
                value = self.loader.construct_object(node, deep=True)
            except (yaml.YAMLError, ValueError):
                self._fail(loc, self._unreadable(node))
                return None
        if isinstance(value, str) and "$" in value:
            return self._substitute(value, loc)
        return value

    def _unreadable(self, node: yaml.Node) -> str:
        if node.tag not in self.loader.yaml_constructors:
            return f"unsupported YAML tag {_short_tag(node.tag)!r}"
        return f"cannot read {node.value!r} as {_short_tag(node.tag)} (quote it if it is text)"

    def _substitute(self, text: str, loc: Loc) -> str:
        return _REFERENCE.sub(lambda match: self._resolve(match, loc), text)

    def _resolve(self, match: re.Match[str], loc: Loc) -> str:
        token, body = match.group(0), match.group("body")
        if token == "$${":
            return "${"
        if body is None:
            self._fail(loc, "'${' without a closing '}' (write '$${' for a literal '${')")
            return token
        reference = _REFERENCE_BODY.fullmatch(body)
        if reference is None:
            self._fail(loc, f"bad reference {token!r}: write ${{NAME}} or ${{NAME:-default}}")
            return token
        name, default = reference.group("name"), reference.group("default")
        value = self.environ.get(name)
        if value or (value is not None and default is None):
            return value
        if default is not None:
            return default
        hint = f"write ${{{name}:-default}} to give a default"
        self._fail(loc, f"environment variable {name} is not set ({hint})")
        return ""


# --------------------------------------------------------------------------- validation


class _Checker:
    """Validates a read document and turns every failure into a located ConfigProblem."""

    def __init__(self, filename: str, document: _Document) -> None:
        self.filename = filename
        self.document = document
        self.problems = list(document.problems)

    def validate(self) -> Settings | None:
        data = self._top_level()
        try:
            settings = Settings.model_validate(data, context={_SKIP_CROSS_CHECKS: True})
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                self._add_error(error)
            self._cross_check_raw(data)
            return None
        found = _cross_check(
            list(enumerate(settings.scales)),
            _source_refs(settings.sources),
            _scale_ids(settings.scales),
            self.document.lines,
        )
        self._add_all([*found, *_check_cap_and_websub(settings), *_check_notify_levels(settings)])
        return settings

    def _top_level(self) -> object:
        data = {} if self.document.data is None else self.document.data
        if isinstance(data, dict):
            for key in _INTERNAL_FIELDS[Settings] & data.keys():
                self._add((key,), _unknown_key_message(key, Settings))
            data = {k: v for k, v in data.items() if k not in _INTERNAL_FIELDS[Settings]}
        return data

    def _add(self, loc: Loc, message: str) -> None:
        line = _line_of(loc, self.document.lines)
        self.problems.append(ConfigProblem(self.filename, line, _format_loc(loc), message))

    def _add_all(self, found: Iterable[tuple[Loc, str]]) -> None:
        for loc, message in found:
            self._add(loc, message)

    def _add_error(self, error: ErrorDetails) -> None:
        loc, message = _translate(error)
        if not any(loc[:n] in self.document.tainted for n in range(len(loc) + 1)):
            self._add(loc, message)

    def _cross_check_raw(self, data: object) -> None:
        """Cross-check the scales and sources that validate alone, when the whole did not."""
        if not isinstance(data, dict):
            return
        scales = _valid_items(data.get("scales"), _scale_adapter())
        sources = _raw_source_refs(data.get("sources"))
        raw_scales = data.get("scales")
        scale_ids = {scale.id for scale in BUILTIN_SCALES}
        if isinstance(raw_scales, list):
            scale_ids |= {
                s["id"] for s in raw_scales if isinstance(s, dict) and _is_str(s.get("id"))
            }
        self._add_all(_cross_check(scales, sources, scale_ids, self.document.lines))


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _valid_items(raw: object, adapter: TypeAdapter[T]) -> list[tuple[int, T]]:
    if not isinstance(raw, list):
        return []
    items = []
    for index, item in enumerate(raw):
        try:
            items.append((index, adapter.validate_python(item)))
        except ValidationError:
            continue
    return items


def _line_of(loc: Loc, lines: Mapping[Loc, int]) -> int | None:
    """The line of the deepest node on ``loc`` that exists in the file."""
    for length in range(len(loc), -1, -1):
        if loc[:length] in lines:
            return lines[loc[:length]]
    return None


def _format_loc(loc: Sequence[str | int]) -> str:
    """``("sources", 0, "interval")`` -> ``"sources[0].interval"``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


# --------------------------------------------------------------------------- error messages


@dataclass(frozen=True)
class _Resolved:
    """A pydantic error location, with discriminator tags dropped and the types along it."""

    loc: Loc
    owner: Any
    target: Any
    discriminator: str | None
    variants: Mapping[str, type[BaseModel]]


def _resolve_loc(loc: Sequence[str | int]) -> _Resolved:
    clean: list[str | int] = []
    owner: Any = None
    current: Any = Settings
    for part in loc:
        tp, discriminator = _unwrap(current)
        variants = _variants(tp, discriminator)
        if isinstance(part, str) and part in variants:
            current = variants[part]
            continue
        owner, current = tp, _child_type(tp, part)
        clean.append(part)
    tp, discriminator = _unwrap(current)
    return _Resolved(tuple(clean), owner, tp, discriminator, _variants(tp, discriminator))


def _unwrap(tp: Any) -> tuple[Any, str | None]:
    """Strip ``Annotated`` and ``| None``; return the type and its discriminator, if any."""
    discriminator = None
    while get_origin(tp) is Annotated:
        tp, *metadata = get_args(tp)
        for item in metadata:
            if isinstance(item, FieldInfo) and isinstance(item.discriminator, str):
                discriminator = item.discriminator
    if get_origin(tp) in (Union, UnionType):
        members = [arg for arg in get_args(tp) if arg is not NoneType]
        if len(members) == 1:
            return _unwrap(members[0])
    return tp, discriminator


def _variants(tp: Any, discriminator: str | None) -> dict[str, type[BaseModel]]:
    if discriminator is None or get_origin(tp) not in (Union, UnionType):
        return {}
    variants: dict[str, type[BaseModel]] = {}
    for member in get_args(tp):
        if isinstance(member, type) and issubclass(member, BaseModel):
            for tag in get_args(member.model_fields[discriminator].annotation):
                variants[tag] = member
    return variants


def _child_type(tp: Any, part: str | int) -> Any:
    if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
        info = tp.model_fields.get(part)
        return info.annotation if info is not None else None
    if get_origin(tp) is list and isinstance(part, int):
        return get_args(tp)[0]
    return None


def _allowed_keys(model: type[BaseModel]) -> list[str]:
    internal = _INTERNAL_FIELDS.get(model, frozenset())
    return sorted(name for name in model.model_fields if name not in internal)


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _unknown_key_message(key: str, model: Any) -> str:
    message = f"unknown key {key!r}"
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return message
    allowed = _allowed_keys(model)
    message += f"; allowed keys: {', '.join(allowed)}"
    if issubclass(model, BaseSourceSettings):
        kinds = [kind for kind, cls in SOURCE_KINDS.items() if key in cls.model_fields]
        if kinds:
            return message + f"; {key!r} applies only to kind {' and '.join(kinds)}"
    return message + _did_you_mean(key, allowed)


_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "path_type": "a path",
}


def _translate(error: ErrorDetails) -> tuple[Loc, str]:
    """The clean key path and a helpful message for one pydantic error."""
    resolved = _resolve_loc(error["loc"])
    loc, kind, ctx = resolved.loc, error["type"], error.get("ctx", {})
    value = error["input"]
    if kind == "extra_forbidden":
        return loc, _unknown_key_message(str(loc[-1]), resolved.owner)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return _tag_problem(resolved, value)
    if kind == "field_error":
        return (*loc, ctx["field"]), error["msg"]
    if kind == "missing":
        return loc, f"missing required key {loc[-1]!r}"
    if kind in _EXPECTED and not loc:
        sections = ", ".join(_allowed_keys(Settings))
        return loc, _type_message(f"a mapping of sections ({sections})", value)
    if kind in _EXPECTED:
        return loc, _type_message(_EXPECTED[kind], value)
    return loc, _constraint_message(kind, ctx, value, error["msg"])


def _tag_problem(resolved: _Resolved, value: object) -> tuple[Loc, str]:
    key = resolved.discriminator or "kind"
    known = ", ".join(resolved.variants)
    if not isinstance(value, dict) or key not in value:
        return (*resolved.loc, key), f"missing required key {key!r}; known kinds: {known}"
    tag = value[key]
    if not isinstance(tag, str):
        return (*resolved.loc, key), _type_message("a string", tag) + f"; known kinds: {known}"
    message = f"unknown {key} {tag!r}; known kinds: {known}"
    return (*resolved.loc, key), message + _did_you_mean(tag, resolved.variants)


def _type_message(expected: str, value: object) -> str:
    message = f"expected {expected}, found {_describe(value)}"
    if expected == "a string" and isinstance(value, bool):
        message += " (YAML reads yes/no/on/off as booleans: quote the value)"
    elif expected == "a string" and isinstance(value, int | float):
        message += " (quote the value)"
    return message


def _constraint_message(kind: str, ctx: Mapping[str, Any], value: object, msg: str) -> str:
    shown = _describe(value)
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}, not {shown}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}, not {shown}"
    if kind == "greater_than":
        return f"must be more than {ctx['gt']}, not {shown}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}, not {shown}"
    if kind == "less_than":
        return f"must be less than {ctx['lt']}, not {shown}"
    if kind == "too_short" and ctx.get("min_length") == 1:
        return "must not be empty"
    if kind == "string_too_short":
        least = int(ctx.get("min_length", 1))
        return "must not be empty" if least <= 1 else f"must be at least {least} characters"
    return f"{msg[:1].lower()}{msg[1:]}, not {shown}"


# --------------------------------------------------------------------------- cross checks


def _scale_ids(scales: Iterable[ScaleSettings]) -> set[str]:
    return {*(scale.id for scale in BUILTIN_SCALES), *(scale.id for scale in scales)}


@dataclass(frozen=True)
class _SourceRef:
    """What the cross checks need of a source: its position, id and scale."""

    index: int
    id: str | None
    scale: str | None


def _source_refs(sources: Iterable[SourceSettings]) -> list[_SourceRef]:
    return [_SourceRef(index, s.id, s.scale) for index, s in enumerate(sources)]


def _raw_source_refs(raw: object) -> list[_SourceRef]:
    """Source refs from unvalidated data: ids and scales that are at least well-formed slugs."""
    if not isinstance(raw, list):
        return []
    return [_raw_source_ref(index, item) for index, item in enumerate(raw)]


def _raw_source_ref(index: int, item: object) -> _SourceRef:
    if not isinstance(item, dict):
        return _SourceRef(index, None, None)
    kind = item.get("kind")
    settings = SOURCE_KINDS.get(kind) if isinstance(kind, str) else None
    scale = item.get("scale", settings.model_fields["scale"].default if settings else None)
    return _SourceRef(index, _raw_slug(item.get("id")), _raw_slug(scale))


def _raw_slug(value: object) -> str | None:
    return value if isinstance(value, str) and _SLUG.fullmatch(value) else None


def _cross_check(
    scales: Sequence[tuple[int, ScaleSettings]],
    sources: Sequence[_SourceRef],
    scale_ids: Collection[str],
    lines: Mapping[Loc, int],
) -> list[tuple[Loc, str]]:
    """Problems that span items: duplicate ids and references to unknown scales."""
    return [
        *_check_scale_ids(scales, lines),
        *_check_level_ids(scales, lines),
        *_check_level_names(scales),
        *_check_source_ids(sources, lines),
        *_check_source_scales(sources, scale_ids),
    ]


def _where(item: Loc, lines: Mapping[Loc, int]) -> str:
    """``sources[0] (line 20)``: an item and the line of its ``id``."""
    line = lines.get((*item, "id"))
    return _format_loc(item) + (f" (line {line})" if line is not None else "")


def _check_scale_ids(
    scales: Sequence[tuple[int, ScaleSettings]], lines: Mapping[Loc, int]
) -> Iterable[tuple[Loc, str]]:
    first: dict[str, int] = {}
    for index, scale in scales:
        if scale.id in first:
            where = _where(("scales", first[scale.id]), lines)
            yield (
                ("scales", index, "id"),
                f"duplicate scale id {scale.id!r}, already used by {where}",
            )
        first.setdefault(scale.id, index)


def _check_level_ids(
    scales: Sequence[tuple[int, ScaleSettings]], lines: Mapping[Loc, int]
) -> Iterable[tuple[Loc, str]]:
    """Level ids are unique across all scales (they name the per-level feeds)."""
    configured = {scale.id for _, scale in scales}
    owners: dict[str, str] = {
        level.id: f"the built-in scale {builtin.id!r}"
        for builtin in BUILTIN_SCALES
        if builtin.id not in configured
        for level in builtin.levels
    }
    for index, scale in scales:
        for position, level in enumerate(scale.levels):
            if level.id in owners:
                message = f"duplicate level id {level.id!r}, already used by {owners[level.id]}"
                yield ("scales", index, "levels", position, "id"), message
                continue
            where = _where(("scales", index, "levels", position), lines)
            owners[level.id] = f"scale {scale.id!r} at {where}"


def _check_level_names(scales: Sequence[tuple[int, ScaleSettings]]) -> Iterable[tuple[Loc, str]]:
    """No name or alias may match two levels of one scale (matching ignores case, spacing)."""
    for index, scale in scales:
        owners: dict[str, str] = {}
        for position, level in enumerate(scale.levels):
            names: list[tuple[Loc, str]] = [(("name",), level.name)]
            names += [(("aliases", n), alias) for n, alias in enumerate(level.aliases)]
            for key in {normalize_name(level.id)} | {normalize_name(n) for _, n in names}:
                owners.setdefault(key, level.id)
            for suffix, name in names:
                other = owners[normalize_name(name)]
                if other != level.id:
                    message = f"{name!r} also names level {other!r} of scale {scale.id!r}"
                    yield ("scales", index, "levels", position, *suffix), message


def _check_source_ids(
    sources: Sequence[_SourceRef], lines: Mapping[Loc, int]
) -> Iterable[tuple[Loc, str]]:
    first: dict[str, int] = {}
    for source in sources:
        if source.id is None:
            continue
        if source.id in first:
            where = _where(("sources", first[source.id]), lines)
            message = f"duplicate source id {source.id!r}, already used by {where}"
            yield ("sources", source.index, "id"), message
        first.setdefault(source.id, source.index)


def _check_source_scales(
    sources: Sequence[_SourceRef], scale_ids: Collection[str]
) -> Iterable[tuple[Loc, str]]:
    known = sorted(scale_ids)
    for source in sources:
        if source.scale is not None and source.scale not in scale_ids:
            message = f"unknown scale {source.scale!r}; known scales: {', '.join(known)}"
            yield ("sources", source.index, "scale"), message + _did_you_mean(source.scale, known)


def _check_cap_and_websub(settings: Settings) -> list[tuple[Loc, str]]:
    """``cap.mapping`` names known scales and levels; a WebSub hub has a public base URL and
    passes the hub's SSRF allow-list as far as can be told without a DNS lookup."""
    found: list[tuple[Loc, str]] = []
    scales = settings.scale_map()
    for scale_id, levels in settings.cap.mapping.items():
        scale = scales.get(scale_id)
        if scale is None:
            known = ", ".join(scales)
            found.append((("cap", "mapping", scale_id), f"unknown scale; known scales: {known}"))
            continue
        level_ids = [level.id for level in scale.levels]
        for level_id in levels:
            if level_id not in level_ids:
                message = f"unknown level of scale {scale_id!r}; its levels: {', '.join(level_ids)}"
                found.append((("cap", "mapping", scale_id, level_id), message))
    websub = settings.feeds.websub
    if websub is not None:
        if "base_url" not in settings.service.model_fields_set:
            message = "a WebSub hub fetches the feeds at their public URL: set service.base_url"
            found.append((("feeds", "websub", "hub"), message))
        problem = _hub_problem(websub)
        if problem is not None:
            found.append((("feeds", "websub", "hub"), problem))
    return found


def _check_notify_levels(settings: Settings) -> list[tuple[Loc, str]]:
    """Every notify target's ``min_level`` is a level of a known scale."""
    if settings.notify is None:
        return []
    levels = [level.id for scale in settings.scale_map().values() for level in scale.levels]
    found: list[tuple[Loc, str]] = []
    for index, target in enumerate(settings.notify.targets):
        if target.min_level is not None and target.min_level not in levels:
            message = f"unknown level {target.min_level!r}; known levels: {', '.join(levels)}"
            loc: Loc = ("notify", "targets", index, "min_level")
            found.append((loc, message + _did_you_mean(target.min_level, levels)))
    return found


def _hub_problem(websub: WebSubSettings) -> str | None:
    import ipaddress

    parts = urlsplit(websub.hub)
    host = (parts.hostname or "").rstrip(".").lower()
    if parts.username is not None or parts.password is not None:
        return "must not carry a user name or password"
    if parts.fragment:
        return "must not have a #fragment"
    listed = host in {h.lower().rstrip(".") for h in websub.allow_hosts}
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None and not listed:
        networks = [ipaddress.ip_network(n, strict=False) for n in websub.allow_networks]
        listed = any(address in network for network in networks)
        if not listed and not address.is_global:
            return (
                f"{host} is not a public address; list it in feeds.websub.allow_networks "
                "(e.g. 127.0.0.0/8 for a hub on this machine)"
            )
    if parts.scheme != "https" and not listed:
        return "must use https (plain http only for a hub in allow_hosts or allow_networks)"
    return None
