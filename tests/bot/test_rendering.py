"""Job and worker messages: what the user reads, and HTML that Telegram accepts."""

from __future__ import annotations

import pytest

from core.models import OutboxMessage
from jobs.models import Job
from telegram_app import callbacks
from telegram_app.formatting import duration, number, progress_bar, table
from telegram_app.rendering import draw_files, render
from tests.bot.scripted_worker import default_answer
from tg_sandbox import format_text
from workers.models import Worker

pytestmark = pytest.mark.django_db


def rendered_for(job: Job):
    row = OutboxMessage(account=job.account, chat_id=job.account.chat_id, kind="job",
                        payload={"job_id": str(job.id)}, edit_key=job.edit_key)
    out = render(row)
    plain, _ = format_text(out.text, out.parse_mode)  # raises like Telegram on bad markup
    return out, plain


def finished(account, action: str, params: dict, context: str = "") -> Job:
    job = Job.objects.create(account=account, action=action, params={**params, "_context": context},
                             state=Job.State.RUNNING)
    answer = default_answer({"action": action, "params": params})
    job.succeed(answer["data"])
    return job


def test_it_shows_progress_with_a_bar(account):
    worker, _ = Worker.enroll(account, {"hostname": "box <1>"})
    worker.mark_connected("specific.test!channel")  # online: an offline worker's job shows "waiting for box"
    job = Job.objects.create(account=account, action="train", params={"model_type": "lightgbm"})
    job.mark_dispatched(worker)
    job.record_progress(40, "fit", "Fitting <trees> & leaves")
    out, plain = rendered_for(job)
    assert plain == "🏋️ Training LightGBM on box <1>\n▓▓▓▓░░░░░░ 40%\nFitting <trees> & leaves"
    assert out.buttons[0][0]["callback_data"] == callbacks.job_ref(callbacks.JOB_CANCEL, job.id)


def test_it_shows_a_running_job_of_an_offline_worker_as_waiting(account):
    worker, _ = Worker.enroll(account, {"hostname": "box <1>", "platform": "Windows"})
    worker.mark_connected("specific.test!channel")  # online: an offline worker's job shows "waiting for box"
    job = Job.objects.create(account=account, action="train", params={"model_type": "lightgbm"})
    job.mark_dispatched(worker)
    job.record_progress(40, "fit", "Fitting")
    worker.mark_disconnected("specific.test!channel")
    out, plain = rendered_for(job)
    assert plain.startswith("⏸ Training LightGBM — waiting for box <1>, offline since ")
    assert 'python "$env:USERPROFILE\\.statsbot\\statsbot_worker.py" on that machine.' in plain
    assert "40%" not in plain
    assert out.buttons[0][0]["callback_data"] == callbacks.job_ref(callbacks.JOB_CANCEL, job.id)


def test_it_offers_the_columns_as_target_buttons(account):
    job = finished(account, "describe", {"file_path": "~/data/sales.csv"}, context="describe")
    out, plain = rendered_for(job)
    assert "8,000 rows × 3 columns" in plain
    assert [b["text"] for row in out.buttons for b in row] == ["sqft", "city", "price"]
    assert out.buttons[0][2]["callback_data"] == f"tt:{job.id}:2"


def test_it_reports_a_failure_with_the_workers_reason(account):
    job = Job.objects.create(account=account, action="describe", params={"_context": "describe"},
                             state=Job.State.RUNNING)
    job.fail("/etc/shadow is outside the folders this worker may read (<home>).", "path_not_allowed")
    _, plain = rendered_for(job)
    assert plain == ("❌ Reading the file failed\n\n/etc/shadow is outside the folders this worker may read "
                     "(<home>).\n\nSend another path, or /cancel.")


def test_it_renders_training_metrics_and_charts(account):
    job = finished(account, "train", {"model_type": "lightgbm", "target_column": "price",
                                      "task_type": "regression"})
    out, plain = rendered_for(job)
    assert "R²: 0.91" in plain and "RMSE: 12.5" in plain and "Top features: sqft (0.8), city (0.2)" in plain
    assert [f.filename for f in out.files] == ["feature_importance.png", "predicted_vs_actual.png"]
    assert all(f.data == b"" and f.draw is not None for f in out.files)  # drawn by the sender, elsewhere
    assert all(f.data.startswith(b"\x89PNG") for f in draw_files(out.files))
    assert out.buttons[0][0]["text"] == "🔮 Predict with this model"


def test_it_renders_predictions_as_a_table(account):
    job = finished(account, "predict", {"model_id": "m1", "file_path": "~/x.csv"})
    _, plain = rendered_for(job)
    assert "/home/ann/new_predictions.csv" in plain
    assert "sqft  city  prediction" in plain and "Predictions: mean 130.85" in plain


@pytest.mark.parametrize("event", ["connected", "reconnected", "disconnected"])
def test_it_renders_worker_events(account, event):
    worker, _ = Worker.enroll(account, {"hostname": "ann's <mac>"})
    row = OutboxMessage(account=account, chat_id=account.chat_id, kind="worker",
                        payload={"event": event, "worker_id": worker.pk})
    plain, _ = format_text(render(row).text, "HTML")
    assert "ann's <mac>" in plain


def test_it_formats_numbers_durations_and_tables():
    assert [number(v) for v in (1234567, 0.912345, 12.5, 1234.5, 0.0001234, float("nan"))] == [
        "1,234,567", "0.9123", "12.5", "1,234", "0.0001234", "n/a"]
    assert [duration(s) for s in (5, 75, 3700, 200000, 2.5)] == ["5s", "1m 15s", "1h 1m", "2d 7h", "2.5s"]
    assert progress_bar(55) == "▓▓▓▓▓▓░░░░"
    assert table(["a", "b"], [[1, "<x>"]]) == "<pre>a  b\n-  ---\n1  &lt;x&gt;</pre>"


def test_it_suggests_an_update_when_an_older_worker_cannot_rename(account):
    job = Job.objects.create(account=account, action="rename_model", params={"model_id": "m", "name": "n"},
                             state=Job.State.RUNNING)
    job.fail("This worker cannot do 'rename_model'.", "unsupported")
    _, plain = rendered_for(job)
    assert plain.startswith("❌ Renaming the model failed")
    assert "python3 ~/.statsbot/statsbot_worker.py --update" in plain


def test_it_renders_a_cross_validated_sampled_search_with_an_error_metric(account):
    from tests.bot.scripted_worker import auto_answer

    job = Job.objects.create(account=account, action="train", params={"model_type": "auto"}, state=Job.State.RUNNING)
    result = auto_answer({"target_column": "churn", "task_type": "classification"})
    result.update(evaluation={"method": "cv", "rows": 900, "metric": "log loss", "score": 0.3, "higher_is_better": False},
                  comparison={"default_lightgbm": 0.4, "baseline": 0.6, "baseline_name": "majority class"},
                  search={"trials": 8, "families": ["lgbm", "CatBoost"], "chosen": "catboost", "ensemble": False,
                          "stopped_early": False},
                  sampled={"rows_used": 500_000, "rows_total": 4_000_000}, refit_on_all_rows=True,
                  predicted_vs_actual=None, confusion_matrix={"labels": ["no", "yes"], "matrix": [[5, 1], [2, 3]]})
    job.succeed(result)
    out, plain = rendered_for(job)
    assert plain.splitlines()[0] == "✅ Model trained — ⭐ Auto: CatBoost · classification"
    assert "📉 The file has 4,000,000 rows; 500,000 were used (sampled to fit in memory)." in plain
    assert "📏 log loss 0.3 — measured by cross-validation over 900 rows" in plain
    assert "rows (each scored by cross-validation)" in plain.splitlines()[1]
    assert "vs a default LightGBM: 0.4 → 0.1 better, 25.0 % less error" in plain
    assert "vs the majority class baseline: 0.6 → 0.3 better, 50.0 % less error" in plain
    assert "🔍 Searched 8 trials over LightGBM, CatBoost." in plain
    assert [f.filename for f in out.files] == ["feature_importance.png", "confusion_matrix.png"]


def test_it_draws_binned_predicted_vs_actual_and_old_pairs():
    from telegram_app import charts

    assert charts.predicted_vs_actual([[1.0, 1.1, 5], [2.0, 1.9, 7], [3.5, 3.2, 5]]).startswith(b"\x89PNG")
    assert charts.predicted_vs_actual([[1.0, 1.1], [2.0, 1.9]]).startswith(b"\x89PNG")


def test_it_shows_the_search_and_the_stop_button_until_stop_is_asked(account):
    worker, _ = Worker.enroll(account, {"hostname": "box"})
    worker.mark_connected("specific.test!channel")  # online: an offline worker's job shows "waiting for box"
    job = Job.objects.create(account=account, action="train", params={"model_type": "auto"})
    job.mark_dispatched(worker)
    job.record_progress(40, "training", "Searching", {"trial": 3, "best_score": 0.61, "metric": "roc_auc",
                                                       "best_model": "xgboost", "seconds_left": 95})
    out, plain = rendered_for(job)
    assert plain.splitlines()[-1] == "trial 3 · best ROC AUC 0.61 (XGBoost) · 1m 35s left"
    assert out.buttons[0][0]["callback_data"] == callbacks.job_ref(callbacks.JOB_STOP_EARLY, job.id)
    job.request_stop()
    job.record_progress(60, "training", "Searching", {"trial": 4, "seconds_left": 50})  # the flag stays
    out, plain = rendered_for(Job.objects.get(pk=job.pk))
    assert plain.splitlines()[-1] == "⏹ Stopping the search — the best model so far is being kept…"
    assert [b["text"] for row in out.buttons for b in row] == ["✖️ Cancel"]


def test_it_asks_the_task_unchecked_when_the_worker_predates_the_checks(account):
    job = Job.objects.create(account=account, action="check", state=Job.State.RUNNING,
                             params={"path": "~/x.csv", "target": "price", "_suggested_task": "classification",
                                     "_details": "int64, 3 distinct values", "_context": "check"})
    job.fail("Unknown action 'check'.", "unsupported")
    out, plain = rendered_for(job)
    assert plain.splitlines()[0] == "🎯 Target: price (int64, 3 distinct values)"
    assert "This looks like classification. Right?" in plain
    assert [b["text"] for row in out.buttons for b in row] == ["✅ Classification (detected)", "Regression",
                                                               "✖️ Cancel"]


def test_it_refuses_a_target_the_check_refused(account):
    job = Job.objects.create(account=account, action="check", state=Job.State.RUNNING,
                             params={"path": "~/x.csv", "target": "id", "_context": "check"})
    job.succeed({"rows": 10, "target": "id", "tasks": [], "id_like": ["id"], "leaks": [], "imbalance": None,
                 "suggestions": [], "refused": {"code": "id_target", "message": "every value is different <an ID>."}})
    out, plain = rendered_for(job)
    assert plain == ("❌ Cannot train on id: every value is different <an ID>.\n\n"
                     "Tap another column above, or send another path.")
    assert out.buttons == []
