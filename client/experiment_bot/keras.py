"""A Keras callback: ``model.fit(..., callbacks=[experiment_bot.keras.Callback()])``.

The epochs are the progress bar of one edited message, each epoch's ``logs`` (loss, accuracy,
val_*) a metric point; the chart is sent when training ends. ``Callback`` subclasses
``keras.callbacks.Callback`` (Keras 3, or ``tensorflow.keras`` when only TensorFlow is
installed); the class is built on first access, so ``import experiment_bot.keras`` imports no
framework. Without Keras it is a plain class speaking the same protocol.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .training import ProtocolBase, TrainingReport, lazy_callback

if TYPE_CHECKING:
    from .client import ExperimentBot

__all__ = ["Callback", "KerasReporting", "build_callback_class"]



class _ProtocolBase(ProtocolBase):
    """The part of ``keras.callbacks.Callback`` a training loop relies on, for when Keras is missing."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.model: Any = None

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = params

    def set_model(self, model: Any) -> None:
        self.model = model


class KerasReporting:
    """The reporting half of the callback (mixed into the framework's base class)."""

    params: Any
    model: Any  # set by the framework (a property over ``_model`` in Keras 3)

    def __init__(
        self,
        name: str | None = None,
        *,
        bot: ExperimentBot | None = None,
        tags: list[str] | tuple[str, ...] | None = None,
    ) -> None:
        super().__init__()
        self.report = TrainingReport(bot, name, tags=tags, unit="epochs")
        self._epoch = 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        params = getattr(self, "params", None) or {}
        self._epoch = 0
        self.report.begin(params.get("epochs"), default_name="keras fit")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = int(epoch) + 1
        self.report.point(self._epoch, logs, done=self._epoch)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.report.listen() and getattr(self, "model", None) is not None:
            self.model.stop_training = True  # ⏹ Stop from the chat: fit ends after this batch

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.report.end()


def _keras_base() -> type:
    for module_name, attribute in (("keras", "callbacks"), ("tensorflow.keras", "callbacks")):
        try:
            module = importlib.import_module(module_name)
            base = getattr(module, attribute).Callback
        except Exception:  # not installed, or broken (no backend): the protocol base
            continue
        if isinstance(base, type):
            return base
    return _ProtocolBase


def build_callback_class() -> type:
    """A new ``Callback`` class on the Keras base importable now (tests build theirs with a fake one)."""
    base = _keras_base()
    return type(
        "Callback",
        (KerasReporting, base),
        {"__module__": __name__},
    )


__getattr__ = lazy_callback(__name__, build_callback_class)  # ``Callback``, built on first use


if TYPE_CHECKING:
    Callback = KerasReporting
