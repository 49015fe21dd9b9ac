"""Every message gets an answer: free text, an unknown /command or a file outside any step.

The conversation (``/train``, ``/predict``) takes text while it waits for a path or a column; what
reaches these handlers matched nothing else, so the user gets a short help with buttons for the
steps most people want next, instead of silence.
"""

from __future__ import annotations

from telegram import Update
from telegram.ext import ContextTypes

from telegram_app import callbacks, store
from telegram_app.formatting import bold, code
from telegram_app.handlers.common import CONNECT_BUTTON, reply
from telegram_app.rendering import Buttons

HELP_BUTTON = {"text": "📖 All commands", "callback_data": callbacks.HELP}


def next_steps(online: bool) -> tuple[str, Buttons]:
    """The short help: what to do next, for a user with or without an online worker."""
    if online:
        lines = ["/train — train a model on a file on your machine",
                 "/predict — predict with one of your models",
                 "/jobs — what is running"]
        buttons: Buttons = [[{"text": "📚 My models", "callback_data": callbacks.MODELS},
                             {"text": "🗂 My jobs", "callback_data": callbacks.JOBS}],
                            [HELP_BUTTON]]
    else:
        lines = ["/connect — connect your machine (one command), then /train and /predict",
                 "/status — your key, worker and running processes"]
        buttons = [[CONNECT_BUTTON], [HELP_BUTTON]]
    return "\n".join(lines), buttons


async def unknown(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    message = update.effective_message
    text = (message.text or "").strip() if message is not None else ""
    account = await store.account_for(update)
    online = await store.online_worker(account) is not None
    steps, buttons = next_steps(online)
    if text.startswith("/"):
        command = text.split()[0].split("@")[0][:40]
        opening = f"🤔 I don't know {code(command)}."
    elif text:
        opening = ("🤔 I only understand commands here — nothing is waiting for text right now.\n"
                   "To train on a file, send /train first, then its path.")
    else:
        opening = (f"📎 I can't take files here: your data stays on your machine. "
                   f"Send /train and then the file's {bold('path')} on the machine running your worker.")
    await reply(update, f"{opening}\n\n{steps}", buttons)
