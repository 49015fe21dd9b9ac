"""The database half of delivering the outbox: claiming rows for a sender and recording outcomes.

A sender (``telegram_app.delivery``) claims due rows, whole chats at a time so order within
a chat is kept even with several senders (``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL,
an IMMEDIATE transaction on SQLite), sends them, and records here what became of each: sent,
to be retried, failed, or given back untouched. A sender that crashed leaves rows claimed;
``release_stale_claims`` hands them back after a while (at least once delivery).

Every function is synchronous ORM code; the sender calls them through ``database_sync_to_async``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from datetime import timedelta

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from core.models import OutboxMessage
from core.state_machine import InvalidTransition

logger = logging.getLogger(__name__)

State = OutboxMessage.State
CLAIM_SCAN = 500
STALE_CLAIM = timedelta(minutes=5)


def _pending_by_chat() -> OrderedDict[int, list[OutboxMessage]]:
    """Pending rows of chats no sender is busy with, oldest chat first, each chat's due prefix."""
    now = timezone.now()
    busy = OutboxMessage.objects.filter(state=State.SENDING).values("chat_id")
    rows = (
        OutboxMessage.objects.filter(state=State.PENDING, account__blocked_at__isnull=True)
        .exclude(chat_id__in=busy)
        .order_by("id")
    )
    if connection.features.has_select_for_update_skip_locked:
        rows = rows.select_for_update(skip_locked=True, of=("self",))
    chats: OrderedDict[int, list[OutboxMessage]] = OrderedDict()
    stopped: set[int] = set()
    for row in rows[:CLAIM_SCAN]:
        if row.chat_id in stopped:
            continue
        if row.next_attempt_at > now:
            stopped.add(row.chat_id)  # a later row must not overtake one waiting for its retry
            continue
        chats.setdefault(row.chat_id, []).append(row)
    return chats


def claim(sender: str, max_chats: int = 20) -> list[OutboxMessage]:
    """Claim the due rows of up to ``max_chats`` chats for ``sender``, oldest first."""
    with transaction.atomic():
        chats = _pending_by_chat()
        ids = [row.pk for rows in list(chats.values())[:max_chats] for row in rows]
        OutboxMessage.objects.filter(pk__in=ids, state=State.PENDING).update(
            state=State.SENDING, claimed_by=sender, claimed_at=timezone.now(), attempts=F("attempts") + 1
        )
    return list(OutboxMessage.objects.filter(pk__in=ids, state=State.SENDING, claimed_by=sender).order_by("id"))


def release_stale_claims() -> int:
    """Rows a crashed sender claimed long ago go back to the queue (at-least-once)."""
    cutoff = timezone.now() - STALE_CLAIM
    return OutboxMessage.objects.filter(state=State.SENDING, claimed_at__lt=cutoff).update(
        state=State.PENDING, claimed_by="", claimed_at=None
    )


def supersede(row: OutboxMessage, reason: str) -> None:
    """A claimed row that will not be sent on its own (a newer row edits the same message)."""
    try:
        row.supersede(reason)
    except InvalidTransition:
        logger.warning("outbox %s changed while being coalesced", row.pk)


def previous_message_id(row: OutboxMessage) -> int | None:
    """The Telegram message an earlier row with the same edit key became, if any: the one to edit."""
    if not row.edit_key:
        return None
    return (
        OutboxMessage.objects.filter(
            chat_id=row.chat_id, edit_key=row.edit_key, state=State.SENT, sent_message_id__isnull=False
        )
        .order_by("-id")
        .values_list("sent_message_id", flat=True)
        .first()
    )


# Recording outcomes. ``merged`` are the ids of rows whose text went out inside ``message``.


def record_sent(message: OutboxMessage, message_id: int | None, merged: Iterable[int] = ()) -> None:
    with transaction.atomic():
        message.mark_sent(message_id)
        for row in OutboxMessage.objects.filter(pk__in=list(merged), state=State.SENDING):
            row.supersede(f"merged into #{message.pk}")


def record_text_part(message: OutboxMessage, message_id: int) -> None:
    """The text went out but files remain: a retry must not send the text again."""
    OutboxMessage.objects.filter(pk=message.pk).update(sent_message_id=message_id)
    message.sent_message_id = message_id


def record_file_part(message: OutboxMessage) -> None:
    """One more file went out: a retry starts after it."""
    message.files_sent += 1
    OutboxMessage.objects.filter(pk=message.pk).update(files_sent=message.files_sent)


def release(message: OutboxMessage, merged: Iterable[int] = ()) -> None:
    """Give claimed rows back untouched (the chat's turn is over, or the sender is stopping)."""
    for row in [message, *OutboxMessage.objects.filter(pk__in=list(merged))]:
        try:
            row.release()
        except InvalidTransition:
            pass


def retry(message: OutboxMessage, error: str, delay: timedelta, merged: Iterable[int] = ()) -> None:
    """A transient failure: try again after ``delay`` (or fail once attempts run out)."""
    message.retry_later(error, delay)
    _release_merged(merged)


def fail(message: OutboxMessage, error: str, merged: Iterable[int] = ()) -> None:
    """A permanent failure of this message."""
    message.fail(error)
    _release_merged(merged)


def _release_merged(merged: Iterable[int]) -> None:
    """Rows merged into a message that did not go out are delivered on their own later."""
    for row in OutboxMessage.objects.filter(pk__in=list(merged), state=State.SENDING):
        row.release()


def fail_chat(chat_id: int, reason: str) -> int:
    """Nothing more can be delivered to this chat: fail its pending and claimed rows."""
    return OutboxMessage.objects.filter(chat_id=chat_id, state__in=[State.PENDING, State.SENDING]).update(
        state=State.FAILED, error=reason[:2000]
    )


def move_chat(old_chat_id: int, new_chat_id: int) -> int:
    """The chat got a new id (a group became a supergroup): its undelivered rows follow it."""
    return OutboxMessage.objects.filter(chat_id=old_chat_id, state__in=[State.PENDING, State.SENDING]).update(
        chat_id=new_chat_id
    )
