"""The real bot (``BotRuntime``, as ``manage.py runbot`` runs it) against the Telegram sandbox.

The runtime runs in its own thread and event loop, like the real process; tests act as a
Telegram user through the sandbox driver and wait on the chat, never on sleeps.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db import connections

from telegram_app.runtime import BotRuntime, RunOptions
from tg_sandbox.testing import SandboxDriver

_user_ids = itertools.count(7_000_001)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningBot:
    """A ``BotRuntime`` in a background thread with its own loop."""

    def __init__(self, options: RunOptions) -> None:
        self.runtime: BotRuntime | None = None
        self.options = options
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="bot-runtime", daemon=True)

    def _main(self) -> None:
        async def run() -> None:
            self.loop = asyncio.get_running_loop()
            self.runtime = BotRuntime(self.options)
            try:
                await self.runtime.start()
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                await self.runtime.stop()
                return
            self._ready.set()
            await self.runtime.stop_event.wait()
            await self.runtime.stop()
            # The runtime's ORM thread keeps its connection; close it so the test database can be dropped.
            await database_sync_to_async(connections.close_all)()

        asyncio.run(run())

    def start(self) -> RunningBot:
        self._thread.start()
        if not self._ready.wait(30):
            raise AssertionError(f"the bot runtime did not start within 30 s\n{_stacks()}")
        if self._error is not None:
            raise AssertionError(f"the bot runtime failed to start: {self._error!r}") from self._error
        return self

    def call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run sync ORM code ``func(*args, **kwargs)`` the way the runtime does, on its loop."""
        future = asyncio.run_coroutine_threadsafe(database_sync_to_async(func)(*args, **kwargs), self.loop)
        return future.result(30)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return  # stopped already (a test that stops it itself)
        if self.loop is not None and self.runtime is not None:
            self.loop.call_soon_threadsafe(self.runtime.stop_event.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), f"the bot runtime did not stop within 30 s\n{_stacks(self.loop)}"

    @property
    def sandbox_url(self) -> str:
        return self.runtime.sandbox.url

    @property
    def web_url(self) -> str:
        return self.runtime.web_url


def _stacks(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """Where every thread and the runtime's tasks are: what a start or stop that hangs waits on."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    threads = [
        f"--- thread {names.get(ident, ident)}\n" + "".join(traceback.format_stack(frame))
        for ident, frame in sys._current_frames().items()
    ]
    tasks = []
    for task in list(asyncio.all_tasks(loop)) if loop is not None and not loop.is_closed() else []:
        frames = task.get_stack()
        tasks.append(
            f"--- task {task.get_name()}\n"
            + "".join(traceback.format_list(traceback.extract_stack(frames[-1]) if frames else []))
        )
    pool = getattr(connections["default"], "pool", None)  # PostgreSQL: is the pool exhausted?
    return "\n".join(threads + tasks + ([f"--- database pool {pool.get_stats()}"] if pool is not None else []))


@pytest.fixture
def running_bot(transactional_db, settings) -> Iterator[RunningBot]:
    port = free_port()
    settings.PUBLIC_URL = f"http://127.0.0.1:{port}"
    bot = RunningBot(RunOptions(port=port, sandbox_port=0, sweep_interval=0.3)).start()
    yield bot
    bot.stop()


@pytest.fixture
def driver(running_bot) -> Iterator[SandboxDriver]:
    with SandboxDriver(running_bot.sandbox_url) as sandbox:
        yield sandbox


@pytest.fixture
def user(driver):
    return driver.user(next(_user_ids), first_name="Ann", username="ann")
