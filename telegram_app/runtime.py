"""Everything ``manage.py runbot`` runs, in one asyncio loop.

- the Telegram sandbox, when no ``TELEGRAM_BOT_TOKEN`` is set (and no ``TELEGRAM_API_URL``);
- the bot (python-telegram-bot): long polling, or updates from the webhook view's table;
- the outbox sender and the periodic sweeps;
- unless ``web`` is off, the ASGI app (HTTP + worker WebSockets) served by uvicorn.

Tests start a ``BotRuntime`` in-process exactly as the command does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import uvicorn
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.routing import get_default_application
from django.conf import settings
from django.utils import timezone
from telegram import Update
from telegram.ext import Application, ApplicationBuilder

from core.layer import WEBHOOK_GROUP
from core.site import public_url, publish_bot
from telegram_app.commands import COMMANDS
from telegram_app.delivery import OutboxSender
from telegram_app.handlers import register
from telegram_app.models import IncomingUpdate
from telegram_app.persistence import DjangoPersistence
from telegram_app.sweeps import run_sweeps
from tg_sandbox import SandboxServer

logger = logging.getLogger(__name__)

MAX_WS_MESSAGE = 1024 * 1024  # as daphne: worker frames stay far below it


@dataclass
class RunOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    web: bool = True
    webhook: bool = False
    sandbox_host: str = "127.0.0.1"
    sandbox_port: int = 8081
    sweep_interval: float = 5.0


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside our loop: the runtime, not uvicorn, owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class BotRuntime:
    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self.stop_event = asyncio.Event()
        self.sandbox: SandboxServer | None = None
        self.application: Application | None = None
        self.web_server: _EmbeddedServer | None = None
        self.sender: OutboxSender | None = None
        self._tasks: list[asyncio.Task] = []

    @property
    def web_url(self) -> str:
        return f"http://{self.options.host}:{self.options.port}"

    async def start(self) -> None:
        application = self.application = self._build_application(await self._telegram_urls())
        await application.initialize()
        me = application.bot
        deep_link_base = f"{self.sandbox.url}/" if self.sandbox is not None else ""
        await database_sync_to_async(publish_bot)(
            username=settings.TELEGRAM_BOT_USERNAME or me.username, deep_link_base=deep_link_base
        )
        await me.set_my_commands(COMMANDS)
        await application.start()
        if self.options.webhook:
            await self._start_webhook_mode(application)
        else:
            assert application.updater is not None  # built with one unless in webhook mode
            await application.updater.start_polling(allowed_updates=["message", "callback_query"])
        self.sender = OutboxSender(application.bot)
        self._tasks.append(asyncio.create_task(self.sender.run(self.stop_event), name="outbox-sender"))
        self._tasks.append(
            asyncio.create_task(run_sweeps(self.stop_event, self.options.sweep_interval), name="sweeps")
        )
        if self.options.web:
            await self._start_web()
        logger.info("bot @%s running (%s)", me.username, "webhook" if self.options.webhook else "polling")

    async def _telegram_urls(self) -> tuple[str, str] | None:
        """The Bot API and file URLs: configured, the sandbox's, or None for the real Telegram."""
        if settings.TELEGRAM_API_URL:
            api = settings.TELEGRAM_API_URL
            return api, api[: -len("/bot")] + "/file/bot" if api.endswith("/bot") else api
        if not settings.TELEGRAM_USE_SANDBOX:
            return None  # the real Telegram
        self.sandbox = SandboxServer(token=settings.TELEGRAM_BOT_TOKEN, bot_username=settings.TELEGRAM_BOT_USERNAME)
        await self.sandbox.start(self.options.sandbox_host, self.options.sandbox_port)
        return self.sandbox.api_base_url, self.sandbox.file_base_url

    def _build_application(self, urls: tuple[str, str] | None) -> Application:
        builder = ApplicationBuilder().token(settings.TELEGRAM_BOT_TOKEN).persistence(DjangoPersistence())
        if urls is not None:
            builder = builder.base_url(urls[0]).base_file_url(urls[1])
        if self.options.webhook:
            builder = builder.updater(None)
        application = builder.build()
        register(application)
        return application

    async def _start_web(self) -> None:
        config = uvicorn.Config(
            get_default_application(),  # settings.ASGI_APPLICATION: HTTP + worker WebSockets
            host=self.options.host,
            port=self.options.port,
            lifespan="off",
            ws_max_size=MAX_WS_MESSAGE,
            log_level="warning",
            access_log=False,
        )
        self.web_server = _EmbeddedServer(config)
        self._tasks.append(asyncio.create_task(self.web_server.serve(), name="web"))
        while not self.web_server.started:
            if self._tasks[-1].done():
                await self._tasks[-1]  # raises the reason it could not start (port taken…)
                raise RuntimeError(f"the web server on {self.web_url} stopped at start")
            await asyncio.sleep(0.05)

    async def _start_webhook_mode(self, application: Application) -> None:
        url = f"{public_url()}/telegram/webhook/"
        await application.bot.set_webhook(
            url, secret_token=settings.TELEGRAM_WEBHOOK_SECRET or None, allowed_updates=["message", "callback_query"]
        )
        logger.info("webhook set to %s", url)
        self._tasks.append(asyncio.create_task(self._drain_webhook_updates(application), name="webhook-updates"))

    async def _drain_webhook_updates(self, application: Application) -> None:
        """Feed updates the webhook view stored into the application, oldest first; never stops on an error."""
        layer = get_channel_layer()
        channel = await layer.new_channel("updates.")
        await layer.group_add(WEBHOOK_GROUP, channel)
        while not self.stop_event.is_set():
            try:
                for row_id, data in await database_sync_to_async(_unprocessed_updates)():
                    await application.update_queue.put(Update.de_json(data, application.bot))
                    await database_sync_to_async(_mark_processed)(row_id)
            except Exception:
                logger.exception("webhook updates: a round failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(layer.receive(channel), timeout=1.0)

    async def stop(self) -> None:
        """Stop everything; claimed outbox rows are released by the sender, never lost."""
        self.stop_event.set()
        if self.web_server is not None:
            self.web_server.should_exit = True
        for task in self._tasks:
            if task.get_name() == "webhook-updates":
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.application is not None:
            if self.application.updater and self.application.updater.running:
                await self.application.updater.stop()
            if self.application.running:
                await self.application.stop()
            await self.application.shutdown()
        if self.sandbox is not None:
            await self.sandbox.stop()


def _unprocessed_updates(limit: int = 100) -> list[tuple[int, dict]]:
    rows = IncomingUpdate.objects.filter(processed_at__isnull=True).order_by("update_id")[:limit]
    return [(row.pk, row.data) for row in rows]


def _mark_processed(row_id: int) -> None:
    """Marked once queued: a crash before this hands the update over again (at least once)."""
    IncomingUpdate.objects.filter(pk=row_id, processed_at__isnull=True).update(processed_at=timezone.now())
