"""The SSRF guard: IPv6 addresses that embed an IPv4 address are judged by that address.

6to4, Teredo, NAT64, IPv4-compatible and IPv4-mapped addresses all lead to an IPv4 address;
169.254.169.254 or 127.0.0.1 reached that way is as dangerous as the plain address. Each case
is checked where the guard is used: at registration (:meth:`Guard.check`, what the partner API
and ``warnsvc webhook add`` call) and at connect time (:class:`GuardedResolver`, the resolver
of the webhook client's connector).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from warnsvc.security.ssrf import (
    Guard,
    GuardedResolver,
    UnsafeAddressError,
    UnsafeUrlError,
    embedded_ipv4,
    is_public,
)

OPEN = Guard()


def teredo(server: str, client: str) -> str:
    """A Teredo address: 2001:0:<server>:<flags>:<port>:<client XOR 0xffffffff>."""
    value = (0x20010000 << 96) | (int(ipaddress.IPv4Address(server)) << 64)
    value |= (0x8000 << 48) | (0xFFFF ^ 3544) << 32  # flags, obfuscated UDP port
    value |= int(ipaddress.IPv4Address(client)) ^ 0xFFFFFFFF
    return str(ipaddress.IPv6Address(value))


def nat64_local_48(ipv4: str, suffix: int = 0) -> str:
    """An RFC 6052 /48 address under 64:ff9b:1::/48: 16 bits, the zero u octet, 16 bits."""
    v4 = int(ipaddress.IPv4Address(ipv4))
    value = (0x0064FF9B0001 << 80) | ((v4 >> 16) << 64) | ((v4 & 0xFFFF) << 40) | suffix
    return str(ipaddress.IPv6Address(value))


METADATA = "169.254.169.254"
PUBLIC_SERVER = "65.54.227.120"  # a Teredo server

REFUSED = {
    "2002:a9fe:a9fe::1": "6to4 of 169.254.169.254",
    "2002:7f00:1::1": "6to4 of 127.0.0.1",
    "2002:a00:1::": "6to4 of 10.0.0.1",
    "fec0::1": "site-local (deprecated)",
    "feff:ffff::1": "site-local, the top of fec0::/10",
    teredo(PUBLIC_SERVER, "127.0.0.1"): "Teredo, client 127.0.0.1",
    teredo(PUBLIC_SERVER, METADATA): "Teredo, client 169.254.169.254",
    teredo("10.0.0.1", "8.8.8.8"): "Teredo, server 10.0.0.1",
    "64:ff9b::a9fe:a9fe": "NAT64 well-known prefix of 169.254.169.254",
    "64:ff9b::7f00:1": "NAT64 well-known prefix of 127.0.0.1",
    "64:ff9b:1::a9fe:a9fe": "NAT64 local-use /96 form of 169.254.169.254",
    nat64_local_48(METADATA): "NAT64 local-use /48 form of 169.254.169.254",
    # the last 32 bits say 8.8.8.8, but a /48 translator reads 10.0.0.1 from the same address
    nat64_local_48("10.0.0.1", suffix=0x0808_0808): "NAT64 local-use, 10.0.0.1 at /48",
    "::7f00:1": "IPv4-compatible 127.0.0.1",
    "::a9fe:a9fe": "IPv4-compatible 169.254.169.254",
    "::ffff:a9fe:a9fe": "IPv4-mapped 169.254.169.254",
    "::ffff:127.0.0.1": "IPv4-mapped 127.0.0.1",
    "::1": "loopback",
    "::": "unspecified",
    "fe80::1": "link-local",
    "fd00::1": "unique local",
}

ALLOWED = {
    "2002:808:808::1": "6to4 of 8.8.8.8",
    teredo(PUBLIC_SERVER, "8.8.8.8"): "Teredo, public server and client",
    "64:ff9b::808:808": "NAT64 well-known prefix of 8.8.8.8",
    "::808:808": "IPv4-compatible 8.8.8.8",
    "::ffff:8.8.8.8": "IPv4-mapped 8.8.8.8",
    "2606:4700:4700::1111": "an ordinary public IPv6 address",
    "8.8.8.8": "an ordinary public IPv4 address",
}


def test_the_helpers_build_what_they_say() -> None:
    assert ipaddress.IPv6Address(teredo(PUBLIC_SERVER, "127.0.0.1")).teredo == (
        ipaddress.IPv4Address(PUBLIC_SERVER),
        ipaddress.IPv4Address("127.0.0.1"),
    )
    assert nat64_local_48(METADATA) == "64:ff9b:1:a9fe:a9:fe00::"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("2002:a9fe:a9fe::1", [METADATA]),
        (teredo(PUBLIC_SERVER, "127.0.0.1"), [PUBLIC_SERVER, "127.0.0.1"]),
        ("64:ff9b::a9fe:a9fe", [METADATA]),
        ("::a9fe:a9fe", [METADATA]),
        ("::ffff:a9fe:a9fe", [METADATA]),
        (nat64_local_48(METADATA), [METADATA, "254.169.254.0", "169.254.0.0", "0.0.0.0"]),
        ("::1", None),
        ("::", None),
        ("2606:4700:4700::1111", None),
        ("fec0::1", None),
    ],
)
def test_embedded_ipv4(address: str, expected: list[str] | None) -> None:
    found = embedded_ipv4(ipaddress.IPv6Address(address))

    assert (None if found is None else [str(a) for a in found]) == expected


@pytest.mark.parametrize("address", sorted(REFUSED))
def test_addresses_that_lead_to_non_public_ones_are_refused(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address)), REFUSED[address]
    assert not OPEN.address_allowed(ipaddress.ip_address(address)), REFUSED[address]


@pytest.mark.parametrize("address", sorted(ALLOWED))
def test_addresses_that_lead_to_public_ones_are_allowed(address: str) -> None:
    assert is_public(ipaddress.ip_address(address)), ALLOWED[address]
    assert OPEN.address_allowed(ipaddress.ip_address(address)), ALLOWED[address]


# --------------------------------------------------------------------------- registration


@pytest.mark.parametrize("address", sorted(REFUSED))
async def test_registration_refuses_a_literal_that_leads_to_a_non_public_address(
    address: str,
) -> None:
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(UnsafeUrlError, match="not a public address"):
        await OPEN.check(f"https://{host}/hook")


async def test_registration_refuses_a_name_that_resolves_to_6to4_metadata(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def lookup(self: Guard, host: str, port: int) -> list[Any]:
        return [ipaddress.ip_address("2002:a9fe:a9fe::1")]

    monkeypatch.setattr(Guard, "lookup", lookup)
    with pytest.raises(UnsafeUrlError, match=r"resolves to 2002:a9fe:a9fe::1"):
        await OPEN.check("https://hooks.example.org/hook")


async def test_registration_accepts_6to4_of_a_public_address() -> None:
    await OPEN.check("https://[2002:808:808::1]/hook")


# --------------------------------------------------------------------------- connect time


class FixedResolver(AbstractResolver):
    """Answers every name with the given addresses."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.addresses
        ]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("address", ["2002:a9fe:a9fe::1", "2002:7f00:1::1", "fec0::1"])
async def test_the_resolver_refuses_embedded_non_public_addresses(address: str) -> None:
    resolver = GuardedResolver(OPEN, FixedResolver("8.8.8.8", address))

    with pytest.raises(UnsafeAddressError, match="not a public address"):
        await resolver.resolve("hooks.example.org", 443)


async def test_the_client_never_connects_to_a_name_that_resolves_to_6to4_loopback() -> None:
    resolver = GuardedResolver(OPEN, FixedResolver("2002:7f00:1::1"))
    connector = aiohttp.TCPConnector(resolver=resolver)
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await session.get("https://rebound.example.org/hook")

    assert isinstance(info.value.os_error, UnsafeAddressError)


async def test_the_resolver_passes_a_public_6to4_address() -> None:
    resolver = GuardedResolver(OPEN, FixedResolver("2002:808:808::1"))

    [result] = await resolver.resolve("hooks.example.org", 443)

    assert result["host"] == "2002:808:808::1"


# --------------------------------------------------------------------------- the allow-list


def test_an_allow_listed_ipv4_network_covers_the_forms_that_embed_it() -> None:
    guard = Guard.build(networks=["127.0.0.0/8"])

    for address in ("127.0.0.1", "::ffff:127.0.0.1", "2002:7f00:1::1", "64:ff9b::7f00:1"):
        assert guard.address_allowed(ipaddress.ip_address(address)), address
        assert guard.in_allowed_network(ipaddress.ip_address(address)), address
    for address in ("2002:a9fe:a9fe::1", "::ffff:10.0.0.1", "::1", "fec0::1"):
        assert not guard.address_allowed(ipaddress.ip_address(address)), address


def test_an_allow_listed_ipv6_network_is_allowed_as_it_is() -> None:
    guard = Guard.build(networks=["::1", "2002::/16", "fec0::/10"])

    for address in ("::1", "2002:a9fe:a9fe::1", "fec0::1"):
        assert guard.address_allowed(ipaddress.ip_address(address)), address
    assert not guard.address_allowed(ipaddress.ip_address("127.0.0.1"))
    assert not guard.address_allowed(ipaddress.ip_address("::ffff:a9fe:a9fe"))


async def test_plain_http_needs_every_embedded_address_allow_listed() -> None:
    guard = Guard.build(networks=["127.0.0.0/8"])

    await guard.check("http://[::ffff:127.0.0.1]:8080/hook")
    await guard.check("http://[2002:7f00:1::1]/hook")
    with pytest.raises(UnsafeUrlError, match="must use https"):
        await guard.check("http://[2002:808:808::1]/hook")  # public, but not listed
    teredo_half_listed = teredo(PUBLIC_SERVER, "127.0.0.1")
    await guard.check(f"https://[{teredo_half_listed}]/hook")
    with pytest.raises(UnsafeUrlError, match="must use https"):
        await guard.check(f"http://[{teredo_half_listed}]/hook")
