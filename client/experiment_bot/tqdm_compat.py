"""``from experiment_bot import tqdm``: a tqdm-compatible progress bar that also reports to the chat.

Change one import and an existing loop reports as ``track_progress`` does: one message edited
every 10 % (``every=`` as for ``track_progress``), the values given to ``set_postfix`` as
metrics (and the chart at the end), its own tracked run named by ``desc`` unless a run is
active. When the real ``tqdm`` is installed the console bar is drawn by it as before (every
argument is passed on); without it nothing is drawn in the console.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from .training import TrainingReport, as_number

if TYPE_CHECKING:
    from .client import ExperimentBot

__all__ = ["tqdm", "trange"]


def _real_tqdm() -> Any:
    try:
        return importlib.import_module("tqdm").tqdm
    except Exception:
        return None


class tqdm:  # noqa: N801 (the name people import)
    """``tqdm(iterable=None, desc=None, total=None, ..., every=None, bot=None)``.

    ``every`` is the chat update schedule (default the configured ``progress_interval``, 10 %),
    ``bot`` the :class:`ExperimentBot` to report with (default ``experiment_bot.bot``); every
    other argument is tqdm's. ``disable=True`` turns both the console bar and the reporting off.
    """

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        desc: str | None = None,
        total: float | None = None,
        *args: Any,
        every: str | int | None = None,
        bot: ExperimentBot | None = None,
        disable: bool = False,
        **kwargs: Any,
    ) -> None:
        self.iterable = iterable
        self.desc = desc or ""
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except Exception:
                total = None
        self.total = total
        self.n = 0
        self.disable = disable
        self.postfix: dict[str, Any] = {}
        self._every = every
        self._closed = False
        real = _real_tqdm()
        self._bar: Any = None
        if real is not None:
            self._bar = real(iterable, desc, total, *args, disable=disable, **kwargs)
        self._report = TrainingReport(bot, desc or None, unit="items")
        self._schedule: Any = None
        self._iterating = False
        if iterable is None and not disable:
            self._start()  # manual mode: ``update()`` moves the bar

    # ------------------------------------------------------------------ reporting

    def _start(self) -> None:
        from .progress import ProgressSchedule

        bot = self._report.bot
        total = int(self.total) if self.total is not None and as_number(self.total) is not None else None
        every = self._every if self._every is not None else bot.settings.progress_interval
        try:
            self._schedule = ProgressSchedule(every, total)
        except ValueError as exc:
            bot._invalid(f"{exc}; using 10%")
            self._schedule = ProgressSchedule("10%", total)
        self._report.begin(total, default_name=self.desc or None)

    def _moved(self) -> None:
        report = self._report
        if report.run is None or not report.owns_bar:
            return
        report.done = self.n
        due = self._schedule.due(self.n)  # sent on schedule; metric updates between carry it too
        report.run.set_progress(self.n, report.total, force=due and self._schedule.forced, send=due)

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("tqdm(): nothing to iterate (give an iterable, or call update())")
        source: Iterable[Any] = self._bar if self._bar is not None else self.iterable
        if self.disable:
            yield from source
            return
        from .progress import track_progress

        bot = self._report.bot
        total = int(self.total) if self.total is not None and as_number(self.total) is not None else None
        self._iterating = True
        try:
            for item in track_progress(bot, source, total=total, every=self._every, name=self.desc or None):
                yield item
                self.n += 1
        finally:
            self._iterating = False
            self._closed = True

    def __len__(self) -> int:
        if self.total is not None:
            return int(self.total)
        return len(self.iterable)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ manual mode and the tqdm API

    def update(self, n: float = 1) -> bool | None:
        self.n += int(n)
        if self._bar is not None:
            self._bar.update(n)
        if not self._iterating and not self.disable:
            self._moved()
        return None

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        values = {**(ordered_dict or {}), **kwargs}
        self.postfix = values
        if self._bar is not None:
            self._bar.set_postfix(ordered_dict, refresh=refresh, **kwargs)
        if self.disable:
            return
        from .tracker import current_run
        from .training import numeric

        metrics = numeric(values)
        run = self._report.run if self._report.active else current_run()
        if metrics and run is not None:
            run.log_metrics(self.n, **metrics)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(s, refresh=refresh)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""
        if self._bar is not None:
            self._bar.set_description(desc, refresh=refresh)

    def set_description_str(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""
        if self._bar is not None:
            self._bar.set_description_str(desc, refresh=refresh)

    def refresh(self, *args: Any, **kwargs: Any) -> None:
        if self._bar is not None:
            self._bar.refresh(*args, **kwargs)

    def reset(self, total: float | None = None) -> None:
        self.n = 0
        if total is not None:
            self.total = total
            if self._report.active:
                self._report.total = int(total)
        if self._bar is not None:
            self._bar.reset(total)

    def clear(self, *args: Any, **kwargs: Any) -> None:
        if self._bar is not None:
            self._bar.clear(*args, **kwargs)

    def display(self, *args: Any, **kwargs: Any) -> None:
        if self._bar is not None:
            self._bar.display(*args, **kwargs)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._closed:
            return
        self._closed = True
        if self._report.active:
            self._report.done = self.n
            self._report.end()

    def __enter__(self) -> tqdm:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and self._report.active and not self._closed:
            self._closed = True
            if self._bar is not None:
                self._bar.close()
            self._report.done = self.n
            self._report.end(exc)
            return
        self.close()

    def __getattr__(self, name: str) -> Any:
        bar = self.__dict__.get("_bar")
        if bar is not None:
            return getattr(bar, name)  # format_dict, last_print_n, ... of the real bar
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @staticmethod
    def write(s: str, file: Any = None, end: str = "\n", nolock: bool = False) -> None:
        real = _real_tqdm()
        if real is not None:
            real.write(s, file=file, end=end, nolock=nolock)
        else:
            import sys

            (file or sys.stdout).write(s + end)

    def __repr__(self) -> str:
        total = f"/{self.total}" if self.total is not None else ""
        return f"<experiment_bot.tqdm {self.desc!r} {self.n}{total}>"


def trange(*args: Any, **kwargs: Any) -> tqdm:
    """``tqdm(range(*args), **kwargs)``."""
    return tqdm(range(*args), **kwargs)
