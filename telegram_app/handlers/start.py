"""/start (with pairing codes), /help, /status, /revoke and the key buttons."""

from __future__ import annotations

import logging

from channels.db import database_sync_to_async
from telegram import Update
from telegram.ext import ContextTypes

from accounts import pairing as pairings
from accounts.models import ApiKey, PairingRequest
from core.site import public_url
from notifications import services as notification_services
from notifications.client_download import client_install_url
from telegram_app import callbacks, store
from telegram_app.formatting import ago, bold, code, esc, since
from telegram_app.handlers import keys
from telegram_app.handlers.common import CONNECT_BUTTON, reply
from telegram_app.rendering.notify import format_process_tree
from telegram_app.rendering.workers import restart_command
from workers.models import Worker

logger = logging.getLogger(__name__)

HELP = f"""🤖 {bold("StatsBot")} — train and predict on your own machine, and follow your experiments.

{bold("Local worker")}
/connect — connect this chat to a machine (one command)
/worker — worker status · /worker autostart · /worker autostart off · /worker disconnect
/train — train a model on a file on your machine
/predict — predict with one of your models
/models — list or delete your models
/jobs — recent jobs; cancel a running one

{bold("Experiment notifications")}
/status — your keys (rename, revoke, rotate, IP allowlist), worker and running processes
/dashboard — one message listing your running processes, kept up to date (pin it)
/revoke — revoke your notification key (and issue a new one)

/cancel — stop what you are doing · /help — this message

Your data never leaves your machine: the worker sends back only metrics, small samples and file paths."""


def worker_section(worker: Worker | None) -> str:
    if worker is None:
        return (
            f"🖥️ {bold('Local worker')}: ❌ Not connected\n"
            "Train and predict on files that never leave your computer."
        )
    if worker.is_online:
        return f"🖥️ {bold('Local worker')}: ✅ Connected: {bold(worker.machine_name)}"
    return (
        f"🖥️ {bold('Local worker')}: 💤 {bold(worker.machine_name)} is offline (last seen {ago(worker.last_seen_at)}).\n"
        f"Start it again with {code(restart_command(worker))}"
    )


def setup_command() -> str:
    return f"python -c \"import experiment_bot; experiment_bot.setup(server='{public_url()}')\""


def key_section(key: ApiKey | None, new_key: str | None) -> str:
    title = f"🔔 {bold('Experiment notifications')}"
    if new_key:
        return (
            f"{title}\nYour key — shown only this once, keep it secret:\n{code(new_key)}\n\n"
            f"Install the client: {code('pip install ' + client_install_url())}\n"
            f"then put {code('EXPERIMENT_BOT_KEY=…')} in your project's .env, or pair a machine without "
            f"copying anything: {code(setup_command())}"
        )
    if key is None:
        return f"{title}\nNo active key. Tap below to issue one."
    return (
        f"{title}\nKey {code(key.prefix + '…')} is active (last used {ago(key.last_used_at)}).\n"
        "Lost it? /revoke issues a new one."
    )


async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    if context.args and context.args[0].startswith("pair_"):
        await pair(update, context.args[0].removeprefix("pair_"))
        return
    info = await store.overview(update)
    name = esc(update.effective_user.first_name or "there")
    greeting = f"👋 Welcome to StatsBot, {name}!" if info.created else f"👋 Hi again, {name}."
    text = "\n\n".join([greeting, worker_section(info.worker), key_section(info.key, info.new_key),
                        "/help lists everything I can do."])
    buttons = []
    if info.worker is None or not info.worker.is_online:
        buttons.append([CONNECT_BUTTON])
    if info.key is None:
        buttons.append([{"text": "🔑 Issue a key", "callback_data": callbacks.NEW_KEY}])
    await reply(update, text, buttons)


def _pending_pairing(code_: str) -> PairingRequest | None:
    code_ = code_.removeprefix("pair_")[:16]
    return PairingRequest.objects.filter(code=code_, state=PairingRequest.State.PENDING).first()


async def pair(update: Update, code_: str) -> None:
    """``/start pair_<code>``: the link ``experiment_bot.setup()`` printed. Ask before pairing:
    the link could come from someone else, who would then get a key that posts to this chat."""
    await store.account_for(update)
    pairing = await database_sync_to_async(_pending_pairing)(code_)
    if pairing is None or pairing.is_expired:
        await pair_answer(update, code_)  # explains: unknown, expired, or already paired
        return
    machine = pairing.hostname or "a machine"
    label = f" ({esc(pairing.label)})" if pairing.label else ""
    await reply(
        update,
        f"🔗 {bold('Pair a machine with this chat?')}\n\nMachine: {bold(machine)}{label}\n"
        f"Started {ago(pairing.created_at)}.\n\nIts scripts will be able to send messages here with a key of "
        "its own; your other machines' keys keep working. Approve only if you just ran "
        "experiment_bot.setup() yourself.",
        [[{"text": "✅ Approve", "callback_data": callbacks.PAIR_APPROVE + pairing.code},
          {"text": "Decline", "callback_data": callbacks.CANCEL}]],
    )


async def approve_pairing(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await pair_answer(update, update.callback_query.data.removeprefix(callbacks.PAIR_APPROVE), edit=True)


async def pair_answer(update: Update, code_: str, *, edit: bool = False) -> None:
    account = await store.account_for(update)
    outcome = await database_sync_to_async(pairings.confirm_pairing)(account, code_)
    if isinstance(outcome, pairings.PairingRefusal):
        text = f"❌ {esc(outcome)}\n\nRun {code('experiment_bot.setup()')} again for a fresh link."
    else:
        text = (f"✅ {bold('Paired!')} {bold(outcome.label)} receives key {code(outcome.prefix + '…')} now and "
                "saves it to .env.\nYour other machines keep their keys; /status lists them all.")
    await reply(update, text, edit=edit)


async def help_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await reply(update, HELP)


async def status(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    account = await store.account_for(update)
    api_keys = await store.active_keys(account)
    worker = await store.live_worker(account)
    tree = await database_sync_to_async(notification_services.process_tree)(account)
    running = await store.running_job_count(account)
    lines = [f"📊 {bold('Status')}", ""]
    lines += keys.key_lines(api_keys)
    if worker and worker.is_online:
        lines.append(f"🖥️ Worker: ✅ {bold(worker.machine_name)} · connected since {since(worker.connected_at)}")
    elif worker:
        lines.append(f"🖥️ Worker: 💤 {bold(worker.machine_name)} offline · last seen {ago(worker.last_seen_at)}")
    else:
        lines.append("🖥️ Worker: ❌ not connected (/connect)")
    lines.append(f"⚙️ Jobs waiting or running: {running}")
    lines += ["", f"🧪 {bold('Running processes')}", format_process_tree(tree) if tree else "none"]
    await reply(update, "\n".join(lines), keys.key_buttons(api_keys))


async def revoke(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """``/revoke`` asks first: a revoked key stops every script that uses it."""
    account = await store.account_for(update)
    key = await store.active_key(account)
    if key is None:
        await reply(update, "You have no active key.",
                    [[{"text": "🔑 Issue a new key", "callback_data": callbacks.NEW_KEY}]])
        return
    await reply(
        update,
        f"🔒 Revoke key {code(key.prefix + '…')}? Scripts using it can no longer send messages here "
        "until they get a new key.",
        [[{"text": "Yes, revoke it", "callback_data": callbacks.KEY_REVOKE},
          {"text": "Keep it", "callback_data": callbacks.CANCEL}]],
    )


async def confirm_revoke(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    account = await store.account_for(update)
    key = await store.revoke_key(account)
    button = [[{"text": "🔑 Issue a new key", "callback_data": callbacks.NEW_KEY}]]
    if key is None:
        await reply(update, "You have no active key.", button, edit=True)
        return
    logger.info("account %s revoked key %s", account.pk, key.prefix)
    await reply(update, f"🔒 Key {code(key.prefix + '…')} is revoked. Scripts using it can no longer send.",
                button, edit=True)


async def new_key(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    account = await store.account_for(update)
    _, raw = await store.issue_key(account)
    await reply(
        update,
        f"🔑 Your new key — shown only this once, keep it secret:\n{code(raw)}\n\n"
        f"Put it in your project's .env as {code('EXPERIMENT_BOT_KEY=…')}, or run {code('experiment_bot.setup()')}.",
        edit=True,
    )
