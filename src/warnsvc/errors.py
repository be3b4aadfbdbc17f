"""The exception hierarchy of warnsvc.

Every error the service raises on purpose derives from :class:`WarnsvcError`::

    WarnsvcError
    ├── ConfigError                 the YAML file cannot be used (carries every problem)
    ├── SourceError                 a source cannot tell us anything right now
    │   ├── SourceUnavailableError  fetch failed: HTTP error, timeout, oversized body ...
    │   │   ├── TransientFetchError     worth retrying soon (5xx, timeout, reset)
    │   │   └── PageGoneError           404 or 410: the page is not there
    │   └── SourceParseError        fetched, but the page carries no usable risk information
    │       ├── NoRiskInformationError  no risk line, no level section, no status; a selector
    │       │                           or path that matches nothing
    │       ├── UnknownLevelError       a level name that the scale does not know
    │       └── UnsafeXmlError          XML with a DTD, entity declarations or external references
    ├── StartupError                the service cannot start: the operator's to fix (exit 2)
    │   ├── ListenError             the HTTP port is taken, or not ours to bind
    │   └── StoreUnavailableError   (also a StoreError) cannot connect to the database
    ├── StoreError                  the database refused or is unreachable
    │   ├── StoreUnavailableError   cannot connect (wrong password, host or database)
    │   └── StoreConflictError      another replica wrote the same change first
    └── DeliveryError               a channel could not deliver
        ├── TransientDeliveryError  try again later (timeouts, 5xx, 429)
        └── PermanentDeliveryError  give up on this delivery (4xx, invalid recipient)

A :class:`SourceError` is never a change: it marks the source unhealthy and emits nothing.
The class docstring is the default message; specific messages name the identifiers involved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class WarnsvcError(Exception):
    """warnsvc failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One problem in a config file, located by file, line and key path."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(WarnsvcError):
    """The configuration is invalid."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems) or None)


class SourceError(WarnsvcError):
    """The source could not be read."""


class SourceUnavailableError(SourceError):
    """The source could not be fetched."""


class PageGoneError(SourceUnavailableError):
    """The server says the page does not exist (HTTP 404 or 410): not a glitch."""


class TransientFetchError(SourceUnavailableError):
    """The fetch failed in a way that may succeed if tried again soon."""


class SourceParseError(SourceError):
    """The page was fetched but could not be understood."""


class NoRiskInformationError(SourceParseError):
    """The page carries no risk information."""


class UnknownLevelError(SourceParseError):
    """A level name is not on the scale."""

    def __init__(self, name: str, scale: str, known: Sequence[str]) -> None:
        self.name = name
        self.scale = scale
        self.known = list(known)
        super().__init__(
            f"level {name!r} is not on scale {scale!r} (known: {', '.join(self.known)})"
        )


class UnsafeXmlError(SourceParseError):
    """The XML document declares a DTD or entities; it is refused unread."""


class StoreError(WarnsvcError):
    """The store failed."""


class StartupError(WarnsvcError):
    """The service cannot start with this configuration on this machine."""


class ListenError(StartupError):
    """The HTTP address cannot be listened on."""


class StoreUnavailableError(StoreError, StartupError):
    """The database cannot be reached."""


class StoreConflictError(StoreError):
    """Another replica recorded this change first; nothing was written."""


class DeliveryError(WarnsvcError):
    """A delivery failed."""


class TransientDeliveryError(DeliveryError):
    """A delivery failed and should be retried later."""

    def __init__(self, message: str | None = None, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class PermanentDeliveryError(DeliveryError):
    """A delivery failed and will not succeed by retrying."""
