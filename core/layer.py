"""The one place where synchronous code rings the channel layer, and the names it rings.

The database is the source of truth for jobs and outbox messages; the channel layer is
only a doorbell that wakes whoever should look at the database now (a worker consumer,
the outbox sender, the bot in webhook mode). A lost ring costs latency, never data: every
listener also looks on its own schedule. The events are in ``core.events``.
"""

from __future__ import annotations

import functools
import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from core.events import ChannelEvent

logger = logging.getLogger(__name__)

OUTBOX_GROUP = "outbox"  # every outbox sender listens here
WEBHOOK_GROUP = "telegram.updates"  # the bot process in webhook mode listens here


def worker_group(account_id: int) -> str:
    """The group the account's worker connection listens on (whichever web process holds it)."""
    return f"worker.{account_id}"


def ring(group: str, event: ChannelEvent) -> None:
    """Send ``event`` to ``group`` once the current transaction commits."""
    transaction.on_commit(lambda: _send(group, event))


def ring_once(group: str, event: ChannelEvent) -> None:
    """``ring``, unless the current transaction already rings ``group`` with the same event:
    a transaction that queues a hundred outbox rows wakes the sender once, not a hundred times."""
    connection = transaction.get_connection()
    if connection.in_atomic_block:
        for _savepoints, pending, _robust in connection.run_on_commit:
            if getattr(pending, "rings", None) == (group, event):
                return
    send = functools.partial(_send, group, event)
    send.rings = (group, event)  # type: ignore[attr-defined]
    transaction.on_commit(send)


def ring_channel(channel_name: str, event: ChannelEvent) -> None:
    """Send ``event`` to one consumer's channel once the current transaction commits."""
    transaction.on_commit(lambda: _send(channel_name, event, to_group=False))


def _send(target: str, event: ChannelEvent, *, to_group: bool = True) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    send = layer.group_send if to_group else layer.send
    try:
        async_to_sync(send)(target, event)
    except Exception:  # the doorbell must never break the write it announces
        logger.warning("channel layer: could not ring %s", target, exc_info=True)
