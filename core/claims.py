"""The database half of delivering the outbox: claiming rows for a sender and recording outcomes.

A sender (``telegram_app.delivery``) claims due rows, whole chats at a time so order within
a chat is kept even with several senders (``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL,
an IMMEDIATE transaction on SQLite), sends them, and records here what became of each: sent,
to be retried, failed, or given back untouched.

Every claim carries its sender's id (``new_sender_id``: host, process, random) and a lease
(``settings.OUTBOX_LEASE`` seconds) that the live sender renews every third of that
(``renew_lease``). A sender that crashed stops renewing; any sender, at its start and on every
renewal, hands rows whose lease ran out back to the queue (``release_expired_claims``), so a
crashed sender's chats resume within one lease (at least once delivery: the one message a chat
had in flight may go out twice).

Every function is synchronous ORM code; the sender calls them through ``database_sync_to_async``.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections import OrderedDict
from collections.abc import Iterable
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Max, Q
from django.utils import timezone

from core.models import OutboxMessage
from core.state_machine import InvalidTransition

logger = logging.getLogger(__name__)

State = OutboxMessage.State
CLAIM_SCAN = 500
# Rows claimed before claims had leases (lease_expires_at empty) go back after this long.
STALE_CLAIM = timedelta(minutes=5)


def new_sender_id() -> str:
    """A sender's id, unique across hosts and restarts (it fits ``claimed_by``)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"


def lease_length() -> timedelta:
    return timedelta(seconds=settings.OUTBOX_LEASE)


def _pending_by_chat(rows_per_chat: int | None = None) -> OrderedDict[int, list[OutboxMessage]]:
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
        chat = chats.setdefault(row.chat_id, [])
        chat.append(row)
        if rows_per_chat is not None and len(chat) >= rows_per_chat:
            stopped.add(row.chat_id)
    return chats


def claim(sender: str, max_chats: int = 20, rows_per_chat: int | None = None) -> list[OutboxMessage]:
    """Claim the due rows (at most ``rows_per_chat`` each) of up to ``max_chats`` chats for
    ``sender``, oldest first, under a lease."""
    with transaction.atomic():
        chats = _pending_by_chat(rows_per_chat)
        ids = [row.pk for rows in list(chats.values())[:max_chats] for row in rows]
        now = timezone.now()
        OutboxMessage.objects.filter(pk__in=ids, state=State.PENDING).update(
            state=State.SENDING, claimed_by=sender, claimed_at=now, lease_expires_at=now + lease_length(),
            attempts=F("attempts") + 1,
        )
    return list(OutboxMessage.objects.filter(pk__in=ids, state=State.SENDING, claimed_by=sender).order_by("id"))


def renew_lease(sender: str, chat_ids: Iterable[int] | None = None) -> int:
    """``sender`` is alive: its claims (on ``chat_ids``, the chats it is still delivering, when
    given) last another lease. Returns how many rows were renewed."""
    rows = OutboxMessage.objects.filter(state=State.SENDING, claimed_by=sender)
    if chat_ids is not None:
        rows = rows.filter(chat_id__in=list(chat_ids))
    return rows.update(lease_expires_at=timezone.now() + lease_length())


def release_expired_claims() -> int:
    """Rows whose sender stopped renewing its lease (it crashed) go back to the queue (at-least-once).

    The attempt stays counted: the row may have reached Telegram before the crash.
    """
    now = timezone.now()
    expired = Q(lease_expires_at__lt=now) | Q(lease_expires_at__isnull=True, claimed_at__lt=now - STALE_CLAIM)
    released = OutboxMessage.objects.filter(expired, state=State.SENDING).update(
        state=State.PENDING, claimed_by="", claimed_at=None, lease_expires_at=None
    )
    if released:
        logger.warning("outbox: %s rows of senders whose lease ran out are queued again", released)
    return released


def live_senders() -> list[dict[str, object]]:
    """Senders holding claims now, with their newest lease and how many rows they hold (the admin)."""
    rows = (
        OutboxMessage.objects.filter(state=State.SENDING)
        .values("claimed_by")
        .annotate(rows=Count("id"), lease_expires_at=Max("lease_expires_at"))
        .order_by("claimed_by")
    )
    return [{"sender": row["claimed_by"], "rows": row["rows"], "lease_expires_at": row["lease_expires_at"]}
            for row in rows]


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


def previous_message_ids(rows: Iterable[OutboxMessage]) -> dict[tuple[int, str], int]:
    """``previous_message_id`` for many rows in one query: {(chat_id, edit_key): message id}."""
    keys = {(row.chat_id, row.edit_key) for row in rows if row.edit_key}
    if not keys:
        return {}
    found: dict[tuple[int, str], int] = {}
    sent = OutboxMessage.objects.filter(
        chat_id__in={chat for chat, _ in keys}, edit_key__in={key for _, key in keys}, state=State.SENT,
        sent_message_id__isnull=False,
    ).order_by("id").values_list("chat_id", "edit_key", "sent_message_id")
    for chat_id, edit_key, message_id in sent:
        if (chat_id, edit_key) in keys and message_id is not None:
            found[(chat_id, edit_key)] = message_id  # ordered by id: the newest wins
    return found


# Recording outcomes. ``merged`` are the ids of rows whose text went out inside ``message``.


def record_sent(message: OutboxMessage, message_id: int | None, merged: Iterable[int] = ()) -> None:
    merged = list(merged)
    if not merged:
        message.mark_sent(message_id)  # one statement: no transaction needed
        return
    with transaction.atomic():
        message.mark_sent(message_id)
        for row in OutboxMessage.objects.filter(pk__in=merged, state=State.SENDING):
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


def postpone(message: OutboxMessage, reason: str, delay: timedelta, merged: Iterable[int] = ()) -> None:
    """Telegram's flood control asks to wait ``delay``: not a failure, no attempt used up."""
    message.postpone(reason, delay)
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
