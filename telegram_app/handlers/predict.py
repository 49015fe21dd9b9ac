"""/predict: pick a model on the worker (or tap "Predict with this model"), send a path, get a sample back."""

from __future__ import annotations

from typing import Any

from telegram import Update
from telegram.ext import (
    BaseHandler,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    ConversationHandler,
    MessageHandler,
)

from jobs.models import Job
from telegram_app import callbacks, store
from telegram_app.formatting import bold, code
from telegram_app.handlers.common import no_worker, reply
from telegram_app.handlers.train import PATH_TEXT, check_path
from telegram_app.rendering import Buttons

PICK, PATH = range(10, 12)  # distinct from /train's states: they share one conversation
# Models without a per-row contribution output: no "why" columns to offer (docs/worker-protocol.md).
NO_CONTRIBUTIONS = {"random_forest", "linear"}


async def begin(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    account = await store.account_for(update)
    if await store.online_worker(account) is None:
        return await no_worker(update)
    await store.submit_job(account, Job.Action.LIST_MODELS, {}, context=Job.Context.PREDICT)
    return PICK


async def _model_from(update: Update) -> dict[str, Any] | None:
    """The model a tapped button refers to: an entry of a model list, or a trained model."""
    prefix, job_id, index = callbacks.parse_job_ref(update.callback_query.data)
    account = await store.account_for(update)
    job = await store.get_job(account, job_id)
    if job is None or job.state != Job.State.SUCCEEDED:
        return None
    if prefix == callbacks.PREDICT_WITH:
        return job.result
    models = job.result.get("models", [])
    return models[index] if index is not None and index < len(models) else None


async def pick_model(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    account = await store.account_for(update)
    if await store.online_worker(account) is None:
        return await no_worker(update)
    model = await _model_from(update)
    if model is None or not model.get("model_id"):
        await update.callback_query.answer("That model list is out of date; send /predict again.", show_alert=True)
        return ConversationHandler.END
    explainable = model.get("model_type") not in NO_CONTRIBUTIONS
    context.user_data["predict"] = {"model_id": model["model_id"], "explain": False, "explainable": explainable}
    text, buttons = _path_question(model["model_id"], explain=False, explainable=explainable)
    await reply(update, text, buttons)
    return PATH


def _path_question(model_id: str, *, explain: bool, explainable: bool = True) -> tuple[str, Buttons]:
    text = (
        f"🔮 Model {code(model_id)}\n\nSend the path of the file to predict on (CSV, Parquet or Excel, "
        f"with the same columns as the training data), for example {code('~/data/new_rows.csv')}.\n\n"
    )
    if explain:
        text += (f"💡 The output file gets {code('why_1')}…{code('why_3')}: the three features that moved each "
                 "row's prediction most, and which way.\n\n")
    toggle = ({"text": "➖ Without the why columns", "callback_data": callbacks.PREDICT_EXPLAIN + "off"} if explain
              else {"text": "💡 Add why (top 3 reasons) columns", "callback_data": callbacks.PREDICT_EXPLAIN + "on"})
    return text + "/cancel to stop.", [[toggle]] if explainable else []


async def toggle_explain(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    state = context.user_data.get("predict")
    if not state or not state.get("model_id"):
        await update.callback_query.answer("That step is out of date; send /predict again.", show_alert=True)
        return ConversationHandler.END
    state["explain"] = update.callback_query.data.endswith(":on")
    text, buttons = _path_question(state["model_id"], explain=state["explain"])
    await reply(update, text, buttons, edit=True)
    return PATH


async def receive_path(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    problem = check_path(update.message.text)
    if problem:
        await reply(update, f"❌ {problem}")
        return PATH
    state = context.user_data.pop("predict", {})
    account = await store.account_for(update)
    params: dict[str, Any] = {"model_id": state.get("model_id"), "file_path": update.message.text.strip().strip("'\"")}
    if state.get("explain"):
        params["explain"] = True
    await store.submit_job(account, Job.Action.PREDICT, params, context=Job.Context.PREDICT)
    await reply(update, f"🔮 Predicting with {bold(state.get('model_id', '?'))} — progress follows below.")
    return ConversationHandler.END


_PICKED: list[BaseHandler[Update, Any, Any]] = [
    CallbackQueryHandler(pick_model, pattern=callbacks.pattern(callbacks.PREDICT_PICK)),
    CallbackQueryHandler(pick_model, pattern=callbacks.pattern(callbacks.PREDICT_WITH)),
]
ENTRY_POINTS: list[BaseHandler[Update, Any, Any]] = [CommandHandler("predict", begin), *_PICKED]
STATES: dict[object, list[BaseHandler[Update, Any, Any]]] = {
    PICK: _PICKED,
    PATH: [MessageHandler(PATH_TEXT, receive_path),
           CallbackQueryHandler(toggle_explain, pattern=f"^{callbacks.PREDICT_EXPLAIN}(on|off)$")],
}
