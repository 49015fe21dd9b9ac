"""Notification keys, one per machine: listed in /status, each revoked or renamed from its buttons.

Renaming takes the next text message: a pending rename is kept in ``user_data`` for ten
minutes, and a command instead of a name drops it (the command runs as usual).
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime

from channels.db import database_sync_to_async
from django.utils import timezone
from telegram import Update
from telegram.constants import ChatType
from telegram.ext import ApplicationHandlerStop, ContextTypes

from accounts.models import Account, ApiKey
from core.state_machine import InvalidTransition
from telegram_app import callbacks, store
from telegram_app.formatting import ago, bold, code, duration, esc
from telegram_app.handlers.common import reply
from telegram_app.rendering import Buttons

logger = logging.getLogger(__name__)

RENAME_PENDING = "rename_key"  # user_data: {"key": id, "at": unix time}
NETWORKS_PENDING = "key_networks"  # the same for a key's new IP allowlist (handlers.key_networks)
RENAME_TTL_S = 600
MAX_KEY_BUTTONS = 10
_KEY_REF = re.compile(r"^(?P<prefix>[a-z]+):(?P<key>\d{1,18})$")


def key_lines(keys: list[ApiKey]) -> list[str]:
    """/status's key section: one line per active key, by machine name, with its last use."""
    if not keys:
        return ["🔑 Keys: none — /revoke or the button in /start issues one"]
    lines = [f"🔑 {bold('Keys')} ({len(keys)}, one per machine):"]
    for key in keys:
        name = f"{bold(key.name)} · " if key.name else ""
        line = f"  • {name}{code(key.prefix + '…')} · last used {ago(key.last_used_at)}"
        if key.expires_at is not None:
            line += f" · ⏳ rotated, works until {until(key.expires_at)}"
        if key.allowed_networks:
            line += f" · 🌐 only from {esc(', '.join(key.allowed_networks[:3]))}"
            line += f" (+{len(key.allowed_networks) - 3})" if len(key.allowed_networks) > 3 else ""
        lines.append(line)
    return lines


def until(moment: datetime) -> str:
    """A grace period's end: the UTC time and how far away it is."""
    left = duration((moment - timezone.now()).total_seconds())
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC (in {left})"


def key_buttons(keys: list[ApiKey]) -> Buttons:
    """Rename, Revoke, Rotate and allowed-IP buttons for each key (the newest ten); a key in its
    grace period after a rotation has no Rotate button (its successor is the one to rotate)."""
    rows: Buttons = []
    for key in keys[:MAX_KEY_BUTTONS]:
        label = _short(key.label)
        rows.append([
            {"text": f"✏️ Rename {label}", "callback_data": f"{callbacks.KEY_RENAME}:{key.pk}"},
            {"text": f"🔒 Revoke {label}", "callback_data": f"{callbacks.KEY_REVOKE_ONE}:{key.pk}"},
        ])
        second = [{"text": f"🌐 IPs {label}", "callback_data": f"{callbacks.KEY_NETWORKS}:{key.pk}"}]
        if key.replaced_by_id is None:
            second.insert(0, {"text": f"🔄 Rotate {label}", "callback_data": f"{callbacks.KEY_ROTATE}:{key.pk}"})
        rows.append(second)
    return rows


def _short(label: str, limit: int = 24) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def key_id_of(data: str | None) -> int | None:
    match = _KEY_REF.match(data or "")
    return int(match.group("key")) if match else None


@database_sync_to_async
def active_key(account: Account, key_id: int) -> ApiKey | None:
    return ApiKey.objects.active().filter(account=account, pk=key_id).first()


@database_sync_to_async
def _revoke(account: Account, key_id: int) -> ApiKey | None:
    key = ApiKey.objects.active().filter(account=account, pk=key_id).first()
    if key is None:
        return None
    try:
        key.revoke()
    except InvalidTransition:
        return None
    return key


@database_sync_to_async
def _rename(account: Account, key_id: int, name: str) -> tuple[ApiKey | None, str]:
    key = ApiKey.objects.active().filter(account=account, pk=key_id).first()
    if key is None:
        return None, ""
    try:
        return key, key.rename(name)
    except ValueError:
        return key, ""


async def gone(update: Update) -> None:
    await reply(update, "That key is no longer active. /status lists your keys.", edit=True)


async def tapped_key(update: Update) -> ApiKey | None:
    """The account's active key a key button names; None (and the user told so) when it is gone."""
    account = await store.account_for(update)
    key_id = key_id_of(update.callback_query.data)
    key = await active_key(account, key_id) if key_id is not None else None
    if key is None:
        await gone(update)
    return key


async def pending_answer(update: Update, context: ContextTypes.DEFAULT_TYPE, slot: str, ttl_s: float,
                         kept: str) -> tuple[dict, str] | None:
    """The text a key button asked for (``slot`` in ``user_data``): (what was pending, the text), or
    None when this message is not that answer. The slot is used up either way; a command or a
    stale answer passes through to its own handler, except ``/cancel``, answered with ``kept``."""
    pending = context.user_data.get(slot) if context.user_data is not None else None
    message = update.message
    if not pending or message is None or not message.text or update.effective_chat.type != ChatType.PRIVATE:
        return None
    context.user_data.pop(slot, None)
    if message.text.startswith("/") or time.time() - float(pending.get("at", 0)) > ttl_s:
        if message.text.strip().split("@")[0] == "/cancel":
            await reply(update, kept)
            raise ApplicationHandlerStop
        return None  # a command (or a stale answer): it runs as usual
    return pending, message.text


async def revoke_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """"🔒 Revoke NAME": ask first, a revoked key stops every script on that machine."""
    key = await tapped_key(update)
    if key is None:
        return
    await reply(
        update,
        f"🔒 Revoke the key of {bold(key.label)} ({code(key.prefix + '…')})? Scripts on that machine can no "
        "longer send messages here until it is paired again. Your other keys keep working.",
        [[{"text": "Yes, revoke it", "callback_data": f"{callbacks.KEY_REVOKE_YES}:{key.pk}"},
          {"text": "Keep it", "callback_data": callbacks.CANCEL}]],
        edit=True,
    )


async def revoke_yes(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    account = await store.account_for(update)
    key_id = key_id_of(update.callback_query.data)
    key = await _revoke(account, key_id) if key_id is not None else None
    if key is None:
        await gone(update)
        return
    logger.info("account %s revoked key %s", account.pk, key.prefix)
    await reply(
        update,
        f"🔒 The key of {bold(key.label)} is revoked. Pair that machine again with "
        f"{code('experiment_bot.setup()')} when you need it.",
        edit=True,
    )


async def rename_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """"✏️ Rename NAME": the next text message is the new name."""
    key = await tapped_key(update)
    if key is None:
        return
    context.user_data.pop(NETWORKS_PENDING, None)
    context.user_data[RENAME_PENDING] = {"key": key.pk, "at": time.time()}
    await reply(
        update,
        f"✏️ Send the new name for the key of {bold(key.label)} ({code(key.prefix + '…')}), "
        "e.g. the machine it is on. /cancel keeps the old name.",
    )


async def rename_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The new name after "✏️ Rename", ahead of every other handler; anything else passes through."""
    answer = await pending_answer(update, context, RENAME_PENDING, RENAME_TTL_S, "OK — the key keeps its name.")
    if answer is None:
        return
    pending, text = answer
    account = await store.account_for(update)
    key, name = await _rename(account, int(pending.get("key", 0)), text)
    if key is None:
        await reply(update, "That key is no longer active. /status lists your keys.")
    elif not name:
        await reply(update, "A name needs at least one visible character; the key keeps its name.")
    else:
        await reply(update, f"✅ Renamed: key {code(key.prefix + '…')} is now {bold(name)}.")
    raise ApplicationHandlerStop
