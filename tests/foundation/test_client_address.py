"""core.client_address: the client behind a request or a WebSocket, proxies counted, never spoofed."""

import pytest

from core.client_address import UNKNOWN, of_scope, pick


@pytest.mark.parametrize(("peer", "forwarded", "proxies", "client"), [
    ("203.0.113.5", [], 0, "203.0.113.5"),
    ("203.0.113.5", ["198.51.100.9"], 0, "203.0.113.5"),  # no proxy trusted: the header is the client's own
    ("10.0.0.2", ["198.51.100.9"], 1, "198.51.100.9"),
    ("10.0.0.2", ["1.2.3.4, 198.51.100.9"], 1, "198.51.100.9"),  # what the client wrote is further left
    ("10.0.0.3", ["1.2.3.4, 198.51.100.9, 10.0.0.2"], 2, "198.51.100.9"),
    ("10.0.0.3", ["1.2.3.4", "198.51.100.9, 10.0.0.2"], 2, "198.51.100.9"),  # the header given twice
    ("10.0.0.2", [], 1, "10.0.0.2"),  # reached the server around the proxy
    ("10.0.0.2", ["not-an-address"], 1, UNKNOWN),
    ("10.0.0.2", ["[2001:db8::1]:443"], 1, "2001:db8::1"),
    ("10.0.0.2", ["198.51.100.9:5555"], 1, "198.51.100.9"),
    (None, [], 0, UNKNOWN),
])
def test_it_picks_the_address_the_trusted_proxies_saw(peer, forwarded, proxies, client):
    assert pick(peer, forwarded, proxies) == client


def test_it_reads_a_websocket_scope(settings):
    settings.TRUSTED_PROXY_COUNT = 1
    scope = {"client": ("10.0.0.2", 5000), "headers": [(b"x-forwarded-for", b"6.6.6.6, 198.51.100.9")]}
    assert of_scope(scope) == "198.51.100.9"
    settings.TRUSTED_PROXY_COUNT = 0
    assert of_scope(scope) == "10.0.0.2"
    assert of_scope({}) == UNKNOWN
