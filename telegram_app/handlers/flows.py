"""/train, /predict (and renaming a model) as one conversation, so a user is in at most one flow at a time.

Two separate conversations would both be waiting for text after a user started one and then
the other; one conversation means starting a flow (or tapping "Predict with this model")
replaces whatever step the user was in.
"""

from __future__ import annotations

import warnings

from telegram.ext import CallbackQueryHandler, CommandHandler, ConversationHandler
from telegram.warnings import PTBUserWarning

from telegram_app import callbacks
from telegram_app.handlers import models, predict, train
from telegram_app.handlers.common import cancel


def conversation() -> ConversationHandler:
    with warnings.catch_warnings():
        # State is kept per user and chat on purpose: the buttons carry job ids, so they need
        # no per-message tracking, and PTB's reminder about it is noise.
        warnings.filterwarnings("ignore", message="If 'per_message=False'", category=PTBUserWarning)
        return ConversationHandler(
            entry_points=[*train.ENTRY_POINTS, *predict.ENTRY_POINTS, *models.ENTRY_POINTS],
            states={**train.STATES, **predict.STATES, **models.STATES},
            fallbacks=[
                CommandHandler("cancel", cancel),
                CallbackQueryHandler(cancel, pattern=f"^{callbacks.CANCEL}$"),
            ],
            name="flows",
            persistent=True,
            allow_reentry=True,
        )
