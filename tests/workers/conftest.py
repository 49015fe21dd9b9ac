"""Fixtures for driving the real ASGI app's worker WebSocket."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from accounts.models import Account
from statsbot_site.asgi import application
from workers.models import ConnectToken

MACHINE = {
    "machine_id": "m-1",
    "hostname": "ann-laptop",
    "platform": "Linux",
    "os_release": "6.1",
    "python": "3.11.7",
    "worker_version": "1.0.0",
    "packages": {"pandas": "2.2.3", "lightgbm": "4.5.0"},
    "models": ["lightgbm", "random_forest", "linear"],
}


def auth_frame(*, token: str | None = None, credential: str | None = None, **extra: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "auth", "machine": dict(MACHINE), "running_jobs": []}
    if token:
        frame["token"] = token
    if credential:
        frame["credential"] = credential
    frame.update(extra)
    return frame


def communicator(address: str = "10.0.0.1") -> WebsocketCommunicator:
    comm = WebsocketCommunicator(application, "/ws/worker/")
    comm.scope["client"] = (address, 5555)
    return comm


@pytest.fixture
def connect_token(db) -> Callable[[Account], Any]:
    async def issue(account: Account) -> str:
        _, raw = await database_sync_to_async(ConnectToken.issue)(account)
        return raw

    return issue


@pytest.fixture
async def open_sockets() -> AsyncIterator[list[WebsocketCommunicator]]:
    sockets: list[WebsocketCommunicator] = []
    yield sockets
    for comm in sockets:
        await comm.disconnect()


@pytest.fixture(autouse=True)
def _fresh_throttle():
    from workers.consumers import throttle

    throttle._failures.clear()
    yield
    throttle._failures.clear()
