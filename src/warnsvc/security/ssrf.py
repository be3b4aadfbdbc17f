"""The SSRF guard: webhook requests go only to public https addresses, unless allow-listed.

A URL is refused when it is not ``https``, carries credentials, or names a host that resolves
to a loopback, private, link-local, site-local, multicast, reserved or otherwise non-global
address. The operator may allow-list host names (``allow_hosts``) and networks
(``allow_networks``, e.g. ``127.0.0.0/8`` for tests); an allow-listed target may also use plain
``http``.

An IPv6 address that carries an IPv4 address (IPv4-mapped, IPv4-compatible, 6to4, Teredo,
NAT64) is judged by the IPv4 address it carries, because that is where a packet to it ends up:
``2002:a9fe:a9fe::1`` is 169.254.169.254 reached through a 6to4 relay, not a public address.
See :func:`embedded_ipv4`.

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


_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_NAT64_LOCAL_PREFIX_LENGTHS = (48, 56, 64, 96)
"""RFC 6052 prefix lengths a translator may use inside the local-use 64:ff9b:1::/48 (RFC 8215)."""
_SITE_LOCAL = ipaddress.IPv6Network("fec0::/10")
_U_OCTET_MASK = (1 << 56) - 1


def _rfc6052_ipv4(value: int, prefix_length: int) -> ipaddress.IPv4Address:
    """The IPv4 address at the place RFC 6052 puts it for ``prefix_length`` (2.2).

    For prefixes shorter than /96 the address skips bits 64-71 (the "u" octet).
    """
    if prefix_length == 96:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    without_u = ((value >> 64) << 56) | (value & _U_OCTET_MASK)  # 120 bits
    return ipaddress.IPv4Address((without_u >> (120 - prefix_length - 32)) & 0xFFFFFFFF)


def embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...] | None:
    """The IPv4 addresses ``address`` leads to, or None when it embeds none.

    - IPv4-mapped ``::ffff:a.b.c.d`` and IPv4-compatible ``::a.b.c.d`` (but not ``::`` and
      ``::1``, which are the unspecified and loopback addresses): ``a.b.c.d``;
    - 6to4 ``2002:AABB:CCDD::/48``: ``AA.BB.CC.DD``, the 6to4 router's address;
    - Teredo ``2001:0::/32``: the server's address and the client's (the last 32 bits, XOR
      0xffffffff): a packet goes through both;
    - NAT64 well-known prefix ``64:ff9b::/96``: the last 32 bits (RFC 6052 allows only /96);
    - NAT64 local-use ``64:ff9b:1::/48`` (RFC 8215): the network's translator may use any
      prefix from /48 to /96 inside it, and which one is not known here, so every place the
      IPv4 address may be (RFC 6052, /48, /56, /64, /96) counts.

    A network-specific NAT64 prefix (any other prefix an operator's DNS64 uses) cannot be
    recognised from the address; such a network must keep its prefix out of reach or list it.
    """
    if address.ipv4_mapped is not None:
        return (address.ipv4_mapped,)
    if address in _IPV4_COMPATIBLE:
        if address.is_unspecified or address.is_loopback:
            return None
        return (ipaddress.IPv4Address(int(address) & 0xFFFFFFFF),)
    if address.sixtofour is not None:
        return (address.sixtofour,)
    if address.teredo is not None:
        return address.teredo
    if address in _NAT64_WELL_KNOWN:
        return (_rfc6052_ipv4(int(address), 96),)
    if address in _NAT64_LOCAL:
        found = (_rfc6052_ipv4(int(address), n) for n in _NAT64_LOCAL_PREFIX_LENGTHS)
        return tuple(dict.fromkeys(found))
    return None


def _is_public_itself(address: IPAddress) -> bool:
    """The address's own class, ignoring what it may embed."""
    if isinstance(address, ipaddress.IPv6Address) and address in _SITE_LOCAL:
        return False  # deprecated (RFC 3879), yet Python calls it global
    return address.is_global and not (
        address.is_multicast
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_unspecified
    )


def _embedded(address: IPAddress) -> tuple[ipaddress.IPv4Address, ...] | None:
    return embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else None


def is_public(address: IPAddress) -> bool:
    """True for a globally routable unicast address.

    An IPv6 address that embeds IPv4 addresses (:func:`embedded_ipv4`) is public when every one
    of them is, whatever the class of the IPv6 prefix.
    """
    embedded = _embedded(address)
    if embedded is not None:
        return all(_is_public_itself(inner) for inner in embedded)
    return _is_public_itself(address)


def describe(address: IPAddress) -> str:
    """``address``, and the IPv4 addresses it carries if any: ``2002:7f00:1::1 (127.0.0.1)``."""
    embedded = _embedded(address)
    return f"{address} ({', '.join(map(str, embedded))})" if embedded else str(address)


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
        """Public (:func:`is_public`) or allow-listed, judging embedded IPv4 addresses one by one.

        An IPv6 address inside a listed network is allowed as it is. Otherwise one that embeds
        IPv4 addresses is allowed when each of them is listed or public: with ``127.0.0.0/8``
        listed, ``::ffff:127.0.0.1`` is allowed too, while ``2002:a9fe:a9fe::1``
        (169.254.169.254) is refused unless 169.254.0.0/16 or 2002::/16 is listed.
        """
        if self._listed(address):
            return True
        embedded = _embedded(address)
        if embedded is None:
            return is_public(address)
        return all(self._listed(inner) or is_public(inner) for inner in embedded)

    def in_allowed_network(self, address: IPAddress) -> bool:
        """Inside an allow-listed network, itself or by every IPv4 address it embeds."""
        if self._listed(address):
            return True
        embedded = _embedded(address)
        return embedded is not None and all(self._listed(inner) for inner in embedded)

    def _listed(self, address: IPAddress) -> bool:
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
                    f"host {host!r} resolves to {describe(address)}, which is not a public "
                    "address (loopback, private, link-local, site-local, multicast and reserved "
                    "addresses, and IPv6 forms of them, are refused unless the operator "
                    "allow-lists them)"
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
                shown = describe(address) if address is not None else result["host"]
                raise UnsafeAddressError(
                    f"refused: {host} resolves to {shown}, not a public address"
                )
        return results

    async def close(self) -> None:
        await self.inner.close()
