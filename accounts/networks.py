"""A key's IP allowlist: CIDR networks (IPv4 and IPv6), parsed strictly and matched against
the client address as ``core.client_address`` sees it. An empty list allows every address."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

MAX_NETWORKS = 20
MAX_ENTRY_CHARS = 64

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class InvalidNetworks(ValueError):
    """An allowlist that cannot be stored; the message names the entry at fault."""


def split_entries(text: str) -> list[str]:
    """The entries of a pasted list: separated by commas, spaces or new lines."""
    return [entry for entry in text.replace(",", " ").split() if entry]


def parse_networks(entries: Iterable[object]) -> list[str]:
    """``entries`` as normalised CIDR strings (``10.0.0.7`` → ``10.0.0.7/32``; host bits of a
    network such as ``10.1.2.3/16`` are cleared), duplicates dropped, in the given order.
    Raises :class:`InvalidNetworks` naming the first bad entry, or when there are too many."""
    networks: list[str] = []
    for entry in entries:
        if not isinstance(entry, str):
            raise InvalidNetworks(f"{entry!r} is not a network: write it as text such as 203.0.113.0/24")
        text = entry.strip()
        if len(text) > MAX_ENTRY_CHARS:
            raise InvalidNetworks(f"{text[:MAX_ENTRY_CHARS]}… is too long to be an IP network")
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise InvalidNetworks(
                f"{text!r} is not an IP address or CIDR network (e.g. 203.0.113.7, 10.0.0.0/8, 2001:db8::/32)"
            ) from None
        if str(network) not in networks:
            networks.append(str(network))
    if len(networks) > MAX_NETWORKS:
        raise InvalidNetworks(f"{len(networks)} networks given; a key takes at most {MAX_NETWORKS}")
    return networks


def address_allowed(address: str, networks: Iterable[str]) -> bool:
    """True when ``networks`` is empty or one of them holds ``address`` (an IPv4-mapped IPv6
    address counts as its IPv4 address). An address that does not parse is never allowed."""
    networks = list(networks)
    if not networks:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for text in networks:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:  # never stored by parse_networks; a hand-edited row allows nothing more
            continue
        if ip.version == network.version and ip in network:
            return True
    return False
