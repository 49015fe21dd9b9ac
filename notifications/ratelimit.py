"""Rate limits of the notify API, kept in the database so every web process shares them.

Per API key: fixed windows of 30 requests per 10 s and 600 per hour, and for notifications
(both forms of ``POST /api/notify``) a budget of messages and bytes per minute, so a batch,
which counts once against the request windows, is still bounded by what it carries.

Every window a request touches is counted by **one statement** (``charge``): an upsert of
``RateCounter`` rows (``INSERT … ON CONFLICT DO UPDATE … RETURNING``, PostgreSQL and SQLite ≥
3.35) run inside the request's transaction. A request answered 429 rolls that transaction back,
its charge included: refused requests never use a quota up (a burst against a full window
does not lock the key out for longer than the window).

Per client address (``core.client_address``): requests presenting an unknown API key, at most
``BAD_KEYS_PER_ADDRESS.limit`` per ten minutes; past that the address is refused before its key
is looked at (``address_refusal``). For ``POST /api/register`` (no key yet): at most 20 pending
pairings started in the last ten minutes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import PairingRequest
from notifications.models import AddressCounter, RateCounter

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


ALLOWED = Decision(allowed=True)
WINDOWS = (Window("10s", 10, 30), Window("1h", 3600, 600))
# Per key and minute, for notifications: ``Window.limit`` is in messages or in bytes. A batch
# of 100 and a 10 MiB file both fit in an empty window.
MESSAGES_PER_MINUTE = Window("1m-messages", 60, 600)
BYTES_PER_MINUTE = Window("1m-bytes", 60, 32 * 1024 * 1024)
BAD_KEYS_PER_ADDRESS = Window("bad-keys", 600, 30)

PAIRINGS_PER_IP = 20
PENDING_PAIRINGS_MAX = 10_000  # for everyone together: addresses can be many
PAIRING_IP_WINDOW = timedelta(minutes=10)


def window_start(now: datetime, seconds: int) -> datetime:
    return datetime.fromtimestamp(int(now.timestamp()) // seconds * seconds, tz=UTC)


def _retry_after(window: Window, now: datetime) -> int:
    end = window_start(now, window.seconds) + timedelta(seconds=window.seconds)
    return max(1, math.ceil((end - now).total_seconds()))


def _upsert(table: str, subject: str, subject_value: object, amounts: Sequence[tuple[Window, int]],
            now: datetime) -> dict[str, int]:
    """Add each amount to its window's counter in one statement; the counts after it, by window."""
    q = connection.ops.quote_name
    table, subject, window, start, count = (q(table), q(subject), q("window"), q("window_start"), q("count"))
    rows = ", ".join(["(%s, %s, %s, %s)"] * len(amounts))
    params: list[Any] = []
    for w, amount in amounts:  # the datetime as Django stores it (SQLite keeps text: it must match)
        params += [subject_value, w.name, connection.ops.adapt_datetimefield_value(window_start(now, w.seconds)),
                   amount]
    sql = (
        f"INSERT INTO {table} ({subject}, {window}, {start}, {count}) VALUES {rows} "
        f"ON CONFLICT ({subject}, {window}, {start}) DO UPDATE SET {count} = {table}.{count} + excluded.{count} "
        f"RETURNING {window}, {count}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return dict(cursor.fetchall())


def _refusal(counts: dict[str, int], windows: Sequence[Window], now: datetime) -> Decision:
    refusal = ALLOWED
    for w in windows:
        if counts.get(w.name, 0) > w.limit:
            retry_after = _retry_after(w, now)
            if retry_after > refusal.retry_after:
                refusal = Decision(allowed=False, retry_after=retry_after, limit=w.limit, window=w.name)
    return refusal


def charge(api_key_id: int, *, messages: int | None = None, size: int = 0,
           now: datetime | None = None) -> Decision:
    """Count one request of the key in every window, plus, when ``messages`` is given, that many
    notifications of ``size`` bytes against the minute budgets. One statement.

    Refused when any window is over its limit. The caller runs this inside the request's
    transaction and rolls it back on a refusal, so a refused request is not counted.
    """
    now = now or timezone.now()
    amounts = [(w, 1) for w in WINDOWS]
    if messages is not None:
        amounts += [(MESSAGES_PER_MINUTE, messages), (BYTES_PER_MINUTE, size)]
    counts = _upsert(RateCounter._meta.db_table, "api_key_id", api_key_id, amounts, now)
    refusal = _refusal(counts, [w for w, _ in amounts], now)
    if not refusal.allowed:
        logger.info("rate limit: key #%s over %s in the %s window", api_key_id, refusal.limit, refusal.window)
    return refusal


# ---------------------------------------------------------------------------------- per address


def address_failures(address: str, now: datetime | None = None) -> QuerySet[AddressCounter, int]:
    """The address's count of unknown keys in the current window (a subquery for the key lookup)."""
    now = now or timezone.now()
    return AddressCounter.objects.filter(
        address=address, window=BAD_KEYS_PER_ADDRESS.name,
        window_start=window_start(now, BAD_KEYS_PER_ADDRESS.seconds),
    ).values_list("count", flat=True)


def address_refusal(failures: int | None, now: datetime | None = None) -> Decision:
    """Refused while the address's unknown keys in this window have reached the limit."""
    if failures is None or failures < BAD_KEYS_PER_ADDRESS.limit:
        return ALLOWED
    return Decision(allowed=False, retry_after=_retry_after(BAD_KEYS_PER_ADDRESS, now or timezone.now()),
                    limit=BAD_KEYS_PER_ADDRESS.limit, window=BAD_KEYS_PER_ADDRESS.name)


def record_bad_key(address: str, now: datetime | None = None) -> Decision:
    """Count a request from ``address`` whose key is unknown (one statement). Refused when the
    address had already reached the limit: that request is answered 429 rather than 401."""
    now = now or timezone.now()
    counts = _upsert(AddressCounter._meta.db_table, "address", address, [(BAD_KEYS_PER_ADDRESS, 1)], now)
    failures = counts.get(BAD_KEYS_PER_ADDRESS.name, 0)
    if failures == BAD_KEYS_PER_ADDRESS.limit:
        logger.warning("rate limit: %s unknown API keys from %s; refusing it for the rest of the window",
                       failures, address)
    return address_refusal(failures - 1, now)  # this request is refused when the address was at the limit


# ---------------------------------------------------------------------------------- pairing


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
    return ALLOWED


def record_pairing_ip(pairing: PairingRequest, ip: str) -> None:
    """Remember which address started ``pairing`` (for ``check_pairing_ip``)."""
    PairingRequest.objects.filter(pk=pairing.pk).update(client_ip=ip)
