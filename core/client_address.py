"""The address of the client behind an HTTP request or a WebSocket, for per-address limits.

With ``settings.TRUSTED_PROXY_COUNT = n`` (0 by default) n reverse proxies stand in front of
the web process, and each appends the address it received the request from to
``X-Forwarded-For``. The client is therefore the n-th entry from the right: what stands further
left was written by the client itself and is never believed. With n = 0 the header is ignored
and the peer address of the connection is the client. A header with fewer than n entries (a
request that reached the server around the proxies) falls back to the peer address.

The ASGI server must not rewrite the peer address from the header itself (daphne's
``--proxy-headers`` takes the leftmost entry, which anybody can set): the Procfile runs without it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from django.conf import settings
from django.http import HttpRequest

UNKNOWN = "0.0.0.0"  # a placeholder when the peer address is missing or not an IP address


def _valid(address: str) -> str | None:
    address = address.strip()
    if address.startswith("[") and "]" in address:  # "[::1]:443"
        address = address[1 : address.index("]")]
    elif address.count(":") == 1:  # "10.0.0.1:443"
        address = address.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


def pick(peer: str | None, forwarded_for: Iterable[str], proxies: int | None = None) -> str:
    """The client address given the peer address and every ``X-Forwarded-For`` header value."""
    proxies = settings.TRUSTED_PROXY_COUNT if proxies is None else proxies
    if proxies > 0:
        entries = [entry for value in forwarded_for for entry in value.split(",")]
        if len(entries) >= proxies:
            return _valid(entries[-proxies]) or UNKNOWN
    return _valid(peer or "") or UNKNOWN


def of_request(request: HttpRequest) -> str:
    """The client address of a Django request (a valid IP address; ``0.0.0.0`` when unknown)."""
    header = request.META.get("HTTP_X_FORWARDED_FOR")
    return pick(request.META.get("REMOTE_ADDR"), [header] if header else [])


def of_scope(scope: Mapping) -> str:
    """The client address of an ASGI scope (a Channels consumer's ``self.scope``)."""
    client = scope.get("client") or (None, None)
    values = [value.decode("latin-1") for name, value in scope.get("headers", ()) if name == b"x-forwarded-for"]
    return pick(client[0], values)
