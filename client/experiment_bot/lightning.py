"""A PyTorch Lightning callback: ``Trainer(callbacks=[experiment_bot.lightning.Callback()])``.

The epochs (or the steps, when the trainer runs for ``max_steps``) are the progress bar of one
edited message; at each training epoch's end the trainer's ``callback_metrics`` (train and
validation) are a metric point; the chart is sent when fitting ends, and an exception ends the
run as failed with its traceback. Only the global-zero process reports.

``Callback`` subclasses ``lightning.pytorch.Callback`` (or ``pytorch_lightning.Callback``, the
one your script imported when both are installed); it is built on first access, so
``import experiment_bot.lightning`` imports no framework.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

from .training import ProtocolBase, TrainingReport, lazy_callback

if TYPE_CHECKING:
    from .client import ExperimentBot

__all__ = ["Callback", "LightningReporting", "build_callback_class"]



def _positive(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number > 0 else None


class LightningReporting:
    """The reporting half of the callback (mixed into the framework's base class)."""

    def __init__(
        self,
        name: str | None = None,
        *,
        bot: ExperimentBot | None = None,
        tags: list[str] | tuple[str, ...] | None = None,
    ) -> None:
        super().__init__()
        self.report = TrainingReport(bot, name, tags=tags)
        self._by_steps = False

    @staticmethod
    def _reports(trainer: Any) -> bool:
        return bool(getattr(trainer, "is_global_zero", True)) and not getattr(trainer, "sanity_checking", False)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if not self._reports(trainer):
            return
        max_steps = _positive(getattr(trainer, "max_steps", None))
        max_epochs = _positive(getattr(trainer, "max_epochs", None))
        self._by_steps = max_steps is not None or max_epochs is None
        self.report.unit = "steps" if self._by_steps else "epochs"
        total = max_steps if self._by_steps else max_epochs
        if self._by_steps and total is None:
            total = _positive(getattr(trainer, "estimated_stepping_batches", None))
        self.report.begin(total, default_name=f"{type(pl_module).__name__} fit")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._by_steps and self._reports(trainer):
            self.report.progress(getattr(trainer, "global_step", 0))
        if self._reports(trainer) and self.report.listen():
            trainer.should_stop = True  # ⏹ Stop from the chat: Lightning stops gracefully

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._reports(trainer):
            return
        epoch = int(getattr(trainer, "current_epoch", 0)) + 1
        done = getattr(trainer, "global_step", 0) if self._by_steps else epoch
        self.report.point(epoch, getattr(trainer, "callback_metrics", None), done=done)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self._reports(trainer):
            self.report.end()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.report.end(exception)


def _lightning_base() -> type:
    names = ["lightning.pytorch", "pytorch_lightning"]
    if "pytorch_lightning" in sys.modules and "lightning.pytorch" not in sys.modules:
        names.reverse()  # the trainer the script uses accepts only its own package's callbacks
    for module_name in names:
        try:
            base = importlib.import_module(module_name).Callback
        except Exception:
            continue
        if isinstance(base, type):
            return base
    return ProtocolBase


def build_callback_class() -> type:
    """A new ``Callback`` class on the Lightning base importable now (tests build theirs with a fake one)."""
    return type("Callback", (LightningReporting, _lightning_base()), {"__module__": __name__})


__getattr__ = lazy_callback(__name__, build_callback_class)  # ``Callback``, built on first use


if TYPE_CHECKING:
    Callback = LightningReporting
