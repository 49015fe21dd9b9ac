"""The library's logger and warn-once helper (a warning per cause, not per call)."""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger("experiment_bot")

_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_once(key: str, message: str, *args: Any, level: int = logging.WARNING) -> None:
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.log(level, message, *args)


def forget(key: str) -> None:
    """Allow the warning ``key`` again (tests, or after the cause was fixed)."""
    with _warned_lock:
        _warned.discard(key)
