"""Fixtures for the Telegram sandbox tests (no database needed)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tg_sandbox import SandboxServer, SandboxThread
from tg_sandbox.testing import SandboxDriver


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    """A sandbox server running in the test's event loop."""
    server = SandboxServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def sandbox_thread() -> Iterator[SandboxThread]:
    """A sandbox server running in a background thread (for synchronous tests)."""
    with SandboxThread() as server:
        yield server


@pytest.fixture
def driver(sandbox_thread: SandboxThread) -> Iterator[SandboxDriver]:
    with SandboxDriver(sandbox_thread.url) as sandbox_driver:
        yield sandbox_driver
