"""⭐ Auto from the chat with the real worker script (issue 14): the checks at the target step, a
typed target in another case, the search's progress, Stop and keep the best, honest results, and
the why columns of /predict."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from jobs.models import Job

pytestmark = pytest.mark.e2e


def labels(message) -> list[str]:
    markup = message.get("reply_markup") or {}
    return [button["text"] for row in markup.get("inline_keyboard", []) for button in row]


def text_of(message) -> str:
    return message.get("text") or message.get("caption") or ""


def to_the_target_step(user, path: str) -> dict:
    user.send("/train")
    user.wait_for_message("Where is the data?")
    user.tap(labels(user.last_bot_message())[0])
    user.send(path)
    return user.wait_for_message("Which column should the model predict?", timeout=60)


def test_it_checks_the_target_trains_auto_and_explains_predictions(running_bot, user, home, connected_worker):
    data = load_breast_cancer(as_frame=True).frame
    data["diagnosis"] = data.pop("target").map({0: "malignant", 1: "benign"})
    data.insert(0, "row_id", range(len(data)))
    data.to_csv(home / "data" / "cancer.csv", index=False)
    data.drop(columns=["diagnosis"]).head(20).to_csv(home / "data" / "cases.csv", index=False)

    to_the_target_step(user, "~/data/cancer.csv")
    user.send("DIAGNOSIS")  # another case: taken as the column
    task = user.wait_for_message("Target: diagnosis", timeout=60)
    assert "🪪 Left out as ID-like" in task["text"] and "row_id" in task["text"]
    assert "The target is not numeric, so this is classification." in task["text"]
    assert labels(task) == ["✅ Classification", "🪪 Keep the ID-like columns", "✖️ Cancel"]
    user.tap("✅ Classification")
    models = user.wait_for_edit(task["message_id"], "Which model?")
    assert labels(models)[0] == "⭐ Auto (recommended)"
    user.tap("⭐ Auto (recommended)")
    user.wait_for_edit(task["message_id"], "How long may the search take?")
    user.tap("⚡ ~30 s")
    user.wait_for_edit(task["message_id"], "Ready to train")
    user.tap("🚀 Start training")
    done = user.wait_for_message("Model trained", timeout=300)
    text = done["text"]
    assert text.startswith("✅ Model trained — ⭐ Auto")
    assert "measured by cross-validation over 569 rows" in text  # a small file: cv, labelled so
    assert "vs a default LightGBM:" in text and "vs the majority class baseline:" in text
    assert "🔁 The saved model was refit on all the rows after scoring." in text
    assert "row_id" not in text.split("Top features:")[-1].split("\n")[0]
    job = running_bot.call(lambda: Job.objects.get(action=Job.Action.TRAIN))
    assert job.params["time_budget_s"] == 30 and job.result["evaluation"]["method"] == "cv"
    assert "row_id" not in job.result["features"]

    user.tap("🔮 Predict with this model", message=done)
    question = user.wait_for_message("Send the path of the file to predict on")
    user.tap("💡 Add why (top 3 reasons) columns", message=question)
    user.wait_for_edit(question["message_id"], "why_1")
    user.send("~/data/cases.csv")
    result = user.wait_for_message(predicate=lambda m: "Predictions ready" in text_of(m), timeout=120)
    assert "why_1" in result["text"]
    written = pd.read_csv(home / "data" / "cases_predictions.csv")
    assert {"why_1", "why_2", "why_3"} <= set(written.columns) and written["why_1"].notna().all()


def test_it_refuses_a_constant_target_and_stops_a_search_keeping_the_best(running_bot, user, home,
                                                                         connected_worker):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(20_000, 8)), columns=[f"x{i}" for i in range(8)])
    frame["y"] = frame["x0"] * 3 + np.sin(frame["x1"] * 2) + rng.normal(scale=0.3, size=len(frame))
    frame["constant"] = 1
    frame.to_csv(home / "data" / "big.csv", index=False)

    to_the_target_step(user, "~/data/big.csv")
    user.tap("constant")
    refusal = user.wait_for_message("Cannot train on", timeout=60)
    assert "constant" in refusal["text"] and "Tap another column above" in refusal["text"]
    user.send("y")
    task = user.wait_for_message("Target: y", timeout=60)
    user.tap(next(label for label in labels(task) if "Regression" in label))
    user.wait_for_edit(task["message_id"], "Which model?")
    user.tap("⭐ Auto (recommended)")
    user.wait_for_edit(task["message_id"], "How long may the search take?")
    user.tap("🏆 10 min")
    user.wait_for_edit(task["message_id"], "Ready to train")
    user.tap("🚀 Start training")
    progress = user.wait_for_message(predicate=lambda m: "best R²" in text_of(m), timeout=180)
    assert re.search(r"^trial \d+ · best R² [-\d.]+ \(.+\) · (\d+ s|\d+m( \d+s)?) left$", progress["text"].splitlines()[-1])
    assert labels(progress) == ["⏹ Stop and keep the best", "✖️ Cancel"]
    user.tap("⏹ Stop and keep the best", message=progress)
    done = user.wait_for_message("Model trained", timeout=240)
    assert "stopped early at your request" in done["text"]
    assert "measured on 4,000 held-out rows the search never saw" in done["text"]
    job = running_bot.call(lambda: Job.objects.get(action=Job.Action.TRAIN))
    assert job.state == Job.State.SUCCEEDED and job.result["search"]["stopped_early"] is True
    assert job.finished_at is not None and (job.finished_at - job.started_at).total_seconds() < 500
