"""Rate limits of the notify API, kept in the database so every web process shares them.

Per API key: fixed windows of 30 requests per 10 s and 600 per hour (``RateCounter`` rows,
incremented with ``F("count") + 1``). Per client IP, for ``POST /api/register`` (no key yet):
at most 20 pending pairings started in the last 10 minutes.

Per API key, for notifications (both forms of ``POST /api/notify``): a budget of messages and
bytes per minute (``spend``), so a batch, which counts once against the request windows, is
still bounded by what it carries.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db.models import F
from django.utils import timezone

from accounts.models import ApiKey, PairingRequest
from notifications.models import RateCounter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    name: str
    seconds: int
    limit: int


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: int = 0  # seconds until the refusing window ends
    limit: int = 0
    window: str = ""


WINDOWS = (Window("10s", 10, 30), Window("1h", 3600, 600))
PAIRINGS_PER_IP = 20
PENDING_PAIRINGS_MAX = 10_000  # for everyone together: addresses can be many (or spoofed behind proxies)
PAIRING_IP_WINDOW = timedelta(minutes=10)
COUNTER_TTL = timedelta(hours=2)


def window_start(now: datetime, seconds: int) -> datetime:
    return datetime.fromtimestamp(int(now.timestamp()) // seconds * seconds, tz=UTC)


def hit(api_key: ApiKey, now: datetime | None = None) -> Decision:
    """Count one request of ``api_key`` in every window; refused when any window is over its limit."""
    now = now or timezone.now()
    refusal = Decision(allowed=True)
    for window in WINDOWS:
        start = window_start(now, window.seconds)
        counter, created = RateCounter.objects.get_or_create(
            api_key=api_key, window=window.name, window_start=start, defaults={"count": 0}
        )
        RateCounter.objects.filter(pk=counter.pk).update(count=F("count") + 1)
        count = RateCounter.objects.filter(pk=counter.pk).values_list("count", flat=True).first() or 0
        if created:
            RateCounter.objects.filter(api_key=api_key, window_start__lt=now - COUNTER_TTL).delete()
        if count > window.limit:
            end = start + timedelta(seconds=window.seconds)
            retry_after = max(1, math.ceil((end - now).total_seconds()))
            if retry_after > refusal.retry_after:
                refusal = Decision(allowed=False, retry_after=retry_after, limit=window.limit, window=window.name)
    if not refusal.allowed:
        logger.info("rate limit: key %s over %s/%s", api_key.prefix, refusal.limit, refusal.window)
    return refusal


# ---------------------------------------------------------------------------------- budgets

# Per key and minute, for notifications: ``Window.limit`` is in messages or in bytes. A batch
# of 100 and a 10 MiB file both fit in an empty window.
MESSAGES_PER_MINUTE = Window("1m-messages", 60, 600)
BYTES_PER_MINUTE = Window("1m-bytes", 60, 32 * 1024 * 1024)


def spend(api_key: ApiKey, *, messages: int, size: int, now: datetime | None = None) -> Decision:
    """Charge ``messages`` notifications of ``size`` bytes in all to ``api_key``'s minute budgets.

    Refused (nothing to retry but later) when either budget would be exceeded; the caller runs
    this inside the request's transaction, so a refused request rolls its charge back.
    """
    now = now or timezone.now()
    refusal = Decision(allowed=True)
    for window, amount in ((MESSAGES_PER_MINUTE, messages), (BYTES_PER_MINUTE, size)):
        start = window_start(now, window.seconds)
        counter, _ = RateCounter.objects.get_or_create(
            api_key=api_key, window=window.name, window_start=start, defaults={"count": 0}
        )
        RateCounter.objects.filter(pk=counter.pk).update(count=F("count") + amount)
        count = RateCounter.objects.filter(pk=counter.pk).values_list("count", flat=True).first() or 0
        if count > window.limit:
            retry_after = max(1, math.ceil((start + timedelta(seconds=window.seconds) - now).total_seconds()))
            if retry_after > refusal.retry_after:
                refusal = Decision(allowed=False, retry_after=retry_after, limit=window.limit, window=window.name)
    if not refusal.allowed:
        logger.info("rate limit: key %s over its %s budget of %s", api_key.prefix, refusal.window, refusal.limit)
    return refusal


# ---------------------------------------------------------------------------------- per IP

def check_pairing_ip(ip: str, now: datetime | None = None) -> Decision:
    """May ``ip`` start another pairing? At most ``PAIRINGS_PER_IP`` pending ones per 10 minutes."""
    now = now or timezone.now()
    recent = PairingRequest.objects.filter(
        client_ip=ip, state=PairingRequest.State.PENDING, created_at__gte=now - PAIRING_IP_WINDOW
    )
    count = recent.count()
    oldest = recent.order_by("created_at").values_list("created_at", flat=True).first()
    retry_after = (oldest + PAIRING_IP_WINDOW - now).total_seconds() if oldest else 0
    if PairingRequest.objects.filter(state=PairingRequest.State.PENDING, expires_at__gt=now).count() >= (
        PENDING_PAIRINGS_MAX
    ):
        logger.warning("rate limit: %s pairings pending in all; refusing new ones", PENDING_PAIRINGS_MAX)
        return Decision(allowed=False, retry_after=60, limit=PENDING_PAIRINGS_MAX, window="pending")
    if count >= PAIRINGS_PER_IP:
        logger.info("rate limit: %s pending pairings from one address", count)
        return Decision(allowed=False, retry_after=max(1, math.ceil(retry_after)), limit=PAIRINGS_PER_IP,
                        window="10min")
    return Decision(allowed=True)


def record_pairing_ip(pairing: PairingRequest, ip: str) -> None:
    """Remember which address started ``pairing`` (for ``check_pairing_ip``)."""
    PairingRequest.objects.filter(pk=pairing.pk).update(client_ip=ip)
