"""``/dashboard``: one message listing every running process, kept edited (``telegram_app.dashboards``)."""

from __future__ import annotations

from channels.db import database_sync_to_async
from telegram import Update
from telegram.ext import ContextTypes

from telegram_app import dashboards, store
from telegram_app.handlers.common import reply

USAGE = "/dashboard — a live list of your running processes · /dashboard stop — stop updating it"


async def dashboard(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The dashboard itself goes out through the outbox (so its edits are paced and coalesced);
    this handler only answers ``stop`` and wrong arguments directly."""
    account = await store.account_for(update)
    args = [arg.lower() for arg in (context.args or [])]
    if not args:
        await database_sync_to_async(dashboards.open_dashboard)(account)
        return
    if args in (["stop"], ["off"]):
        stopped = await database_sync_to_async(dashboards.stop_dashboard)(account)
        await reply(update, "⏹ Dashboard stopped." if stopped else "No dashboard is updating. " + USAGE)
        return
    await reply(update, USAGE)
