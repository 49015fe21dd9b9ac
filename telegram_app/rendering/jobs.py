"""``job`` rows: one message per job, edited from "queued" to its result.

The row's payload only names the job; the text is rendered from the job's state in the
database at send time, so coalesced progress rows always show the latest state.
"""

from __future__ import annotations

import html
import logging
from functools import partial
from typing import Any

from django.conf import settings

from core.models import OutboxMessage
from jobs.models import Job
from telegram_app import callbacks, charts
from telegram_app.formatting import bold, code, duration, esc, number, progress_bar, table
from telegram_app.rendering import Buttons, FilePart, Rendered, renderer
from telegram_app.rendering.workers import waiting_note

logger = logging.getLogger(__name__)

TITLES = {
    Job.Action.DESCRIBE: ("🔎", "Reading the file"),
    Job.Action.CHECK: ("🧪", "Checking the data"),
    Job.Action.TRAIN: ("🏋️", "Training"),
    Job.Action.PREDICT: ("🔮", "Prediction"),
    Job.Action.LIST_MODELS: ("📚", "Listing your models"),
    Job.Action.DELETE_MODEL: ("🗑", "Deleting the model"),
    Job.Action.RENAME_MODEL: ("✏️", "Renaming the model"),
    Job.Action.AUTOSTART: ("⚙️", "Autostart"),
}
MODEL_NAMES = {
    "auto": "⭐ Auto",
    "lightgbm": "LightGBM",
    "random_forest": "Random forest",
    "linear": "Linear / logistic regression",
    "xgboost": "XGBoost",
}
# Model families an AutoML search may name (``search.families``, ``search.chosen``, progress ``best_model``).
FAMILY_NAMES = {**MODEL_NAMES, "lgbm": "LightGBM", "xgb": "XGBoost", "catboost": "CatBoost", "rf": "Random forest",
                "extra_trees": "Extra trees", "extra_tree": "Extra trees", "lrl1": "Logistic regression (L1)",
                "lrl2": "Logistic regression (L2)", "ensemble": "Ensemble", "stacked_ensemble": "Ensemble"}
TARGET_BUTTONS = 40
# Jobs a user waits for: their outcome arrives as a new message, which notifies the phone.
LONG_ACTIONS = {Job.Action.TRAIN, Job.Action.PREDICT}
RETRY_HINTS: dict[str, str] = {
    Job.Context.DESCRIBE: "Send another path, or /cancel.",
    Job.Context.CHECK: "Tap another column, send another path, or /cancel.",
    Job.Context.PREDICT: "Send /predict to try again.",
    Job.Context.TRAIN: "Send /train to try again.",
}


@renderer(OutboxMessage.Kind.JOB)
def render_job(message: OutboxMessage) -> Rendered:
    job = Job.objects.select_related("worker").filter(pk=message.payload.get("job_id")).first()
    if job is None:
        return Rendered(text="This job no longer exists.")
    if job.state == Job.State.SUCCEEDED:
        rendered = SUCCESS[Job.Action(job.action)](job)
    elif job.action == Job.Action.CHECK and job.state == Job.State.FAILED and job.error_code == "unsupported":
        rendered = check_question(job)  # a worker from before the checks: ask as before, unchecked
    else:
        rendered = render_unfinished(job)
    if job.is_finished and job.action in LONG_ACTIONS:
        emoji, title = _title(job)
        rendered.replace_with = f"{emoji} {bold(title)} — {job.state}, see below."
    return rendered


def _title(job: Job) -> tuple[str, str]:
    emoji, title = TITLES[Job.Action(job.action)]
    if job.action == Job.Action.TRAIN:
        title = f"Training {MODEL_NAMES.get(job.params.get('model_type', ''), 'a model')}"
    return emoji, title


def family_name(name: object) -> str:
    return FAMILY_NAMES.get(str(name).lower(), str(name))


def search_line(search: dict[str, Any]) -> str:
    """One line for a running search: "trial 14 · best R² 0.913 (LightGBM) · 48 s left"."""
    parts = []
    if search.get("trial") is not None:
        parts.append(f"trial {number(search['trial'])}")
    if search.get("best_score") is not None:
        metric = METRIC_NAMES.get(str(search.get("metric", "")), str(search.get("metric") or "score"))
        best = f"best {metric} {number(search['best_score'])}"
        if search.get("best_model"):
            best += f" ({family_name(search['best_model'])})"
        parts.append(best)
    if search.get("seconds_left") is not None:
        left = max(0, round(float(search["seconds_left"])))
        parts.append(f"{left} s left" if left < 60 else f"{duration(left)} left")
    return " · ".join(parts) or "searching…"


def render_unfinished(job: Job) -> Rendered:
    emoji, title = _title(job)
    machine = esc(job.worker.machine_name) if job.worker else "your worker"
    cancel: Buttons = [[{"text": "✖️ Cancel", "callback_data": callbacks.job_ref(callbacks.JOB_CANCEL, job.id)}]]
    quiet = job.action in (Job.Action.DESCRIBE, Job.Action.CHECK, Job.Action.LIST_MODELS)
    waiting = waiting_note(job)
    if waiting:  # queued or sent, but the worker is away: say so instead of "running 40 %"
        return Rendered(
            text=f"⏸ {bold(title)} — {waiting}.",
            buttons=[] if quiet else cancel,
        )
    if job.state == Job.State.QUEUED:
        return Rendered(
            text=f"⏳ {bold(title)} — queued. It starts as soon as your worker is online.",
            buttons=[] if quiet else cancel,
        )
    if job.state == Job.State.DISPATCHED:
        return Rendered(text=f"📨 {bold(title)} — sent to {machine}…", buttons=[] if quiet else cancel)
    if job.state == Job.State.RUNNING:
        lines = [f"{emoji} {bold(title)} on {machine}", f"{progress_bar(job.progress)} {job.progress}%"]
        if job.search and not job.stop_requested:
            lines.append(esc(search_line(job.search)))
        elif job.message:
            lines.append(esc(job.message))
        if job.stop_requested:
            lines.append("⏹ Stopping the search — the best model so far is being kept…")
        elif job.params.get("model_type") == "auto" and job.action == Job.Action.TRAIN:
            cancel = [[{"text": "⏹ Stop and keep the best",
                        "callback_data": callbacks.job_ref(callbacks.JOB_STOP_EARLY, job.id)}], *cancel]
        return Rendered(text="\n".join(lines), buttons=[] if quiet else cancel)
    if job.state == Job.State.FAILED:
        hint = RETRY_HINTS.get(job.context or job.action, "")
        if job.action == Job.Action.RENAME_MODEL and job.error_code == "unsupported":
            hint = ("Your worker is older than renaming: update it on its machine with "
                    f"{code('python3 ~/.statsbot/statsbot_worker.py --update')}, then try again.")
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


METRIC_NAMES = {"r2": "R²", "rmse": "RMSE", "mae": "MAE", "accuracy": "Accuracy", "f1": "F1", "roc_auc": "ROC AUC",
                "log_loss": "log loss", "balanced_accuracy": "balanced accuracy", "f1_macro": "macro F1",
                "average_precision": "average precision", "pr_auc": "PR AUC"}
# Metrics where a lower number is better (errors); every other metric is a score, higher is better.
LOWER_IS_BETTER = {"rmse", "mae", "log_loss", "log loss", "mse", "mape", "error"}
TASK_LABELS = {"regression": "Regression", "classification": "Classification"}


def metric_name(name: object) -> str:
    return METRIC_NAMES.get(str(name), str(name))


def _tasks_of(job: Job) -> list[str]:
    """The tasks a check allows, recommended first (a worker from before the checks: the describe
    step's suggestion first, both offered)."""
    if job.state == Job.State.SUCCEEDED:
        return [t for t in (job.result or {}).get("tasks") or [] if t in TASK_LABELS]
    suggested = job.params.get("_suggested_task") or "regression"
    suggested = suggested if suggested in TASK_LABELS else "regression"
    return [suggested, *[t for t in TASK_LABELS if t != suggested]]


def check_tasks(job: Job) -> list[str]:
    """The tasks a user may pick for the target a ``check`` job looked at ([] until it is usable)."""
    usable = job.state == Job.State.SUCCEEDED and not (job.result or {}).get("refused")
    if usable or (job.state == Job.State.FAILED and job.error_code == "unsupported"):
        return _tasks_of(job)
    return []


def _check(job: Job) -> Rendered:
    result: dict[str, Any] = job.result or {}
    refused = result.get("refused")
    target = result.get("target") or job.params.get("target", "?")
    if not refused:
        return check_question(job)
    if refused.get("code") == "no_such_column":
        suggestions = [str(s) for s in result.get("suggestions") or []][:6]
        text = f"No column is named {code(target)}."
        if not suggestions:
            return Rendered(text=f"{text} Tap one of the buttons above, or send another path.")
        buttons: Buttons = [
            [{"text": name[:40], "callback_data": callbacks.job_ref(callbacks.TRAIN_SUGGESTED, job.id, i)}]
            for i, name in enumerate(suggestions)
        ]
        return Rendered(text=f"{text} Did you mean…?", buttons=buttons)
    return Rendered(text=(
        f"❌ {bold('Cannot train on')} {code(target)}: {esc(refused.get('message') or refused.get('code'))}\n\n"
        "Tap another column above, or send another path."
    ))


def check_question(job: Job, *, keep_ids: bool = False) -> Rendered:
    """The target step's answer: what the checks found, and the task to confirm.

    ``keep_ids``: the user tapped "keep them" for the ID-like columns."""
    result: dict[str, Any] = job.result or {}
    target = result.get("target") or job.params.get("target", "?")
    tasks = _tasks_of(job)
    details = job.params.get("_details") or ""
    rows = result.get("rows")
    lines = [f"🎯 Target: {code(target)}" + (f" ({esc(details)})" if details else "")
             + (f" · {number(rows)} rows" if rows is not None else "")]
    if job.state != Job.State.SUCCEEDED:
        lines.append("(This worker is too old to check the data first; /connect updates it.)")
    id_like = [str(c) for c in result.get("id_like") or []]
    if id_like:
        names = ", ".join(code(c) for c in id_like[:8]) + (f" and {len(id_like) - 8} more" if len(id_like) > 8 else "")
        if keep_ids:
            lines.append(f"🪪 ID-like columns kept as features, as you asked: {names}")
        else:
            lines.append(f"🪪 Left out as ID-like (a different value on almost every row, e.g. row numbers): {names}")
    for leak in [str(c) for c in result.get("leaks") or []][:5]:
        lines.append(f"⚠️ {code(leak)} predicts {code(target)} almost perfectly: probably a leak (a value known only "
                     "after the outcome, or a copy of it). Check it before trusting the score.")
    imbalance = result.get("imbalance")
    if imbalance:
        share = imbalance.get("minority_share")
        share_text = f"{float(share) * 100:.1f} %" if isinstance(share, (int, float)) else "a small share"
        lines.append(f"⚖️ Strong class imbalance: the rarest class is {share_text} of the rows, so models are "
                     f"compared by {bold(metric_name(imbalance.get('metric', '?')))} instead of accuracy.")
    lines.append("")
    if len(tasks) == 1 and tasks[0] == "classification" and job.state == Job.State.SUCCEEDED:
        lines.append(f"The target is not numeric, so this is {bold('classification')}.")
    elif tasks:
        lines.append(f"This looks like {bold(tasks[0])}. Right?")
    buttons: Buttons = [[
        {"text": (f"✅ {TASK_LABELS[task]} (detected)" if i == 0 and len(tasks) > 1 else TASK_LABELS[task])
         if len(tasks) > 1 else f"✅ {TASK_LABELS[task]}",
         "callback_data": callbacks.job_ref(callbacks.TRAIN_TASK, job.id, i)}
        for i, task in enumerate(tasks)
    ]]
    if id_like and not keep_ids:
        buttons.append([{"text": "🪪 Keep the ID-like columns",
                         "callback_data": callbacks.job_ref(callbacks.TRAIN_KEEP_IDS, job.id)}])
    buttons.append([{"text": "✖️ Cancel", "callback_data": callbacks.CANCEL}])
    return Rendered(text="\n".join(lines), buttons=buttons)


def _metrics_lines(metrics: dict[str, Any]) -> list[str]:
    """Known metrics in a fixed order (JSON columns on PostgreSQL do not keep key order), then the rest."""
    names = [*[n for n in METRIC_NAMES if n in metrics], *sorted(n for n in metrics if n not in METRIC_NAMES)]
    return [f"• {esc(METRIC_NAMES.get(n, n))}: {bold(number(metrics[n]))}" for n in names
            if metrics[n] is not None]


def _train(job: Job) -> Rendered:
    result: dict[str, Any] = job.result or {}
    task = result.get("task_type", "")
    search = result.get("search") or {}
    model = esc(MODEL_NAMES.get(result.get("model_type", ""), result.get("model_type")))
    chosen = _chosen(search)
    evaluation = result.get("evaluation")
    if evaluation and evaluation.get("method") == "cv":
        split = "each scored by cross-validation"
    else:
        split = f"{number(result.get('n_train'))} train / {number(result.get('n_test'))} held out"
    lines = [
        f"✅ {bold('Model trained')} — {model}" + (f": {esc(chosen)}" if chosen else "") + f" · {esc(task)}",
        f"Target: {code(result.get('target', '?'))} · {number(result.get('n_rows'))} rows ({split})",
    ]
    sampled = result.get("sampled")
    if sampled:
        lines.append(f"📉 The file has {number(sampled.get('rows_total'))} rows; {number(sampled.get('rows_used'))} "
                     "were used (sampled to fit in memory).")
    lines.append("")
    if evaluation:
        lines += _evaluation_lines(evaluation, result.get("comparison") or {})
    if search:
        lines.append(_search_summary(search))
    if result.get("refit_on_all_rows"):
        lines.append("🔁 The saved model was refit on all the rows after scoring.")

    lines += ["", "Held-out metrics:" if not evaluation else "All metrics:", *_metrics_lines(result.get("metrics") or {})]
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


def _chosen(search: dict[str, Any]) -> str:
    """What the search kept, as the worker names it ("ensemble of 3 (LightGBM ×2, XGBoost)", "LightGBM");
    a list of members is joined."""
    chosen = search.get("chosen")
    if chosen:
        return family_name(chosen)[:120]
    ensemble = search.get("ensemble")
    if isinstance(ensemble, list) and ensemble:
        return "ensemble of " + " + ".join(family_name(m) for m in ensemble[:5])
    return "an ensemble" if ensemble is True else ""


def _evaluation_lines(evaluation: dict[str, Any], comparison: dict[str, Any]) -> list[str]:
    metric = str(evaluation.get("metric", ""))
    score = evaluation.get("score")
    if evaluation.get("method") == "cv":
        how = f"by cross-validation over {number(evaluation.get('rows'))} rows (each scored by a model that never saw it)"
    else:
        how = f"on {number(evaluation.get('rows'))} held-out rows the search never saw"
    lines = [f"📏 {bold(metric_name(metric))} {bold(number(score))} — measured {how}."]
    for key, label in (("default_lightgbm", "a default LightGBM"),
                       ("baseline", f"the {comparison.get('baseline_name') or 'simplest'} baseline")):
        other = comparison.get(key)
        if isinstance(other, (int, float)) and isinstance(score, (int, float)):
            higher = evaluation.get("higher_is_better")
            lower = metric.lower() in LOWER_IS_BETTER if not isinstance(higher, bool) else not higher
            lines.append(f"  vs {esc(label)}: {number(other)} → {esc(_gain(lower, float(score), float(other)))}")
    return lines


def _gain(lower_is_better: bool, score: float, other: float) -> str:
    better = other - score if lower_is_better else score - other
    if abs(better) < 1e-9:
        return "the same"
    word = "better" if better > 0 else "worse"
    relative = ""
    if lower_is_better and other > 0:
        relative = f", {abs(better) / other * 100:.1f} % {'less' if better > 0 else 'more'} error"
    return f"{number(abs(better))} {word}{relative}"


def _search_summary(search: dict[str, Any]) -> str:
    families = ", ".join(family_name(f) for f in (search.get("families") or [])[:8])
    text = f"🔍 Searched {number(search.get('trials'))} trials" + (f" over {esc(families)}" if families else "")
    if search.get("stopped_early"):
        text += " · stopped early at your request"
    return text + "."


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
    why = [str(c) for c in result.get("why_columns") or []]
    if why:
        lines.append(f"\n💡 Each row's top reasons are in {', '.join(code(c) for c in why[:3])} "
                     "(feature: contribution to the prediction).")
    for warning in (result.get("warnings") or [])[:3]:
        lines.append(f"⚠️ {esc(warning)}")
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
    buttons = []
    for i, model in enumerate(models[:20]):
        lines.append(f"{i + 1}. {bold(_model_title(model))}\n    {esc(_model_details(model))}\n"
                     f"    {code(model.get('model_id'))}")
        buttons.append([
            {"text": f"✏️ Rename {i + 1}", "callback_data": callbacks.job_ref(callbacks.MODEL_RENAME, job.id, i)},
            {"text": f"🗑 Delete {i + 1}", "callback_data": callbacks.job_ref(callbacks.MODEL_DELETE, job.id, i)},
        ])
    if len(models) > 20:
        lines.append(f"… and {len(models) - 20} older ones.")
    return Rendered(text="\n".join(lines), buttons=buttons)


def _model_title(model: dict[str, Any]) -> str:
    """The user's name for a model, or "target · model type"."""
    if model.get("name"):
        return str(model["name"])
    name = MODEL_NAMES.get(model.get("model_type", ""), model.get("model_type") or "?")
    return f"{model.get('target', '?')} · {name}"


def _model_date(value: object) -> str:
    """"2026-11-23 07:00" from the worker's ISO time (as written, the machine's clock)."""
    text = str(value or "")
    return text[:16].replace("T", " ") if len(text) >= 16 and text[10:11] in ("T", " ") else (text or "date unknown")


def file_size(size: object) -> str:
    if not isinstance(size, (int, float)) or isinstance(size, bool) or size < 0:
        return ""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""


def _model_details(model: dict[str, Any]) -> str:
    """"from sales.csv · 2026-11-23 07:00 · R² 0.91 · 1.2 MB" (plain text: escape before HTML)."""
    metric = model.get("main_metric") or {}
    parts = [f"from {model['source_file']}" if model.get("source_file") else "source file unknown",
             _model_date(model.get("created_at"))]
    if isinstance(metric, dict) and metric.get("name"):
        value = metric.get("value")
        shown = number(value) if isinstance(value, (int, float)) else "?"
        parts.append(f"{METRIC_NAMES.get(metric['name'], metric['name'])} {html.unescape(shown)}")
    size = file_size(model.get("size_bytes"))
    if size:
        parts.append(size)
    return " · ".join(parts)


def _model_label(model: dict[str, Any]) -> str:
    """One button's text (plain, ≤ ~90 characters): title, source file, date, main metric, size."""
    return f"{_model_title(model)[:40]} · {_model_details(model)}".replace("from ", "", 1)


def _delete_model(job: Job) -> Rendered:
    return Rendered(text=f"🗑 Deleted model {code((job.result or {}).get('model_id', job.params.get('model_id')))}.")


def _rename_model(job: Job) -> Rendered:
    result: dict[str, Any] = job.result or {}
    return Rendered(text=f"✏️ Model {code(result.get('model_id', job.params.get('model_id')))} is now called "
                         f"{bold(result.get('name', job.params.get('name', '?')))}. /models lists your models.")


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
    Job.Action.CHECK: _check,
    Job.Action.TRAIN: _train,
    Job.Action.PREDICT: _predict,
    Job.Action.LIST_MODELS: _list_models,
    Job.Action.DELETE_MODEL: _delete_model,
    Job.Action.RENAME_MODEL: _rename_model,
    Job.Action.AUTOSTART: _autostart,
}
