"""The SSRF guard: webhook requests go only to public https addresses, unless allow-listed.

A URL is refused when it is not ``https``, carries credentials, or names a host that resolves
to a loopback, private, link-local, multicast, reserved or otherwise non-global address. The
operator may allow-list host names (``allow_hosts``) and networks (``allow_networks``, e.g.
``127.0.0.0/8`` for tests); an allow-listed target may also use plain ``http``.

The check holds at send time too: :class:`GuardedResolver` is the resolver of the HTTP client's
connector, so the addresses it checked are the very addresses the client connects to (no second
lookup an attacker could rebind), and webhook requests never follow redirects.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from warnsvc.errors import WarnsvcError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class UnsafeUrlError(WarnsvcError):
    """The URL is not a safe webhook target."""


class UnsafeAddressError(OSError):
    """A host resolved to an address the guard refuses (raised inside the HTTP client)."""


def is_public(address: IPAddress) -> bool:
    """True for a globally routable unicast address (an IPv4-mapped IPv6 is judged as IPv4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return is_public(address.ipv4_mapped)
    return address.is_global and not (
        address.is_multicast
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_unspecified
    )


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Guard:
    """What the operator allows besides public https addresses."""

    allow_hosts: frozenset[str] = frozenset()
    allow_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def build(cls, hosts: Iterable[str] = (), networks: Iterable[str] = ()) -> Guard:
        return cls(
            frozenset(h.lower().rstrip(".") for h in hosts),
            tuple(ipaddress.ip_network(n, strict=False) for n in networks),
        )

    def host_allowed(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.allow_hosts

    def address_allowed(self, address: IPAddress) -> bool:
        """Public, or inside an allow-listed network."""
        return self.in_allowed_network(address) or is_public(address)

    def in_allowed_network(self, address: IPAddress) -> bool:
        return any(address in network for network in self.allow_networks)

    def parse(self, url: str) -> SplitResult:
        """The parts of ``url`` if its shape is acceptable; no DNS lookup."""
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError as exc:
            raise UnsafeUrlError(f"not a valid URL: {exc}") from None
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise UnsafeUrlError("must be an absolute https:// URL")
        if parts.username is not None or parts.password is not None:
            raise UnsafeUrlError("must not carry a user name or password")
        if parts.fragment:
            raise UnsafeUrlError("must not have a #fragment")
        if len(url) > 2000:
            raise UnsafeUrlError("must be at most 2000 characters long")
        return parts

    async def check(self, url: str, *, resolve: bool = True) -> None:
        """Refuse ``url`` with :class:`UnsafeUrlError` unless it is a safe target.

        With ``resolve``, a host name is looked up and every address it has must be allowed.
        """
        parts = self.parse(url)
        host = parts.hostname or ""
        if self.host_allowed(host):
            return
        literal = _literal(host)
        if literal is not None:
            addresses = [literal]
        elif resolve:
            addresses = await self.lookup(host, parts.port or 443)
        else:
            addresses = []
        for address in addresses:
            if not self.address_allowed(address):
                raise UnsafeUrlError(
                    f"host {host!r} resolves to {address}, which is not a public address "
                    "(loopback, private, link-local, multicast and reserved addresses are "
                    "refused unless the operator allow-lists them)"
                )
        allow_listed = bool(addresses) and all(self.in_allowed_network(a) for a in addresses)
        if parts.scheme != "https" and not allow_listed:
            raise UnsafeUrlError("must use https (plain http only for allow-listed hosts)")

    async def lookup(self, host: str, port: int) -> list[IPAddress]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise UnsafeUrlError(f"cannot resolve host {host!r}: {exc}") from None
        found: list[IPAddress] = []
        for *_, sockaddr in infos:
            address = _literal(str(sockaddr[0]))
            if address is not None and address not in found:
                found.append(address)
        if not found:
            raise UnsafeUrlError(f"host {host!r} has no address")
        return found


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that returns only addresses the :class:`Guard` allows.

    Because the connector connects to exactly what the resolver returns, the checked address
    is the address connected to. A host with any refused address is refused whole.
    """

    def __init__(self, guard: Guard, inner: AbstractResolver | None = None) -> None:
        self.guard = guard
        self.inner = inner or ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        if self.guard.host_allowed(host):
            return results
        for result in results:
            address = _literal(result["host"])
            if address is None or not self.guard.address_allowed(address):
                raise UnsafeAddressError(
                    f"refused: {host} resolves to {result['host']}, not a public address"
                )
        return results

    async def close(self) -> None:
        await self.inner.close()
