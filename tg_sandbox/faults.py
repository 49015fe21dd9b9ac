"""Fault injection: rules that make matching Bot API calls fail or slow down.

Rules are kept in order; a call takes the first rule that matches it (method, optional chat)
and consumes one of its ``count`` uses. ``method="*"`` matches every method except
``getUpdates`` (name it explicitly to disturb polling). The queue is thread-safe so a test
thread can add rules while the sandbox runs in another.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger(__name__)

FAULT_KINDS = ("429", "5xx", "slow", "blocked", "slow_reply")


@dataclass
class FaultRule:
    """One fault: ``kind`` is "429" (uses ``retry_after``), "5xx" (502 Bad Gateway),
    "slow" (waits ``delay`` seconds, then answers normally), "blocked" (403) or "slow_reply"
    (the call takes effect at once, its answer comes ``delay`` seconds later: a bot that dies
    meanwhile has sent a message it never learned about).

    With ``duration`` (seconds), the rule matches every call for that long after it is added,
    whatever ``count`` says: e.g. a minute of flood control answering 429 with ``retry_after``."""

    method: str = "*"
    kind: str = "5xx"
    count: int = 1
    chat_id: int | None = None
    retry_after: int = 1
    delay: float = 1.0
    duration: float = 0.0

    def __post_init__(self) -> None:
        self.kind = str(self.kind)
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {', '.join(FAULT_KINDS)}")
        self.count = int(self.count)
        if self.count < 1:
            raise ValueError("count must be at least 1")
        self.retry_after = max(1, int(self.retry_after))
        self.delay = max(0.0, float(self.delay))
        self.duration = float(self.duration)
        if not 0.0 <= self.duration <= 3600.0:
            raise ValueError("duration must be between 0 and 3600 seconds")
        if self.chat_id is not None:
            self.chat_id = int(self.chat_id)

    def matches(self, method: str, chat_id: int | None) -> bool:
        if self.method == "*":
            if method.lower() == "getupdates":
                return False
        elif self.method.lower() != method.lower():
            return False
        return self.chat_id is None or self.chat_id == chat_id

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FaultQueue:
    """Ordered, thread-safe list of fault rules."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._rules: list[FaultRule] = []
        self._until: dict[int, float] = {}  # id(rule) -> end of a rule with a duration
        self._lock = threading.Lock()
        self._clock = clock
        self.applied = 0

    def add(self, rule: FaultRule | None = None, /, **fields: Any) -> FaultRule:
        """Append a rule, given as a FaultRule or as its fields (``add(method=..., kind=...)``)."""
        if rule is None:
            rule = FaultRule(**fields)
        with self._lock:
            self._rules.append(rule)
            if rule.duration:
                self._until[id(rule)] = self._clock() + rule.duration
        logger.info("fault added: %s", rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._until.clear()

    def rules(self) -> list[FaultRule]:
        with self._lock:
            self._drop_ended()
            return list(self._rules)

    def _drop_ended(self) -> None:
        now = self._clock()
        for rule in [rule for rule in self._rules if self._until.get(id(rule), now) < now]:
            self._rules.remove(rule)
            del self._until[id(rule)]

    def take(self, method: str, chat_id: int | None) -> FaultRule | None:
        """The first rule matching this call, with one use consumed; None when none matches."""
        with self._lock:
            self._drop_ended()
            for index, rule in enumerate(self._rules):
                if rule.matches(method, chat_id):
                    if id(rule) not in self._until:  # a rule with a duration lasts until it ends
                        rule.count -= 1
                        if rule.count <= 0:
                            del self._rules[index]
                    self.applied += 1
                    return rule
        return None
