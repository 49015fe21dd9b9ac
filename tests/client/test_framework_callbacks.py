"""Framework callbacks (Keras, Lightning, transformers): one run, progress, metric points, the end.

Each callback is driven by a fake of its framework's callback protocol (tests/client/fake_frameworks.py)
always, and by the real framework when it is installed (skipped with the reason otherwise).
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
from experiment_bot import hf, keras, lightning
from experiment_bot_fake import TEST_KEY, run_script
from fake_frameworks import (
    FakeKerasCallbackBase,
    FakeLightningCallbackBase,
    FakeLitModel,
    FakeTensor,
    FakeTrainer,
    FakeTrainerCallbackBase,
    fake_keras_module,
    fake_lightning_module,
    fake_transformers_module,
    hf_train,
    keras_fit,
    losses,
)


def progress_of(fake, uuid):
    return [(b["progress"]["done"], b["progress"]["total"]) for b in fake.heartbeats(uuid) if b["progress"]]


def points_of(fake, uuid):
    """{step: metrics} as the server records them (it charts these)."""
    points: dict = {}
    for body in fake.heartbeats(uuid):
        if body["metrics"] and body["step"] is not None:
            points.setdefault(body["step"], {}).update(body["metrics"])
    return points


@pytest.fixture
def keras_callback(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras", fake_keras_module())
    return keras.build_callback_class()


@pytest.fixture
def lightning_callback(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning.pytorch", fake_lightning_module())
    return lightning.build_callback_class()


@pytest.fixture
def hf_callback(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", fake_transformers_module())
    return hf.build_callback_class()


# --------------------------------------------------------------------------- the base classes


def test_it_subclasses_each_frameworks_own_callback_base(keras_callback, lightning_callback, hf_callback):
    assert issubclass(keras_callback, FakeKerasCallbackBase)
    assert issubclass(lightning_callback, FakeLightningCallbackBase)
    assert issubclass(hf_callback, FakeTrainerCallbackBase)


def test_it_prefers_the_lightning_package_the_script_imported(monkeypatch):
    old = type("Callback", (), {})
    monkeypatch.setitem(sys.modules, "pytorch_lightning", type(sys)("pytorch_lightning"))
    sys.modules["pytorch_lightning"].Callback = old
    monkeypatch.delitem(sys.modules, "lightning.pytorch", raising=False)
    assert issubclass(lightning.build_callback_class(), old)


def test_it_imports_no_framework_until_a_callback_class_is_used(tmp_path):
    code = """
        import sys
        import experiment_bot
        from experiment_bot import tqdm, trange
        assert experiment_bot.lightning.__name__ == "experiment_bot.lightning"  # reachable as an attribute
        import experiment_bot.keras, experiment_bot.hf
        heavy = ("tensorflow", "torch", "transformers", "keras", "lightning", "pytorch_lightning", "tqdm", "numpy")
        print(sorted(name for name in heavy if name in sys.modules))
    """
    result = run_script(tmp_path, code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_it_keeps_the_tqdm_name_for_the_wrapper():
    import experiment_bot

    assert experiment_bot.tqdm.__module__ == "experiment_bot.tqdm_compat"
    assert "tqdm" in experiment_bot.__all__ and experiment_bot.tqdm is experiment_bot.tqdm_compat.tqdm


# --------------------------------------------------------------------------- Keras


def test_it_reports_keras_epochs_as_progress_and_logs_as_points(fake, make_bot, keras_callback):
    bot = make_bot(fake)
    keras_fit([keras_callback("mnist cnn", bot=bot, tags=["keras"])], epochs=4)
    assert bot.flush(5)
    [start] = fake.started()
    assert start["name"] == "mnist cnn" and start["total"] == 4 and start["tags"] == ["keras"]
    assert progress_of(fake, start["uuid"])[-1] == (4, 4)
    points = points_of(fake, start["uuid"])
    assert sorted(points) == [1, 2, 3, 4]
    assert [points[s]["loss"] for s in (1, 2, 3, 4)] == losses(4)
    assert points[2]["val_loss"] == pytest.approx(losses(4)[1] * 1.1)  # a tensor-like value as a number
    finish = fake.finish_of(start["uuid"])
    assert finish["status"] == "succeeded" and finish["metrics"]["loss"] == losses(4)[-1]


def test_it_sends_epoch_points_at_once_despite_batched_updates(fake, make_bot, keras_callback, monkeypatch):
    from experiment_bot import training

    bot = make_bot(fake, update_interval=3600)  # metric updates would wait an hour
    monkeypatch.setattr(training, "POINT_GAP", 0.0)
    keras_fit([keras_callback(bot=bot)], epochs=4)
    assert bot.flush(5)
    [start] = fake.started()
    assert sorted(points_of(fake, start["uuid"])) == [1, 2, 3, 4]


def test_it_spaces_epoch_points_by_the_point_gap(fake, make_bot, keras_callback, monkeypatch):
    from experiment_bot import training

    bot = make_bot(fake, update_interval=3600)
    monkeypatch.setattr(training, "POINT_GAP", 3600.0)
    keras_fit([keras_callback(bot=bot)], epochs=4)
    assert bot.flush(5)
    [start] = fake.started()
    assert sorted(points_of(fake, start["uuid"])) == [1, 4], "the first at once, the last with the finish"


def test_it_reports_a_keras_fit_that_raised_as_failed(fake, tmp_path):
    code = f"""
        import sys
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
        from fake_frameworks import fake_keras_module, keras_fit
        sys.modules["keras"] = fake_keras_module()
        import experiment_bot.keras
        keras_fit([experiment_bot.keras.Callback("doomed")], epochs=5, fail_at_epoch=2)
    """
    result = run_script(tmp_path, code, env={"EXPERIMENT_BOT_URL": fake.url, "EXPERIMENT_BOT_KEY": TEST_KEY})
    assert result.returncode == 1 and "FloatingPointError" in result.stderr
    [start] = fake.started()
    finish = fake.finish_of(start["uuid"])
    assert finish["status"] == "failed"
    assert finish["error"] == "FloatingPointError: loss is nan at epoch 2"
    assert "keras_fit" in finish["traceback"]
    assert progress_of(fake, start["uuid"])[-1] == (2, 5)


def test_it_says_when_keras_stopped_early(fake, make_bot, keras_callback):
    bot = make_bot(fake)
    keras_fit([keras_callback(bot=bot)], epochs=10, stop_after=3)
    assert bot.flush(5)
    [start] = fake.started()
    assert start["name"] == "keras fit"
    assert progress_of(fake, start["uuid"])[-1] == (3, 10)
    finish = fake.finish_of(start["uuid"])
    assert finish["status"] == "succeeded" and finish["exit_reason"] == "stopped early at 3/10 epochs"


def test_it_reports_keras_on_the_active_run_and_leaves_it_running(fake, make_bot, keras_callback):
    bot = make_bot(fake)
    with bot.track("experiment") as run:
        keras_fit([keras_callback(bot=bot)], epochs=3)
        assert run.status == "running"
        assert run.history[-1] == (3, {"loss": losses(3)[-1], "accuracy": 1 - losses(3)[-1] / 2,
                                       "val_loss": pytest.approx(losses(3)[-1] * 1.1)})
    assert bot.flush(5)
    [start] = fake.started()
    assert start["uuid"] == run.uuid
    assert progress_of(fake, run.uuid)[-1] == (3, 3)
    assert len(fake.finished()) == 1


# --------------------------------------------------------------------------- Lightning


def test_it_reports_lightning_epochs_and_callback_metrics(fake, make_bot, lightning_callback):
    bot = make_bot(fake)
    FakeTrainer([lightning_callback(bot=bot)], max_epochs=3).fit(FakeLitModel())
    assert bot.flush(5)
    [start] = fake.started()
    assert start["name"] == "FakeLitModel fit" and start["total"] == 3
    assert progress_of(fake, start["uuid"])[-1] == (3, 3)
    points = points_of(fake, start["uuid"])
    assert sorted(points) == [1, 2, 3]
    assert [points[s]["train_loss"] for s in (1, 2, 3)] == losses(3)
    assert fake.finish_of(start["uuid"])["status"] == "succeeded"


def test_it_reports_lightning_steps_when_the_trainer_runs_for_max_steps(fake, make_bot, lightning_callback):
    bot = make_bot(fake)
    FakeTrainer([lightning_callback(bot=bot)], max_epochs=None, max_steps=10, batches=4).fit(FakeLitModel())
    assert bot.flush(5)
    [start] = fake.started()
    assert start["total"] == 10
    sent = progress_of(fake, start["uuid"])
    assert sent[-1] == (10, 10) and (4, 10) in sent
    assert fake.finish_of(start["uuid"])["status"] == "succeeded"


def test_it_reports_a_lightning_exception_as_failed(fake, make_bot, lightning_callback):
    bot = make_bot(fake)
    with pytest.raises(RuntimeError):
        FakeTrainer([lightning_callback(bot=bot)], max_epochs=5, fail_at_epoch=1).fit(FakeLitModel())
    assert bot.flush(5)
    [start] = fake.started()
    finish = fake.finish_of(start["uuid"])
    assert finish["status"] == "failed" and finish["error"] == "RuntimeError: CUDA out of memory (fake)"
    assert progress_of(fake, start["uuid"])[-1] == (1, 5)


def test_it_reports_only_from_the_lightning_global_zero_process(fake, make_bot, lightning_callback):
    bot = make_bot(fake)
    FakeTrainer([lightning_callback(bot=bot)], max_epochs=2, is_global_zero=False).fit(FakeLitModel())
    assert bot.flush(5)
    assert fake.started() == [] and fake.bodies("/api/heartbeat") == []


# --------------------------------------------------------------------------- transformers


def test_it_reports_hf_steps_and_logged_curves(fake, make_bot, hf_callback):
    bot = make_bot(fake)
    returned = hf_train([hf_callback(bot=bot)], max_steps=20, logging_steps=5, epochs=2)
    assert returned and all(value is None for value in returned), "the trainer's control is left alone"
    assert bot.flush(5)
    [start] = fake.started()
    assert start["name"] == "FakeHFModel training" and start["total"] == 20
    assert progress_of(fake, start["uuid"])[-1] == (20, 20)
    points = points_of(fake, start["uuid"])
    assert [points[s]["loss"] for s in (5, 10, 15, 20)] == [0.4, 0.2, round(2 / 15, 6), 0.1]
    assert points[10]["eval_loss"] == 1.0 and points[20]["eval_loss"] == 0.5
    assert points[5]["grad_norm"] == 1.5
    sent_names = {name for values in points.values() for name in values}
    assert not sent_names & {"epoch", "eval_runtime", "train_runtime", "train_samples_per_second", "total_flos"}
    assert fake.finish_of(start["uuid"])["status"] == "succeeded"


def test_it_reports_only_from_the_hf_main_process(fake, make_bot, hf_callback):
    bot = make_bot(fake)
    hf_train([hf_callback(bot=bot)], is_main=False)
    assert bot.flush(5)
    assert fake.started() == [] and fake.bodies("/api/heartbeat") == []


def test_it_turns_scalars_of_any_kind_into_numbers():
    from experiment_bot.training import numeric

    numpy = pytest.importorskip("numpy", reason="numpy is not installed")
    values = {"a": FakeTensor(0.5), "b": numpy.float32(0.25), "c": numpy.array(3), "d": "text",
              "e": [1, 2], "f": float("nan"), "g": numpy.array([1.0, 2.0]), "h": None, "i": 7}
    assert numeric(values) == {"a": 0.5, "b": 0.25, "c": 3.0, "i": 7}


# --------------------------------------------------------------------------- the real frameworks


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@pytest.mark.skipif(not _installed("keras"), reason="keras is not installed (pip install keras and a backend)")
def test_it_reports_a_real_keras_fit(fake, make_bot):
    import numpy as np

    real = pytest.importorskip("keras", reason="keras is installed but cannot be imported (no backend?)")
    callback_class = keras.build_callback_class()
    assert issubclass(callback_class, real.callbacks.Callback)
    bot = make_bot(fake)
    model = real.Sequential([real.Input((3,)), real.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    model.fit(x, x.sum(axis=1), epochs=3, verbose=0, callbacks=[callback_class("real keras", bot=bot)])
    assert bot.flush(5)
    [start] = fake.started()
    assert start["total"] == 3 and progress_of(fake, start["uuid"])[-1] == (3, 3)
    assert sorted(points_of(fake, start["uuid"])) == [1, 2, 3]
    assert fake.finish_of(start["uuid"])["status"] == "succeeded"


@pytest.mark.skipif(not (_installed("lightning") or _installed("pytorch_lightning")),
                    reason="lightning is not installed (pip install lightning)")
def test_it_reports_a_real_lightning_fit(fake, make_bot):
    import torch

    try:
        import lightning.pytorch as pl
    except ImportError:
        import pytorch_lightning as pl
    callback_class = lightning.build_callback_class()
    assert issubclass(callback_class, pl.Callback)

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(3, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x).squeeze(-1), y)
            self.log("train_loss", loss, on_epoch=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    x = torch.randn(32, 3)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1)), batch_size=8)
    bot = make_bot(fake)
    trainer = pl.Trainer(max_epochs=3, callbacks=[callback_class(bot=bot)], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Tiny(), data)
    assert bot.flush(5)
    [start] = fake.started()
    assert start["total"] == 3 and progress_of(fake, start["uuid"])[-1] == (3, 3)
    assert sorted(points_of(fake, start["uuid"])) == [1, 2, 3]
    assert fake.finish_of(start["uuid"])["status"] == "succeeded"


@pytest.mark.skipif(not (_installed("transformers") and _installed("torch")),
                    reason="transformers and torch are not installed (pip install transformers torch)")
def test_it_reports_a_real_hf_trainer(fake, make_bot, tmp_path):
    import torch
    import transformers

    callback_class = hf.build_callback_class()
    assert issubclass(callback_class, transformers.TrainerCallback)

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(3, 1)

        def forward(self, x, labels=None):
            out = self.layer(x).squeeze(-1)
            return {"loss": torch.nn.functional.mse_loss(out, labels), "logits": out}

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 32

        def __getitem__(self, i):
            x = torch.full((3,), float(i) / 32)
            return {"x": x, "labels": x.sum()}

    bot = make_bot(fake)
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=8, logging_steps=2,
                                          per_device_train_batch_size=8, report_to=[], save_strategy="no",
                                          use_cpu=True, disable_tqdm=True)
    transformers.Trainer(model=Tiny(), args=args, train_dataset=Data(),
                         callbacks=[callback_class(bot=bot)]).train()
    assert bot.flush(5)
    [start] = fake.started()
    assert start["total"] == 8 and progress_of(fake, start["uuid"])[-1] == (8, 8)
    assert sorted(points_of(fake, start["uuid"]))[:4] == [2, 4, 6, 8]
    assert fake.finish_of(start["uuid"])["status"] == "succeeded"
