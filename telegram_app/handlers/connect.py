"""/connect and the "Connect Local Worker" button: the one-line command with a fresh token."""

from __future__ import annotations

import logging

from telegram import Update
from telegram.ext import ContextTypes

from telegram_app import callbacks, store
from telegram_app.formatting import bold, code, since
from telegram_app.handlers.common import reply
from telegram_app.rendering.workers import away_since, restart_command

logger = logging.getLogger(__name__)


async def connect(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    account = await store.account_for(update)
    worker = await store.online_worker(account)
    replacing = update.callback_query is not None and update.callback_query.data == callbacks.CONNECT_REPLACE
    if worker is not None and not replacing:
        await reply(
            update,
            f"✅ {bold('Worker Already Connected')}\n\nMachine: {bold(worker.machine_name)}\n"
            f"Connected since {since(worker.connected_at)}.\n\n"
            "Connecting another machine replaces this one (one worker per account).",
            [[{"text": "🔁 Connect a different machine", "callback_data": callbacks.CONNECT_REPLACE}]],
        )
        return
    command = await store.issue_connect_command(account)
    away = await store.live_worker(account) if worker is None else None
    restart = (
        f"💤 Your worker on {bold(away.machine_name)} is offline {away_since(away)}. To bring it back, run "
        f"{code(restart_command(away))} on it — no new token needed.\n\nTo connect this or another machine "
        "anew (it replaces that one):\n\n"
        if away is not None else ""
    )
    text = (
        f"🔗 {bold('Connect Local Worker')}\n\n{restart}"
        "Run this in a terminal on the machine that has your data:\n\n"
        f"🍎🐧 macOS / Linux:\n{code(command.unix)}\n\n"
        f"🪟 Windows (PowerShell):\n{code(command.windows)}\n\n"
        "⏱️ Token expires in 5 minutes and works once.\n\n"
        f"{bold('Requirements')}: Python 3.9+. If pandas, scikit-learn, LightGBM or websockets are missing, the "
        f"worker offers to install them in a private environment ({code('~/.statsbot/venv')}).\n"
        "Your files stay on your machine; by default the worker may read files under your home folder only."
    )
    await reply(update, text)
