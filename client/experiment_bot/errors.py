"""Exceptions raised by experiment_bot (only in strict mode, or by ``setup()``)."""

from __future__ import annotations


class ExperimentBotError(Exception):
    """Base class of every error this library raises."""


class ConfigurationError(ExperimentBotError):
    """No API key, an unreadable config file, or an invalid argument (strict mode)."""


class TransportError(ExperimentBotError):
    """The server could not be reached (connection refused, DNS, timeout, broken response)."""


class ApiError(ExperimentBotError):
    """The server answered with an HTTP error status.

    ``code`` and ``message`` come from the JSON error body
    ``{"error": {"code": ..., "message": ...}}`` when the server sent one.
    """

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.status == 429 or self.status >= 500


class DeliveryError(ExperimentBotError):
    """A message could not be delivered and was dropped (strict mode reports it on the next call)."""


class PairingError(ExperimentBotError):
    """``setup()`` could not pair this machine (expired link, rejected key, server unreachable)."""


class StopRequested(BaseException):  # noqa: N818 - named for what happened, like KeyboardInterrupt
    """⏹ Stop was tapped in Telegram: raised at the run's next progress step (``track_progress``,
    ``run.checkpoint()``).

    A ``BaseException`` like ``KeyboardInterrupt``, so ``except Exception`` does not swallow it.
    The ``with bot.track(...)`` block (or ``@bot.track`` function) of the stopped run ends there
    quietly and the run is reported as "stopped from Telegram" with its last metrics; code after
    the block runs normally (save the model, close files).
    """

    def __init__(self, run_uuid: str = "", name: str = "") -> None:
        super().__init__(f"{name or 'the run'} was stopped from Telegram")
        self.run_uuid = run_uuid
