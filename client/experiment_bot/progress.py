"""``track_progress``: a generator wrapper that reports how far a loop got."""

from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator, TypeVar

from .errors import StopRequested

if TYPE_CHECKING:
    from .client import ExperimentBot

T = TypeVar("T")


def parse_every(every: Any) -> tuple[str, float]:
    """``"10%"`` → ("percent", 10), ``25`` → ("items", 25), ``"30s"`` → ("seconds", 30)."""
    if isinstance(every, bool):
        raise ValueError(f"every: expected '10%', an item count or '30s', got {every!r}")
    if isinstance(every, int):
        if every <= 0:
            raise ValueError(f"every: the item count must be positive, got {every!r}")
        return "items", float(every)
    if isinstance(every, str):
        text = every.strip().lower()
        try:
            if text.endswith("%"):
                value = float(text[:-1])
                if 0 < value <= 100:
                    return "percent", value
            elif text.endswith("s"):
                value = float(text[:-1])
                if value > 0:
                    return "seconds", value
            elif text.isdigit() and int(text) > 0:
                return "items", float(int(text))
        except ValueError:
            pass
    raise ValueError(f"every: expected '10%', an item count or '30s', got {every!r}")


class ProgressSchedule:
    """Decides after which item a progress update is due."""

    def __init__(self, every: Any, total: int | None) -> None:
        mode, amount = parse_every(every)
        if mode == "percent" and not total:
            mode, amount = "seconds", 30.0  # no total: fall back to time-based updates
        self.mode = mode
        self.amount = amount
        self.total = total
        self._next_threshold = self._threshold_after(0) if mode == "percent" else 0
        self._last_time = time.monotonic()

    def _threshold_after(self, done: int) -> int:
        assert self.total
        step = self.amount * self.total / 100.0
        k = math.floor(done / step + 1e-9) + 1
        return max(done + 1, math.ceil(k * step - 1e-9))

    def due(self, done: int) -> bool:
        if self.mode == "percent":
            if done >= self._next_threshold:
                self._next_threshold = self._threshold_after(done)
                return True
            return False
        if self.mode == "items":
            return done % int(self.amount) == 0
        now = time.monotonic()
        if now - self._last_time >= self.amount:
            self._last_time = now
            return True
        return False

    @property
    def forced(self) -> bool:
        """Percent milestones are few and always sent; other updates respect the update interval."""
        return self.mode == "percent"


_loops = threading.local()  # per thread: the index cells of the active track_progress loops


def current_iteration() -> int | None:
    """The index (0-based) of the item the innermost ``track_progress`` loop of this thread is on."""
    cells = getattr(_loops, "cells", None)
    return cells[-1][0] if cells else None


def _drop(cells: list[list[int]], cell: list[int]) -> None:
    for index in range(len(cells) - 1, -1, -1):
        if cells[index] is cell:
            del cells[index]
            return


def _length(iterable: Any) -> int | None:
    try:
        return len(iterable)
    except Exception:  # no __len__, or a __len__ that raises
        return None


def track_progress(
    bot: ExperimentBot,
    iterable: Iterable[T],
    total: int | None = None,
    every: str | int | None = None,
    name: str | None = None,
) -> Iterator[T]:
    """Yield the items of ``iterable`` and send progress heartbeats.

    Attaches to the active tracked process of this thread, or starts (and finishes) one of
    its own when there is none. After each item it acts on the chat's buttons: runs tapped
    actions, waits while paused, raises :class:`StopRequested` after ⏹ Stop; all three only
    in the run's own thread (a loop in a worker attached to the main thread's run goes on:
    see ``Run.checkpoint``).
    """
    from .tracker import current_run

    if total is None:
        total = _length(iterable)
    schedule = ProgressSchedule(every if every is not None else bot.settings.progress_interval, total)
    run = current_run()
    auto = None
    if run is None:
        auto = bot._start_auto_run(name, total)
        run = auto
    owner = object()
    owns_bar = run.claim_progress(owner)
    if owns_bar:
        run.set_progress(0, total, send=False)
    done = 0
    last_sent = -1
    cell = [0]
    cells = _loops.__dict__.setdefault("cells", [])
    cells.append(cell)
    try:
        for item in iterable:
            cell[0] = done
            yield item
            done += 1
            if owns_bar and schedule.due(done):
                run.set_progress(done, total, force=schedule.forced)
                last_sent = done
            if run._news or not run._listening:
                run.checkpoint()  # ⏹ Stop / ⏸ Pause / actions, at this step (in the run's own thread only)
    except GeneratorExit:
        # The loop was left early: ``break``, or an exception in the loop body (which a
        # generator cannot see). The tracker decides which once the dust settles.
        _drop(cells, cell)
        if owns_bar:
            run.release_progress(owner)
        if auto is not None:
            auto.defer_finish(done, total)
        raise
    except BaseException as exc:  # raised by the iterable itself, or StopRequested by checkpoint()
        _drop(cells, cell)
        if owns_bar:
            if isinstance(exc, StopRequested) and last_sent != done:
                run.set_progress(done, total, force=True)  # the bar shows where it stopped
            run.release_progress(owner)
        if auto is not None:
            auto.finish_from_exception(type(exc), exc, exc.__traceback__)
        raise
    _drop(cells, cell)
    if owns_bar:
        if last_sent != done:
            run.set_progress(done, total if total is not None else done, force=True)
        run.release_progress(owner)
    if auto is not None:
        auto.finish("succeeded")
