"""What the rest of StatsBot asks of workers: connect commands, revocation, disconnect notices."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import Account
from core import events
from core.layer import ring_channel
from core.models import OutboxMessage
from core.outbox import enqueue
from jobs import services as job_services
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
    if event in ("disconnected", "reconnected"):
        job_services.announce_unfinished(worker.account)


def revoke_worker(worker: Worker, reason: str) -> None:
    """Revoke the credential and close the worker's connection, if open."""
    with transaction.atomic():
        channel = worker.channel_name
        worker.revoke(reason)
        if channel:
            ring_channel(channel, events.worker_revoked(reason))
    logger.info("worker %s revoked (%s)", worker.pk, reason)


def mark_stale_workers(stale_after: float | None = None) -> int:
    """Workers marked connected whose heartbeats stopped are disconnected now.

    A web process killed with ``kill -9`` never runs its disconnect handlers: its workers stay
    "online" on a channel nobody reads. Every web process writes ``last_seen_at`` of its
    connected workers at least every ``workers.presence.FLUSH_EVERY`` seconds, so a worker not
    seen for ``stale_after`` seconds has no live connection. The worker counts as gone since it
    was last seen, so the disconnect notice and the lost-job rule run on their usual graces,
    once each. Run at startup and on every sweep.
    """
    stale_after = settings.WORKER_STALE_AFTER if stale_after is None else stale_after
    now = timezone.now()
    cutoff = now - timedelta(seconds=stale_after)
    count = 0
    stale = Worker.objects.live().exclude(channel_name="").filter(
        Q(last_seen_at__lt=cutoff) | Q(last_seen_at__isnull=True, connected_at__lt=cutoff)
    )
    for worker in stale.only("pk", "channel_name", "last_seen_at", "connected_at"):
        # Conditional on what was read: a heartbeat or a reconnect in between wins.
        if Worker.objects.filter(pk=worker.pk, channel_name=worker.channel_name,
                                 last_seen_at=worker.last_seen_at).update(
            channel_name="", disconnected_at=worker.last_seen_at or worker.connected_at or now
        ):
            logger.info("worker %s: no heartbeat since %s; marked disconnected", worker.pk, worker.last_seen_at)
            count += 1
    return count


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

