"""A new user connects their machine and trains and predicts on local files, from the chat."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes

from jobs.models import Job
from workers.models import Worker

pytestmark = pytest.mark.e2e


def labels(message) -> list[str]:
    markup = message.get("reply_markup") or {}
    return [button["text"] for row in markup.get("inline_keyboard", []) for button in row]


def text_of(message) -> str:
    return message.get("text") or message.get("caption") or ""


def test_it_connects_a_machine_with_the_printed_command(running_bot, user, home, connected_worker):
    connected = user.last_bot_message()
    assert "Machine:" in connected["text"]
    config = home / ".statsbot" / "config.json"
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    saved = json.loads(config.read_text())
    assert "sbt_" not in config.read_text()  # the one-time token is not kept…
    worker = running_bot.call(Worker.objects.get)
    assert worker.is_online and saved  # …a credential is, and the worker is online
    user.send("/worker")
    assert "✅ online" in user.wait_for_message("Worker version")["text"]


def train_through_the_chat(user, path: str, target: str, task_button: str) -> dict:
    user.send("/train")
    user.wait_for_message("Where is the data?")
    user.tap(labels(user.last_bot_message())[0])
    user.send(path)
    columns = user.wait_for_message("Which column should the model predict?", timeout=60)
    assert target in labels(columns)
    user.tap(target)
    task = user.wait_for_message(f"Target: {target}", timeout=60)  # after the data checks on the machine
    user.tap(next(label for label in labels(task) if task_button in label))
    user.wait_for_edit(task["message_id"], "Which model?")
    user.tap("LightGBM")  # a single model; ⭐ Auto is the first choice (tests/stories/test_auto_training_story.py)
    user.wait_for_edit(task["message_id"], "Ready to train")
    user.tap("🚀 Start training")
    progress = user.wait_for_message(predicate=lambda m: "Training LightGBM" in text_of(m), timeout=30)
    done = user.wait_for_message("Model trained", timeout=120)
    user.wait_for_edit(progress["message_id"], "succeeded, see below")
    return done


def test_it_trains_on_a_local_csv_and_predicts_with_the_model(running_bot, user, home, connected_worker):
    data = load_diabetes(as_frame=True).frame
    data.to_csv(home / "data" / "diabetes.csv", index=False)
    data.drop(columns=["target"]).head(50).to_csv(home / "data" / "new_patients.csv", index=False)

    done = train_through_the_chat(user, "~/data/diabetes.csv", "target", "Regression")
    assert "R²:" in done["text"] and "RMSE:" in done["text"] and "Model id:" in done["text"]
    chart = user.wait_for_message(predicate=lambda m: bool(m.get("photo")), timeout=30)
    assert chart["caption"] == "Feature importance"
    assert user.download(chart["photo"][-1]["file_id"]).startswith(b"\x89PNG")

    user.tap("🔮 Predict with this model", message=done)
    user.wait_for_message("Send the path of the file to predict on")
    user.send("~/data/new_patients.csv")
    result = user.wait_for_message(predicate=lambda m: "Predictions ready" in text_of(m), timeout=120)
    output = home / "data" / "new_patients_predictions.csv"
    assert str(output) in result["text"] and "50 rows" in result["text"]
    written = pd.read_csv(output)
    assert len(written) == 50 and "prediction" in written.columns

    user.send("/models")
    listing = user.wait_for_message("Models on your machine", timeout=30)
    lines = listing["text"].splitlines()
    assert lines[2] == "1. target · LightGBM" and lines[3].startswith("    from diabetes.csv · 20")
    assert " · R² " in lines[3] and lines[3].endswith((" KB", " MB"))
    model_id = lines[4].strip()
    assert (home / ".statsbot" / "models" / model_id / "metadata.json").exists()
    user.tap("✏️ Rename 1", message=listing)
    user.wait_for_message("Send a new name for")
    user.send("Diabetes baseline")
    user.wait_for_message(predicate=lambda m: "is now called" in text_of(m), timeout=30)
    assert json.loads((home / ".statsbot" / "models" / model_id / "metadata.json").read_text())["name"] == (
        "Diabetes baseline")
    user.send("/models")
    listing = user.wait_for_message(predicate=lambda m: "1. Diabetes baseline" in text_of(m), timeout=30)
    user.tap("🗑 Delete 1", message=listing)
    user.wait_for_message("cannot be undone")
    user.tap("Yes, delete it")
    user.wait_for_message(predicate=lambda m: "Deleted model" in text_of(m), timeout=30)
    assert not (home / ".statsbot" / "models" / model_id).exists()


def test_it_classifies_and_predicts_from_the_model_list(running_bot, user, home, connected_worker):
    data = load_breast_cancer(as_frame=True).frame
    data["diagnosis"] = data.pop("target").map({0: "malignant", 1: "benign"})
    data.to_parquet(home / "data" / "cancer.parquet", index=False)
    data.drop(columns=["diagnosis"]).tail(20).to_csv(home / "data" / "cases.csv", index=False)

    done = train_through_the_chat(user, "~/data/cancer.parquet", "diagnosis", "Classification")
    assert "Accuracy:" in done["text"] and "ROC AUC:" in done["text"]

    user.send("/predict")
    picker = user.wait_for_message("Which model?", timeout=30)
    user.tap(labels(picker)[0])
    user.wait_for_message("Send the path")
    user.send("~/data/cases.csv")
    result = user.wait_for_message(predicate=lambda m: "Predictions ready" in text_of(m), timeout=120)
    assert "Predicted classes:" in result["text"] and "benign" in result["text"]


def test_it_explains_a_path_the_worker_refuses(running_bot, user, home, connected_worker):
    user.send("/train")
    user.wait_for_message("Where is the data?")
    user.tap(labels(user.last_bot_message())[0])
    user.send("/etc/passwd")
    refusal = user.wait_for_message(predicate=lambda m: "failed" in text_of(m), timeout=30)
    assert refusal["text"].startswith("❌ Reading the file failed\n\n/etc/passwd is outside the folders this "
                                      f"worker may read ({home}")  # the worker's reason, as it gave it
    assert "Send another path" in refusal["text"]
    assert "root:" not in refusal["text"]
    job = running_bot.call(lambda: Job.objects.get(action=Job.Action.DESCRIBE))
    assert (job.state, job.error_code) == (Job.State.FAILED, "path_not_allowed")
