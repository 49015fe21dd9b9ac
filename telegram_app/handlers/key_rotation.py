"""Rotating a notification key from /status: a new key for the same machine, shown once, while
the old one keeps working for a grace period chosen from buttons (then it answers ``key_expired``)."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

from channels.db import database_sync_to_async
from telegram import Update
from telegram.ext import ContextTypes

from accounts.models import DEFAULT_GRACE, GRACE_CHOICES, Account, ApiKey
from core.state_machine import InvalidTransition
from telegram_app import callbacks, store
from telegram_app.formatting import bold, code
from telegram_app.handlers.common import reply
from telegram_app.handlers.keys import gone, tapped_key, until

logger = logging.getLogger(__name__)

_GRACE_REF = re.compile(rf"^{callbacks.KEY_ROTATE_GRACE}:(?P<key>\d{{1,18}}):(?P<seconds>\d{{1,8}})$")
_GRACES = {int(grace.total_seconds()) for grace in GRACE_CHOICES}


def grace_label(grace: timedelta) -> str:
    """1 hour, 24 hours, 7 days."""
    hours = int(grace.total_seconds() // 3600)
    if hours % 24 == 0 and hours > 24:
        return f"{hours // 24} days"
    return "1 hour" if hours == 1 else f"{hours} hours"


def grace_buttons(key: ApiKey) -> list[list[dict[str, str]]]:
    """One button per grace period (the default first and marked), and Cancel."""
    row = []
    for grace in GRACE_CHOICES:
        mark = " (default)" if grace == DEFAULT_GRACE else ""
        row.append({"text": f"⏳ {grace_label(grace)}{mark}",
                    "callback_data": f"{callbacks.KEY_ROTATE_GRACE}:{key.pk}:{int(grace.total_seconds())}"})
    return [row, [{"text": "Keep the key", "callback_data": callbacks.CANCEL}]]


async def rotate_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """"🔄 Rotate NAME": explain, and ask how long the old key keeps working."""
    key = await tapped_key(update)
    if key is None:
        return
    if key.replaced_by_id is not None:
        await reply(update, f"The key of {bold(key.label)} was rotated already; rotate its new key instead "
                    "(/status).", edit=True)
        return
    await reply(
        update,
        f"🔄 Rotate the key of {bold(key.label)} ({code(key.prefix + '…')})?\n\nI issue a new key for that "
        "machine and show it once. The old key keeps working for the grace period you pick, so running "
        "scripts go on; after it, it is refused (key_expired). Scripts re-read EXPERIMENT_BOT_KEY from "
        ".env when that happens, so putting the new key there is enough.",
        grace_buttons(key),
        edit=True,
    )


@database_sync_to_async
def _rotate(account: Account, key_id: int, grace: timedelta) -> tuple[ApiKey | None, ApiKey | None, str]:
    key = ApiKey.objects.active().filter(account=account, pk=key_id).first()
    if key is None:
        return None, None, ""
    try:
        successor, raw = key.rotate(grace)
    except InvalidTransition:
        return key, None, ""
    return key, successor, raw


async def rotate_grace(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A grace button: the new key now (shown once), the old one until the end of the grace period."""
    account = await store.account_for(update)
    match = _GRACE_REF.match(update.callback_query.data or "")
    if match is None or int(match.group("seconds")) not in _GRACES:
        await update.callback_query.answer("This button is out of date. Send /status again.", show_alert=True)
        return
    grace = timedelta(seconds=int(match.group("seconds")))
    old, new, raw = await _rotate(account, int(match.group("key")), grace)
    if old is None:
        await gone(update)
        return
    if new is None:
        await reply(update, f"The key of {bold(old.label)} was rotated already; /status shows its new key.",
                    edit=True)
        return
    logger.info("account %s rotated key %s to %s (grace %ss)", account.pk, old.prefix, new.prefix,
                int(grace.total_seconds()))
    assert old.expires_at is not None
    await reply(
        update,
        f"🔄 New key for {bold(new.name) if new.name else 'this chat'} — shown only this once, keep it "
        f"secret:\n{code(raw)}\n\n"
        f"The old key {code(old.prefix + '…')} keeps working until {until(old.expires_at)}, then it is "
        f"refused. Put the new key in that machine's .env as {code('EXPERIMENT_BOT_KEY=…')} (running scripts "
        f"pick it up from there), or run {code('experiment_bot.setup()')} on it to pair it again.",
        edit=True,
    )
