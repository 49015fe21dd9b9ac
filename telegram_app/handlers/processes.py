"""Tracked processes from the chat: a stalled run's "🗑 Dismiss" button."""

from __future__ import annotations

import logging

from channels.db import database_sync_to_async
from telegram import Update
from telegram.constants import ParseMode
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from notifications import services as notification_services
from notifications.models import TrackedProcess
from telegram_app import callbacks, store
from telegram_app.formatting import bold

logger = logging.getLogger(__name__)


async def dismiss_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Mark the stalled run lost: it leaves /status. One that came back is left alone."""
    query = update.callback_query
    account = await store.account_for(update)
    process_uuid = (query.data or "").removeprefix(f"{callbacks.PROCESS_DISMISS}:")
    process = await database_sync_to_async(notification_services.dismiss_process)(account, process_uuid)
    if process is None:
        await query.answer("That run is no longer known.", show_alert=True)
        return
    if process.state == TrackedProcess.State.RUNNING:
        await query.answer("It is running again (heartbeats came back); nothing was dismissed.", show_alert=True)
        return
    if process.state != TrackedProcess.State.LOST:
        await query.answer(f"It has already ended ({process.state}).", show_alert=True)
        return
    await query.answer("Dismissed.")
    before = query.message.text_html if query.message is not None and query.message.text else ""
    note = f"🗑 {bold('Dismissed')}: no longer shown in /status. A heartbeat would still bring it back."
    await query.edit_message_text(f"{before}\n\n{note}" if before else note, parse_mode=ParseMode.HTML,
                                  reply_markup=None, disable_web_page_preview=True)


_COMMANDS = {
    callbacks.PROCESS_STOP: "stop",
    callbacks.PROCESS_PAUSE: "pause",
    callbacks.PROCESS_RESUME: "resume",
    callbacks.PROCESS_ACTION: "action",
}
CONTROL_PATTERN = (
    rf"^(?:(?:{callbacks.PROCESS_STOP}|{callbacks.PROCESS_PAUSE}|{callbacks.PROCESS_RESUME}):[0-9a-f-]{{36}}"
    rf"|{callbacks.PROCESS_ACTION}:[0-9a-f-]{{36}}:\d{{1,2}})$"
)


async def control_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """⏹ Stop, ⏸ Pause, ▶ Resume or an action of a running run. The request waits on the server
    for the client's next heartbeat; the message's buttons follow through the outbox."""
    query = update.callback_query
    prefix, _, rest = (query.data or "").partition(":")
    process_uuid, _, index = rest.partition(":")
    account = await store.account_for(update)
    try:
        _process, answer = await database_sync_to_async(notification_services.control_process)(
            account, process_uuid, _COMMANDS[prefix], int(index) if index else None,
        )
    except notification_services.ServiceError as exc:
        await query.answer(str(exc), show_alert=True)
        if isinstance(exc, notification_services.ProcessEnded | notification_services.UnknownProcess):
            try:  # stale buttons: take them off the message
                await query.edit_message_reply_markup(reply_markup=None)
            except TelegramError as error:
                logger.info("could not remove stale process buttons: %s", error)
        return
    await query.answer(answer)
