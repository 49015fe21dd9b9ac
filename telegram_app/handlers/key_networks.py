"""A key's IP allowlist from /status: "🌐 IPs NAME" shows it and takes the next text message as
the new list (CIDR networks, IPv4 or IPv6); "Allow any address" clears it. A pending edit is kept
in ``user_data`` for ten minutes, and a command instead of a list drops it (the command runs)."""

from __future__ import annotations

import logging
import time

from channels.db import database_sync_to_async
from telegram import Update
from telegram.ext import ApplicationHandlerStop, ContextTypes

from accounts.models import Account, ApiKey
from accounts.networks import MAX_NETWORKS, InvalidNetworks, split_entries
from telegram_app import callbacks, store
from telegram_app.formatting import bold, code, esc
from telegram_app.handlers.common import reply
from telegram_app.handlers.keys import (
    NETWORKS_PENDING,
    RENAME_PENDING,
    gone,
    key_id_of,
    pending_answer,
    tapped_key,
)

logger = logging.getLogger(__name__)

NETWORKS_TTL_S = 600


def networks_text(key: ApiKey) -> str:
    if not key.allowed_networks:
        return "any address (no allowlist)"
    return ", ".join(code(network) for network in key.allowed_networks)


async def networks_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """"🌐 IPs NAME": the current allowlist; the next text message replaces it."""
    key = await tapped_key(update)
    if key is None:
        return
    context.user_data.pop(RENAME_PENDING, None)
    context.user_data[NETWORKS_PENDING] = {"key": key.pk, "at": time.time()}
    buttons = [[{"text": "🌍 Allow any address", "callback_data": f"{callbacks.KEY_NETWORKS_ANY}:{key.pk}"}]]
    await reply(
        update,
        f"🌐 The key of {bold(key.label)} ({code(key.prefix + '…')}) is accepted from: {networks_text(key)}.\n\n"
        f"Send the addresses or networks it may be used from, separated by spaces or commas (at most "
        f"{MAX_NETWORKS}), e.g. {code('203.0.113.7 10.0.0.0/8 2001:db8::/32')}. Requests from anywhere else are "
        "refused with 403 ip_not_allowed. /cancel keeps the list.",
        buttons,
    )


@database_sync_to_async
def _set_networks(account: Account, key_id: int, entries: list[object]) -> tuple[ApiKey | None, str]:
    """The key with its new allowlist, or the key and the reason the list was refused."""
    key = ApiKey.objects.active().filter(account=account, pk=key_id).first()
    if key is None:
        return None, ""
    try:
        key.set_allowed_networks(entries)
    except InvalidNetworks as exc:
        return key, str(exc)
    return key, ""


async def any_address_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    account = await store.account_for(update)
    key_id = key_id_of(update.callback_query.data)
    key, _ = await _set_networks(account, key_id, []) if key_id is not None else (None, "")
    if key is None:
        await gone(update)
        return
    context.user_data.pop(NETWORKS_PENDING, None)
    logger.info("account %s cleared the allowlist of key %s", account.pk, key.prefix)
    await reply(update, f"🌍 The key of {bold(key.label)} is accepted from any address again.", edit=True)


async def networks_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The new allowlist after "🌐 IPs", ahead of every other handler; anything else passes through."""
    answer = await pending_answer(update, context, NETWORKS_PENDING, NETWORKS_TTL_S,
                                  "OK — the key keeps its allowed addresses.")
    if answer is None:
        return
    pending, text = answer
    account = await store.account_for(update)
    entries: list[object] = list(split_entries(text))
    key, problem = await _set_networks(account, int(pending.get("key", 0)), entries)
    if key is None:
        await reply(update, "That key is no longer active. /status lists your keys.")
    elif problem or not entries:
        context.user_data[NETWORKS_PENDING] = {"key": key.pk, "at": time.time()}  # try again
        await reply(update, f"❌ {esc(problem or 'Send at least one address or network.')}\n\nSend the list "
                    "again, or /cancel.")
    else:
        logger.info("account %s set %s allowed network(s) on key %s", account.pk, len(key.allowed_networks),
                    key.prefix)
        await reply(update, f"✅ The key of {bold(key.label)} is now accepted only from {networks_text(key)}. "
                    "Other addresses get 403 ip_not_allowed.")
    raise ApplicationHandlerStop
