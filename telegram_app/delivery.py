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
import functools
import html
import logging
import re
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
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
from telegram_app.rendering.captions import one_message
from tg_rules.buckets import TokenBucket
from tg_rules.text import CAPTION_LIMIT, TEXT_LIMIT

logger = logging.getLogger(__name__)

MERGE_SEPARATOR = "\n\n"
# Messages sent to one chat per round (after coalescing): a round stays short, so one busy chat
# never holds the others up for long; the rest of its claimed rows go back to the queue.
MESSAGES_PER_CHAT = 3
PLAIN_CHUNKS_MAX = 3
# Chats one sender delivers at once, and how many it claims per query. Telegram allows about 30
# messages/s overall and 1/s per chat, so reaching the overall rate needs more than 30 chats busy.
CHATS_IN_FLIGHT = 100
CLAIM_CHATS = 20
# Messages a chat's task sends per claim when pipelined (``run``): a busy chat holds no other up
# there (each chat is its own task), so its turn can be long; ``run_once`` keeps the short one.
PIPELINED_TURN = 20
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
    targets = claims.previous_message_ids(rows)
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
        chat_items.append(Item(message=row, rendered=rendered, edit_target=targets.get((row.chat_id, row.edit_key))))
    return items


def _fits(first: str, second: str) -> bool:
    return len(first) + len(MERGE_SEPARATOR) + len(second) <= TEXT_LIMIT


def _caption_files(per_chat: dict[int, list[Item]]) -> None:
    """A notification's text and its file as one message (``rendering.captions``), charts drawn."""
    for items in per_chat.values():
        for item in items:
            item.rendered = one_message(item.message, item.rendered, item.edit_target)


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
    """Token buckets: per chat (burst, then ``chat_rate``/s) and overall (``global_rate``/s after a
    burst of ``global_burst``). The overall rate stays just under Telegram's ~30/s and its burst
    small, so the slack absorbs network jitter and no 429 comes back.

    Slots are reserved, not polled: a caller takes its token at once (the bucket may go below
    zero) and sleeps exactly until its turn, so a hundred chats waiting cost one wake-up each per
    message, not one per chat every time a token frees up. Callers that wake late (the process
    was busy) would then go out together: a second bucket, taken when the call really leaves,
    lets at most ``release_burst`` out at once, well inside Telegram's own burst.
    """

    def __init__(self, chat_rate: float = 1.0, chat_burst: int = 3, global_rate: float = 29.0,
                 global_burst: float = 10.0, release_burst: float = 20.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.chat_rate, self.chat_burst, self.global_rate = chat_rate, chat_burst, global_rate
        self.clock = clock
        self.sleep = sleep
        self._chats: dict[int, TokenBucket] = {}
        self._global = TokenBucket.full(global_burst, global_rate, clock())
        self._release = TokenBucket.full(release_burst, global_rate, clock())
        self._paused_until: dict[int, float] = {}

    def pause(self, chat_id: int, seconds: float) -> None:
        self._paused_until[chat_id] = max(self._paused_until.get(chat_id, 0.0), self.clock() + seconds)

    def paused_for(self, chat_id: int) -> float:
        return max(0.0, self._paused_until.get(chat_id, 0.0) - self.clock())

    @staticmethod
    def _reserve(bucket: TokenBucket, now: float) -> float:
        """Take the bucket's next token (possibly one not there yet); the seconds until it is."""
        bucket.refill(now)
        wait = bucket.wait_time()
        bucket.take()
        return wait

    async def acquire(self, chat_id: int) -> None:
        """Wait for the chat's turn (after any pause Telegram asked for), then for the bot's."""
        while wait := self.paused_for(chat_id):
            await self.sleep(wait)  # pacing, not synchronisation
        chat = self._chats.get(chat_id)
        if chat is None:
            chat = self._chats[chat_id] = TokenBucket.full(self.chat_burst, self.chat_rate, self.clock())
        if wait := self._reserve(chat, self.clock()):
            await self.sleep(wait)
        if wait := self._reserve(self._global, self.clock()):
            await self.sleep(wait)
        if wait := self._reserve(self._release, self.clock()):  # only after the process was too busy
            await self.sleep(wait)


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
    """Delivers the outbox. ``name`` is the id its claims carry (unique per process by default)."""

    def __init__(self, bot: Bot, name: str | None = None, pacer: Pacer | None = None,
                 poll_interval: float = 1.0) -> None:
        self.bot = bot
        self.name = name or claims.new_sender_id()
        self.pacer = pacer or Pacer()
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._chats: dict[int, asyncio.Task[None]] = {}  # chats being delivered now, by chat id
        self._lease_until: dict[int, float] = {}  # when this sender's claim on each chat lapses (monotonic)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; a row claimed when it is set is released, never lost.

        First the claims of senders whose lease ran out go back to the queue; then, while this
        sender runs, its own lease is renewed (and expired ones released) every third of a lease.
        Chats are delivered pipelined: each claimed chat is a task of its own, and as soon as one
        finishes its turn more chats are claimed (up to ``CHATS_IN_FLIGHT``), so the overall rate,
        not a round's slowest chat, sets the pace.
        """
        await database_sync_to_async(claims.release_expired_claims)()
        doorbell = asyncio.create_task(self._listen_doorbell())
        lease = asyncio.create_task(self._keep_lease(stop))
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    claimed = await self._claim_more(stop)
                except Exception:
                    logger.exception("outbox sender %s: claiming failed; continuing", self.name)
                    claimed = 0
                if not claimed:
                    await self._sleep(stop)
        finally:
            await asyncio.gather(*self._chats.values(), return_exceptions=True)  # they release on stop
            doorbell.cancel()
            lease.cancel()

    async def _claim_more(self, stop: asyncio.Event) -> int:
        room = CHATS_IN_FLIGHT - len(self._chats)
        if room <= 0:
            return 0
        started = time.monotonic()
        rows = await database_sync_to_async(claims.claim)(self.name, min(room, CLAIM_CHATS), PIPELINED_TURN)
        if not rows:
            return 0
        for row in rows:
            self._lease_until[row.chat_id] = started + settings.OUTBOX_LEASE
        try:
            per_chat = await self._prepared(rows)
        except BaseException:
            for row in rows:  # not renewed any more: the rows go back when the lease runs out
                self._lease_until.pop(row.chat_id, None)
            raise
        for chat_id in {row.chat_id for row in rows} - set(per_chat):
            self._lease_until.pop(chat_id, None)  # nothing left to send there (all failed to render)
        for chat_id, items in per_chat.items():
            task = asyncio.create_task(self._deliver_chat(items, stop, PIPELINED_TURN), name=f"outbox-chat-{chat_id}")
            self._chats[chat_id] = task
            task.add_done_callback(functools.partial(self._chat_done, chat_id))
        return len(rows)

    def _chat_done(self, chat_id: int, task: asyncio.Task[None]) -> None:
        """A chat's turn is over: make room for another (its rows, if it failed, lapse with the lease)."""
        self._chats.pop(chat_id, None)
        self._lease_until.pop(chat_id, None)
        if not task.cancelled() and task.exception() is not None:
            logger.error("outbox sender %s: delivering to chat %s failed", self.name, chat_id,
                         exc_info=task.exception())
        self._wake.set()

    async def _keep_lease(self, stop: asyncio.Event) -> None:
        interval = settings.OUTBOX_LEASE / 3
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
                return
            except TimeoutError:
                pass
            # On a thread of their own (not the one every delivery query queues on): a busy
            # sender must never miss its renewal and lose its own claims.
            try:
                # Every chat claimed, from the claim on (not only once its task runs: preparing
                # a claim may take a while on a busy database).
                started, chats = time.monotonic(), list(self._lease_until)
                await database_sync_to_async(claims.renew_lease, thread_sensitive=False)(self.name, chats)
                for chat_id in chats:
                    if chat_id in self._lease_until:
                        self._lease_until[chat_id] = started + settings.OUTBOX_LEASE
                await database_sync_to_async(claims.release_expired_claims, thread_sensitive=False)()
            except Exception:
                logger.exception("outbox sender %s: could not renew its lease; trying again", self.name)

    async def _sleep(self, stop: asyncio.Event) -> None:
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
        per_chat = await self._prepared(rows)
        await asyncio.gather(*(self._deliver_chat(items, stop) for items in per_chat.values()))
        return len(rows)

    async def _prepared(self, rows: list[OutboxMessage]) -> dict[int, list[Item]]:
        """Claimed rows coalesced and rendered, charts drawn and files captioned: the items to send."""
        per_chat = await database_sync_to_async(prepare)(rows)
        await self._draw_charts(per_chat)
        return per_chat

    async def _draw_charts(self, per_chat: dict[int, list[Item]]) -> None:
        loop = asyncio.get_running_loop()
        for items in per_chat.values():
            for item in items:
                if any(part.draw is not None for part in item.rendered.files):
                    item.rendered.files = await loop.run_in_executor(CHART_THREAD, draw_files, item.rendered.files)
        _caption_files(per_chat)  # once the charts are drawn (or left out)

    async def _deliver_chat(self, items: list[Item], stop: asyncio.Event | None,
                            turn: int = MESSAGES_PER_CHAT) -> None:
        for later in items[turn:]:
            await database_sync_to_async(claims.release)(later.message, later.merged_ids)
        items = items[:turn]
        for position, item in enumerate(items):
            if self._lapsing(item.message.chat_id):
                # Renewals failed (the database was out of reach): the claim may lapse and another
                # sender take the chat. Send nothing more; the rows go back when the lease runs out.
                logger.warning("outbox sender %s: its claim on chat %s is lapsing; stopping there",
                               self.name, item.message.chat_id)
                return
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

    def _lapsing(self, chat_id: int) -> bool:
        """Less than a third of the lease is left: a renewal was missed (pipelined ``run`` only)."""
        until = self._lease_until.get(chat_id)
        return until is not None and time.monotonic() > until - settings.OUTBOX_LEASE / 3

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
            await database_sync_to_async(claims.postpone)(item.message, f"429: retry after {delay:g}s",
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
