"""Tracked processes: start, heartbeats with progress and metrics, finish or crash.

``ProcessTracker`` is what ``bot.track`` returns: a context manager (yielding a :class:`Run`)
and a decorator. One daemon thread (the *pulse*) sends the periodic heartbeats of every
active run and the coalesced metric updates.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Literal, TypeVar

from . import signals
from ._log import warn_once as _warn_once
from .config import ENV_PARENT
from .errors import StopRequested
from .payload import (
    STOPPED_FROM_TELEGRAM,
    as_uuid,
    classify,
    clean_count,
    clean_metrics,
    clean_name,
    clean_number,
    clean_tags,
    describe_exception,
    format_traceback,
)
from .sender import HEARTBEAT, Envelope, add_exit_callback

if TYPE_CHECKING:
    from types import TracebackType

    from .client import ExperimentBot

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("experiment_bot")

#: A track_progress loop left early finishes its run after this grace unless an uncaught
#: exception shows up first (then the run is reported as failed with that traceback).
DEFER_GRACE = 2.0
HISTORY_LIMIT = 10_000
#: While code listens for the chat's ⏹ Stop / ⏸ Pause / actions (a track_progress loop,
#: ``run.checkpoint()``, ``bot.should_stop``), heartbeats go at least this often (seconds) so a
#: tap is acted on soon even with a long heartbeat_interval; while paused, more often still.
CONTROL_POLL_S = 15.0
PAUSED_POLL_S = 3.0
MAX_ACTIONS = 8
MAX_ACTION_NAME = 32
_AUTO: Any = object()  # "work the parent out" marker for ``parent=``

_cond = threading.Condition(threading.RLock())
_stacks: dict[int, list[Run]] = {}
_live: set[Run] = set()  # started, not finished (running or deferred)
_inherited_parent: str | None = os.environ.get(ENV_PARENT) or None
_original_parent_env: str | None = os.environ.get(ENV_PARENT)
_pulse_thread: threading.Thread | None = None
_hooks_installed = False


# --------------------------------------------------------------------------- run lookup


def _main_ident() -> int | None:
    return threading.main_thread().ident


def current_run() -> Run | None:
    """The innermost active run of this thread, else of the main thread."""
    with _cond:
        stack = _stacks.get(threading.get_ident())
        if stack:
            return stack[-1]
        main = _stacks.get(_main_ident() or -1)
        if main:
            return main[-1]
    return None


def _main_has_remote_runs() -> bool:
    with _cond:
        return any(run._remote for run in _stacks.get(_main_ident() or -1, ()))


signals.set_activity_probe(_main_has_remote_runs)


def _remove_from_stacks(run: Run) -> None:
    for ident, stack in list(_stacks.items()):
        if run in stack:
            stack.remove(run)
            if not stack:
                del _stacks[ident]


def _sync_main_thread_state() -> None:
    """Mirror the main thread's innermost run into EXPERIMENT_BOT_PARENT (for child processes)
    and keep the SIGTERM handler installed exactly while it has runs."""
    if threading.current_thread() is not threading.main_thread():
        return
    stack = [run for run in _stacks.get(_main_ident() or -1, ()) if run._remote]
    if stack:
        os.environ[ENV_PARENT] = stack[-1].uuid
        signals.install()
    else:
        if _original_parent_env is None:
            os.environ.pop(ENV_PARENT, None)
        else:
            os.environ[ENV_PARENT] = _original_parent_env
        signals.uninstall()


def _after_fork_in_child() -> None:
    """A forked child starts with no runs of its own; the parent's innermost run becomes its parent."""
    global _cond, _pulse_thread, _inherited_parent
    stack = _stacks.get(threading.get_ident()) or []
    if stack:
        _inherited_parent = stack[-1].uuid
    _cond = threading.Condition(threading.RLock())
    _stacks.clear()
    _live.clear()
    _pulse_thread = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# --------------------------------------------------------------------------- the run


class Run:
    """One tracked process: what ``with bot.track(...) as run`` gives you."""

    def __init__(
        self,
        bot: ExperimentBot,
        name: str,
        *,
        tags: list[str] | tuple[str, ...] = (),
        parent_uuid: str | None = None,
        heartbeat_interval: float = 60.0,
        total: int | None = None,
        metadata: dict[str, Any] | None = None,
        auto: bool = False,
        actions: dict[str, Callable[[], Any]] | None = None,
    ) -> None:
        import uuid

        self.bot = bot
        self.uuid = str(uuid.uuid4())
        self.name = clean_name(name)
        self.tags = clean_tags(tags)
        self.parent_uuid = as_uuid(parent_uuid, "parent")
        self.heartbeat_interval = float(heartbeat_interval)
        self.total, problem = clean_count(total, "total")
        if problem:
            bot._invalid(problem)  # ValueError in strict mode, else one warning
        self.metadata = dict(metadata or {})
        self.auto = auto
        self.status = "created"
        self.exit_reason: str | None = None
        self.error: str | None = None
        self.diagnosis: dict[str, Any] | None = None  # diagnose.diagnose(): hint and the user's frames
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.metrics: dict[str, Any] = {}
        self.history: deque[tuple[Any, dict[str, Any]]] = deque(maxlen=HISTORY_LIMIT)
        self.progress: dict[str, Any] | None = None
        self._remote = bot.enabled
        self._t0 = 0.0
        self._runtime: float | None = None
        self._fresh_metrics: dict[str, Any] = {}
        self._fresh_step: Any = None
        self._dirty = False
        self._last_sent = 0.0
        self._progress_owner: object | None = None
        self._deferred_at = 0.0
        # Control from the chat, learnt from heartbeat answers (see checkpoint()).
        self.actions = _clean_actions(bot, actions)
        self._control = "run"  # run | pause | stop, as the server last said
        self._tapped: deque[str] = deque()  # action taps not yet run
        self._news = False  # something for checkpoint() to do (read without the lock)
        self._stop_raised = False
        self._listening = False
        # The thread whose ``with bot.track()`` block (or loop) runs this run: only its steps
        # pause, run actions and raise StopRequested (see checkpoint()).
        self._thread = threading.get_ident()
        self.paused = False  # True while checkpoint() waits for ▶ Resume

    def __repr__(self) -> str:
        return f"<Run {self.name!r} {self.uuid} {self.status}>"

    @property
    def runtime(self) -> float:
        """Seconds since start (frozen at finish)."""
        if self._runtime is not None:
            return self._runtime
        return time.monotonic() - self._t0 if self._t0 else 0.0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Run:
        """Put the run on this thread's stack and send its start. If that fails, the run is
        taken off the stacks again (status back to ``created``) and the error raised."""
        with _cond:
            if self.status != "created":
                return self
            self.status = "running"
            self.started_at = time.time()
            self._t0 = self._last_sent = time.monotonic()
            self._thread = threading.get_ident()
            _stacks.setdefault(self._thread, []).append(self)
            _live.add(self)
            try:
                if self._remote:
                    self.bot._send_start(self)
                    _ensure_pulse()
                    _ensure_exit_hooks()
                _sync_main_thread_state()
            except BaseException:
                _remove_from_stacks(self)
                _live.discard(self)
                self.status = "created"
                self.started_at = None
                self._t0 = 0.0
                try:
                    _sync_main_thread_state()
                except Exception:
                    log.debug("experiment_bot: restoring the main thread state failed", exc_info=True)
                raise
            _cond.notify_all()
        return self

    def finish(
        self,
        status: str = "succeeded",
        *,
        error: str | None = None,
        traceback: str | None = None,
        exit_reason: str | None = None,
        diagnosis: dict[str, Any] | None = None,
    ) -> None:
        """Report how the run ended (idempotent: only the first call counts)."""
        with _cond:
            if self.status not in ("running", "deferred"):
                return
            if status == "succeeded" and self.status == "deferred" and exit_reason is None:
                exit_reason = self.exit_reason
            if status == "succeeded" and self._control == "stop" and self._listening:
                status, exit_reason = "cancelled", STOPPED_FROM_TELEGRAM  # it obeyed bot.should_stop
            self.status = status
            self.error = error
            self.exit_reason = exit_reason
            self.diagnosis = diagnosis or None
            self.ended_at = time.time()
            self._runtime = time.monotonic() - self._t0
            _remove_from_stacks(self)
            _live.discard(self)
            if self._remote:
                if self._dirty:
                    self._send_heartbeat()  # never lose the last metrics
                self.bot._send_finish(self, traceback)
            _sync_main_thread_state()
            _cond.notify_all()

    def finish_from_exception(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        status, exit_reason = classify(exc)
        error = trace = None
        if exc is not None and exc_type is not None and status == "failed":
            error = describe_exception(exc)
            if not isinstance(exc, SystemExit):
                trace = format_traceback(exc_type, exc, tb, self.bot.settings.error_verbosity)
        elif status == "cancelled":
            error = exit_reason
        diagnosis = None
        if exc is not None and status != "succeeded":
            from .diagnose import diagnose

            detailed = self.bot.settings.error_verbosity != "low"
            diagnosis = diagnose(exc, tb, frames=detailed, names=detailed)
        self.finish(status, error=error, traceback=trace, exit_reason=exit_reason, diagnosis=diagnosis)

    def defer_finish(self, done: int, total: int | None) -> None:
        """A track_progress loop was left early: finish soon unless an exception explains why."""
        with _cond:
            if self.status != "running":
                return
            self.status = "deferred"
            self.exit_reason = f"stopped early at {done}/{total if total is not None else '?'}"
            self._deferred_at = time.monotonic()
            _remove_from_stacks(self)
            _sync_main_thread_state()
            _cond.notify_all()
        if not self._remote:
            self.finish("succeeded")
        else:
            _ensure_exception_hooks()

    # ------------------------------------------------------------------ progress and metrics

    def log_metrics(self, step: Any = None, /, **values: Any) -> None:
        """Record metric values (``run.log_metrics(10, loss=0.3)``); sent with the next heartbeat."""
        clean = clean_metrics(values)
        if step is not None and clean_number(step) is None:
            _warn_once(
                f"step:{type(step)}", "experiment_bot: step %r is not a number; sent without a step", step
            )
        step = clean_number(step)
        with _cond:
            self.metrics.update(clean)
            self.history.append((step, clean))
            if self._fresh_metrics and step == self._fresh_step:
                self._fresh_metrics.update(clean)
            else:
                self._fresh_metrics = dict(clean)
                self._fresh_step = step
            self._publish(force=False)

    def set_progress(
        self, done: int, total: int | None = None, *, force: bool = False, send: bool = True
    ) -> None:
        """Set ``{"done": done, "total": total}``; sent now when due, else with the next heartbeat."""
        with _cond:
            self.progress = {"done": int(done), "total": int(total) if total is not None else None}
            if send:
                self._publish(force=force)

    def claim_progress(self, owner: object) -> bool:
        with _cond:
            if self._progress_owner is None:
                self._progress_owner = owner
                return True
            return self._progress_owner is owner

    def release_progress(self, owner: object) -> None:
        with _cond:
            if self._progress_owner is owner:
                self._progress_owner = None

    def notify(self, message: str, level: str = "info", **kwargs: Any) -> bool:
        """A notification attached to this run."""
        kwargs.setdefault("process_id", self.uuid)
        return self.bot.notify(message, level, **kwargs)

    def attach(self, path: str | os.PathLike[str], caption: str | None = None) -> bool:
        """Send a file (log, plot) attached to this run."""
        return self.bot.attach(path, caption, process_id=self.uuid)

    # ------------------------------------------------------------------ control from the chat

    @property
    def stop_requested(self) -> bool:
        """True once ⏹ Stop was tapped in Telegram (for loops that poll instead of track_progress)."""
        self._listen()
        return self._control == "stop"

    def checkpoint(self, *, raise_stop: bool = True) -> None:
        """Act on what the chat asked since the last call: run tapped actions, wait while
        paused, raise :class:`StopRequested` (once) after ⏹ Stop (with ``raise_stop=False``
        only ``stop_requested`` tells). ``track_progress`` calls it after every item; call it
        yourself in loops that do not use it.

        Only the thread that started the run (the one in its ``with bot.track()`` block: the
        main thread for a script's run) acts; in other threads (a ``track_progress`` loop in a
        worker attached to the main thread's run) this does nothing: no pause, no actions, no
        StopRequested, which is left for the run's own thread. ``stop_requested`` /
        ``bot.should_stop`` tell every thread."""
        self._listen()
        if not self._news or threading.get_ident() != self._thread:
            return
        self._run_actions()
        if self._control == "pause":
            self._wait_while_paused()
        with _cond:
            self._news = bool(self._tapped)
            stop = raise_stop and self._control == "stop" and not self._stop_raised
            if stop:
                self._stop_raised = True
        if stop:
            log.warning("experiment_bot: %s was stopped from Telegram", self.name)
            raise StopRequested(self.uuid, self.name)

    def _listen(self) -> None:
        if not self._listening:
            with _cond:
                self._listening = True
                _cond.notify_all()  # the pulse may now come sooner

    def _on_answer(self, answer: dict[str, Any]) -> None:
        """The server's answer to a heartbeat (sender thread): what the chat asks of this run."""
        control = answer.get("control")
        taps = answer.get("actions")
        with _cond:
            if control in ("run", "pause", "stop") and self._control != "stop":
                if control != self._control:
                    log.info("experiment_bot: %s: %s requested from Telegram", self.name, control)
                self._control = control
            if isinstance(taps, list):
                self._tapped.extend(name for name in taps if isinstance(name, str) and name in self.actions)
            self._news = self._control != "run" or bool(self._tapped)
            _cond.notify_all()

    def _run_actions(self) -> None:
        while True:
            with _cond:
                if not self._tapped:
                    return
                name = self._tapped.popleft()
            func = self.actions.get(name)
            if func is None:
                continue
            try:
                result = func()
            except Exception as exc:
                log.exception("experiment_bot: action %r of %s failed", name, self.name)
                self.notify(f"⚠️ {name} failed: {type(exc).__name__}: {exc}", "warning")
                continue
            shown = f" → {result!r}"[:200] if result is not None else ""
            log.info("experiment_bot: action %r of %s ran from Telegram", name, self.name)
            self.notify(f"👆 {name} done{shown}")

    def _wait_while_paused(self) -> None:
        log.warning("experiment_bot: %s paused from Telegram; waiting for ▶ Resume", self.name)
        with _cond:
            self.paused = True
            _cond.notify_all()  # heartbeats every PAUSED_POLL_S while paused
        while True:
            self._run_actions()
            with _cond:
                if self._control != "pause" or self.status != "running":
                    self.paused = False
                    break
                if not self._tapped:
                    _cond.wait(1.0)
        if self._control == "run":
            log.warning("experiment_bot: %s resumed from Telegram", self.name)

    # ------------------------------------------------------------------ heartbeats (lock held)

    def _publish(self, *, force: bool) -> None:
        if not self._remote or self.status != "running":
            return
        gap = self.bot._update_gap()
        if force or time.monotonic() - self._last_sent >= gap:
            self._send_heartbeat()
        else:
            self._dirty = True
            _cond.notify_all()

    def _send_heartbeat(self) -> None:
        body = {
            "uuid": self.uuid,
            "progress": dict(self.progress) if self.progress else None,
            "metrics": self._fresh_metrics,
            "step": self._fresh_step,
        }
        self._fresh_metrics = {}
        self._fresh_step = None
        self._dirty = False
        self._last_sent = time.monotonic()
        envelope = Envelope("/api/heartbeat", body, kind="heartbeat", priority=HEARTBEAT, coalesce=self.uuid)
        envelope.on_reply = self._on_answer
        self.bot._enqueue(envelope)

    def _next_due(self) -> float:
        if self.status == "deferred":
            return self._deferred_at + DEFER_GRACE
        due = math.inf
        if self._dirty:
            due = self._last_sent + self.bot._update_gap()
        elif self.heartbeat_interval > 0:
            due = self._last_sent + self.heartbeat_interval
        if self._listening and self._control != "stop":
            # Someone acts on the chat's buttons: ask the server at least this often, even
            # while coalescing frequent progress updates.
            poll = PAUSED_POLL_S if self._control == "pause" else CONTROL_POLL_S
            if self.heartbeat_interval > 0:
                poll = min(poll, self.heartbeat_interval)
            due = min(due, self._last_sent + poll)
        return due


def _clean_actions(bot: ExperimentBot, actions: Any) -> dict[str, Callable[[], Any]]:
    """``{"lr ×0.5": fn}``: at most MAX_ACTIONS names of at most MAX_ACTION_NAME characters,
    each with a callable taking no arguments; what does not fit is left out (with a warning)."""
    if not actions:
        return {}
    if not isinstance(actions, dict):
        bot._invalid("actions: expected a dict {button name: function}; no action buttons")
        return {}
    clean: dict[str, Callable[[], Any]] = {}
    for name, func in actions.items():
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_ACTION_NAME or not callable(func):
            bot._invalid(f"actions: {name!r} needs a name of 1-{MAX_ACTION_NAME} characters and a function")
            continue
        if len(clean) >= MAX_ACTIONS:
            bot._invalid(f"actions: at most {MAX_ACTIONS} buttons; {name!r} is left out")
            continue
        clean[name] = func
    return clean


def stop_requested(bot: ExperimentBot) -> bool:
    """True when ⏹ Stop was tapped for any active run of ``bot`` in this process."""
    with _cond:
        runs = [run for run in _live if run.bot is bot]
    return any(run.stop_requested for run in runs)


# --------------------------------------------------------------------------- pulse thread


def _ensure_pulse() -> None:
    global _pulse_thread
    if _pulse_thread is not None and _pulse_thread.is_alive():
        return
    thread = threading.Thread(target=_pulse_loop, name="experiment-bot-heartbeat", daemon=True)
    try:
        thread.start()
    except RuntimeError:
        return
    _pulse_thread = thread


def _pulse_loop() -> None:
    with _cond:
        while True:
            now = time.monotonic()
            soonest = math.inf
            due: list[Run] = []
            for run in list(_live):
                if not run._remote:
                    continue
                when = run._next_due()
                if when <= now:
                    due.append(run)
                else:
                    soonest = min(soonest, when)
            for run in due:
                try:
                    if run.status == "deferred":
                        run.finish("succeeded")
                    elif run.status == "running":
                        run._send_heartbeat()
                except Exception:
                    import logging

                    logging.getLogger("experiment_bot").debug("heartbeat failed", exc_info=True)
            if due:
                continue
            _cond.wait(None if soonest == math.inf else soonest - now)


# --------------------------------------------------------------------------- process exit


def _finish_all_at_exit() -> None:
    with _cond:
        runs = list(_live)
    for run in runs:
        if run.status == "deferred":
            run.finish("succeeded")
        else:
            run.finish(
                "cancelled", error="process exited while the run was active", exit_reason="interpreter exit"
            )


def _ensure_exit_hooks() -> None:
    add_exit_callback(_finish_all_at_exit)


def _finish_deferred(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    with _cond:
        runs = [run for run in _live if run.status == "deferred"]
    for run in runs:
        run.finish_from_exception(exc_type, exc, tb)


def _ensure_exception_hooks() -> None:
    """Chain sys.excepthook / threading.excepthook so an uncaught exception that ended a
    track_progress loop is reported on that loop's run."""
    global _hooks_installed
    with _cond:
        if _hooks_installed:
            return
        _hooks_installed = True
    previous_sys = sys.excepthook

    def excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        try:
            _finish_deferred(exc_type, exc, tb)
        finally:
            previous_sys(exc_type, exc, tb)

    sys.excepthook = excepthook
    previous_thread = threading.excepthook

    def thread_excepthook(args: Any) -> None:
        try:
            if args.exc_value is not None and args.exc_type is not None:
                _finish_deferred(args.exc_type, args.exc_value, args.exc_traceback)
        finally:
            previous_thread(args)

    threading.excepthook = thread_excepthook


# --------------------------------------------------------------------------- tracker


class ProcessTracker:
    """Context manager and decorator around a tracked run.

    ``with bot.track("prep", tags=["fold=1"]) as run: ...`` or ``@bot.track(name="train")``.
    """

    def __init__(
        self,
        bot: ExperimentBot,
        name: str | None = None,
        *,
        tags: list[str] | tuple[str, ...] | None = None,
        parent: Any = _AUTO,
        heartbeat_interval: float | None = None,
        total: int | None = None,
        metadata: dict[str, Any] | None = None,
        actions: dict[str, Callable[[], Any]] | None = None,
    ) -> None:
        self.bot = bot
        self.name = name
        self.tags = list(tags or ())
        self.parent = parent
        self.heartbeat_interval = heartbeat_interval
        self.total = total
        self.metadata = metadata
        self.actions = actions
        self._local = threading.local()

    def new_run(self, name: str | None = None) -> Run:
        from .metadata import script_name

        if self.parent is _AUTO:
            parent = current_run()
            parent_uuid = parent.uuid if parent is not None else _inherited_parent
        elif isinstance(self.parent, Run):
            parent_uuid = self.parent.uuid
        else:
            parent_uuid = str(self.parent) if self.parent else None
        interval = self.bot.settings.heartbeat_interval
        if self.heartbeat_interval is not None:
            from .config import _coerce

            try:
                interval = _coerce("seconds", self.heartbeat_interval, "heartbeat_interval")
            except ValueError as exc:
                self.bot._invalid(f"{exc}; using {interval:g} s")  # ValueError in strict mode
        return Run(
            self.bot,
            name or self.name or script_name(),
            tags=self.tags,
            parent_uuid=parent_uuid,
            heartbeat_interval=interval,
            total=self.total,
            metadata=self.metadata,
            actions=self.actions,
        )

    def start_run(self, *, auto: bool = False) -> Run:
        """A new started run. Outside strict mode this never raises: when the run cannot be
        built or started, the block runs with a local run that sends nothing."""
        run: Run | None = None
        try:
            run = self.new_run()
            run.auto = auto
            return run.start()
        except Exception as exc:
            if self.bot.settings.strict:
                raise
            log.warning(
                "experiment_bot: could not start tracking %s (%s: %s); it runs untracked",
                (run.name if run is not None else self.name) or "this run",
                type(exc).__name__,
                exc,
            )
            log.debug("experiment_bot: start failure", exc_info=True)
        if run is None:
            run = Run(self.bot, self.name or "process", auto=auto)
        run._remote = False  # never announced: send nothing for it
        try:
            return run.start()  # locally only: current_run() and nesting still work
        except Exception:
            log.debug("experiment_bot: could not start the local run either", exc_info=True)
            run.status = "running"  # detached: finish() still works, nothing is sent
            run._t0 = time.monotonic()
            return run

    def __enter__(self) -> Run:
        run = self.start_run()
        stack = getattr(self._local, "runs", None)
        if stack is None:
            stack = self._local.runs = []
        stack.append(run)
        return run

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        run = self._local.runs.pop()
        try:
            run.finish_from_exception(exc_type, exc, tb)
        except Exception:
            import logging

            logging.getLogger("experiment_bot").exception(
                "experiment_bot: could not report the end of %s", run.name
            )
        # ⏹ Stop from the chat ends this block quietly; any other exception goes on.
        return isinstance(exc, StopRequested) and exc.run_uuid == run.uuid

    def __call__(self, func: F) -> F:
        name = self.name or getattr(func, "__qualname__", None) or getattr(func, "__name__", "function")
        if getattr(getattr(func, "__code__", None), "co_flags", 0) & 0x80:  # CO_COROUTINE

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with ProcessTracker(
                    self.bot,
                    name,
                    tags=self.tags,
                    parent=self.parent,
                    heartbeat_interval=self.heartbeat_interval,
                    total=self.total,
                    metadata=self.metadata,
                    actions=self.actions,
                ):
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with ProcessTracker(
                self.bot,
                name,
                tags=self.tags,
                parent=self.parent,
                heartbeat_interval=self.heartbeat_interval,
                total=self.total,
                metadata=self.metadata,
                actions=self.actions,
            ):
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]
