"""/jobs: the recent jobs and their states, with a cancel button for those still open."""

from __future__ import annotations

from telegram import Update
from telegram.ext import ContextTypes

from jobs.models import Job
from telegram_app import callbacks, store
from telegram_app.formatting import ago, bold, esc
from telegram_app.handlers.common import reply
from telegram_app.rendering.jobs import TITLES

STATE_ICONS = {"queued": "⏳", "dispatched": "📨", "running": "⚙️", "succeeded": "✅", "failed": "❌",
               "cancelled": "✖️", "lost": "⚠️"}


async def list_jobs(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    account = await store.account_for(update)
    recent = await store.recent_jobs(account)
    if not recent:
        await reply(update, "No jobs yet. Try /train.")
        return
    lines = [f"🗂 {bold('Recent jobs')}", ""]
    buttons = []
    for job in recent:
        title = TITLES[Job.Action(job.action)][1]
        progress = f" {job.progress}%" if job.state == Job.State.RUNNING else ""
        lines.append(f"{STATE_ICONS.get(job.state, '•')} {esc(title)} · {job.state}{progress} · {ago(job.created_at)}")
        if not job.is_finished:
            buttons.append([{"text": f"✖️ Cancel {title.lower()} ({str(job.id)[:8]})",
                             "callback_data": callbacks.job_ref(callbacks.JOB_CANCEL, job.id)}])
    await reply(update, "\n".join(lines), buttons)


async def cancel_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    _, job_id, _ = callbacks.parse_job_ref(update.callback_query.data)
    account = await store.account_for(update)
    job, problem = await store.cancel_job(account, job_id)
    await update.callback_query.answer(problem or "Cancelled.", show_alert=bool(problem))
