"""/connect, /worker, /train, /predict, /models and /jobs step by step, with a scripted worker."""

from __future__ import annotations

import json
import time

import pytest

from accounts.models import Account
from jobs.models import Job
from telegram_app.models import BotState
from tests.bot.scripted_worker import ScriptedWorker
from workers.models import ConnectToken, Worker


def labels(message) -> list[str]:
    markup = message.get("reply_markup") or {}
    return [button["text"] for row in markup.get("inline_keyboard", []) for button in row]


def open_path_step(user) -> None:
    """/train → Local Path, until the bot asks for the path."""
    user.send("/train")
    user.wait_for_message("Where is the data?")
    user.tap(labels(user.last_bot_message())[0])
    user.wait_for_edit(user.last_bot_message()["message_id"], "Send the path")


@pytest.fixture
def account(running_bot, user):
    user.send("/start")
    user.wait_for_message("Welcome")
    return running_bot.call(Account.objects.get, telegram_user_id=user.user_id)


@pytest.fixture
def worker(running_bot, user, account):
    _, token = running_bot.call(ConnectToken.issue, account)
    scripted = ScriptedWorker(running_bot.web_url.replace("http", "ws") + "/ws/worker/", token).start()
    user.wait_for_message("Local Worker Connected!")
    yield scripted
    scripted.stop()


def test_it_announces_a_connected_worker_and_says_so_on_connect(running_bot, user, worker):
    user.send("/connect")
    text = user.wait_for_message("Worker Already Connected")["text"]
    assert "scripted-box" in text
    user.send("/start")
    assert "✅ Connected: scripted-box" in user.wait_for_message("Hi again")["text"]


def test_it_tells_the_user_when_the_worker_is_gone_after_the_grace(running_bot, user, worker, settings):
    settings.WORKER_DISCONNECT_GRACE = 0.1
    worker.stop()
    assert "scripted-box went offline" in user.wait_for_message("Local Worker Disconnected")["text"]


def test_it_refuses_to_train_without_a_worker(running_bot, user, account):
    user.send("/train")
    reply = user.wait_for_message("No local worker is connected")
    assert labels(reply) == ["🔌 Connect Local Worker"]


def test_it_trains_through_every_step(running_bot, user, worker):
    user.send("/train")
    assert labels(user.wait_for_message("Where is the data?"))[0].startswith("📁 Local Path")
    user.tap(labels(user.last_bot_message())[0])
    user.wait_for_edit(user.last_bot_message()["message_id"], "Send the path")
    user.send("~/data/sales.csv")
    columns = user.wait_for_message("Which column should the model predict?")
    assert "8,000 rows × 3 columns" in columns["text"]
    assert labels(columns) == ["sqft", "city", "price"]
    user.tap("price")
    task = user.wait_for_message("This looks like regression")
    assert labels(task) == ["✅ Regression (detected)", "Classification", "✖️ Cancel"]
    user.tap("✅ Regression (detected)")
    models = user.wait_for_edit(task["message_id"], "Which model?")
    assert labels(models) == ["⭐ Auto (recommended)", "LightGBM", "Random forest", "Linear regression", "✖️ Cancel"]
    user.tap("LightGBM")
    user.wait_for_edit(task["message_id"], "Ready to train")
    user.tap("🚀 Start training")
    progress = user.wait_for_message(predicate=lambda m: "Training LightGBM" in (m.get("text") or ""))
    done = user.wait_for_message("Model trained", timeout=15)  # a new message: it notifies the phone
    assert user.wait_for_edit(progress["message_id"], "see below")["text"] == (
        "🏋️ Training LightGBM — succeeded, see below.")
    assert "R²: 0.91" in done["text"] and "lightgbm_price_20261123_070000" in done["text"]
    assert labels(done) == ["🔮 Predict with this model"]
    photo = user.wait_for_message(predicate=lambda m: bool(m.get("photo")))
    assert photo["caption"] == "Feature importance"
    train_job = worker.jobs[-1]
    assert train_job["action"] == "train"
    assert train_job["params"] == {"file_path": "~/data/sales.csv", "target_column": "price",
                                   "model_type": "lightgbm", "task_type": "regression", "test_size": 0.2}


def test_it_takes_a_path_that_starts_like_a_command(running_bot, user, worker):
    open_path_step(user)
    user.send("/data.csv")
    user.wait_for_message("Which column")
    assert worker.jobs[-1]["params"] == {"file_path": "/data.csv"}


def test_it_lets_the_user_try_another_path_after_a_refusal(running_bot, user, worker):
    open_path_step(user)
    user.send("~/missing.csv")
    refusal = user.wait_for_message(predicate=lambda m: "failed" in (m.get("text") or ""))
    assert "No file at ~/missing.csv." in refusal["text"] and "Send another path" in refusal["text"]
    user.send("~/data/sales.csv")
    user.wait_for_message("Which column")
    user.send("price")  # typing the column's name works too
    user.wait_for_message("This looks like regression")


def saved_flow(user_id: int) -> tuple[object, object]:
    """The conversation state and the /train answers the bot keeps for this user (``BotState``)."""
    conversation = BotState.objects.filter(kind=BotState.Kind.CONVERSATION, name="flows",
                                           key=json.dumps([user_id, user_id])).first()
    user_data = BotState.objects.filter(kind=BotState.Kind.USER_DATA, key=str(user_id)).first()
    return (conversation.data if conversation else None), (user_data.data or {}).get("train") if user_data else None


def test_it_cancels_a_conversation(running_bot, user, worker):
    open_path_step(user)
    assert wait_until(lambda: running_bot.call(saved_flow, user.user_id)[0] is not None)  # in the path step
    user.send("/cancel")
    user.wait_for_message("Cancelled")
    user.send("~/data/sales.csv")  # no longer a path step: nothing is submitted
    user.send("/help")
    user.wait_for_message("/train")  # updates are handled in order: the path was handled before this
    assert running_bot.call(lambda: list(Job.objects.values_list("action", flat=True))) == []
    assert wait_until(lambda: running_bot.call(saved_flow, user.user_id) == (None, None))
    assert [j["action"] for j in worker.jobs] == []


def wait_until(condition, timeout: float = 10.0) -> bool:
    """Poll ``condition`` (the bot saves conversation state about once a second) until it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)  # polling a condition with a deadline, not a fixed wait
    return False


def test_it_predicts_with_a_picked_model(running_bot, user, worker):
    user.send("/predict")
    picker = user.wait_for_message("Which model?")
    assert labels(picker) == ["price · LightGBM · sales.csv · 2026-11-23 07:00 · R² 0.91 · 1.2 MB"]
    user.tap(labels(picker)[0])
    user.wait_for_message("Send the path of the file to predict on")
    user.send("~/new.csv")
    result = user.wait_for_message(predicate=lambda m: "Predictions ready" in (m.get("text") or ""))
    assert "/home/ann/new_predictions.csv" in result["text"]
    assert "prediction" in result["text"] and "101.5" in result["text"]
    assert worker.jobs[-1]["params"] == {"model_id": "lightgbm_price_20261123_070000", "file_path": "~/new.csv"}


def test_it_deletes_a_model_after_confirmation(running_bot, user, worker):
    user.send("/models")
    user.wait_for_message("Models on your machine")
    user.tap("🗑 Delete 1")
    user.wait_for_message("cannot be undone")
    user.tap("Yes, delete it")
    user.wait_for_message(predicate=lambda m: "Deleted model" in (m.get("text") or ""))
    assert worker.jobs[-1]["action"] == "delete_model"


def test_it_lists_jobs_and_cancels_a_running_one(running_bot, user, worker):
    worker.hold.set()
    open_path_step(user)
    worker.hold.clear()
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
    user.send("/jobs")
    jobs = user.wait_for_message("Your recent jobs")
    assert "1. 🏋️ Training LightGBM on sales.csv → price\n    ⚙️ running 50%" in jobs["text"]
    user.tap(labels(jobs)[0])
    user.wait_for_message("Training LightGBM cancelled")
    user.wait_for_edit(progress["message_id"], "cancelled, see below")
    job = running_bot.call(lambda: Job.objects.filter(action="train").get())
    assert job.state == Job.State.CANCELLED and str(job.id) in worker.cancelled


def test_it_asks_the_worker_to_install_autostart(running_bot, user, worker):
    user.send("/worker autostart")
    done = user.wait_for_message(predicate=lambda m: "Autostart is" in (m.get("text") or ""))
    assert "Autostart is on (systemd)" in done["text"]
    assert worker.jobs[-1]["params"] == {"enable": True}


def test_it_disconnects_the_worker_on_request(running_bot, user, worker):
    user.send("/worker")
    status = user.wait_for_message("scripted-box")
    assert "✅ online" in status["text"]
    user.tap("🔌 Disconnect this worker")
    user.wait_for_message("credential is revoked")
    user.tap("Yes, disconnect")
    user.wait_for_edit(user.last_bot_message()["message_id"], "is disconnected")
    assert running_bot.call(lambda: Worker.objects.get().revoked_at is not None)


def test_it_answers_commands_typed_while_waiting_for_a_path(running_bot, user, worker):
    open_path_step(user)
    user.send("/status")
    user.wait_for_message("Running processes")
    user.send("~/data/sales.csv")  # still the path step
    user.wait_for_message("Which column")
    assert [j["params"] for j in worker.jobs] == [{"file_path": "~/data/sales.csv"}]


def test_it_keeps_one_flow_at_a_time(running_bot, user, worker):
    user.send("/predict")
    picker = user.wait_for_message("Which model?")
    open_path_step(user)
    user.send("~/data/sales.csv")
    user.wait_for_message("Which column")
    user.tap(labels(picker)[0], message=picker)  # back to the earlier /predict: it takes over
    user.wait_for_message("Send the path of the file to predict on")
    user.send("~/new.csv")
    user.wait_for_message(predicate=lambda m: "Predictions ready" in (m.get("text") or ""))
    assert [j["action"] for j in worker.jobs] == ["list_models", "describe", "predict"]


def test_it_answers_a_button_that_is_out_of_date(running_bot, user, worker):
    open_path_step(user)
    user.send("~/data/sales.csv")
    columns = user.wait_for_message("Which column")
    user.send("/cancel")
    user.wait_for_message("Cancelled")
    query_id = user.tap("price", message=columns)  # that step is over
    assert "out of date" in user.wait_for_callback_answer(query_id)["text"]
