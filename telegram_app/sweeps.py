"""Periodic sweeps run by ``runbot``: disconnect notices, lost jobs, stalled processes, expiries.

Each sweep is a plain sync function elsewhere; this loop calls them in turn and never lets
one failure stop the others or the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from channels.db import database_sync_to_async
from django.utils import timezone

from accounts.pairing import expire_pairings
from core.claims import release_expired_claims
from core.outbox import prune as prune_outbox
from jobs.services import mark_lost_jobs
from notifications import services as notification_services
from telegram_app.dashboards import refresh_dashboards
from workers.models import ConnectToken
from workers.services import announce_disconnects, mark_stale_workers

logger = logging.getLogger(__name__)


def delete_old_connect_tokens() -> int:
    """Connect tokens are useless a few minutes after issue; keep a day for the operators."""
    deleted, _ = ConnectToken.objects.filter(expires_at__lt=timezone.now() - timedelta(days=1)).delete()
    return deleted


SWEEPS: list[tuple[str, Callable[[], int]]] = [
    ("workers without heartbeats", mark_stale_workers),  # first: the two rules below act on it
    ("disconnect notices", announce_disconnects),
    ("lost jobs", mark_lost_jobs),
    ("stalled processes", notification_services.mark_stalled_processes),
    ("lost processes", notification_services.mark_lost_processes),
    ("live dashboards", refresh_dashboards),  # after the two above: it shows what they decided
    ("expired pairings", expire_pairings),
    ("outbox claims whose lease ran out", release_expired_claims),
    ("old connect tokens", delete_old_connect_tokens),
    ("idempotency records and rate counters", notification_services.prune_bookkeeping),
    ("delivered outbox messages", prune_outbox),
]


def run_sweeps_once() -> dict[str, int]:
    results: dict[str, int] = {}
    for name, sweep in SWEEPS:
        try:
            results[name] = sweep()
            if results[name]:
                logger.info("sweep %s: %s", name, results[name])
        except Exception:
            logger.exception("sweep %s failed; the others go on", name)
    return results


async def run_sweeps(stop: asyncio.Event, interval: float = 5.0) -> None:
    while not stop.is_set():
        # Not on the thread every handler's and the sender's queries share: a slow sweep must not
        # hold up delivery (nor a sender's first claim after a restart).
        await database_sync_to_async(run_sweeps_once, thread_sensitive=False)()
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass
