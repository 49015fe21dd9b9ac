"""Every handler of the bot, registered in one place."""

from __future__ import annotations

import html
import logging

from telegram import Update
from telegram.constants import ChatType, ParseMode
from telegram.ext import (
    Application,
    ApplicationHandlerStop,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    TypeHandler,
    filters,
)

from telegram_app import callbacks
from telegram_app.commands import COMMANDS
from telegram_app.handlers import (
    connect,
    fallback,
    flows,
    jobs,
    key_networks,
    key_rotation,
    keys,
    models,
    processes,
    start,
    worker,
)
from telegram_app.handlers import dashboard as live_dashboard
from telegram_app.handlers import digest as failure_digest

logger = logging.getLogger(__name__)


__all__ = ["COMMANDS", "register"]


async def private_only(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """StatsBot shows keys, tokens and file paths: it talks in private chats only."""
    chat = update.effective_chat
    if chat is None or chat.type == ChatType.PRIVATE:
        return
    if update.message is not None and update.message.text and update.message.text.startswith("/"):
        await update.message.reply_text(
            f"I only work in a private chat, where your keys and files stay private: message me at "
            f"@{context.bot.username}."
        )
    elif update.callback_query is not None:
        await update.callback_query.answer("Please use me in a private chat.", show_alert=True)
    raise ApplicationHandlerStop


async def stale_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A button no handler takes any more (a finished step, an old message): say so, never spin."""
    await update.callback_query.answer("This button is out of date. Send the command again.", show_alert=True)


async def dismiss(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A Cancel/Keep button outside any conversation: nothing to undo."""
    await update.callback_query.answer()
    await update.callback_query.edit_message_text("OK — nothing changed.")


async def cancel_outside(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await update.effective_chat.send_message("Nothing to cancel. /help lists what I can do.")


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log every handler failure, and tell the user something went wrong instead of going silent."""
    logger.error("handler failed for update %s", getattr(update, "update_id", "?"), exc_info=context.error)
    if isinstance(update, Update) and update.effective_chat is not None:
        try:
            await update.effective_chat.send_message(
                "😵 Something went wrong on our side; it was logged. Please try again, or /cancel.\n"
                f"<i>{html.escape(type(context.error).__name__)}</i>",
                parse_mode=ParseMode.HTML,
            )
        except Exception:
            logger.warning("could not tell the user about the failure", exc_info=True)


def register(application: Application) -> None:
    application.add_handler(TypeHandler(Update, private_only), group=-1)
    # A key's new name after "✏️ Rename" comes before any conversation step (it stops the update).
    application.add_handler(MessageHandler(filters.TEXT & filters.ChatType.PRIVATE, keys.rename_text), group=-2)
    application.add_handler(MessageHandler(filters.TEXT & filters.ChatType.PRIVATE, key_networks.networks_message),
                            group=-3)
    application.add_handler(flows.conversation())
    application.add_handler(CommandHandler("start", start.start))
    application.add_handler(CommandHandler("help", start.help_command))
    application.add_handler(CommandHandler("status", start.status))
    application.add_handler(CommandHandler("dashboard", live_dashboard.dashboard))
    application.add_handler(CommandHandler("revoke", start.revoke))
    application.add_handler(CommandHandler("connect", connect.connect))
    application.add_handler(CommandHandler("worker", worker.worker))
    application.add_handler(CommandHandler("models", models.list_models))
    application.add_handler(CommandHandler("jobs", jobs.list_jobs))
    application.add_handler(CommandHandler("cancel", cancel_outside))
    application.add_handler(CallbackQueryHandler(start.help_command, pattern=f"^{callbacks.HELP}$"))
    application.add_handler(CallbackQueryHandler(start.new_key, pattern=f"^{callbacks.NEW_KEY}$"))
    application.add_handler(CallbackQueryHandler(start.confirm_revoke, pattern=f"^{callbacks.KEY_REVOKE}$"))
    application.add_handler(CallbackQueryHandler(models.list_models, pattern=f"^{callbacks.MODELS}$"))
    application.add_handler(CallbackQueryHandler(jobs.list_jobs, pattern=f"^{callbacks.JOBS}$"))
    application.add_handler(CallbackQueryHandler(start.approve_pairing, pattern=f"^{callbacks.PAIR_APPROVE}"))
    application.add_handler(CallbackQueryHandler(keys.rename_button, pattern=rf"^{callbacks.KEY_RENAME}:\d+$"))
    application.add_handler(CallbackQueryHandler(keys.revoke_button, pattern=rf"^{callbacks.KEY_REVOKE_ONE}:\d+$"))
    application.add_handler(CallbackQueryHandler(keys.revoke_yes, pattern=rf"^{callbacks.KEY_REVOKE_YES}:\d+$"))
    application.add_handler(CallbackQueryHandler(key_rotation.rotate_button, pattern=rf"^{callbacks.KEY_ROTATE}:\d+$"))
    application.add_handler(
        CallbackQueryHandler(key_rotation.rotate_grace, pattern=rf"^{callbacks.KEY_ROTATE_GRACE}:\d+:\d+$")
    )
    application.add_handler(
        CallbackQueryHandler(key_networks.networks_button, pattern=rf"^{callbacks.KEY_NETWORKS}:\d+$")
    )
    application.add_handler(
        CallbackQueryHandler(key_networks.any_address_button, pattern=rf"^{callbacks.KEY_NETWORKS_ANY}:\d+$")
    )
    application.add_handler(CallbackQueryHandler(processes.dismiss_button,
                                                 pattern=rf"^{callbacks.PROCESS_DISMISS}:[0-9a-f-]{{36}}$"))
    application.add_handler(CallbackQueryHandler(processes.control_button, pattern=processes.CONTROL_PATTERN))
    application.add_handler(CallbackQueryHandler(failure_digest.run_alert_button,
                                                 pattern=rf"^{callbacks.PROCESS_ALERT}:[0-9a-f-]{{36}}$"))
    application.add_handler(CallbackQueryHandler(connect.connect, pattern=f"^{callbacks.CONNECT}(:replace)?$"))
    application.add_handler(CallbackQueryHandler(worker.autostart_button, pattern=f"^{callbacks.WORKER_AUTOSTART}"))
    application.add_handler(CallbackQueryHandler(worker.disconnect_button, pattern=f"^{callbacks.WORKER_DISCONNECT}"))
    application.add_handler(
        CallbackQueryHandler(models.ask_delete, pattern=callbacks.pattern(callbacks.MODEL_DELETE))
    )
    application.add_handler(
        CallbackQueryHandler(models.confirm_delete, pattern=callbacks.pattern(callbacks.MODEL_DELETE_YES))
    )
    application.add_handler(CallbackQueryHandler(jobs.cancel_button, pattern=callbacks.pattern(callbacks.JOB_CANCEL)))
    application.add_handler(
        CallbackQueryHandler(jobs.stop_early_button, pattern=callbacks.pattern(callbacks.JOB_STOP_EARLY))
    )
    application.add_handler(CallbackQueryHandler(dismiss, pattern=f"^{callbacks.CANCEL}$"))
    application.add_handler(CallbackQueryHandler(stale_button))  # last: whatever nothing else took
    # Every message gets an answer: what no command or step took (text, unknown commands, files).
    application.add_handler(MessageHandler(filters.UpdateType.MESSAGE, fallback.unknown))
    application.add_error_handler(on_error)
