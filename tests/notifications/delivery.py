"""Delivering the outbox to the sandbox in a test: the real sender, the real renderer."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from channels.db import database_sync_to_async
from telegram import Bot

from accounts.models import Account
from core.models import OutboxMessage
from telegram_app.delivery import OutboxSender, Pacer
from tg_sandbox import SandboxThread
from tg_sandbox.testing import SandboxDriver

WAITING = [OutboxMessage.State.PENDING, OutboxMessage.State.SENDING]


def deliver_all(account: Account, timeout: float = 20) -> list[dict[str, Any]]:
    """Send every queued row to ``account``'s chat in a fresh sandbox; the messages the chat got."""
    with SandboxThread() as sandbox, SandboxDriver(sandbox.url) as driver:
        user = driver.user(account.telegram_user_id, first_name="Ann")
        user.send("hello")
        bot = Bot(sandbox.state.token, base_url=sandbox.api_base_url, base_file_url=sandbox.file_base_url)
        sender = OutboxSender(bot, name="test", pacer=Pacer(chat_rate=20, chat_burst=20))

        async def rounds() -> None:
            async with sender.bot:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    if await sender.run_once():
                        continue
                    if not await database_sync_to_async(OutboxMessage.objects.filter(state__in=WAITING).exists)():
                        return
                    await asyncio.sleep(0.05)  # a retry is due later
            raise AssertionError(f"outbox not delivered in {timeout}s")

        asyncio.run(rounds())
        return user.bot_messages()
