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
    job = Job.objects.create(account=account, action="train", params={"model_type": "lightgbm"})
    job.mark_dispatched(worker)
    job.record_progress(40, "fit", "Fitting <trees> & leaves")
    out, plain = rendered_for(job)
    assert plain == "🏋️ Training LightGBM on box <1>\n▓▓▓▓░░░░░░ 40%\nFitting <trees> & leaves"
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
