"""Fakes of the callback protocols of Keras, PyTorch Lightning and transformers' Trainer.

Each drives its callbacks the way the real training loop does (the order and the arguments of
the hooks, the shapes of ``logs``/``callback_metrics``/``state``), so the callbacks are tested
without the frameworks installed. The real frameworks are tested in test_framework_callbacks.py
when installed.
"""

from __future__ import annotations

import math
import sys
import types
from typing import Any


class FakeTensor:
    """A 0-d tensor: ``.item()`` gives the number (torch and numpy scalars work so)."""

    ndim = 0

    def __init__(self, value: float) -> None:
        self.value = value

    def item(self) -> float:
        return self.value


def losses(epochs: int) -> list[float]:
    return [round(math.exp(-e / 2), 6) for e in range(epochs)]


# --------------------------------------------------------------------------- Keras


class FakeKerasCallbackBase:
    """``keras.callbacks.Callback`` as Keras 3 defines it (params, model, no-op hooks)."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self._model: Any = None

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = params

    def set_model(self, model: Any) -> None:
        self._model = model

    @property
    def model(self) -> Any:  # Keras 3: a property over _model
        return self._model

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)


def fake_keras_module() -> types.ModuleType:
    module = types.ModuleType("keras")
    module.callbacks = types.SimpleNamespace(Callback=FakeKerasCallbackBase)  # type: ignore[attr-defined]
    return module


def keras_fit(callbacks: list[Any], epochs: int, steps: int = 3, fail_at_epoch: int | None = None,
              stop_after: int | None = None) -> None:
    """What ``model.fit(x, y, epochs=epochs, validation_data=...)`` does with its callbacks
    (``stop_after``: an EarlyStopping that sets ``model.stop_training`` after that many epochs)."""
    model = types.SimpleNamespace(stop_training=False)
    for callback in callbacks:
        callback.set_params({"verbose": 0, "epochs": epochs, "steps": steps})
        callback.set_model(model)
    for callback in callbacks:
        callback.on_train_begin(logs=None)
    for epoch, loss in enumerate(losses(epochs)):
        for callback in callbacks:
            callback.on_epoch_begin(epoch, logs=None)
        for batch in range(steps):
            for callback in callbacks:
                callback.on_train_batch_begin(batch, logs=None)
            if fail_at_epoch == epoch:
                raise FloatingPointError(f"loss is nan at epoch {epoch}")
            for callback in callbacks:
                callback.on_train_batch_end(batch, logs={"loss": loss})
            if model.stop_training:
                break
        logs = {"loss": loss, "accuracy": 1 - loss / 2, "val_loss": FakeTensor(loss * 1.1)}
        for callback in callbacks:
            callback.on_epoch_end(epoch, logs=logs)
        if stop_after == epoch + 1 or model.stop_training:
            break
    for callback in callbacks:
        callback.on_train_end(logs={"loss": losses(epochs)[-1]})


# --------------------------------------------------------------------------- Lightning


class FakeLightningCallbackBase:
    """``lightning.pytorch.Callback``: every hook exists and does nothing."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)


def fake_lightning_module() -> types.ModuleType:
    module = types.ModuleType("lightning.pytorch")
    module.Callback = FakeLightningCallbackBase  # type: ignore[attr-defined]
    return module


class FakeLitModel:
    pass


class FakeTrainer:
    """``Trainer(max_epochs=…, max_steps=…, callbacks=[…]).fit(model)``: the hook order of Lightning 2."""

    def __init__(
        self,
        callbacks: list[Any],
        max_epochs: int | None = 3,
        max_steps: int = -1,
        batches: int = 4,
        is_global_zero: bool = True,
        fail_at_epoch: int | None = None,
    ) -> None:
        self.callbacks = callbacks
        self.max_epochs = max_epochs
        self.max_steps = max_steps
        self.batches = batches
        self.is_global_zero = is_global_zero
        self.fail_at_epoch = fail_at_epoch
        self.current_epoch = 0
        self.global_step = 0
        self.should_stop = False
        self.sanity_checking = False
        self.callback_metrics: dict[str, Any] = {}

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def fit(self, model: Any) -> None:
        try:
            self._call("on_fit_start", model)
            self.sanity_checking = True
            self._call("on_validation_epoch_end", model)
            self.sanity_checking = False
            self._call("on_train_start", model)
            epochs = self.max_epochs if self.max_epochs is not None else math.ceil(self.max_steps / self.batches)
            for epoch, loss in enumerate(losses(epochs)):
                self.current_epoch = epoch
                self._call("on_train_epoch_start", model)
                for batch in range(self.batches):
                    if self.fail_at_epoch == epoch:
                        raise RuntimeError("CUDA out of memory (fake)")
                    self.global_step += 1
                    self._call("on_train_batch_end", model, {"loss": FakeTensor(loss)}, None, batch)
                    if self.global_step == self.max_steps or self.should_stop:
                        break
                self.callback_metrics = {"train_loss": FakeTensor(loss), "val_loss": FakeTensor(loss * 1.2)}
                self._call("on_validation_epoch_end", model)
                self._call("on_train_epoch_end", model)
                if self.global_step == self.max_steps or self.should_stop:
                    break
            self._call("on_train_end", model)
            self._call("on_fit_end", model)
        except BaseException as exc:
            self._call("on_exception", model, exc)
            raise


# --------------------------------------------------------------------------- transformers


class FakeTrainerCallbackBase:
    """``transformers.TrainerCallback``: every event method exists and returns None."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)


def fake_transformers_module() -> types.ModuleType:
    module = types.ModuleType("transformers")
    module.TrainerCallback = FakeTrainerCallbackBase  # type: ignore[attr-defined]
    return module


class FakeHFModel:
    pass


def hf_train(callbacks: list[Any], max_steps: int = 20, logging_steps: int = 5, epochs: int = 2,
             is_main: bool = True) -> list[Any]:
    """``Trainer.train()``: CallbackHandler.call_event for each event; returns what the callbacks returned."""
    args = types.SimpleNamespace(logging_steps=logging_steps, num_train_epochs=epochs)
    state = types.SimpleNamespace(global_step=0, max_steps=max_steps, epoch=0.0, log_history=[],
                                  is_world_process_zero=is_main, is_local_process_zero=is_main)
    control = types.SimpleNamespace(should_training_stop=False, should_log=False)
    returned: list[Any] = []
    model = FakeHFModel()

    def event(name: str, **kwargs: Any) -> None:
        nonlocal control
        for callback in callbacks:
            result = getattr(callback, name)(args, state, control, model=model, **kwargs)
            returned.append(result)
            if result is not None:
                control = result

    event("on_init_end")
    event("on_train_begin")
    per_epoch = max_steps // epochs
    for epoch in range(epochs):
        event("on_epoch_begin")
        for _ in range(per_epoch):
            event("on_step_begin")
            state.global_step += 1
            state.epoch = state.global_step / per_epoch
            event("on_step_end")
            if control.should_training_stop:
                break
            if state.global_step % logging_steps == 0:
                logs = {"loss": round(2.0 / state.global_step, 6), "learning_rate": 5e-5, "epoch": state.epoch,
                        "grad_norm": FakeTensor(1.5)}
                state.log_history.append({**logs, "step": state.global_step})
                event("on_log", logs=logs)
        metrics = {"eval_loss": 1.0 / (epoch + 1), "eval_runtime": 0.5, "epoch": float(epoch + 1)}
        event("on_evaluate", metrics=metrics)
        event("on_log", logs=metrics)
        event("on_epoch_end")
        if control.should_training_stop:
            break
    summary = {"train_runtime": 1.25, "train_samples_per_second": 80.0, "total_flos": 1e12,
               "train_loss": 0.3, "epoch": float(epochs)}
    event("on_log", logs=summary)
    event("on_train_end")
    return returned


def forget(*names: str) -> None:
    """Drop modules so a test can import a fake under their name."""
    for name in names:
        sys.modules.pop(name, None)
