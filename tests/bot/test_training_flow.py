"""/train's data checks, ⭐ Auto with a budget, its search progress, Stop and keep the best, and
/predict's why columns — through the sandbox, with a scripted worker (issue 14, issue 15 item 9)."""

from __future__ import annotations

from typing import Any

import pytest

from accounts.models import Account
from jobs.models import Job
from tests.bot.scripted_worker import ScriptedWorker, check_answer, default_answer
from tests.bot.test_conversations import labels, open_path_step
from workers.models import ConnectToken


@pytest.fixture
def account(running_bot, user):
    user.send("/start")
    user.wait_for_message("Welcome")
    return running_bot.call(Account.objects.get, telegram_user_id=user.user_id)


def connect(running_bot, user, account, answer=default_answer) -> ScriptedWorker:
    _, token = running_bot.call(ConnectToken.issue, account)
    scripted = ScriptedWorker(running_bot.web_url.replace("http", "ws") + "/ws/worker/", token, answer).start()
    user.wait_for_message("Local Worker Connected!")
    return scripted


@pytest.fixture
def worker(running_bot, user, account):
    scripted = connect(running_bot, user, account)
    yield scripted
    scripted.stop()


def with_check(**changes: Any):
    """A worker whose ``check`` answers with ``changes`` applied (per target: a dict of dicts)."""
    def answer(job: dict[str, Any]) -> dict[str, Any]:
        if job["action"] != "check":
            return default_answer(job)
        target = job["params"]["target"]
        return {"success": True, "data": {**check_answer(target), **changes.get(target, {})}}
    return answer


def columns_step(user) -> dict:
    open_path_step(user)
    user.send("~/data/sales.csv")
    return user.wait_for_message("Which column should the model predict?")


def checks(running_bot) -> list[dict]:
    return running_bot.call(lambda: [j.params for j in Job.objects.filter(action="check").order_by("created_at")])


def test_it_refuses_a_target_before_confirming_and_lets_the_user_pick_another(running_bot, user, account):
    constant = {"tasks": [], "refused": {"code": "constant_target", "message": "every row has the same value (3)."}}
    worker = connect(running_bot, user, account, with_check(price=constant))
    try:
        columns_step(user)
        user.tap("price")
        refusal = user.wait_for_message("Cannot train on")
        assert refusal["text"] == ("❌ Cannot train on price: every row has the same value (3).\n\n"
                                   "Tap another column above, or send another path.")
        assert labels(refusal) == []
        user.tap("sqft")
        assert "This looks like regression" in user.wait_for_message("Target: sqft")["text"]
        assert [(c["path"], c["target"]) for c in checks(running_bot)] == [
            ("~/data/sales.csv", "price"), ("~/data/sales.csv", "sqft")]
        assert [j["params"] for j in worker.jobs if j["action"] == "check"][0] == {
            "path": "~/data/sales.csv", "target": "price"}  # the server's own notes stay on the server
        assert not running_bot.call(lambda: Job.objects.filter(action="train").exists())
    finally:
        worker.stop()


def test_it_never_offers_regression_for_a_text_target(running_bot, user, worker):
    columns_step(user)
    user.tap("city")
    task = user.wait_for_message("Target: city")
    assert "The target is not numeric, so this is classification." in task["text"]
    assert labels(task) == ["✅ Classification", "✖️ Cancel"]
    user.tap("✅ Classification")
    assert "Task: classification" in user.wait_for_edit(task["message_id"], "Which model?")["text"]


def test_it_states_id_columns_leaks_and_imbalance_and_keeps_id_columns_on_request(running_bot, user, account):
    found = {"id_like": ["row_id", "rownames"], "leaks": ["price_band"], "tasks": ["classification", "regression"],
             "imbalance": {"minority_share": 0.031, "metric": "log_loss"}}
    worker = connect(running_bot, user, account, with_check(price=found))
    try:
        columns_step(user)
        user.tap("price")
        task = user.wait_for_message("This looks like classification")
        text = task["text"]
        assert "🪪 Left out as ID-like (a different value on almost every row, e.g. row numbers): row_id, rownames" in text
        assert "⚠️ price_band predicts price almost perfectly: probably a leak" in text
        assert "the rarest class is 3.1 % of the rows, so models are compared by log loss" in text
        assert labels(task) == ["✅ Classification (detected)", "Regression", "🪪 Keep the ID-like columns",
                                "✖️ Cancel"]
        user.tap("🪪 Keep the ID-like columns")
        kept = user.wait_for_edit(task["message_id"], "kept as features")
        assert labels(kept) == ["✅ Classification (detected)", "Regression", "✖️ Cancel"]
        user.tap("✅ Classification (detected)")
        user.wait_for_edit(task["message_id"], "Which model?")
        user.tap("LightGBM")
        confirm = user.wait_for_edit(task["message_id"], "Ready to train")
        assert "Kept ID-like columns: row_id, rownames" in confirm["text"]
        user.tap("🚀 Start training")
        user.wait_for_message("Model trained", timeout=15)
        assert worker.jobs[-1]["params"] == {"file_path": "~/data/sales.csv", "target_column": "price",
                                             "model_type": "lightgbm", "task_type": "classification",
                                             "test_size": 0.2, "keep_columns": ["row_id", "rownames"]}
    finally:
        worker.stop()


def test_it_takes_a_typed_target_in_any_case(running_bot, user, worker):
    columns_step(user)
    user.send("PRICE")
    user.wait_for_message("This looks like regression")
    assert [c["target"] for c in checks(running_bot)] == ["price"]


def test_it_asks_did_you_mean_for_a_typo(running_bot, user, worker):
    columns_step(user)
    user.send("prise")
    question = user.wait_for_message("Did you mean")
    assert question["text"] == "No column is named prise. Did you mean…?"
    assert labels(question) == ["price", "✖️ Cancel"]
    assert checks(running_bot) == []  # nothing ran for the typo
    user.tap("price", message=question)
    user.wait_for_message("This looks like regression")
    assert [c["target"] for c in checks(running_bot)] == ["price"]


def test_it_offers_the_workers_suggestions_for_a_column_past_the_list(running_bot, user, account):
    wide = dict(default_answer({"action": "describe", "params": {"file_path": "~/wide.csv"}})["data"], n_columns=500)

    def answer(job: dict[str, Any]) -> dict[str, Any]:
        if job["action"] == "describe":
            return {"success": True, "data": wide}
        return with_check()(job)

    worker = connect(running_bot, user, account, answer)
    try:
        columns_step(user)
        user.send("pri_total")  # not close to a listed name: the worker, which sees all 500 columns, is asked
        question = user.wait_for_message("Did you mean")
        assert labels(question) == ["price"]
        user.tap("price", message=question)
        user.wait_for_message("This looks like regression")
        assert [c["target"] for c in checks(running_bot)] == ["pri_total", "price"]
    finally:
        worker.stop()


def auto_until_confirm(user, budget: str) -> dict:
    columns_step(user)
    user.tap("price")
    task = user.wait_for_message("This looks like regression")
    user.tap("✅ Regression (detected)")
    models = user.wait_for_edit(task["message_id"], "Which model?")
    assert labels(models)[0] == "⭐ Auto (recommended)"
    user.tap("⭐ Auto (recommended)")
    budgets = user.wait_for_edit(task["message_id"], "How long may the search take?")
    assert labels(budgets) == ["⚡ ~30 s", "⭐ 2 min", "🏆 10 min", "✖️ Cancel"]
    user.tap(budget)
    return user.wait_for_edit(task["message_id"], "Ready to train")


def test_it_trains_auto_within_the_budget_tapped_and_reports_honest_metrics(running_bot, user, worker):
    confirm = auto_until_confirm(user, "🏆 10 min")
    assert "Model: ⭐ Auto — 🏆 10 min" in confirm["text"] and "refit on all the rows" in confirm["text"]
    user.tap("🚀 Start training")
    done = user.wait_for_message("Model trained", timeout=15)
    assert worker.jobs[-1]["params"] == {"file_path": "~/data/sales.csv", "target_column": "price",
                                         "model_type": "auto", "task_type": "regression", "test_size": 0.2,
                                         "time_budget_s": 600}
    text = done["text"]
    assert text.startswith("✅ Model trained — ⭐ Auto: ensemble of 2 (LightGBM, XGBoost) · regression")
    assert "📏 R² 0.913 — measured on 1,600 held-out rows the search never saw." in text
    assert "vs a default LightGBM: 0.871 → 0.042 better" in text
    assert "vs the mean baseline: 0 → 0.913 better" in text
    assert "🔍 Searched 37 trials over LightGBM, XGBoost." in text
    assert "🔁 The saved model was refit on all the rows after scoring." in text
    photo = user.wait_for_message(predicate=lambda m: bool(m.get("photo")))
    assert photo["caption"] == "Feature importance"


def test_it_shows_the_search_and_stops_it_keeping_the_best(running_bot, user, worker):
    auto_until_confirm(user, "⭐ 2 min")
    worker.hold.set()
    user.tap("🚀 Start training")
    progress = user.wait_for_message(predicate=lambda m: "trial 14" in (m.get("text") or ""))
    assert progress["text"].splitlines()[-1] == "trial 14 · best R² 0.913 (LightGBM) · 48 s left"
    assert labels(progress) == ["⏹ Stop and keep the best", "✖️ Cancel"]
    user.tap("⏹ Stop and keep the best", message=progress)
    done = user.wait_for_message("Model trained", timeout=15)
    assert "stopped early at your request" in done["text"] and "Searched 14 trials" in done["text"]
    job = running_bot.call(lambda: Job.objects.get(action="train"))
    assert job.state == Job.State.SUCCEEDED and job.stop_requested
    assert worker.stopped_early == [str(job.id)] and worker.cancelled == []


def test_it_cancels_a_search_and_discards_it(running_bot, user, worker):
    auto_until_confirm(user, "⚡ ~30 s")
    worker.hold.set()
    user.tap("🚀 Start training")
    progress = user.wait_for_message(predicate=lambda m: "trial 14" in (m.get("text") or ""))
    user.tap("✖️ Cancel", message=progress)
    user.wait_for_edit(progress["message_id"], "cancelled")
    job = running_bot.call(lambda: Job.objects.get(action="train"))
    assert job.state == Job.State.CANCELLED and job.result is None
    assert worker.cancelled == [str(job.id)] and worker.stopped_early == []
    assert worker.jobs[-1]["params"]["time_budget_s"] == 30


def test_it_adds_the_why_columns_when_asked(running_bot, user, worker):
    user.send("/predict")
    picker = user.wait_for_message("Which model?")
    user.tap(labels(picker)[0])
    question = user.wait_for_message("Send the path of the file to predict on")
    assert labels(question) == ["💡 Add why (top 3 reasons) columns"]
    user.tap("💡 Add why (top 3 reasons) columns")
    toggled = user.wait_for_edit(question["message_id"], "why_1")
    assert labels(toggled) == ["➖ Without the why columns"]
    user.send("~/new.csv")
    user.wait_for_message(predicate=lambda m: "Predictions ready" in (m.get("text") or ""))
    assert worker.jobs[-1]["params"] == {"model_id": "lightgbm_price_20261123_070000", "file_path": "~/new.csv",
                                         "explain": True}


@pytest.mark.parametrize(("typed", "meant", "offered"), [
    ("price", "price", []),
    ("PRICE", "price", []),
    ("Sepal Length", "sepal_length", []),
    ("prise", None, ["price"]),
    ("specie", None, ["species"]),
    ("Zip", None, ["zip", "ZIP"]),  # two columns differ only by case: the user picks
    ("nothing_like_it", None, []),
])
def test_it_matches_a_typed_target_to_a_column(typed, meant, offered):
    from telegram_app.handlers.train import match_column

    assert match_column(typed, ["price", "sepal_length", "species", "zip", "ZIP"]) == (meant, offered)


def test_it_takes_a_file_name_at_the_target_step_as_a_new_path():
    from telegram_app.handlers.train import looks_like_path

    assert looks_like_path("sales2.csv") and looks_like_path("~/x") and looks_like_path(r"C:\data\x.xlsx")
    assert not looks_like_path("price") and not looks_like_path("price.usd")
