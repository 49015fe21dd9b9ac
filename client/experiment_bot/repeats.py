"""``bot.catch()``: report an exception of a loop step and carry on, one message per kind of error.

The same exception (same type, raised at the same line of the user's code, in the same run)
repeating inside a loop becomes one chat message that is edited as it repeats: the count, the
first and last iteration, the hint and one traceback (the first one's). The first occurrence is
sent at once; later ones update the message at most once per update interval (and once more
at exit), so a loop failing 10,000 times costs a handful of requests.

    for i, batch in enumerate(bot.track_progress(loader)):
        with bot.catch("train step"):
            step(batch)
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from .diagnose import Frame, interpret, user_frames
from .payload import describe_exception, format_traceback

if TYPE_CHECKING:
    from types import TracebackType

    from .client import ExperimentBot

F = TypeVar("F", bound=Callable[..., Any])
TRACEBACK_LINES = 14
MAX_TEXT = 3000  # well inside one Telegram message: the message is edited, never split

#: Scopes the repeats caught outside a tracked run to this process: the server keys the
#: message it edits on the group (kept a month), so without it a second run of the same
#: script would edit the first run's "3 times" message instead of posting a new one.
_session = secrets.token_hex(8)


def _new_session() -> None:
    global _session
    _session = secrets.token_hex(8)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_session)  # a forked child is a session of its own


def repeat_group(process_id: str | None, label: str | None, cls: type[BaseException], where: str) -> str:
    """The group (the server's edit key) of one kind of error: the same type at the same line
    with the same label, in the same run (its uuid), else in the same process (a session id)."""
    scope = process_id or f"session:{_session}"
    identity = f"{scope}|{label}|{cls.__module__}.{cls.__qualname__}|{where}"
    return "catch-" + hashlib.sha256(identity.encode("utf-8", "replace")).hexdigest()[:24]


@dataclass
class Repeat:
    """One kind of error seen by ``bot.catch()``."""

    group: str
    error: str
    label: str | None
    process_id: str | None
    hint: str | None
    frame: Frame | None
    traceback: str | None
    count: int = 0
    first_iteration: int | None = None
    last_iteration: int | None = None
    first_at: float = 0.0
    last_at: float = 0.0
    sent_count: int = 0
    last_sent: float = field(default=-1e9)
    timer: threading.Timer | None = None


def _inline(text: str) -> str:
    """Safe inside Markdown inline code."""
    return " ".join(text.replace("`", "'").split())


def _clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(seconds))


def render(repeat: Repeat) -> str:
    """The message text (the server's Markdown subset)."""
    head = f"`{_inline(repeat.error)[:300]}`"
    if repeat.label:
        head += f" in step `{_inline(repeat.label)[:80]}`"
    times = "once" if repeat.count == 1 else f"{repeat.count} times"
    lines = [f"🔁 {head}: **{times}** (caught, the loop went on)"]
    span: list[str] = []
    if repeat.first_iteration is not None:
        if repeat.count == 1 or repeat.last_iteration == repeat.first_iteration:
            span.append(f"iteration {repeat.first_iteration}")
        else:
            span.append(f"iterations {repeat.first_iteration} … {repeat.last_iteration}")
    span.append(f"first {_clock(repeat.first_at)}" + (f", last {_clock(repeat.last_at)}" if repeat.count > 1 else ""))
    lines.append(" · ".join(span))
    if repeat.hint:
        lines.append(f"💡 {repeat.hint}")
    if repeat.frame is not None:
        where = f"📍 `{_inline(repeat.frame.where)[:200]}`"
        if repeat.frame.code:
            where += f": `{_inline(repeat.frame.code)[:200]}`"
        lines.append(where)
    text = "\n".join(lines)
    if repeat.traceback:
        tail = repeat.traceback.rstrip().replace("```", "'''").splitlines()[-TRACEBACK_LINES:]
        budget = MAX_TEXT - len(text) - 10
        while tail and len("\n".join(tail)) > budget:
            tail = tail[1:]
        if tail:
            text += "\n```\n" + "\n".join(line[:300] for line in tail) + "\n```"
    return text[:MAX_TEXT]


class Repeats:
    """The kinds of error seen by one bot's ``catch()``, and their throttled messages."""

    def __init__(self, bot: ExperimentBot) -> None:
        self.bot = bot
        self._lock = threading.Lock()
        self._seen: dict[str, Repeat] = {}
        self._exit_hook = False

    def record(
        self,
        exc: BaseException,
        tb: TracebackType | None,
        *,
        label: str | None = None,
        iteration: int | None = None,
    ) -> Repeat:
        from .progress import current_iteration
        from .tracker import current_run

        run = current_run()
        process_id = run.uuid if run is not None and run.bot is self.bot and run._remote else None
        frames = user_frames(tb, limit=1)
        frame = frames[-1] if frames else None
        cls = type(exc)
        where = f"{frame.file}:{frame.line}" if frame is not None else ""
        group = repeat_group(process_id, label, cls, where)
        if iteration is None:
            iteration = current_iteration()
        now = time.time()
        with self._lock:
            repeat = self._seen.get(group)
            if repeat is None:
                verbosity = self.bot.settings.error_verbosity
                repeat = Repeat(
                    group=group,
                    error=describe_exception(exc),
                    label=label,
                    process_id=process_id,
                    hint=interpret(exc, tb, names=verbosity != "low"),
                    frame=frame if verbosity != "low" else None,
                    traceback=format_traceback(cls, exc, tb, "medium" if verbosity == "high" else verbosity),
                    first_iteration=iteration,
                    first_at=now,
                )
                self._seen[group] = repeat
            repeat.count += 1
            repeat.last_iteration = iteration
            repeat.last_at = now
            self._schedule(repeat)
        return repeat

    # ------------------------------------------------------------------ sending (lock held)

    def _schedule(self, repeat: Repeat) -> None:
        wait = repeat.last_sent + self.bot._update_gap() - time.monotonic()
        if wait <= 0:
            self._send(repeat)
        elif repeat.timer is None:
            timer = threading.Timer(wait, self._send_due, args=(repeat.group,))
            timer.daemon = True
            repeat.timer = timer
            timer.start()
        if not self._exit_hook:
            from .sender import add_exit_callback

            add_exit_callback(self.flush)
            self._exit_hook = True

    def _send_due(self, group: str) -> None:
        try:
            with self._lock:
                repeat = self._seen.get(group)
                if repeat is not None:
                    repeat.timer = None
                    if repeat.sent_count != repeat.count:
                        self._send(repeat)
        except Exception:  # a timer thread: never print a traceback into the user's output
            import logging

            logging.getLogger("experiment_bot").debug("experiment_bot: a repeated-error update failed", exc_info=True)

    def _send(self, repeat: Repeat) -> None:
        if repeat.timer is not None:
            repeat.timer.cancel()
            repeat.timer = None
        repeat.sent_count = repeat.count
        repeat.last_sent = time.monotonic()
        self.bot._send_repeat(repeat.group, render(repeat), repeat.process_id)

    def flush(self) -> None:
        """Send every message whose count changed since it was last sent (at exit, or by hand)."""
        with self._lock:
            for repeat in self._seen.values():
                if repeat.sent_count != repeat.count:
                    self._send(repeat)


class Catch:
    """What ``bot.catch()`` returns: a context manager and a decorator that report an exception
    (aggregated with its repeats) and swallow it, unless ``reraise=True``."""

    def __init__(
        self,
        bot: ExperimentBot,
        label: str | None = None,
        *,
        iteration: int | None = None,
        reraise: bool = False,
        exceptions: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    ) -> None:
        self.bot = bot
        self.label = label
        self.iteration = iteration
        self.reraise = reraise
        self.exceptions = exceptions
        self.last: Repeat | None = None

    def __enter__(self) -> Catch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None or not isinstance(exc, self.exceptions):
            return False
        try:
            self.last = self.bot._repeats.record(exc, tb, label=self.label, iteration=self.iteration)
        except Exception:
            import logging

            logging.getLogger("experiment_bot").debug("experiment_bot: could not report a caught error", exc_info=True)
        return not self.reraise

    def __call__(self, func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with Catch(self.bot, self.label or getattr(func, "__qualname__", None), iteration=self.iteration,
                       reraise=self.reraise, exceptions=self.exceptions):
                return func(*args, **kwargs)
            return None

        return wrapper  # type: ignore[return-value]
