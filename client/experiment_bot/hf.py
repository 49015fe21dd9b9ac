"""A Hugging Face ``transformers`` callback: ``Trainer(..., callbacks=[experiment_bot.hf.Callback()])``.

The optimizer steps (``state.global_step`` of ``state.max_steps``) are the progress bar of one
edited message; every ``logs`` the trainer writes (loss, learning_rate, eval_*) is a metric
point at its step; the chart is sent when training ends. Only the main process reports.

``Callback`` subclasses ``transformers.TrainerCallback``; it is built on first access, so
``import experiment_bot.hf`` imports no framework.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .training import ProtocolBase, TrainingReport, lazy_callback

if TYPE_CHECKING:
    from .client import ExperimentBot

__all__ = ["Callback", "HFReporting", "build_callback_class"]

#: Entries of the trainer's logs that are bookkeeping, not training curves (the epoch counter,
#: timings, throughput, FLOPs).
def _curve(name: str) -> bool:
    return name not in ("epoch", "total_flos") and not name.endswith(("_runtime", "_per_second"))




def _main(state: Any) -> bool:
    return bool(getattr(state, "is_world_process_zero", True))


class HFReporting:
    """The reporting half of the callback (mixed into ``TrainerCallback``). Every hook returns
    None: the trainer's ``control`` is left as it is."""

    def __init__(
        self,
        name: str | None = None,
        *,
        bot: ExperimentBot | None = None,
        tags: list[str] | tuple[str, ...] | None = None,
    ) -> None:
        super().__init__()
        self.report = TrainingReport(bot, name, tags=tags, unit="steps")

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if _main(state):
            model = kwargs.get("model")
            default = f"{type(model).__name__} training" if model is not None else "transformers training"
            self.report.begin(getattr(state, "max_steps", None), default_name=default)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if _main(state):
            self.report.progress(getattr(state, "global_step", 0), getattr(state, "max_steps", None))
            if self.report.listen():
                control.should_training_stop = True  # ⏹ Stop from the chat

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not _main(state) or not logs:
            return
        values = {name: value for name, value in logs.items() if _curve(name)}
        step = getattr(state, "global_step", None)
        self.report.point(step, values, done=step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if _main(state):
            self.report.progress(getattr(state, "global_step", 0))
            self.report.end()


def _hf_base() -> type:
    try:
        base = importlib.import_module("transformers").TrainerCallback
    except Exception:
        return ProtocolBase
    return base if isinstance(base, type) else ProtocolBase


def build_callback_class() -> type:
    """A new ``Callback`` class on the ``TrainerCallback`` importable now (tests build theirs with a fake one)."""
    return type("Callback", (HFReporting, _hf_base()), {"__module__": __name__})


__getattr__ = lazy_callback(__name__, build_callback_class)  # ``Callback``, built on first use


if TYPE_CHECKING:
    Callback = HFReporting
