"""Running the sandbox: ``SandboxServer`` (in the current event loop) and ``SandboxThread``
(its own loop in a background thread, for synchronous code and tests)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from . import botapi, userapi
from .flood import FloodConfig
from .state import DEFAULT_BOT_FIRST_NAME, DEFAULT_BOT_USERNAME, DEFAULT_TOKEN, SandboxState
from .webhook import WebhookDispatcher

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
MAX_REQUEST_SIZE = 60 * 1024 * 1024


async def _chat_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "chat.html", headers={"Cache-Control": "no-cache"})


def build_app(state: SandboxState) -> web.Application:
    """The aiohttp application serving the Bot API, the user API and the web chat for ``state``."""
    app = web.Application(client_max_size=MAX_REQUEST_SIZE)
    app[botapi.STATE_KEY] = state
    botapi.add_routes(app)
    userapi.add_routes(app)
    app.router.add_get("/", _chat_page)
    app.router.add_static("/static/", STATIC_DIR)
    return app


class SandboxServer:
    """The Telegram sandbox as an aiohttp server in the running event loop.

    ``state`` exists from construction, so faults or users can be prepared before ``start()``.
    ``token`` / ``bot_username`` given as None or "" fall back to the defaults.
    """

    def __init__(
        self,
        token: str | None = DEFAULT_TOKEN,
        *,
        bot_username: str | None = DEFAULT_BOT_USERNAME,
        bot_first_name: str = DEFAULT_BOT_FIRST_NAME,
        flood_control: bool | FloodConfig = True,
        strict_html_ampersand: bool = True,
        webhook_max_attempts: int = 4,
    ) -> None:
        self.state = SandboxState(
            token or DEFAULT_TOKEN,
            bot_username=bot_username or DEFAULT_BOT_USERNAME,
            bot_first_name=bot_first_name,
            flood_control=flood_control,
            strict_html_ampersand=strict_html_ampersand,
            webhook_max_attempts=webhook_max_attempts,
        )
        self.app = build_app(self.state)
        self._runner: web.AppRunner | None = None
        self._webhooks = WebhookDispatcher(self.state)
        self.host = "127.0.0.1"
        self.port = 0

    @property
    def token(self) -> str:
        return self.state.token

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8081`` (the web chat is at ``url + "/"``)."""
        if self._runner is None:
            raise RuntimeError("the sandbox is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def api_base_url(self) -> str:
        """python-telegram-bot's ``base_url``: ``url + "/bot"``."""
        return f"{self.url}/bot"

    @property
    def file_base_url(self) -> str:
        """python-telegram-bot's ``base_file_url``: ``url + "/file/bot"``."""
        return f"{self.url}/file/bot"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> SandboxServer:
        """Listen on ``host:port`` (port 0 picks a free one); returns self."""
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        self.host = host
        self.port = runner.addresses[0][1]
        self._webhooks.start()
        logger.info("Telegram sandbox listening on %s (bot @%s)", self.url, self.state.bot_username)
        return self

    async def stop(self) -> None:
        """Close long polls, stop webhook delivery and the server."""
        self.state.close()
        await self._webhooks.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        logger.info("Telegram sandbox stopped")

    async def __aenter__(self) -> SandboxServer:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


class SandboxThread:
    """A ``SandboxServer`` running in a background thread with its own event loop.

    Use as a context manager (``with SandboxThread() as sandbox: sandbox.url``) or call
    ``start()`` / ``stop()``. Keyword arguments go to ``SandboxServer``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **server_options: Any) -> None:
        self.host = host
        self.port = port
        self.server = SandboxServer(**server_options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def state(self) -> SandboxState:
        return self.server.state

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def api_base_url(self) -> str:
        return self.server.api_base_url

    @property
    def file_base_url(self) -> str:
        return self.server.file_base_url

    @property
    def token(self) -> str:
        return self.server.token

    def start(self, timeout: float = 10.0) -> SandboxThread:
        self._thread = threading.Thread(target=self._run, name="telegram-sandbox", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the Telegram sandbox did not start in time")
        if self._error is not None:
            raise RuntimeError("the Telegram sandbox failed to start") from self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.server.start(self.host, self.port))
        except BaseException as error:  # reported to start()
            self._error = error
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self.server.stop())
            loop.close()

    def call(self, function: Callable[..., Any], *args: Any, timeout: float = 30.0, **kwargs: Any) -> Any:
        """Run ``function(*args, **kwargs)`` on the sandbox loop (awaiting it if it is a
        coroutine function) and return its result; for touching ``state`` from this thread."""
        if self._loop is None:
            raise RuntimeError("the sandbox is not started")

        async def invoke() -> Any:
            result = function(*args, **kwargs)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(invoke(), self._loop).result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> SandboxThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
