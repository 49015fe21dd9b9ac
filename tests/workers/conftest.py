"""Fixtures for driving the real ASGI app's worker WebSocket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from accounts.models import Account
from statsbot_site.asgi import application
from workers.models import ConnectToken
from workers.script import latest_version

MACHINE = {
    "machine_id": "m-1",
    "hostname": "ann-laptop",
    "platform": "Linux",
    "os_release": "6.1",
    "python": "3.11.7",
    "worker_version": latest_version(),  # up to date: no update offered
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


_created: list[WebsocketCommunicator] = []


def communicator(address: str = "10.0.0.1") -> WebsocketCommunicator:
    comm = WebsocketCommunicator(application, "/ws/worker/")
    comm.scope["client"] = (address, 5555)
    _created.append(comm)
    return comm


@pytest.fixture(autouse=True)
async def _disconnect_every_communicator() -> AsyncIterator[None]:
    """Every consumer a test started ends by a disconnect, as a real socket's does. A consumer left
    running is cancelled by the loop's shutdown instead, mid-wait on the Redis layer, and that
    wait holds the test's teardown (PostgreSQL + Redis pass)."""
    yield
    loop = asyncio.get_running_loop()
    while _created:
        comm = _created.pop()
        future = getattr(comm, "future", None)
        if future is None or future.done() or future.get_loop() is not loop:
            continue  # never started, already over, or run by a loop of its own (hypothesis tests)
        try:
            await comm.disconnect()
        except (Exception, asyncio.CancelledError):  # the test already saw it end
            pass


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


@pytest.fixture
def pauses(monkeypatch) -> list[float]:
    """What the consumer was asked to wait (the clock is the boundary; nothing really sleeps)."""
    asked: list[float] = []

    async def pause(seconds: float) -> None:
        asked.append(seconds)

    from workers import consumers

    monkeypatch.setattr(consumers, "pause", pause)
    return asked
