"""/models: list the worker's models; delete one after a confirmation."""

from __future__ import annotations

from telegram import Update
from telegram.ext import ContextTypes

from jobs.models import Job
from telegram_app import callbacks, store
from telegram_app.formatting import code
from telegram_app.handlers.common import no_worker, reply


async def list_models(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    account = await store.account_for(update)
    if await store.online_worker(account) is None:
        await no_worker(update)
        return
    await store.submit_job(account, Job.Action.LIST_MODELS, {}, context=Job.Context.MODELS)


async def _picked_model_id(update: Update) -> tuple[str, str, int] | None:
    _, job_id, index = callbacks.parse_job_ref(update.callback_query.data)
    account = await store.account_for(update)
    job = await store.get_job(account, job_id)
    models = (job.result or {}).get("models", []) if job else []
    if index is None or index >= len(models):
        return None
    return models[index]["model_id"], job_id, index


async def ask_delete(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    picked = await _picked_model_id(update)
    if picked is None:
        await update.callback_query.answer("That list is out of date; send /models again.", show_alert=True)
        return
    model_id, job_id, index = picked
    await reply(
        update,
        f"🗑 Delete model {code(model_id)} from your machine? This cannot be undone.",
        [[{"text": "Yes, delete it", "callback_data": callbacks.job_ref(callbacks.MODEL_DELETE_YES, job_id, index)},
          {"text": "Keep it", "callback_data": callbacks.CANCEL}]],
    )


async def confirm_delete(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    picked = await _picked_model_id(update)
    if picked is None:
        await update.callback_query.answer("That list is out of date; send /models again.", show_alert=True)
        return
    account = await store.account_for(update)
    await store.submit_job(account, Job.Action.DELETE_MODEL, {"model_id": picked[0]})
    await reply(update, f"🗑 Deleting {code(picked[0])}…", edit=True)
