"""Flood control like Telegram's: a token bucket per chat and one for the whole bot."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tg_rules.buckets import TokenBucket


@dataclass
class FloodConfig:
    """Limits: per chat a burst of ``per_chat_burst`` refilled at ``per_chat_rate``/s;
    overall ``global_burst`` refilled at ``global_rate``/s."""

    enabled: bool = True
    per_chat_burst: float = 20
    per_chat_rate: float = 1.0
    global_burst: float = 30
    global_rate: float = 30.0


@dataclass
class FloodControl:
    """Decides whether a counted call may go through; thread-safe."""

    config: FloodConfig = field(default_factory=FloodConfig)
    clock: Callable[[], float] = time.monotonic
    _chats: dict[int, TokenBucket] = field(default_factory=dict)
    _global: TokenBucket | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self._lock:
            self._chats.clear()
            self._global = None

    def acquire(self, chat_id: int) -> int | None:
        """Consume a token for ``chat_id``; returns None when allowed, else retry_after (s, ≥ 1)."""
        cfg = self.config
        if not cfg.enabled:
            return None
        now = self.clock()
        with self._lock:
            chat = self._chats.get(chat_id)
            if chat is None:
                chat = self._chats[chat_id] = TokenBucket.full(cfg.per_chat_burst, cfg.per_chat_rate, now)
            if self._global is None:
                self._global = TokenBucket.full(cfg.global_burst, cfg.global_rate, now)
            chat.refill(now)
            self._global.refill(now)
            wait = max(chat.wait_time(), self._global.wait_time())
            if wait > 0:
                return max(1, math.ceil(wait))
            chat.take()
            self._global.take()
            return None
