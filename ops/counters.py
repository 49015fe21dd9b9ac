"""Counters of events no row records, kept in this process's memory (Prometheus labels them by process).

- notify API responses by endpoint and status (``ops.middleware.ApiStatusMiddleware``);
- worker auths the consumer refused, by reason, and 429s Telegram sent the outbox sender: read
  from those modules' own INFO log records (``ops.receivers``), so their hot paths carry no
  metrics code. With ``LOG_LEVEL`` above INFO those two stay at zero.

They restart from zero with the process; Prometheus' ``rate()``/``increase()`` handle that.
"""

from __future__ import annotations

import os
import socket
import threading
from collections import Counter

_lock = threading.Lock()
_counts: dict[str, Counter[tuple[str, ...]]] = {
    "api_requests": Counter(),  # (endpoint, status)
    "auth_refused": Counter(),  # (reason,)
    "telegram_429": Counter(),  # ()
}


def increment(name: str, *labels: str) -> None:
    with _lock:
        _counts[name][labels] += 1


def snapshot(name: str) -> dict[tuple[str, ...], int]:
    with _lock:
        return dict(_counts[name])


def process_label() -> str:
    """hostname:pid of this process (read at call time: a forked child is its own process)."""
    return f"{socket.gethostname()}:{os.getpid()}"
