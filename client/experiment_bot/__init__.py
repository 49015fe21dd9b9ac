"""experiment_bot: report long-running experiment scripts to a Telegram chat.

    from experiment_bot import bot
    bot.notify("Training started")

    @bot.track
    def train(): ...

    with bot.track("preprocessing", tags=["fold=1"]) as run:
        run.log_metrics(1, loss=0.3)

    for epoch in bot.track_progress(range(100)):
        ...

    from experiment_bot import tqdm                 # a tqdm that also reports to the chat
    model.fit(..., callbacks=[experiment_bot.keras.Callback()])   # also .lightning, .hf

Importing this package is cheap: nothing is read, started or imported until first use.
"""

from __future__ import annotations

import _thread

# Neither ``typing`` nor ``threading`` is imported here: ``import experiment_bot`` must stay cheap.
TYPE_CHECKING = False

__version__ = "0.1.0"

__all__ = [
    "ExperimentBot",
    "ProcessTracker",
    "Run",
    "attach",
    "bot",
    "catch",
    "flush",
    "log_metrics",
    "notify",
    "setup",
    "track",
    "track_progress",
    "tqdm",
    "trange",
    "ExperimentBotError",
    "ConfigurationError",
    "DeliveryError",
    "PairingError",
    "ApiError",
    "TransportError",
    "StopRequested",
    "__version__",
]

if TYPE_CHECKING:
    from typing import Any

    from .client import ExperimentBot
    from .errors import (
        ApiError,
        ConfigurationError,
        DeliveryError,
        ExperimentBotError,
        PairingError,
        StopRequested,
        TransportError,
    )
    from .tqdm_compat import tqdm, trange
    from .tracker import ProcessTracker, Run

    bot: ExperimentBot

_default: Any = None
_default_lock = _thread.allocate_lock()

_LAZY = {
    "ExperimentBot": ("client", "ExperimentBot"),
    "ProcessTracker": ("tracker", "ProcessTracker"),
    "Run": ("tracker", "Run"),
    "ExperimentBotError": ("errors", "ExperimentBotError"),
    "ConfigurationError": ("errors", "ConfigurationError"),
    "DeliveryError": ("errors", "DeliveryError"),
    "PairingError": ("errors", "PairingError"),
    "ApiError": ("errors", "ApiError"),
    "TransportError": ("errors", "TransportError"),
    "StopRequested": ("errors", "StopRequested"),
    "tqdm": ("tqdm_compat", "tqdm"),
    "trange": ("tqdm_compat", "trange"),
}
#: Framework callbacks, reachable as ``experiment_bot.keras.Callback`` after a plain ``import
#: experiment_bot``; importing the module imports no framework (the class is built on first use).
_SUBMODULES = ("keras", "lightning", "hf")


def _default_bot() -> ExperimentBot:
    """The module-level bot, configured from the environment on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                from .client import ExperimentBot

                _default = ExperimentBot()
    return _default


def _reset_default_bot() -> None:
    """Forget the module-level bot (``setup()`` calls this after saving a new key)."""
    global _default
    with _default_lock:
        old, _default = _default, None
    if old is not None:
        old.flush(1.0)


def __getattr__(name: str) -> Any:
    if name == "bot":
        return _default_bot()
    if name in _LAZY:
        import importlib

        module_name, attribute = _LAZY[name]
        value = getattr(importlib.import_module(f".{module_name}", __name__), attribute)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def notify(message: str, level: str = "info", **kwargs: Any) -> bool:
    """``bot.notify`` on the module-level bot."""
    return _default_bot().notify(message, level, **kwargs)


def attach(path: Any, caption: str | None = None, **kwargs: Any) -> bool:
    """``bot.attach`` on the module-level bot."""
    return _default_bot().attach(path, caption, **kwargs)


def track(*args: Any, **kwargs: Any) -> Any:
    """``bot.track`` on the module-level bot (decorator or context manager)."""
    return _default_bot().track(*args, **kwargs)


def track_progress(
    iterable: Any, total: int | None = None, every: Any = None, name: str | None = None
) -> Any:
    """``bot.track_progress`` on the module-level bot."""
    return _default_bot().track_progress(iterable, total=total, every=every, name=name)


def catch(*args: Any, **kwargs: Any) -> Any:
    """``bot.catch`` on the module-level bot (context manager or decorator)."""
    return _default_bot().catch(*args, **kwargs)


def log_metrics(step: Any = None, /, **values: Any) -> None:
    """``bot.log_metrics`` on the module-level bot."""
    _default_bot().log_metrics(step, **values)


def flush(timeout: float | None = None) -> bool:
    """``bot.flush`` on the module-level bot."""
    return _default_bot().flush(timeout)


def setup(
    server: str | None = None, env_path: str = ".env", *, api_key: str | None = None, label: str | None = None
) -> str | None:
    """Pair this machine with your Telegram chat and save the key to ``.env``."""
    from .pairing import setup as _setup

    return _setup(server, env_path, api_key=api_key, label=label)
