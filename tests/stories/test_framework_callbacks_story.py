"""A training script changes one import (tqdm) and adds one callback (Keras): its chat gets one
edited progress message per run, with the metrics, and the metric chart at the end."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import math
    import sys
    import time
    import types

    # Keras is not installed here: a fake ``keras`` module stands in for it, and a loop below
    # calls the callback's hooks the way ``model.fit`` does.
    class KerasCallbackBase:
        def __init__(self):
            self.params = {}

        def set_params(self, params):
            self.params = params

        def set_model(self, model):
            self.model = model

    sys.modules["keras"] = types.SimpleNamespace(callbacks=types.SimpleNamespace(Callback=KerasCallbackBase))

    import experiment_bot.keras
    from experiment_bot import tqdm

    for row in tqdm(range(40), desc="preprocessing"):
        time.sleep(0.01)  # the work

    callback = experiment_bot.keras.Callback("keras fit", tags=["cnn"])
    assert isinstance(callback, KerasCallbackBase)
    epochs = 6
    callback.set_params({"epochs": epochs, "steps": 2, "verbose": 0})
    callback.set_model(object())
    callback.on_train_begin()
    for epoch in range(epochs):
        time.sleep(0.4)  # the epoch's work
        callback.on_epoch_end(epoch, {"loss": math.exp(-epoch), "val_loss": 1.2 * math.exp(-epoch)})
    callback.on_train_end()
    print("trained", flush=True)
""")


def text_of(message) -> str:
    return message.get("text") or message.get("caption") or ""


def wait_until(find, timeout: float = 30.0):
    """Poll the chat until ``find()`` returns something (the sandbox answers at once)."""
    deadline = time.monotonic() + timeout
    while True:
        found = find()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError("the chat never showed what the test waits for")
        time.sleep(0.2)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


@pytest.fixture
def api_key(running_bot, user) -> str:
    user.send("/start")
    welcome = user.wait_for_message("Welcome")
    return next(word for word in welcome["text"].split() if word.startswith("exp_"))


def test_it_reports_a_tqdm_loop_and_a_keras_fit_from_a_real_script(running_bot, user, api_key, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {
        **os.environ,
        "EXPERIMENT_BOT_URL": running_bot.web_url,
        "EXPERIMENT_BOT_KEY": api_key,
        "PYTHONPATH": f"{ROOT / 'client'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    result = subprocess.run([sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "trained" in result.stdout

    def bars(name):
        return [m for m in user.bot_messages() if "▓" in text_of(m) and name in text_of(m)]

    def finished(name):
        return [m for m in user.bot_messages()
                if "finished in" in text_of(m) and name in text_of(m) and "▓" not in text_of(m)]

    # The tqdm loop: its own run, one progress message edited to the end.
    [tqdm_bar] = wait_until(lambda: [m for m in bars("preprocessing") if "100% · 40/40" in text_of(m)])
    wait_until(lambda: finished("preprocessing"))
    assert len(bars("preprocessing")) == 1

    # The Keras fit: epochs on one edited message with the last metrics, then the chart.
    [keras_bar] = wait_until(lambda: [m for m in bars("keras fit") if "100% · 6/6" in text_of(m)])
    assert len(bars("keras fit")) == 1, "the epochs edit one message"
    assert "📊 loss" in text_of(keras_bar) and "val_loss" in text_of(keras_bar)
    assert keras_bar.get("version", 1) > 1, "the progress message was edited"
    [done] = wait_until(lambda: finished("keras fit"))
    assert "loss" in text_of(done)
    assert done.get("photo"), "the metric chart comes with the finish"
    assert user.download(done["photo"][-1]["file_id"]).startswith(b"\x89PNG")


def test_it_runs_the_tqdm_example(running_bot, user, api_key):
    env = {
        **os.environ,
        "EXPERIMENT_BOT_URL": running_bot.web_url,
        "EXPERIMENT_BOT_KEY": api_key,
        "PYTHONPATH": f"{ROOT / 'client'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "tqdm_loop.py")], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr

    def final(name):
        return [m for m in user.bot_messages()
                if "finished in" in text_of(m) and name in text_of(m) and "▓" not in text_of(m)]

    wait_until(lambda: final("tokenizing"))
    [training] = wait_until(lambda: final("training"))
    assert "loss" in text_of(training) and training.get("photo"), "set_postfix values are charted"
