"""What the rest of StatsBot asks of workers: connect commands, revocation, disconnect notices."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import Account
from core import events
from core.layer import ring_channel
from core.models import OutboxMessage
from core.outbox import enqueue
from workers.models import ConnectToken, Worker
from workers.script import download_url

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectCommand:
    token: str
    expires_at: datetime
    unix: str  # macOS / Linux
    windows: str  # PowerShell


def connect_commands(raw_token: str, public_url: str | None = None) -> tuple[str, str]:
    url = download_url(public_url)
    return (
        f"curl -sL {url} | python3 - --token={raw_token}",
        f"irm {url} | python - --token={raw_token}",
    )


def issue_connect_command(account: Account) -> ConnectCommand:
    token, raw = ConnectToken.issue(account)
    unix, windows = connect_commands(raw)
    logger.info("connect token %s issued for account %s", token.prefix, account.pk)
    return ConnectCommand(token=raw, expires_at=token.expires_at, unix=unix, windows=windows)


def live_worker(account: Account) -> Worker | None:
    return Worker.objects.live().filter(account=account).first()


def notify_worker_event(worker: Worker, event: str) -> None:
    """Tell the user about their worker: connected, reconnected, disconnected, replaced, revoked."""
    enqueue(worker.account, kind=OutboxMessage.Kind.WORKER, payload={"event": event, "worker_id": worker.pk})


def revoke_worker(worker: Worker, reason: str) -> None:
    """Revoke the credential and close the worker's connection, if open."""
    with transaction.atomic():
        channel = worker.channel_name
        worker.revoke(reason)
        if channel:
            ring_channel(channel, events.worker_revoked(reason))
    logger.info("worker %s revoked (%s)", worker.pk, reason)


def announce_disconnects(grace: float | None = None) -> int:
    """Send the "disconnected" notice for workers away longer than the grace period."""
    grace = settings.WORKER_DISCONNECT_GRACE if grace is None else grace
    cutoff = timezone.now() - timedelta(seconds=grace)
    count = 0
    away = Worker.objects.live().filter(
        channel_name="", disconnected_at__lte=cutoff, disconnect_notified_at__isnull=True
    ).select_related("account")
    for worker in away:
        if worker.mark_disconnect_notified():
            notify_worker_event(worker, "disconnected")
            count += 1
    return count

