"""/jobs: what the user asked for (training, prediction) and its state, with a cancel button for
those still open. Internal steps (reading a file, listing models) stay out: they are part of a
conversation, not jobs the user started."""

from __future__ import annotations

from pathlib import PurePath, PureWindowsPath

from channels.db import database_sync_to_async
from telegram import Update
from telegram.ext import ContextTypes

from accounts.models import Account
from jobs.models import Job
from telegram_app import callbacks, store
from telegram_app.formatting import ago, bold, code, esc
from telegram_app.handlers.common import reply
from telegram_app.rendering import Buttons
from telegram_app.rendering.jobs import MODEL_NAMES
from telegram_app.rendering.workers import waiting_note

STATE_ICONS = {"queued": "⏳", "dispatched": "📨", "running": "⚙️", "succeeded": "✅", "failed": "❌",
               "cancelled": "✖️", "lost": "⚠️"}
USER_ACTIONS = (Job.Action.TRAIN, Job.Action.PREDICT)
LIMIT = 10


def file_name(path: object) -> str:
    """The last part of a path as the user typed it (a Windows path too)."""
    text = str(path or "").strip()
    if not text:
        return "?"
    name = PureWindowsPath(text).name if "\\" in text else PurePath(text).name
    return name or text


def describe(job: Job) -> str:
    """"Training LightGBM on sales.csv (target price)" / "Prediction with MODEL on new.csv"."""
    params = job.params if isinstance(job.params, dict) else {}
    source = code(file_name(params.get("file_path")))
    if job.action == Job.Action.TRAIN:
        model = MODEL_NAMES.get(str(params.get("model_type", "")), str(params.get("model_type") or "a model"))
        target = f" → {code(params['target_column'])}" if params.get("target_column") else ""
        return f"🏋️ Training {esc(model)} on {source}{target}"
    return f"🔮 Prediction on {source} with {code(params.get('model_id', '?'))}"


def state_text(job: Job) -> str:
    waiting = waiting_note(job, how=False)
    if waiting:
        return f"⏸ {waiting}"
    progress = f" {job.progress}%" if job.state == Job.State.RUNNING else ""
    return f"{STATE_ICONS.get(job.state, '•')} {job.state}{progress}"


def listing(account: Account) -> tuple[str, Buttons]:
    recent = list(Job.objects.filter(account=account, action__in=USER_ACTIONS).select_related("worker")[:LIMIT])
    if not recent:
        return "No training or prediction yet. Try /train.", []
    lines = [f"🗂 {bold('Your recent jobs')} (newest first)", ""]
    buttons: Buttons = []
    for number, job in enumerate(recent, 1):
        lines.append(f"{number}. {describe(job)}\n    {state_text(job)} · {ago(job.created_at)}")
        if not job.is_finished:
            what = "training" if job.action == Job.Action.TRAIN else "prediction"
            buttons.append([{"text": f"✖️ Cancel {number}. {what} ({file_name(job.params.get('file_path'))[:24]})",
                             "callback_data": callbacks.job_ref(callbacks.JOB_CANCEL, job.id)}])
    return "\n".join(lines), buttons


async def list_jobs(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    account = await store.account_for(update)
    text, buttons = await database_sync_to_async(listing)(account)
    await reply(update, text, buttons)


async def cancel_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    _, job_id, _ = callbacks.parse_job_ref(update.callback_query.data)
    account = await store.account_for(update)
    job, problem = await store.cancel_job(account, job_id)
    await update.callback_query.answer(problem or "Cancelled.", show_alert=bool(problem))


async def stop_early_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """⏹ Stop and keep the best: the search ends now and the job succeeds with the best model so far."""
    _, job_id, _ = callbacks.parse_job_ref(update.callback_query.data)
    account = await store.account_for(update)
    problem = await store.stop_early(account, job_id)
    await update.callback_query.answer(problem or "Stopping — keeping the best model so far.",
                                       show_alert=bool(problem))
