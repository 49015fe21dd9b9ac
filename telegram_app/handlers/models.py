"""/models: list the worker's models; rename one (a conversation step asks for the name), or delete
one after a confirmation."""

from __future__ import annotations

from typing import Any

from telegram import Update
from telegram.ext import BaseHandler, CallbackQueryHandler, ContextTypes, ConversationHandler, MessageHandler

from jobs.models import Job
from telegram_app import callbacks, store
from telegram_app.formatting import bold, code
from telegram_app.handlers.common import no_worker, reply
from telegram_app.handlers.train import PATH_TEXT

RENAME = 20  # distinct from /train's and /predict's states: they share one conversation
NAME_MAX = 60  # as the worker's rename_model


async def list_models(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    if update.callback_query is not None:  # the "My models" button of the short help
        await update.callback_query.answer()
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


async def ask_name(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    """✏️ Rename N: the next text is the model's new name."""
    picked = await _picked_model_id(update)
    if picked is None:
        await update.callback_query.answer("That list is out of date; send /models again.", show_alert=True)
        return ConversationHandler.END
    context.user_data["rename"] = {"model_id": picked[0]}
    await reply(
        update,
        f"✏️ Send a new name for {code(picked[0])} — for example {bold('churn, Q3 data')}.\n"
        f"One line, at most {NAME_MAX} characters. The model id stays the same. /cancel to stop.",
    )
    return RENAME


async def receive_name(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    name = " ".join((update.message.text or "").split())
    if not name or len(name) > NAME_MAX or not name.isprintable():
        await reply(update, f"❌ A name is one line of 1 to {NAME_MAX} characters. Send another, or /cancel.")
        return RENAME
    state = context.user_data.pop("rename", {})
    account = await store.account_for(update)
    if await store.online_worker(account) is None:
        return await no_worker(update)
    await store.submit_job(account, Job.Action.RENAME_MODEL, {"model_id": state.get("model_id"), "name": name})
    await reply(update, f"✏️ Renaming {code(state.get('model_id', '?'))} to {bold(name)}…")
    return ConversationHandler.END


ENTRY_POINTS: list[BaseHandler[Update, Any, Any]] = [
    CallbackQueryHandler(ask_name, pattern=callbacks.pattern(callbacks.MODEL_RENAME)),
]
STATES: dict[object, list[BaseHandler[Update, Any, Any]]] = {RENAME: [MessageHandler(PATH_TEXT, receive_name)]}
