"""/train: source → path → target → task → model → confirm, then one message follows the job.

The file is read by the user's worker: after the path, a ``describe`` job runs there and its
result (rendered by ``telegram_app.rendering.jobs``) offers the columns as buttons. The
buttons carry the describe job's id, so the step works whatever arrives in between.
"""

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
    filters,
)

from jobs.models import Job
from telegram_app import callbacks, store
from telegram_app.commands import COMMANDS
from telegram_app.formatting import bold, code, esc, number
from telegram_app.handlers.common import no_worker, reply
from telegram_app.rendering.jobs import MODEL_NAMES

SOURCE, PATH, TARGET, TASK, MODEL, CONFIRM = range(6)

# While a step waits for a path, text is a path, even "/data.csv" (Telegram marks "/data" as a
# command). Only the bot's own commands interrupt: /cancel ends the step, the others do their job.
OWN_COMMANDS = "|".join(command.command for command in COMMANDS)
PATH_TEXT = filters.TEXT & ~filters.Regex(rf"^/({OWN_COMMANDS})(@\w+)?(\s|$)")
CANCEL_BUTTON = {"text": "✖️ Cancel", "callback_data": callbacks.CANCEL}
MAX_PATH = 1024


def _state(context: ContextTypes.DEFAULT_TYPE) -> dict[str, Any]:
    return context.user_data.setdefault("train", {})


async def begin(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    account = await store.account_for(update)
    worker = await store.online_worker(account)
    if worker is None:
        return await no_worker(update)
    context.user_data["train"] = {"machine": worker.machine_name, "models": worker.models_available}
    await reply(
        update,
        f"🏋️ {bold('Train a model')}\n\nWhere is the data?",
        [[{"text": f"📁 Local Path (on {worker.machine_name[:30]})", "callback_data": callbacks.TRAIN_LOCAL}],
         [CANCEL_BUTTON]],
    )
    return SOURCE


async def choose_local(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    machine = _state(context).get("machine", "your machine")
    await reply(
        update,
        f"📁 Send the path of a CSV, Parquet or Excel file on {bold(machine)}, for example\n"
        f"{code('~/data/sales.csv')}\n\n/cancel to stop.",
        edit=True,
    )
    return PATH


def check_path(text: str | None) -> str:
    """A first look at a typed path; the worker makes the real checks on its machine."""
    path = (text or "").strip().strip("'\"")
    if not path:
        return "That is empty. Send the path of a file on your machine."
    if len(path) > MAX_PATH or "\x00" in path or "\n" in path:
        return "That does not look like a file path. Send one path, for example ~/data/sales.csv."
    return ""


async def receive_path(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    problem = check_path(update.message.text)
    if problem:
        await reply(update, f"❌ {problem}")
        return PATH
    path = update.message.text.strip().strip("'\"")
    account = await store.account_for(update)
    job = await store.submit_job(account, Job.Action.DESCRIBE, {"file_path": path}, context=Job.Context.DESCRIBE)
    state = _state(context)
    state.update(path=path, describe_job=str(job.id))
    return TARGET


async def target_tapped(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    _, job_id, index = callbacks.parse_job_ref(update.callback_query.data)
    account = await store.account_for(update)
    job = await store.get_job(account, job_id)
    columns = (job.result or {}).get("columns", []) if job else []
    if job is None or job.state != Job.State.SUCCEEDED or index is None or index >= len(columns):
        await update.callback_query.answer("That list is out of date; send /train to start again.", show_alert=True)
        return TARGET
    _state(context).update(describe_job=job_id, path=job.params.get("file_path", ""))
    return await _ask_task(update, context, columns[index])


async def target_typed(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    """Typed text while waiting for the target: a column name, or else a new path."""
    text = update.message.text.strip()
    account = await store.account_for(update)
    job = await store.get_job(account, _state(context).get("describe_job", ""))
    if job is not None and job.state == Job.State.SUCCEEDED:
        for column in job.result.get("columns", []):
            if str(column.get("name")) == text:
                return await _ask_task(update, context, column)
    elif job is not None and not job.is_finished:
        await reply(update, "⏳ Still reading the file on your machine — tap a column when the list appears.")
        return TARGET
    if check_path(text) or not any(ch in text for ch in "/\\~."):
        await reply(update, f"No column is named {code(text)}. Tap one of the buttons, or send another path.")
        return TARGET
    return await receive_path(update, context)


async def _ask_task(update: Update, context: ContextTypes.DEFAULT_TYPE, column: dict[str, Any]) -> int:
    suggested = column.get("suggested_task") or "regression"
    state = _state(context)
    state.update(target=column.get("name"), task=suggested)
    other = "classification" if suggested == "regression" else "regression"
    unique = column.get("unique")
    details = f"{esc(column.get('dtype', '?'))}" + (f", {number(unique)} distinct values" if unique is not None else "")
    await reply(
        update,
        f"🎯 Target: {code(column.get('name'))} ({details})\n\nThis looks like {bold(suggested)}. Right?",
        [[{"text": f"✅ {suggested.capitalize()} (detected)", "callback_data": callbacks.TRAIN_TASK + suggested},
          {"text": other.capitalize(), "callback_data": callbacks.TRAIN_TASK + other}],
         [CANCEL_BUTTON]],
    )
    return TASK


async def choose_task(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    state = _state(context)
    state["task"] = update.callback_query.data.removeprefix(callbacks.TRAIN_TASK)
    available = [m for m in state.get("models") or ["lightgbm"] if m in MODEL_NAMES] or ["lightgbm"]
    buttons = [
        [{"text": ("⭐ " if model == "lightgbm" else "") + _model_label(model, state["task"]),
          "callback_data": callbacks.TRAIN_MODEL + model}]
        for model in available
    ]
    note = "LightGBM is fast and accurate on tables; a random forest is slower on large files."
    await reply(update, f"🧠 Task: {bold(state['task'])}\n\nWhich model?\n{note}", [*buttons, [CANCEL_BUTTON]],
                edit=True)
    return MODEL


def _model_label(model: str, task: str) -> str:
    if model == "linear":
        return "Logistic regression" if task == "classification" else "Linear regression"
    return MODEL_NAMES[model]


async def choose_model(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    state = _state(context)
    state["model"] = update.callback_query.data.removeprefix(callbacks.TRAIN_MODEL)
    text = (
        f"📋 {bold('Ready to train')}\n\n"
        f"File: {code(state.get('path'))}\n"
        f"Target: {code(state.get('target'))}\n"
        f"Task: {esc(state.get('task'))}\n"
        f"Model: {esc(_model_label(state['model'], state.get('task', '')))}\n\n"
        "20% of the rows are held out to measure the model."
    )
    await reply(update, text, [[{"text": "🚀 Start training", "callback_data": callbacks.TRAIN_START}],
                               [CANCEL_BUTTON]], edit=True)
    return CONFIRM


async def start_training(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    state = context.user_data.pop("train", {})
    account = await store.account_for(update)
    await store.submit_job(
        account,
        Job.Action.TRAIN,
        {
            "file_path": state.get("path"),
            "target_column": state.get("target"),
            "model_type": state.get("model", "lightgbm"),
            "task_type": state.get("task"),
            "test_size": 0.2,
        },
        context=Job.Context.TRAIN,
    )
    await reply(update, f"🚀 Training on {bold(state.get('machine', 'your machine'))} — progress follows below.",
                edit=True)
    return ConversationHandler.END


ENTRY_POINTS: list[BaseHandler[Update, Any, Any]] = [CommandHandler("train", begin)]
STATES: dict[object, list[BaseHandler[Update, Any, Any]]] = {
    SOURCE: [CallbackQueryHandler(choose_local, pattern=f"^{callbacks.TRAIN_LOCAL}$")],
    PATH: [MessageHandler(PATH_TEXT, receive_path)],
    TARGET: [
        CallbackQueryHandler(target_tapped, pattern=callbacks.pattern(callbacks.TRAIN_TARGET)),
        MessageHandler(PATH_TEXT, target_typed),
    ],
    TASK: [CallbackQueryHandler(choose_task, pattern=f"^{callbacks.TRAIN_TASK}")],
    MODEL: [CallbackQueryHandler(choose_model, pattern=f"^{callbacks.TRAIN_MODEL}")],
    CONFIRM: [CallbackQueryHandler(start_training, pattern=f"^{callbacks.TRAIN_START}$")],
}
