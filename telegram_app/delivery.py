"""The outbox sender: the one place that sends bot-initiated messages to Telegram.

A loop claims due rows (``core.claims``: whole chats at a time, so order within a chat is
kept even with several senders); coalesces them (only the newest row per edit key; bursts of
plain notices merged into one message); renders them; and sends them within Telegram's limits
(about 1 message/s per chat with short bursts, about 30/s overall). 429s pause the chat for
``retry_after``; network errors and 5xx retry with backoff; a blocked user or a missing chat
stops delivery to that chat; a migrated chat is followed. What became of each row is recorded
through ``core.claims``.
"""

from __future__ import annotations

import asyncio
import enum
import html
import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import transaction
from telegram import Bot, InlineKeyboardMarkup, InputFile
from telegram.constants import ParseMode
from telegram.error import BadRequest, ChatMigrated, Forbidden, NetworkError, RetryAfter, TelegramError

from accounts.models import Account
from core import claims
from core.layer import OUTBOX_GROUP
from core.models import OutboxMessage
from telegram_app.markup import keyboard
from telegram_app.rendering import FilePart, Rendered, draw_files, render
from tg_rules.buckets import TokenBucket
from tg_rules.text import CAPTION_LIMIT, TEXT_LIMIT

logger = logging.getLogger(__name__)

MERGE_SEPARATOR = "\n\n"
# Messages sent to one chat per round (after coalescing): a round stays short, so one busy chat
# never holds the others up for long; the rest of its claimed rows go back to the queue.
MESSAGES_PER_CHAT = 3
PLAIN_CHUNKS_MAX = 3
# Charts are drawn here, not on the thread every database call shares (database_sync_to_async):
# drawing one takes a few hundred milliseconds, which would hold up every handler's queries.
CHART_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="charts")


class Outcome(enum.Enum):
    DONE = "done"  # delivered (or failed for good on its own): the chat's next row may follow
    WAIT = "wait"  # to be retried: the chat's later rows wait for it
    CHAT_GONE = "chat_gone"  # the user blocked the bot or the chat is gone: all its rows failed


@dataclass
class Item:
    """A claimed row, rendered, with where it goes."""

    message: OutboxMessage
    rendered: Rendered
    edit_target: int | None = None
    merged_ids: list[int] = field(default_factory=list)


# Coalescing (sync) ---------------------------------------------------------------------------


def prepare(rows: list[OutboxMessage]) -> dict[int, list[Item]]:
    """Coalesce and render claimed rows; returns the items to send, per chat, in order."""
    newest_by_key = {(row.chat_id, row.edit_key): row.pk for row in rows if row.edit_key}
    items: dict[int, list[Item]] = defaultdict(list)
    for row in rows:
        newest = newest_by_key.get((row.chat_id, row.edit_key), row.pk)
        if newest != row.pk:
            claims.supersede(row, f"superseded by #{newest}")
            continue
        try:
            rendered = render(row)
        except Exception as exc:
            logger.exception("outbox %s (%s) could not be rendered", row.pk, row.kind)
            row.fail(f"render failed: {type(exc).__name__}: {exc}")
            continue
        chat_items = items[row.chat_id]
        last = chat_items[-1] if chat_items else None
        if last and last.rendered.mergeable and rendered.mergeable and _fits(last.rendered.text, rendered.text):
            last.rendered.text += MERGE_SEPARATOR + rendered.text
            last.merged_ids.append(row.pk)
            continue
        chat_items.append(Item(message=row, rendered=rendered, edit_target=claims.previous_message_id(row)))
    return items


def _fits(first: str, second: str) -> bool:
    return len(first) + len(MERGE_SEPARATOR) + len(second) <= TEXT_LIMIT


# Chats Telegram refuses or moves (sync) ---------------------------------------------------------


def _stop_chat(chat_id: int, reason: str) -> None:
    """Telegram will never deliver to this chat (blocked, not found): stop trying."""
    with transaction.atomic():
        for account in Account.objects.filter(chat_id=chat_id, blocked_at__isnull=True):
            account.mark_blocked()
        claims.fail_chat(chat_id, reason)


def _migrate_chat(old_chat_id: int, new_chat_id: int) -> None:
    with transaction.atomic():
        for account in Account.objects.filter(chat_id=old_chat_id):
            account.move_chat(new_chat_id)
        claims.move_chat(old_chat_id, new_chat_id)


# Pacing ---------------------------------------------------------------------------------------------


class Pacer:
    """Token buckets: per chat (burst, then ``chat_rate``/s) and overall (``global_rate``/s)."""

    def __init__(self, chat_rate: float = 1.0, chat_burst: int = 3, global_rate: float = 25.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.chat_rate, self.chat_burst, self.global_rate = chat_rate, chat_burst, global_rate
        self.clock = clock
        self._chats: dict[int, TokenBucket] = {}
        self._global = TokenBucket.full(global_rate, global_rate, clock())
        self._paused_until: dict[int, float] = {}
        self._lock = asyncio.Lock()

    def pause(self, chat_id: int, seconds: float) -> None:
        self._paused_until[chat_id] = max(self._paused_until.get(chat_id, 0.0), self.clock() + seconds)

    def paused_for(self, chat_id: int) -> float:
        return max(0.0, self._paused_until.get(chat_id, 0.0) - self.clock())

    def _try(self, chat_id: int) -> float:
        """Take a token of the chat and one of the whole bot; or take none and say how long to wait."""
        now = self.clock()
        chat = self._chats.get(chat_id)
        if chat is None:
            chat = self._chats[chat_id] = TokenBucket.full(self.chat_burst, self.chat_rate, now)
        chat.refill(now)
        wait = chat.wait_time()
        if wait:
            return wait
        self._global.refill(now)
        wait = self._global.wait_time()
        if wait:
            return wait
        chat.take()
        self._global.take()
        return 0.0

    async def acquire(self, chat_id: int) -> None:
        while True:
            wait = self.paused_for(chat_id)
            if not wait:
                async with self._lock:
                    wait = self._try(chat_id)
                if not wait:
                    return
            await asyncio.sleep(wait)  # pacing, not synchronisation


# Sending (async) --------------------------------------------------------------------------------------


def _plain(text: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def _chunks(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    chunks = []
    while len(text) > limit:
        cut = text.rfind("\n", 0, limit)
        cut = cut if cut > limit // 2 else limit
        chunks.append(text[:cut])
        text = text[cut:].lstrip("\n")
    return [*chunks, text] if text else chunks


class OutboxSender:
    def __init__(self, bot: Bot, name: str = "sender", pacer: Pacer | None = None, poll_interval: float = 1.0) -> None:
        self.bot = bot
        self.name = name
        self.pacer = pacer or Pacer()
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; a row claimed when it is set is released, never lost."""
        doorbell = asyncio.create_task(self._listen_doorbell())
        try:
            while not stop.is_set():
                try:
                    delivered = await self.run_once(stop)
                except Exception:
                    logger.exception("outbox sender %s: a round failed; continuing", self.name)
                    delivered = 0
                if not delivered:
                    await self._sleep(stop)
        finally:
            doorbell.cancel()

    async def _sleep(self, stop: asyncio.Event) -> None:
        self._wake.clear()
        waiters = [asyncio.create_task(self._wake.wait()), asyncio.create_task(stop.wait())]
        await asyncio.wait(waiters, timeout=self.poll_interval, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()

    async def _listen_doorbell(self) -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        channel = await layer.new_channel("outbox.")
        await layer.group_add(OUTBOX_GROUP, channel)
        try:
            while True:
                try:
                    await layer.receive(channel)
                    self._wake.set()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.warning("outbox doorbell failed; polling only", exc_info=True)
                    await asyncio.sleep(self.poll_interval)
        finally:
            try:
                await layer.group_discard(OUTBOX_GROUP, channel)
            except Exception:
                logger.debug("could not leave the outbox group", exc_info=True)

    async def run_once(self, stop: asyncio.Event | None = None) -> int:
        """Claim, coalesce and deliver one batch; returns how many rows were handled."""
        rows = await database_sync_to_async(claims.claim)(self.name)
        if not rows:
            return 0
        per_chat = await database_sync_to_async(prepare)(rows)
        await self._draw_charts(per_chat)
        await asyncio.gather(*(self._deliver_chat(items, stop) for items in per_chat.values()))
        return len(rows)

    async def _draw_charts(self, per_chat: dict[int, list[Item]]) -> None:
        loop = asyncio.get_running_loop()
        for items in per_chat.values():
            for item in items:
                if any(part.draw is not None for part in item.rendered.files):
                    item.rendered.files = await loop.run_in_executor(CHART_THREAD, draw_files, item.rendered.files)

    async def _deliver_chat(self, items: list[Item], stop: asyncio.Event | None) -> None:
        for later in items[MESSAGES_PER_CHAT:]:
            await database_sync_to_async(claims.release)(later.message, later.merged_ids)
        items = items[:MESSAGES_PER_CHAT]
        for position, item in enumerate(items):
            if stop is not None and stop.is_set():
                outcome = Outcome.WAIT
            else:
                outcome = await self._deliver(item)
                position += 1
            if outcome == Outcome.CHAT_GONE:
                return  # every row of the chat is failed already
            if outcome == Outcome.WAIT:
                # keep the chat's order: what follows waits for this row's retry (or the next run)
                for rest in items[position:]:
                    await database_sync_to_async(claims.release)(rest.message, rest.merged_ids)
                return

    async def _deliver(self, item: Item) -> Outcome:
        """Send one item, and say whether the rest of the chat's batch may follow."""
        chat_id = item.message.chat_id
        try:
            message_id = item.message.sent_message_id
            if message_id is None and item.rendered.text:
                message_id = await self._send_outcome(chat_id, item)
                if item.rendered.files:
                    await database_sync_to_async(claims.record_text_part)(item.message, message_id)
            for part in item.rendered.files[item.message.files_sent:]:
                sent = await self._send_file(chat_id, part)
                await database_sync_to_async(claims.record_file_part)(item.message)
                message_id = message_id or sent
            await database_sync_to_async(claims.record_sent)(item.message, message_id, item.merged_ids)
            return Outcome.DONE
        except RetryAfter as exc:
            retry_after = exc.retry_after
            delay = retry_after.total_seconds() if isinstance(retry_after, timedelta) else float(retry_after)
            self.pacer.pause(chat_id, delay)
            logger.info("outbox %s: Telegram asks to wait %ss", item.message.pk, delay)
            await database_sync_to_async(claims.retry)(item.message, f"429: retry after {delay:g}s",
                                                       timedelta(seconds=delay), item.merged_ids)
        except ChatMigrated as exc:
            logger.info("chat %s migrated to %s", chat_id, exc.new_chat_id)
            await database_sync_to_async(_migrate_chat)(chat_id, exc.new_chat_id)
            await database_sync_to_async(claims.retry)(item.message, "chat migrated", timedelta(0), item.merged_ids)
        except Forbidden as exc:
            return await self._give_up_on_chat(item, f"forbidden: {exc.message}")
        except BadRequest as exc:
            if "chat not found" in exc.message.lower():
                return await self._give_up_on_chat(item, f"chat not found: {exc.message}")
            logger.error("outbox %s refused by Telegram: %s", item.message.pk, exc.message)
            await database_sync_to_async(claims.fail)(item.message, f"bad request: {exc.message}", item.merged_ids)
            return Outcome.DONE  # a broken row must not hold the chat's later messages back
        except (NetworkError, TelegramError) as exc:  # timeouts, 5xx, connection errors
            backoff = timedelta(seconds=min(300, 2 ** item.message.attempts))
            logger.warning("outbox %s: %s; retrying in %ss", item.message.pk, exc, backoff.seconds)
            await database_sync_to_async(claims.retry)(item.message, f"{type(exc).__name__}: {exc}", backoff,
                                                       item.merged_ids)
        return Outcome.WAIT

    async def _give_up_on_chat(self, item: Item, reason: str) -> Outcome:
        logger.warning("outbox %s: giving up on chat %s (%s)", item.message.pk, item.message.chat_id, reason)
        await database_sync_to_async(_stop_chat)(item.message.chat_id, reason)
        return Outcome.CHAT_GONE

    async def _send_text(self, chat_id: int, rendered: Rendered, edit_target: int | None) -> int:
        markup = keyboard(rendered.buttons)
        parse_mode = rendered.parse_mode or None
        text = rendered.text
        if len(text) > TEXT_LIMIT:
            return await self._send_long(chat_id, text if parse_mode is None else _plain(text), markup)
        if edit_target is not None:
            await self.pacer.acquire(chat_id)
            try:
                await self._edit(chat_id, edit_target, text, parse_mode, markup)
                return edit_target
            except BadRequest as exc:
                reason = exc.message.lower()
                if "not modified" in reason:
                    return edit_target  # identical edit: nothing to change, not an error
                if "message to edit not found" not in reason and "can't be edited" not in reason:
                    raise
                logger.info("message %s in chat %s cannot be edited; sending a new one", edit_target, chat_id)
        await self.pacer.acquire(chat_id)
        try:
            sent = await self.bot.send_message(chat_id, text, parse_mode=parse_mode, reply_markup=markup,
                                               disable_web_page_preview=True)
        except BadRequest as exc:
            if "can't parse entities" not in exc.message.lower() or parse_mode is None:
                raise
            logger.error("chat %s: markup refused (%s); sending as plain text", chat_id, exc.message)
            await self.pacer.acquire(chat_id)
            sent = await self.bot.send_message(chat_id, _plain(text), reply_markup=markup,
                                               disable_web_page_preview=True)
        return sent.message_id

    async def _send_outcome(self, chat_id: int, item: Item) -> int:
        """The row's text: an edit of its message, or — for a result worth a notification — a new
        message, with the old one edited to a short pointer."""
        rendered, target = item.rendered, item.edit_target
        if target is None or not rendered.replace_with:
            return await self._send_text(chat_id, rendered, target)
        await self.pacer.acquire(chat_id)
        try:
            await self._edit(chat_id, target, rendered.replace_with, rendered.parse_mode or None, None)
        except BadRequest as exc:
            logger.info("could not shorten message %s in chat %s: %s", target, chat_id, exc.message)
        return await self._send_text(chat_id, rendered, None)

    async def _edit(self, chat_id: int, message_id: int, text: str, parse_mode: str | None,
                    markup: InlineKeyboardMarkup | None) -> None:
        try:
            await self.bot.edit_message_text(text, chat_id=chat_id, message_id=message_id, parse_mode=parse_mode,
                                             reply_markup=markup, disable_web_page_preview=True)
        except BadRequest as exc:
            if "can't parse entities" not in exc.message.lower() or parse_mode is None:
                raise
            logger.error("chat %s: markup refused in an edit (%s); editing as plain text", chat_id, exc.message)
            await self.pacer.acquire(chat_id)
            await self.bot.edit_message_text(_plain(text), chat_id=chat_id, message_id=message_id,
                                             reply_markup=markup, disable_web_page_preview=True)

    async def _send_long(self, chat_id: int, text: str, markup: InlineKeyboardMarkup | None) -> int:
        chunks = _chunks(text)
        if len(chunks) > PLAIN_CHUNKS_MAX:
            await self.pacer.acquire(chat_id)
            head = await self.bot.send_message(chat_id, chunks[0][: TEXT_LIMIT - 60] + "\n\n📎 Full text attached.")
            await self._send_file(chat_id, FilePart("document", "message.txt", text.encode(), ""))
            return head.message_id
        first = None
        for index, chunk in enumerate(chunks):
            await self.pacer.acquire(chat_id)
            sent = await self.bot.send_message(chat_id, chunk, reply_markup=markup if index == len(chunks) - 1 else None,
                                               disable_web_page_preview=True)
            first = first or sent.message_id
        assert first is not None  # a text over the limit has at least one chunk
        return first

    async def _send_file(self, chat_id: int, part: FilePart) -> int:
        await self.pacer.acquire(chat_id)
        caption = part.caption if len(part.caption) <= CAPTION_LIMIT else part.caption[: CAPTION_LIMIT - 1] + "…"
        upload = InputFile(part.data, filename=part.filename)
        if part.kind == "photo":
            sent = await self.bot.send_photo(chat_id, upload, caption=caption or None, parse_mode=ParseMode.HTML)
        else:
            sent = await self.bot.send_document(chat_id, upload, caption=caption or None, parse_mode=ParseMode.HTML)
        return sent.message_id
