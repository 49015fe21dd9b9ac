"""What every framework callback shares: one run, one edited progress message, metric points.

A :class:`TrainingReport` attaches to the active tracked run of this thread (``with bot.track(...)``)
or starts a run of its own when there is none; it drives the run's progress bar (unless a
``track_progress`` loop already owns it), logs the numeric values of a framework's ``logs`` as
metric points, and at the end sends the last progress and finishes the run it started. The
server draws the metric chart from the points when the run finishes.

No framework is imported here: the callbacks (``experiment_bot.keras``, ``.lightning``, ``.hf``,
``.tqdm_compat``) hand over plain values.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from .client import ExperimentBot
    from .tracker import Run

log = logging.getLogger(__name__)

#: Metric points (epoch ends, HF log calls) are sent at once, but at most this often: each is
#: a point of the chart, and coalescing them would leave the chart with only the last one.
POINT_GAP = 1.0

_owned_lock = threading.Lock()
_owned: set[Run] = set()  # runs started by a report and not finished yet
_hook_installed = False


def as_number(value: Any) -> float | int | None:
    """A finite number from a Python/numpy/torch/tensorflow scalar, else None (never raises)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else None
    try:
        item = getattr(value, "item", None)
        if callable(item):  # numpy scalars and 0-d arrays, one-element torch tensors
            value = item()
        elif callable(getattr(value, "numpy", None)):  # tensorflow eager tensors
            value = value.numpy()
            value = value.item() if callable(getattr(value, "item", None)) else value
        number = float(value)
    except Exception:  # a string, a list, a tensor of many values
        return None
    return number if math.isfinite(number) else None


def numeric(values: Mapping[str, Any] | None, prefix: str = "") -> dict[str, float | int]:
    """The entries of a framework's logs that are numbers (strings, lists and None left out)."""
    clean: dict[str, float | int] = {}
    for name, value in (values or {}).items():
        number = as_number(value)
        if number is not None:
            clean[f"{prefix}{name}"] = number
    return clean


class ProtocolBase:
    """The base of a callback class when its framework is not installed: every hook the
    callback does not define does nothing (as in the frameworks' own base classes)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):
            return _nothing
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


class TrainingReport:
    """The progress and metrics of one training loop on one run."""

    def __init__(
        self,
        bot: ExperimentBot | None = None,
        name: str | None = None,
        *,
        tags: list[str] | tuple[str, ...] | None = None,
        unit: str = "epochs",
    ) -> None:
        self._bot = bot
        self.name = name
        self.tags = list(tags or ())
        self.unit = unit
        self.run: Run | None = None
        self.own_run = False
        self.owns_bar = False
        self.done = 0
        self.total: int | None = None
        self._owner = object()
        self._last_point = -math.inf

    @property
    def bot(self) -> ExperimentBot:
        if self._bot is None:
            from . import _default_bot

            self._bot = _default_bot()
        return self._bot

    @property
    def active(self) -> bool:
        return self.run is not None

    def begin(self, total: Any = None, default_name: str | None = None) -> None:
        """Attach to the active run, or start one; claim its progress bar. Idempotent while active."""
        from .payload import clean_count
        from .tracker import ProcessTracker, current_run

        count, _ = clean_count(total, "total")
        self.total = count if count else None
        self.done = 0
        if self.run is not None:
            return
        run = current_run()
        if run is None:
            run = ProcessTracker(self.bot, self.name or default_name, tags=self.tags, total=self.total).start_run(
                auto=True
            )
            self.own_run = True
            _adopt(run)
        else:
            self.own_run = False
        self.run = run
        self.owns_bar = run.claim_progress(self._owner)
        if self.owns_bar:
            run.set_progress(0, self.total, send=False)

    def progress(self, done: Any, total: Any = None) -> None:
        """Move the bar (sent with the next due update; cheap enough to call every step)."""
        if self.run is None:
            return
        if total is not None:
            count = as_number(total)
            self.total = int(count) if count and count > 0 else self.total
        number = as_number(done)
        if number is None:
            return
        self.done = int(number)
        if self.owns_bar:
            self.run.set_progress(self.done, self.total)

    def listen(self) -> bool:
        """Act on the chat's taps between two steps (actions run, ⏸ Pause waits here); True once
        ⏹ Stop was tapped: the callback then asks its framework to stop gracefully."""
        if self.run is None:
            return False
        self.run.checkpoint(raise_stop=False)
        return self.run.stop_requested

    def point(self, step: Any, values: Mapping[str, Any] | None, done: Any = None) -> None:
        """A metric point (an epoch's logs); with ``done`` the bar moves to it in the same update."""
        if self.run is None:
            return
        run = self.run
        if done is not None:
            number = as_number(done)
            if number is not None:
                self.done = int(number)
            if self.owns_bar:
                run.set_progress(self.done, self.total, send=False)
        metrics = numeric(values)
        if metrics:
            run.log_metrics(as_number(step), **metrics)
        elif done is not None and self.owns_bar:
            run.set_progress(self.done, self.total)
        now = time.monotonic()
        if now - self._last_point >= POINT_GAP:
            from .tracker import _cond

            with _cond:
                if run._dirty:  # coalesced, not yet sent: send this point now
                    self._last_point = now
                    run._publish(force=True)

    def end(self, exc: BaseException | None = None) -> None:
        """The last progress update; finish the run this report started (failed with ``exc``)."""
        run, self.run = self.run, None
        if run is None:
            return
        if self.owns_bar:
            run.set_progress(self.done, self.total if self.total is not None else self.done, force=True)
            run.release_progress(self._owner)
            self.owns_bar = False
        if self.own_run:
            _release(run)
            if exc is not None:
                run.finish_from_exception(type(exc), exc, exc.__traceback__)
            elif self.total is not None and self.done < self.total:
                run.finish("succeeded", exit_reason=f"stopped early at {self.done}/{self.total} {self.unit}")
            else:
                run.finish("succeeded")


# --------------------------------------------------------------------------- runs left open by an exception


def _adopt(run: Run) -> None:
    """A framework does not tell every callback when training raised (Keras, transformers): a
    run the report started and did not finish is finished from the uncaught exception."""
    global _hook_installed
    with _owned_lock:
        _owned.add(run)
        if _hook_installed:
            return
        _hook_installed = True
    previous = sys.excepthook

    def excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        try:
            with _owned_lock:
                runs = list(_owned)
                _owned.clear()
            for open_run in runs:
                open_run.finish_from_exception(exc_type, exc, tb)
        except Exception:
            log.debug("experiment_bot: could not report the training's end", exc_info=True)
        finally:
            previous(exc_type, exc, tb)

    sys.excepthook = excepthook


def _release(run: Run) -> None:
    with _owned_lock:
        _owned.discard(run)


def lazy_callback(module: str, build: Callable[[], type]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that builds the module's ``Callback`` class on first access (so
    importing the module never imports its framework) and keeps it."""
    built: list[type] = []

    def module_getattr(name: str) -> Any:
        if name == "Callback":
            if not built:
                built.append(build())
            return built[0]
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return module_getattr
