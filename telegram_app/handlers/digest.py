"""A failure digest's per-run buttons: "🔎 <run>" sends that run's own full alert."""

from __future__ import annotations

from channels.db import database_sync_to_async
from telegram import Update
from telegram.ext import ContextTypes

from notifications import digests
from notifications.models import TrackedProcess
from telegram_app import callbacks, store


async def run_alert_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Queue the run's full alert (error, traceback, chart); the digest itself stays as it is."""
    query = update.callback_query
    account = await store.account_for(update)
    process_uuid = (query.data or "").removeprefix(f"{callbacks.PROCESS_ALERT}:")
    process = await database_sync_to_async(digests.send_run_alert)(account, process_uuid)
    if process is None:
        await query.answer("That run is no longer known.", show_alert=True)
    elif process.state == TrackedProcess.State.RUNNING:
        await query.answer("It is running again (heartbeats came back).", show_alert=True)
    else:
        await query.answer("Sending its details…")
