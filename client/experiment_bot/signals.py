"""SIGTERM → a tracked run finishes as ``cancelled`` (exit_reason "SIGTERM").

The handler is installed only from the main thread, only while a tracked run is active
there, and only when nobody else handles SIGTERM (the current handler is ``SIG_DFL``). It
turns the signal into :class:`SignalExit` (a ``SystemExit`` with code 128+signum) so the
stack unwinds, the run reports how it ended and the exit flush runs; the process still ends
with status 143 as the default handler would. When no run is active it restores the
previous handler and re-delivers the signal.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, Callable

_installed = False
_previous: Any = None
_active: Callable[[], bool] = lambda: False  # noqa: E731 - replaced by the tracker


class SignalExit(SystemExit):
    """Raised in the main thread when SIGTERM arrives while a tracked run is active."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        try:
            self.signal_name = signal.Signals(signum).name
        except ValueError:
            self.signal_name = f"signal {signum}"


def set_activity_probe(probe: Callable[[], bool]) -> None:
    global _active
    _active = probe


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def install() -> bool:
    """Install the SIGTERM handler if this is the main thread and SIGTERM is unhandled."""
    global _installed, _previous
    if _installed or not _in_main_thread() or not hasattr(signal, "SIGTERM"):
        return _installed
    try:
        current = signal.getsignal(signal.SIGTERM)
        if current is not signal.SIG_DFL:
            return False  # the user (or a framework) handles SIGTERM: leave it alone
        _previous = current
        signal.signal(signal.SIGTERM, _handler)
    except (ValueError, OSError):  # not the main interpreter, or an embedded Python
        return False
    _installed = True
    return True


def uninstall() -> None:
    """Put the previous handler back, unless somebody replaced ours in the meantime."""
    global _installed
    if not _installed or not _in_main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is _handler:
            signal.signal(signal.SIGTERM, _previous if _previous is not None else signal.SIG_DFL)
    except (ValueError, OSError):
        return
    _installed = False


def _handler(signum: int, frame: Any) -> None:
    if _active():
        raise SignalExit(signum)
    previous = _previous
    uninstall()
    if callable(previous):
        previous(signum, frame)
    elif previous in (signal.SIG_DFL, None):
        os.kill(os.getpid(), signum)
