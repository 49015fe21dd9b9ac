"""Writing messages for the bot to deliver. Domain apps call ``enqueue``; nothing here talks to Telegram."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from accounts.models import Account
from notifications.models import Attachment, OutboxMessage
from statsbot_site.layer import OUTBOX_GROUP, ring

FILES_KEPT = timedelta(days=7)  # uploads of delivered messages: long enough to retry by hand
ROWS_KEPT = timedelta(days=30)
DONE = [OutboxMessage.State.SENT, OutboxMessage.State.SUPERSEDED, OutboxMessage.State.FAILED]


@dataclass(frozen=True)
class FileToSend:
    kind: str  # Attachment.Kind
    filename: str
    data: bytes
    content_type: str = ""
    caption: str = ""


def enqueue(
    account: Account,
    *,
    kind: str = "text",
    payload: dict[str, Any] | None = None,
    text: str = "",
    parse_mode: str = "HTML",
    buttons: list[list[dict[str, str]]] | None = None,
    edit_key: str = "",
    files: Iterable[FileToSend] = (),
) -> OutboxMessage:
    """Queue one message for ``account``'s chat and wake the sender once it is committed."""
    with transaction.atomic():
        message = OutboxMessage.objects.create(
            account=account,
            chat_id=account.chat_id,
            kind=kind,
            payload=payload or {},
            text=text,
            parse_mode=parse_mode,
            buttons=buttons or [],
            edit_key=edit_key,
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
        ring(OUTBOX_GROUP, {"type": "outbox.wake"})
    return message


def prune() -> int:
    """Drop the files of delivered messages after a week, and the delivered rows after a month."""
    now = timezone.now()
    files, _ = Attachment.objects.filter(message__state__in=DONE, message__created_at__lt=now - FILES_KEPT).delete()
    rows, _ = OutboxMessage.objects.filter(state__in=DONE, created_at__lt=now - ROWS_KEPT).delete()
    return files + rows
