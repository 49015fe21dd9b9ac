"""/train: source → path → target → (checks) → task → model (→ budget) → confirm, then one message follows the job.

The file is read by the user's worker: after the path, a ``describe`` job runs there and its
result (rendered by ``telegram_app.rendering.jobs``) offers the columns as buttons. The
buttons carry the describe job's id, so the step works whatever arrives in between.
A chosen target starts a ``check`` job on the worker (the data checks: refusals, ID-like
columns, leaks, imbalance, the tasks that make sense); its result asks for the task, with
buttons carrying the check job's id. ⭐ Auto (a time-budgeted search) asks for its budget.
"""

from __future__ import annotations

import difflib
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
from telegram_app.rendering.jobs import MODEL_NAMES, check_question, check_tasks

SOURCE, PATH, TARGET, TASK, MODEL, CONFIRM, BUDGET = range(7)
# The ⭐ Auto search's time budgets, in seconds (the worker scales them down for small files).
BUDGETS = {30: "⚡ ~30 s", 120: "⭐ 2 min", 600: "🏆 10 min"}
DEFAULT_BUDGET = 120

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
    await update.callback_query.answer()
    _state(context).update(describe_job=job_id, path=job.params.get("file_path", ""))
    return await _check_target(update, context, job, columns[index])


async def suggestion_tapped(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    """A "did you mean …?" button of a check that found no such column."""
    _, job_id, index = callbacks.parse_job_ref(update.callback_query.data)
    account = await store.account_for(update)
    check = await store.get_job(account, job_id)
    suggestions = (check.result or {}).get("suggestions") or [] if check and check.state == Job.State.SUCCEEDED else []
    if check is None or index is None or index >= len(suggestions):
        await update.callback_query.answer("That list is out of date; send /train to start again.", show_alert=True)
        return TARGET
    await update.callback_query.answer()
    describe = await store.get_job(account, _state(context).get("describe_job", ""))
    name = str(suggestions[index])
    column = _column_named(describe, name) or {"name": name}
    _state(context)["path"] = check.params.get("path", "")
    return await _check_target(update, context, describe, column)


def _columns(describe: Job | None) -> list[dict[str, Any]]:
    if describe is None or describe.state != Job.State.SUCCEEDED:
        return []
    return [c for c in (describe.result or {}).get("columns") or [] if isinstance(c, dict)]


def _column_named(describe: Job | None, name: str) -> dict[str, Any] | None:
    return next((c for c in _columns(describe) if str(c.get("name")) == name), None)


DATA_EXTENSIONS = (".csv", ".tsv", ".txt", ".parquet", ".pq", ".xlsx", ".xls")


def looks_like_path(text: str) -> bool:
    """Typed at the target step, this is a new file rather than a column name."""
    return any(ch in text for ch in "/\\~") or text.lower().endswith(DATA_EXTENSIONS)


def match_column(text: str, names: list[str]) -> tuple[str | None, list[str]]:
    """A typed target against the file's columns: (the column meant, or None; close names to offer).

    The exact name wins; otherwise a name equal but for case (when only one is) or, failing that,
    with spaces, '-' and '_' ignored is taken; else up to 5 similar names are offered."""
    if text in names:
        return text, []
    for fold in (str.casefold, lambda n: "".join(ch for ch in n.casefold() if ch not in " _-.")):
        same = [n for n in names if fold(n) == fold(text)]
        if len(same) == 1:
            return same[0], []
        if same:
            return None, same[:5]
    folded = {n.casefold(): n for n in names}
    close = difflib.get_close_matches(text.casefold(), list(folded), n=5, cutoff=0.6)
    return None, [folded[c] for c in close]


async def target_typed(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    """Typed text while waiting for the target: a column name (any case, or "did you mean …?"), or a new path."""
    text = update.message.text.strip()
    account = await store.account_for(update)
    job = await store.get_job(account, _state(context).get("describe_job", ""))
    if job is not None and job.state == Job.State.SUCCEEDED:
        columns = _columns(job)
        names = [str(c.get("name")) for c in columns]
        name, close = match_column(text, names)
        if name is not None:
            return await _check_target(update, context, job, columns[names.index(name)])
        if looks_like_path(text):
            return await receive_path(update, context)
        if close:
            buttons = [[{"text": n[:40], "callback_data": callbacks.job_ref(callbacks.TRAIN_TARGET, job.id,
                                                                           names.index(n))}] for n in close]
            await reply(update, f"No column is named {code(text)}. Did you mean…?", [*buttons, [CANCEL_BUTTON]])
            return TARGET
        listed_all = len(columns) >= int((job.result or {}).get("n_columns") or len(columns))
        if not listed_all and not check_path(text):
            # The file has more columns than the list shows: the worker looks the name up.
            return await _check_target(update, context, job, {"name": text})
    elif job is not None and not job.is_finished:
        await reply(update, "⏳ Still reading the file on your machine — tap a column when the list appears.")
        return TARGET
    if check_path(text) or not any(ch in text for ch in "/\\~."):
        await reply(update, f"No column is named {code(text)}. Tap one of the buttons, or send another path.")
        return TARGET
    return await receive_path(update, context)


async def _check_target(update: Update, context: ContextTypes.DEFAULT_TYPE, describe: Job | None,
                        column: dict[str, Any]) -> int:
    """Run the data checks for this target on the worker; their result asks for the task (or refuses)."""
    state = _state(context)
    name = str(column.get("name"))
    unique = column.get("unique")
    details = str(column.get("dtype") or "") + (f", {number(unique)} distinct values" if unique is not None else "")
    path = state.get("path") or (describe.params.get("file_path", "") if describe else "")
    account = await store.account_for(update)
    check = await store.submit_job(
        account, Job.Action.CHECK,
        {"path": path, "target": name, "_suggested_task": column.get("suggested_task") or "",
         "_details": details.strip(", ")},
        context=Job.Context.CHECK,
    )
    state.update(path=path, target=name, check_job=str(check.id), keep_columns=[])
    return TARGET


async def _usable_check(update: Update) -> tuple[Job | None, int | None]:
    _, job_id, index = callbacks.parse_job_ref(update.callback_query.data)
    account = await store.account_for(update)
    return await store.get_job(account, job_id), index


async def keep_ids(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    check, _ = await _usable_check(update)
    if check is None or check.state != Job.State.SUCCEEDED:
        await update.callback_query.answer("That step is out of date; send /train to start again.", show_alert=True)
        return TARGET
    state = _state(context)
    if state.get("check_job") == str(check.id):
        state["keep_columns"] = [str(c) for c in (check.result or {}).get("id_like") or []]
    rendered = check_question(check, keep_ids=True)
    await reply(update, rendered.text, rendered.buttons, edit=True)
    return TARGET


async def choose_task(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    check, index = await _usable_check(update)
    tasks = check_tasks(check) if check is not None else []
    if check is None or index is None or index >= len(tasks):
        await update.callback_query.answer("That step is out of date; send /train to start again.", show_alert=True)
        return TARGET
    state = _state(context)
    if state.get("check_job") != str(check.id):  # an earlier target's question: it takes over
        state.update(check_job=str(check.id), keep_columns=[])
    state.update(path=check.params.get("path", ""), target=check.params.get("target"), task=tasks[index])
    available = [m for m in state.get("models") or ["lightgbm"] if m in MODEL_NAMES] or ["lightgbm"]
    if "auto" in available:
        available = ["auto", *[m for m in available if m != "auto"]]
    buttons = [
        [{"text": _model_button(model, state["task"], recommended=model == available[0]),
          "callback_data": callbacks.TRAIN_MODEL + model}]
        for model in available
    ]
    if available[0] == "auto":
        note = ("⭐ Auto searches strong model families within a time you choose and keeps the best "
                "(or an ensemble). The others train one fixed model.")
    else:
        note = "LightGBM is fast and accurate on tables; a random forest is slower on large files."
    await reply(update, f"🧠 Task: {bold(state['task'])}\n\nWhich model?\n{note}", [*buttons, [CANCEL_BUTTON]],
                edit=True)
    return MODEL


def _model_button(model: str, task: str, *, recommended: bool) -> str:
    label = _model_label(model, task)
    if model == "auto":
        return f"{label} (recommended)"
    return ("⭐ " if recommended else "") + label


def _model_label(model: str, task: str) -> str:
    if model == "linear":
        return "Logistic regression" if task == "classification" else "Linear regression"
    return MODEL_NAMES.get(model, model)


async def choose_model(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    state = _state(context)
    model = update.callback_query.data.removeprefix(callbacks.TRAIN_MODEL)
    if model not in MODEL_NAMES:
        await update.callback_query.answer("That button is out of date; send /train to start again.", show_alert=True)
        return MODEL
    state["model"] = model
    state.pop("budget", None)
    if model == "auto":
        await reply(update, f"⏱ {bold('How long may the search take?')}\n\nLonger finds better models; you can also "
                            "stop it early and keep the best found so far. Small files finish sooner.",
                    [[{"text": label, "callback_data": callbacks.TRAIN_BUDGET + str(seconds)}
                      for seconds, label in BUDGETS.items()], [CANCEL_BUTTON]], edit=True)
        return BUDGET
    return await _confirm(update, state)


async def choose_budget(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    state = _state(context)
    raw = update.callback_query.data.removeprefix(callbacks.TRAIN_BUDGET)
    if not raw.isdigit() or int(raw) not in BUDGETS:
        await update.callback_query.answer("That button is out of date; send /train to start again.", show_alert=True)
        return BUDGET
    state["budget"] = int(raw)
    return await _confirm(update, state)


async def _confirm(update: Update, state: dict[str, Any]) -> int:
    model = state.get("model", "lightgbm")
    label = _model_label(model, state.get("task", ""))
    if model == "auto":
        label += f" — {BUDGETS.get(state.get('budget', DEFAULT_BUDGET), '')}"
        how = ("The score comes from rows the search never sees (cross-validation on small files); the saved "
               "model is then refit on all the rows.")
    else:
        how = "20% of the rows are held out to measure the model."
    kept = state.get("keep_columns") or []
    text = (
        f"📋 {bold('Ready to train')}\n\n"
        f"File: {code(state.get('path'))}\n"
        f"Target: {code(state.get('target'))}\n"
        f"Task: {esc(state.get('task'))}\n"
        f"Model: {esc(label)}\n"
        + (f"Kept ID-like columns: {', '.join(code(c) for c in kept[:8])}\n" if kept else "")
        + f"\n{how}"
    )
    await reply(update, text, [[{"text": "🚀 Start training", "callback_data": callbacks.TRAIN_START}],
                               [CANCEL_BUTTON]], edit=True)
    return CONFIRM


async def start_training(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    state = context.user_data.pop("train", {})
    account = await store.account_for(update)
    model = state.get("model", "lightgbm")
    params: dict[str, Any] = {
        "file_path": state.get("path"),
        "target_column": state.get("target"),
        "model_type": model,
        "task_type": state.get("task"),
        "test_size": 0.2,
    }
    if model == "auto":
        params["time_budget_s"] = int(state.get("budget") or DEFAULT_BUDGET)
    if state.get("keep_columns"):
        params["keep_columns"] = list(state["keep_columns"])
    await store.submit_job(account, Job.Action.TRAIN, params, context=Job.Context.TRAIN)
    await reply(update, f"🚀 Training on {bold(state.get('machine', 'your machine'))} — progress follows below.",
                edit=True)
    return ConversationHandler.END


_TARGET_STEP: list[BaseHandler[Update, Any, Any]] = [
    CallbackQueryHandler(target_tapped, pattern=callbacks.pattern(callbacks.TRAIN_TARGET)),
    CallbackQueryHandler(suggestion_tapped, pattern=callbacks.pattern(callbacks.TRAIN_SUGGESTED)),
    CallbackQueryHandler(choose_task, pattern=callbacks.pattern(callbacks.TRAIN_TASK)),
    CallbackQueryHandler(keep_ids, pattern=callbacks.pattern(callbacks.TRAIN_KEEP_IDS)),
    MessageHandler(PATH_TEXT, target_typed),
]
ENTRY_POINTS: list[BaseHandler[Update, Any, Any]] = [CommandHandler("train", begin)]
STATES: dict[object, list[BaseHandler[Update, Any, Any]]] = {
    SOURCE: [CallbackQueryHandler(choose_local, pattern=f"^{callbacks.TRAIN_LOCAL}$")],
    PATH: [MessageHandler(PATH_TEXT, receive_path)],
    # The target step takes the checks' answers too: a refused target leaves the user choosing another.
    TARGET: _TARGET_STEP,
    TASK: _TARGET_STEP,  # kept for conversations saved before the checks
    MODEL: [CallbackQueryHandler(choose_model, pattern=f"^{callbacks.TRAIN_MODEL}")],
    BUDGET: [CallbackQueryHandler(choose_budget, pattern=f"^{callbacks.TRAIN_BUDGET}")],
    CONFIRM: [CallbackQueryHandler(start_training, pattern=f"^{callbacks.TRAIN_START}$")],
}
