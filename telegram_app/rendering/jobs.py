"""``job`` rows: one message per job, edited from "queued" to its result.

The row's payload only names the job; the text is rendered from the job's state in the
database at send time, so coalesced progress rows always show the latest state.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from django.conf import settings

from core.models import OutboxMessage
from jobs.models import Job
from telegram_app import callbacks, charts
from telegram_app.formatting import bold, code, duration, esc, number, progress_bar, table
from telegram_app.rendering import Buttons, FilePart, Rendered, renderer

logger = logging.getLogger(__name__)

TITLES = {
    Job.Action.DESCRIBE: ("🔎", "Reading the file"),
    Job.Action.TRAIN: ("🏋️", "Training"),
    Job.Action.PREDICT: ("🔮", "Prediction"),
    Job.Action.LIST_MODELS: ("📚", "Listing your models"),
    Job.Action.DELETE_MODEL: ("🗑", "Deleting the model"),
    Job.Action.AUTOSTART: ("⚙️", "Autostart"),
}
MODEL_NAMES = {
    "lightgbm": "LightGBM",
    "random_forest": "Random forest",
    "linear": "Linear / logistic regression",
    "xgboost": "XGBoost",
}
TARGET_BUTTONS = 40
# Jobs a user waits for: their outcome arrives as a new message, which notifies the phone.
LONG_ACTIONS = {Job.Action.TRAIN, Job.Action.PREDICT}
RETRY_HINTS: dict[str, str] = {
    Job.Context.DESCRIBE: "Send another path, or /cancel.",
    Job.Context.PREDICT: "Send /predict to try again.",
    Job.Context.TRAIN: "Send /train to try again.",
}


@renderer(OutboxMessage.Kind.JOB)
def render_job(message: OutboxMessage) -> Rendered:
    job = Job.objects.select_related("worker").filter(pk=message.payload.get("job_id")).first()
    if job is None:
        return Rendered(text="This job no longer exists.")
    rendered = SUCCESS[Job.Action(job.action)](job) if job.state == Job.State.SUCCEEDED else render_unfinished(job)
    if job.is_finished and job.action in LONG_ACTIONS:
        emoji, title = _title(job)
        rendered.replace_with = f"{emoji} {bold(title)} — {job.state}, see below."
    return rendered


def _title(job: Job) -> tuple[str, str]:
    emoji, title = TITLES[Job.Action(job.action)]
    if job.action == Job.Action.TRAIN:
        title = f"Training {MODEL_NAMES.get(job.params.get('model_type', ''), 'a model')}"
    return emoji, title


def render_unfinished(job: Job) -> Rendered:
    emoji, title = _title(job)
    machine = esc(job.worker.machine_name) if job.worker else "your worker"
    cancel: Buttons = [[{"text": "✖️ Cancel", "callback_data": callbacks.job_ref(callbacks.JOB_CANCEL, job.id)}]]
    quiet = job.action in (Job.Action.DESCRIBE, Job.Action.LIST_MODELS)
    if job.state == Job.State.QUEUED:
        return Rendered(
            text=f"⏳ {bold(title)} — queued. It starts as soon as your worker is online.",
            buttons=[] if quiet else cancel,
        )
    if job.state == Job.State.DISPATCHED:
        return Rendered(text=f"📨 {bold(title)} — sent to {machine}…", buttons=[] if quiet else cancel)
    if job.state == Job.State.RUNNING:
        lines = [f"{emoji} {bold(title)} on {machine}", f"{progress_bar(job.progress)} {job.progress}%"]
        if job.message:
            lines.append(esc(job.message))
        return Rendered(text="\n".join(lines), buttons=[] if quiet else cancel)
    if job.state == Job.State.FAILED:
        hint = RETRY_HINTS.get(job.context or job.action, "")
        return Rendered(text=f"❌ {bold(title)} failed\n\n{esc(job.error)}" + (f"\n\n{hint}" if hint else ""))
    if job.state == Job.State.CANCELLED:
        return Rendered(text=f"✖️ {bold(title)} cancelled.")
    minutes = round(settings.JOB_LOST_GRACE / 60)
    return Rendered(
        text=(
            f"⚠️ {bold(title)} was lost: the worker on {machine} disconnected and did not come back within "
            f"{minutes} min. Start the worker again and resend the command."
        )
    )


def _describe(job: Job) -> Rendered:
    result: dict[str, Any] = job.result or {}
    columns = result.get("columns") or []
    rows = result.get("rows")
    shape = f"{number(rows)}{'' if result.get('rows_exact', True) else ' (about)'} rows × {len(columns)} columns"
    path = result.get("file_path") or job.params.get("file_path", "")
    lines = [f"📄 {code(path)}", shape, "", "Which column should the model predict? Tap it, or type its name."]
    if len(columns) > TARGET_BUTTONS:
        lines.append(f"(The first {TARGET_BUTTONS} columns are shown as buttons.)")
    buttons: Buttons = []
    row: list[dict[str, str]] = []
    for index, column in enumerate(columns[:TARGET_BUTTONS]):
        label = str(column.get("name", "?"))
        row.append({"text": label[:30], "callback_data": callbacks.job_ref(callbacks.TRAIN_TARGET, job.id, index)})
        if len(row) == 3:
            buttons.append(row)
            row = []
    if row:
        buttons.append(row)
    return Rendered(text="\n".join(lines), buttons=buttons)


METRIC_NAMES = {"r2": "R²", "rmse": "RMSE", "mae": "MAE", "accuracy": "Accuracy", "f1": "F1", "roc_auc": "ROC AUC"}


def _metrics_lines(metrics: dict[str, Any]) -> list[str]:
    """Known metrics in a fixed order (JSON columns on PostgreSQL do not keep key order), then the rest."""
    names = [*[n for n in METRIC_NAMES if n in metrics], *sorted(n for n in metrics if n not in METRIC_NAMES)]
    return [f"• {esc(METRIC_NAMES.get(n, n))}: {bold(number(metrics[n]))}" for n in names
            if metrics[n] is not None]


def _train(job: Job) -> Rendered:
    result: dict[str, Any] = job.result or {}
    task = result.get("task_type", "")
    lines = [
        f"✅ {bold('Model trained')} — {esc(MODEL_NAMES.get(result.get('model_type', ''), result.get('model_type')))}"
        f" · {esc(task)}",
        f"Target: {code(result.get('target', '?'))} · {number(result.get('n_rows'))} rows "
        f"({number(result.get('n_train'))} train / {number(result.get('n_test'))} held out)",
        "",
        "Held-out metrics:",
        *_metrics_lines(result.get("metrics") or {}),
    ]
    importance = result.get("feature_importance") or []
    if importance:
        top = ", ".join(f"{esc(i['feature'])} ({number(float(i['importance']))})" for i in importance[:3])
        lines += ["", f"Top features: {top}"]
    for warning in (result.get("warnings") or [])[:3]:
        lines.append(f"⚠️ {esc(warning)}")
    lines += [
        "",
        f"Model id: {code(result.get('model_id', '?'))}",
        f"Saved on your machine in {code(result.get('model_dir', '~/.statsbot/models'))}",
        f"Took {duration(result.get('duration_s'))}.",
    ]
    buttons: Buttons = [
        [{"text": "🔮 Predict with this model", "callback_data": callbacks.job_ref(callbacks.PREDICT_WITH, job.id)}]
    ]
    return Rendered(text="\n".join(lines), buttons=buttons, files=_train_charts(result))


def _train_charts(result: dict[str, Any]) -> list[FilePart]:
    """The charts of a training result, drawn later by the sender (``draw_files``); a result the
    charts cannot be made of never costs the user the metrics."""
    try:
        return _chart_parts(result)
    except Exception:
        logger.exception("could not make the training charts")
        return []


def _chart_parts(result: dict[str, Any]) -> list[FilePart]:
    files = []
    if result.get("feature_importance"):
        files.append(FilePart("photo", "feature_importance.png", caption="Feature importance",
                              draw=partial(charts.feature_importance, result["feature_importance"])))
    matrix = result.get("confusion_matrix")
    if matrix and matrix.get("labels"):
        files.append(FilePart("photo", "confusion_matrix.png", caption="Confusion matrix",
                              draw=partial(charts.confusion_matrix, matrix["labels"], matrix["matrix"])))
    if result.get("predicted_vs_actual"):
        files.append(FilePart("photo", "predicted_vs_actual.png", caption="Predicted vs actual",
                              draw=partial(charts.predicted_vs_actual, result["predicted_vs_actual"])))
    return files


def _predict(job: Job) -> Rendered:
    result: dict[str, Any] = job.result or {}
    sample = result.get("sample") or {}
    lines = [
        f"✅ {bold('Predictions ready')} — {number(result.get('rows'))} rows with model {code(result.get('model_id'))}",
        "",
        f"Full results saved on your machine:\n{code(result.get('output_path', '?'))}",
    ]
    summary = result.get("summary") or {}
    if "counts" in summary:
        by_count = sorted(summary["counts"].items(), key=lambda item: -item[1])[:10]
        counts = ", ".join(f"{esc(k)}: {number(v)}" for k, v in by_count)
        lines += ["", f"Predicted classes: {counts}"]
    elif summary:
        stats = " · ".join(f"{k} {number(summary[k])}" for k in ("mean", "std", "min", "max") if k in summary)
        lines += ["", f"Predictions: {stats}"]
    if sample.get("columns") and sample.get("rows"):
        columns = sample["columns"]
        keep = _sample_columns(columns)
        rows = [[row[i] for i in keep] for row in sample["rows"][:10]]
        lines += ["", f"First {len(rows)} rows:", table([columns[i] for i in keep], rows, width=12)]
    lines.append(f"\nTook {duration(result.get('duration_s'))}.")
    return Rendered(text="\n".join(lines))


def _sample_columns(columns: list[str], limit: int = 5) -> list[int]:
    """The prediction columns plus the first few inputs, so the table fits a phone."""
    predicted = [i for i, c in enumerate(columns) if c == "prediction" or str(c).startswith("proba_")][:2]
    inputs = [i for i in range(len(columns)) if i not in predicted][: max(1, limit - len(predicted))]
    return inputs + predicted


def _list_models(job: Job) -> Rendered:
    models = (job.result or {}).get("models") or []
    if not models:
        return Rendered(text="📚 No models on your machine yet. Train one with /train.")
    if job.context == Job.Context.PREDICT:
        buttons = [
            [{"text": _model_label(m), "callback_data": callbacks.job_ref(callbacks.PREDICT_PICK, job.id, i)}]
            for i, m in enumerate(models[:20])
        ]
        return Rendered(text="🔮 Which model? (newest first)", buttons=buttons)
    lines = [f"📚 {bold('Models on your machine')} (newest first)", ""]
    for model in models[:20]:
        lines.append(f"• {code(model.get('model_id'))}\n  {esc(_model_label(model))}")
    buttons = [
        [{"text": f"🗑 {m.get('model_id', '?')[:40]}",
          "callback_data": callbacks.job_ref(callbacks.MODEL_DELETE, job.id, i)}]
        for i, m in enumerate(models[:20])
    ]
    return Rendered(text="\n".join(lines), buttons=buttons)


def _model_label(model: dict[str, Any]) -> str:
    metric = model.get("main_metric") or {}
    score = f" · {metric.get('name')} {number(metric.get('value'))}" if metric.get("name") else ""
    name = MODEL_NAMES.get(model.get("model_type", ""), model.get("model_type", "?"))
    return f"{model.get('target', '?')} · {name} · {model.get('task_type', '?')}{score}"


def _delete_model(job: Job) -> Rendered:
    return Rendered(text=f"🗑 Deleted model {code((job.result or {}).get('model_id', job.params.get('model_id')))}.")


def _autostart(job: Job) -> Rendered:
    result: dict[str, Any] = job.result or {}
    state = "on" if result.get("enabled") else "off"
    lines = [f"⚙️ Autostart is {bold(state)} ({esc(result.get('method', '?'))}).", esc(result.get("message", ""))]
    if result.get("path"):
        lines.append(f"File: {code(result['path'])}")
    steps = result.get("manual_steps") or []
    if steps:
        lines += ["", "Please also run:", *[code(step) for step in steps[:5]]]
    return Rendered(text="\n".join(line for line in lines if line))


SUCCESS = {
    Job.Action.DESCRIBE: _describe,
    Job.Action.TRAIN: _train,
    Job.Action.PREDICT: _predict,
    Job.Action.LIST_MODELS: _list_models,
    Job.Action.DELETE_MODEL: _delete_model,
    Job.Action.AUTOSTART: _autostart,
}
