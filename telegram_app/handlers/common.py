"""Pieces every handler uses: replying to a message or a button tap alike, and /cancel."""

from __future__ import annotations

from channels.db import database_sync_to_async
from telegram import Update
from telegram.constants import ParseMode
from telegram.ext import ContextTypes, ConversationHandler

from telegram_app import callbacks, store
from telegram_app.markup import keyboard
from telegram_app.rendering import Buttons
from telegram_app.rendering.workers import offline_text


async def reply(update: Update, text: str, buttons: Buttons | None = None, *, edit: bool = False) -> None:
    """Answer a command or a button tap. ``edit`` replaces the tapped message instead of adding one."""
    markup = keyboard(buttons or [])
    query = update.callback_query
    if query is not None:
        await query.answer()
        if edit and query.message is not None:
            await query.edit_message_text(text, parse_mode=ParseMode.HTML, reply_markup=markup,
                                          disable_web_page_preview=True)
            return
    await update.effective_chat.send_message(text, parse_mode=ParseMode.HTML, reply_markup=markup,
                                             disable_web_page_preview=True)


CONNECT_BUTTON = {"text": "🔌 Connect Local Worker", "callback_data": callbacks.CONNECT}


async def cancel(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    """``/cancel`` (or a Cancel button) in any conversation."""
    for flow in ("train", "predict", "rename"):
        context.user_data.pop(flow, None)
    await reply(update, "Cancelled. Nothing was started. /help lists what I can do.", edit=update.callback_query is not None)
    return ConversationHandler.END


async def no_worker(update: Update) -> int:
    """``/train``, ``/predict``, ``/models`` without an online worker. Offline is not absent: a worker
    that is only away gets its name, how long it has been away and the command that restarts it."""
    account = await store.account_for(update)
    worker = await store.live_worker(account)
    if worker is not None:
        await reply(update, await database_sync_to_async(offline_text)(worker),
                    [[{"text": "🔁 Connect a different machine", "callback_data": callbacks.CONNECT_REPLACE}]])
        return ConversationHandler.END
    await reply(
        update,
        "🖥️ No local worker is connected.\n\nTraining and prediction run on your own machine, on files that "
        "never leave it. Connect it first — it takes one command:",
        [[CONNECT_BUTTON]],
    )
    return ConversationHandler.END
