"""Hooks into the other apps that need no code of theirs beyond a signal or a log line."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction

from ops import counters
from workers.models import ConnectToken, Worker
from workers.signals import worker_connected

logger = logging.getLogger(__name__)

# The log records counted (see ops.counters): logger name → (message format, counter).
AUTH_REFUSED_LOGGER = "workers.consumers"
AUTH_REFUSED_MESSAGE = "worker auth refused from %s: %s"
TELEGRAM_429_LOGGER = "telegram_app.delivery"
TELEGRAM_429_MESSAGE = "outbox %s: Telegram asks to wait %ss"


def record_first_ready(sender: Any, worker: Worker, at: datetime, first: bool, **kwargs: Any) -> None:
    """A worker's first connection: tie it to the connect token it was enrolled with.

    The consumer consumes the token and enrolls the worker just before it marks the worker
    connected, so the token is the account's latest used one not yet tied to a worker.
    """
    if not first:
        return
    from ops.models import Enrollment

    token = (
        ConnectToken.objects.filter(account_id=worker.account_id, used_at__isnull=False,
                                    used_at__lte=at, enrollment__isnull=True)
        .order_by("-used_at")
        .first()
    )
    try:
        with transaction.atomic():
            Enrollment.objects.create(
                worker=worker,
                token=token,
                token_issued_at=token.created_at if token else None,
                token_used_at=token.used_at if token else None,
                first_ready_at=at,
            )
    except IntegrityError:  # this worker (or that token) was recorded already
        logger.debug("enrollment of worker %s already recorded", worker.pk)
    except Exception:  # a metric must never refuse a worker's connection
        logger.exception("could not record the first connection of worker %s", worker.pk)


class CountingHandler(logging.Handler):
    """Counts the records of one message format; never formats or prints anything."""

    def __init__(self, message: str, counter: str, label_arg: int | None) -> None:
        super().__init__(logging.INFO)
        self.message = message
        self.counter = counter
        self.label_arg = label_arg

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg != self.message:
            return
        labels: tuple[str, ...] = ()
        if self.label_arg is not None:
            args = record.args if isinstance(record.args, tuple) else ()
            labels = (str(args[self.label_arg]) if len(args) > self.label_arg else "unknown",)
        counters.increment(self.counter, *labels)


def _add_handler(logger_name: str, handler: CountingHandler) -> None:
    target = logging.getLogger(logger_name)
    if not any(isinstance(h, CountingHandler) and h.counter == handler.counter for h in target.handlers):
        target.addHandler(handler)


def install() -> None:
    worker_connected.connect(record_first_ready, sender=Worker, dispatch_uid="ops.record_first_ready")
    _add_handler(AUTH_REFUSED_LOGGER, CountingHandler(AUTH_REFUSED_MESSAGE, "auth_refused", label_arg=1))
    _add_handler(TELEGRAM_429_LOGGER, CountingHandler(TELEGRAM_429_MESSAGE, "telegram_429", label_arg=None))
