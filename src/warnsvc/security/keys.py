"""Partner API keys: hashed, compared in constant time, never logged; a rate limit per key.

A partner's key comes from the environment (``api_key: ${NGO_API_KEY}``) or is given only as
its SHA-256 (``api_key_sha256``). Either way only the digest is kept in memory. A presented key
is hashed and compared with :func:`hmac.compare_digest` against *every* partner's digest, so the
time taken says nothing about which partner, if any, came close.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


def hash_key(key: str) -> str:
    """The hex SHA-256 of an API key (what ``api_key_sha256`` holds)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Partner:
    """A partner organisation allowed to use the API."""

    id: str
    name: str
    contact: str | None
    key_sha256: str = field(repr=False)


class KeyRing:
    """Finds the partner a bearer key belongs to."""

    def __init__(self, partners: Iterable[Partner]) -> None:
        self.partners = list(partners)
        self._digests = [(bytes.fromhex(p.key_sha256), p) for p in self.partners]

    def authenticate(self, presented: str | None) -> Partner | None:
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found: Partner | None = None
        for expected, partner in self._digests:  # no early exit: constant work per key
            if hmac.compare_digest(digest, expected):
                found = partner
        return found

    def get(self, partner_id: str) -> Partner | None:
        return next((p for p in self.partners if p.id == partner_id), None)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per key: ``requests`` per ``per`` seconds, bursting up to ``requests``."""

    def __init__(
        self, requests: int, per: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity = float(requests)
        self.rate = requests / per if per > 0 else math.inf
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str) -> float:
        """0 if a request may go now, else the seconds to wait before the next one."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.capacity, now)
        bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate
