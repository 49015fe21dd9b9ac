"""Writing messages for the bot to deliver. Domain apps call ``enqueue``; nothing here talks to Telegram.

Also the one definition of edit keys: rows that share one edit the same Telegram message.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from django.db import transaction
from django.utils import timezone

from core import events
from core.layer import OUTBOX_GROUP, ring_once
from core.models import Attachment, OutboxMessage

FILES_KEPT = timedelta(days=7)  # uploads of delivered messages: long enough to retry by hand
ROWS_KEPT = timedelta(days=30)
DONE = [OutboxMessage.State.SENT, OutboxMessage.State.SUPERSEDED, OutboxMessage.State.FAILED]

Buttons = list[list[dict[str, str]]]  # rows of {"text", "callback_data" | "url"}


class Recipient(Protocol):
    """Whom a message goes to: an ``accounts.Account`` (core refers to it without importing it)."""

    @property
    def pk(self) -> Any: ...

    @property
    def chat_id(self) -> int: ...


def job_edit_key(job_id: uuid.UUID | str) -> str:
    """Rows with this key edit the one message that shows the job from "queued" to its result."""
    return f"job:{job_id}"


def process_edit_key(process_uuid: uuid.UUID | str) -> str:
    """Rows with this key edit the one progress message of a tracked process."""
    return f"proc:{process_uuid}"


def dashboard_edit_key(account_pk: Any, generation: str) -> str:
    """Rows with this key edit one ``/dashboard`` message; a new ``/dashboard`` starts a new generation."""
    return f"dash:{account_pk}:{generation}"


@dataclass(frozen=True)
class FileToSend:
    kind: str  # Attachment.Kind
    filename: str
    data: bytes
    content_type: str = ""
    caption: str = ""


def enqueue(
    account: Recipient,
    *,
    kind: str = OutboxMessage.Kind.TEXT,
    payload: dict[str, Any] | None = None,
    text: str = "",
    parse_mode: str = OutboxMessage.ParseMode.HTML,
    buttons: Buttons | None = None,
    edit_key: str = "",
    files: Iterable[FileToSend] = (),
    not_before: datetime | None = None,
) -> OutboxMessage:
    """Queue one message for ``account``'s chat and wake the sender once it is committed (once
    per transaction, however many rows it queues). ``not_before`` holds it until then (the
    chat's later rows wait behind it, keeping the chat's order)."""
    with transaction.atomic():
        message = OutboxMessage.objects.create(
            account_id=account.pk,
            chat_id=account.chat_id,
            kind=kind,
            payload=payload or {},
            text=text,
            parse_mode=parse_mode,
            buttons=buttons or [],
            edit_key=edit_key,
            next_attempt_at=not_before or timezone.now(),
        )
        Attachment.objects.bulk_create(
            Attachment(
                message=message,
                kind=f.kind,
                filename=f.filename[:255],
                content_type=f.content_type[:100],
                data=f.data,
                caption=f.caption[:1024],
            )
            for f in files
        )
        ring_once(OUTBOX_GROUP, events.outbox_wake())
    return message


def prune() -> int:
    """Drop the files of delivered messages after a week, and the delivered rows after a month."""
    now = timezone.now()
    files, _ = Attachment.objects.filter(message__state__in=DONE, message__created_at__lt=now - FILES_KEPT).delete()
    rows, _ = OutboxMessage.objects.filter(state__in=DONE, created_at__lt=now - ROWS_KEPT).delete()
    return files + rows
