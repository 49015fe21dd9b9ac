"""Offline is not absent: a worker that is only away is named, with how long and how to restart it;
jobs waiting for it say so; /jobs lists what the user asked for, with file names."""

from __future__ import annotations

from jobs.models import Job
from tests.bot.test_conversations import account, labels, open_path_step, worker  # noqa: F401 (fixtures)
from workers.models import Worker


def go_offline(running_bot, user, worker, settings) -> None:  # noqa: F811
    """The scripted worker's connection drops; the chat hears about it after the (short) grace."""
    settings.WORKER_DISCONNECT_GRACE = 0.1
    worker.stop()
    user.wait_for_message("Local Worker Disconnected")
    assert running_bot.call(lambda: not Worker.objects.get().is_online)


def assert_offline_answer(message) -> None:
    text = message["text"]
    assert "Your worker on scripted-box is offline since" in text and " ago)" in text
    assert "python3 ~/.statsbot/statsbot_worker.py" in text
    assert "Autostart:" in text
    assert "Token expires" not in text and "No local worker is connected" not in text


def test_it_names_the_offline_worker_on_train_and_predict(running_bot, user, worker, settings):  # noqa: F811
    go_offline(running_bot, user, worker, settings)
    user.send("/train")
    answer = user.wait_for_message("is offline since")
    assert_offline_answer(answer)
    assert "Autostart: not set up from this chat" in answer["text"]
    assert labels(answer) == ["🔁 Connect a different machine"]
    user.send("/predict")
    assert_offline_answer(user.wait_for_message(predicate=lambda m: "offline since" in (m.get("text") or "")
                                                and m["message_id"] != answer["message_id"]))
    assert running_bot.call(lambda: Job.objects.filter(action="list_models").count()) == 0


def test_it_shows_the_restart_command_and_autostart_state_in_worker(running_bot, user, worker, settings):  # noqa: F811
    user.send("/worker autostart")
    user.wait_for_message(predicate=lambda m: "Autostart is on" in (m.get("text") or ""))
    go_offline(running_bot, user, worker, settings)
    user.send("/worker")
    status = user.wait_for_message("💤 offline since")
    assert_offline_answer(status)
    assert "Autostart: on (systemd)" in status["text"]


def test_it_says_a_job_waits_for_the_offline_worker_in_its_message_and_in_jobs(
    running_bot, user, worker, settings  # noqa: F811
):
    open_path_step(user)
    user.send("~/data/sales.csv")
    user.wait_for_message("Which column")
    user.tap("price")
    task = user.wait_for_message("This looks like regression")
    user.tap("✅ Regression (detected)")
    user.wait_for_edit(task["message_id"], "Which model?")
    user.tap("LightGBM")
    user.wait_for_edit(task["message_id"], "Ready to train")
    worker.hold.set()
    user.tap("🚀 Start training")
    progress = user.wait_for_message(predicate=lambda m: "50%" in (m.get("text") or ""))
    go_offline(running_bot, user, worker, settings)
    waiting = user.wait_for_edit(progress["message_id"], "waiting for scripted-box")
    assert "50%" not in waiting["text"] and "python3 ~/.statsbot/statsbot_worker.py" in waiting["text"]
    user.send("/jobs")
    jobs = user.wait_for_message("Your recent jobs")
    assert "Training LightGBM on sales.csv → price" in jobs["text"]
    assert "waiting for scripted-box, offline since" in jobs["text"] and "running" not in jobs["text"]
    assert "Reading the file" not in jobs["text"] and "describe" not in jobs["text"]
    assert labels(jobs) == ["✖️ Cancel 1. training (sales.csv)"]


def test_it_lists_only_what_the_user_asked_for_with_file_names(running_bot, user, worker):  # noqa: F811
    user.send("/models")
    user.wait_for_message("Models on your machine")
    user.send("/predict")
    picker = user.wait_for_message("Which model?")
    user.tap(labels(picker)[0])
    user.wait_for_message("Send the path of the file to predict on")
    user.send("~/data/new rows.csv")
    user.wait_for_message(predicate=lambda m: "Predictions ready" in (m.get("text") or ""))
    user.send("/jobs")
    text = user.wait_for_message("Your recent jobs")["text"]
    assert "1. 🔮 Prediction on new rows.csv with lightgbm_price_20261123_070000" in text
    assert "✅ succeeded" in text
    assert "Listing your models" not in text and "\n2. " not in text


def test_it_says_a_queued_job_waits_for_a_worker_when_none_is_connected(running_bot, user, account):  # noqa: F811
    from jobs.services import submit_job

    running_bot.call(submit_job, account, Job.Action.TRAIN, {"file_path": "~/a.csv", "model_type": "linear"},
                     context=Job.Context.TRAIN)
    message = user.wait_for_message("Training Linear")
    assert "waiting for a worker: none is connected" in message["text"] and "/connect" in message["text"]


def test_it_tells_models_apart_by_source_file_date_metric_and_size(running_bot, user, worker):  # noqa: F811
    user.send("/models")
    listing = user.wait_for_message("Models on your machine")
    assert ("1. price · LightGBM\n    from sales.csv · 2026-11-23 07:00 · R² 0.91 · 1.2 MB\n"
            "    lightgbm_price_20261123_070000") in listing["text"]
    assert labels(listing) == ["✏️ Rename 1", "🗑 Delete 1"]


def test_it_renames_a_model_from_the_chat(running_bot, user, worker):  # noqa: F811
    user.send("/models")
    user.wait_for_message("Models on your machine")
    user.tap("✏️ Rename 1")
    user.wait_for_message("Send a new name for")
    user.send("x" * 61)
    user.wait_for_message("A name is one line")
    user.send("  House prices,   Q3  ")
    done = user.wait_for_message(predicate=lambda m: "is now called" in (m.get("text") or ""))
    assert done["text"] == ("✏️ Model lightgbm_price_20261123_070000 is now called House prices, Q3. "
                            "/models lists your models.")
    assert worker.jobs[-1]["action"] == "rename_model"
    assert worker.jobs[-1]["params"] == {"model_id": "lightgbm_price_20261123_070000", "name": "House prices, Q3"}


def test_it_offers_models_and_jobs_to_free_text_when_the_worker_is_online(running_bot, user, worker):  # noqa: F811
    user.send("thanks!")
    answer = user.wait_for_message("I only understand commands here")
    assert labels(answer) == ["📚 My models", "🗂 My jobs", "📖 All commands"]
    assert "/train" in answer["text"] and "/connect" not in answer["text"]
    user.tap("📚 My models")
    user.wait_for_message("Models on your machine")
    user.tap("🗂 My jobs", message=answer)
    user.wait_for_message("No training or prediction yet")


def test_it_answers_a_file_sent_outside_a_conversation(running_bot, user, account, tmp_path):  # noqa: F811
    data = tmp_path / "sales.csv"
    data.write_text("a,b\n1,2\n")
    user.upload(data)
    answer = user.wait_for_message("I can't take files here")
    assert "path" in answer["text"] and labels(answer) == ["🔌 Connect Local Worker", "📖 All commands"]


def test_it_offers_the_restart_before_a_new_token_on_connect(running_bot, user, worker, settings):  # noqa: F811
    go_offline(running_bot, user, worker, settings)
    user.send("/connect")
    text = user.wait_for_message("Connect Local Worker")["text"]
    assert "Your worker on scripted-box is offline since" in text and "no new token needed" in text
    assert text.index("python3 ~/.statsbot/statsbot_worker.py") < text.index("curl -sL")
