"""The one place where synchronous code rings the channel layer.

The database is the source of truth for jobs and outbox messages; the channel layer is
only a doorbell that wakes whoever should look at the database now (a worker consumer,
the outbox sender). A lost ring costs latency, never data: every listener also looks on
its own schedule.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

OUTBOX_GROUP = "outbox"


def ring(group: str, message: dict[str, Any]) -> None:
    """Send ``message`` to ``group`` once the current transaction commits."""
    transaction.on_commit(lambda: _send(group, message))


def ring_channel(channel_name: str, message: dict[str, Any]) -> None:
    """Send ``message`` to one consumer's channel once the current transaction commits."""
    transaction.on_commit(lambda: _send(channel_name, message, to_group=False))


def _send(target: str, message: dict[str, Any], *, to_group: bool = True) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    send = layer.group_send if to_group else layer.send
    try:
        async_to_sync(send)(target, message)
    except Exception:  # the doorbell must never break the write it announces
        logger.warning("channel layer: could not ring %s", target, exc_info=True)
