"""What ``/readyz`` adds to ``/healthz``: is the outbox being delivered?

A message is *deliverable* once its ``next_attempt_at`` has passed (a row waiting out a 429's
``retry_after`` or a backoff is not late yet) and its account has not blocked the bot (a sender
never claims those). Two checks, each a failure with a reason:

- ``outbox``: the oldest deliverable message has waited longer than ``READY_OUTBOX_MAX_AGE``
  (the senders are too slow or stuck);
- ``sender``: deliverable messages have waited longer than ``READY_SENDER_IDLE`` and no sender
  claimed any row for as long (no bot process is draining the outbox).

Both are one indexed query when the outbox is empty or moving; the second looks at claims only
when work has been waiting.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Min
from django.utils import timezone

from core.models import OutboxMessage


def last_claim_since(cutoff: datetime) -> datetime | None:
    """The latest claim at or after ``cutoff`` (sent rows keep their ``claimed_at``), or None."""
    rows = OutboxMessage.objects.filter(
        state__in=[OutboxMessage.State.SENDING, OutboxMessage.State.SENT], claimed_at__gte=cutoff
    )
    return rows.order_by("-claimed_at").values_list("claimed_at", flat=True).first()


def outbox_problems(now: datetime | None = None) -> list[str]:
    """Reasons the outbox is not being delivered; empty when it is."""
    now = now or timezone.now()
    oldest = OutboxMessage.objects.filter(
        state=OutboxMessage.State.PENDING, next_attempt_at__lte=now, account__blocked_at__isnull=True
    ).aggregate(at=Min("next_attempt_at"))["at"]
    if oldest is None:
        return []
    waited = (now - oldest).total_seconds()
    problems = []
    if waited > settings.READY_OUTBOX_MAX_AGE:
        problems.append(
            f"outbox: the oldest deliverable message has waited {waited:.0f} s "
            f"(READY_OUTBOX_MAX_AGE {settings.READY_OUTBOX_MAX_AGE:g} s)"
        )
    idle = timedelta(seconds=settings.READY_SENDER_IDLE)
    if waited > idle.total_seconds() and last_claim_since(now - idle) is None:
        problems.append(
            f"sender: messages have waited {waited:.0f} s and no sender claimed any for "
            f"{idle.total_seconds():g} s (READY_SENDER_IDLE); is a bot process running?"
        )
    return problems
