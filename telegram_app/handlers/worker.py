"""/worker: status, autostart on/off, disconnect."""

from __future__ import annotations

from channels.db import database_sync_to_async
from telegram import Update
from telegram.ext import ContextTypes

from jobs.models import Job
from telegram_app import callbacks, store
from telegram_app.formatting import ago, bold, code, esc, since
from telegram_app.handlers.common import CONNECT_BUTTON, reply
from telegram_app.rendering.workers import away_since, offline_text

MANUAL_AUTOSTART = (
    f"{bold('Manual set-up')} (on the worker's machine):\n"
    f"• macOS / Linux / Windows: {code('python3 ~/.statsbot/statsbot_worker.py --autostart')}\n"
    f"  (turn it off with {code('--autostart off')})\n"
    "• It installs a launchd agent on macOS, a systemd user unit on Linux, or a Task Scheduler entry on Windows."
)


async def worker(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    args = [a.lower() for a in (context.args or [])]
    if args[:1] == ["autostart"]:
        await autostart(update, enable=args[1:2] != ["off"])
    elif args[:1] == ["disconnect"]:
        await ask_disconnect(update)
    elif args:
        await reply(update, "Usage: /worker · /worker autostart · /worker autostart off · /worker disconnect")
    else:
        await show_status(update)


async def show_status(update: Update) -> None:
    account = await store.account_for(update)
    current = await store.live_worker(account)
    if current is None:
        await reply(update, "🖥️ No local worker is connected.", [[CONNECT_BUTTON]])
        return
    running = await store.running_job_count(account)
    if current.is_online:
        state = "✅ online"
    else:
        state = f"💤 offline {away_since(current)}"
        offline = await database_sync_to_async(offline_text)(current)
    packages = ", ".join(f"{esc(k)} {esc(v)}" for k, v in current.packages.items() if v) or "—"
    lines = [
        f"🖥️ {bold(current.machine_name)} — {state}",
        f"System: {esc(current.platform)} {esc(current.os_release)} · Python {esc(current.python_version)}",
        f"Worker version: {esc(current.worker_version or '?')}",
        f"Connected since: {since(current.connected_at) if current.is_online else '—'}",
        f"Last seen: {ago(current.last_seen_at)}",
        f"Jobs waiting or running: {running}",
        f"Models: {esc(', '.join(current.models_available) or '—')}",
        f"Packages: {packages}",
    ]
    if not current.is_online:
        lines += ["", offline]
    buttons = [
        [
            {"text": "⚙️ Autostart on", "callback_data": callbacks.WORKER_AUTOSTART + "on"},
            {"text": "Autostart off", "callback_data": callbacks.WORKER_AUTOSTART + "off"},
        ],
        [{"text": "🔌 Disconnect this worker", "callback_data": callbacks.WORKER_DISCONNECT}],
    ]
    await reply(update, "\n".join(lines), buttons)


async def autostart(update: Update, enable: bool) -> None:
    account = await store.account_for(update)
    current = await store.online_worker(account)
    if current is None:
        await reply(update, "🖥️ Your worker is not online, so it cannot set this up itself.\n\n" + MANUAL_AUTOSTART)
        return
    await store.submit_job(account, Job.Action.AUTOSTART, {"enable": enable})
    if update.callback_query is not None:
        await update.callback_query.answer("Asking your worker…")


async def autostart_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await autostart(update, enable=update.callback_query.data.endswith(":on"))


async def ask_disconnect(update: Update) -> None:
    account = await store.account_for(update)
    if await store.live_worker(account) is None:
        await reply(update, "No worker to disconnect.")
        return
    await reply(
        update,
        "Disconnect your worker? Its credential is revoked: it stops now and needs a new /connect to come back.",
        [[{"text": "Yes, disconnect", "callback_data": callbacks.WORKER_DISCONNECT_YES},
          {"text": "Keep it", "callback_data": callbacks.CANCEL}]],
    )


async def disconnect_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    if update.callback_query.data == callbacks.WORKER_DISCONNECT:
        await ask_disconnect(update)
        return
    account = await store.account_for(update)
    gone = await store.disconnect_worker(account)
    text = f"🔌 {bold(gone.machine_name)} is disconnected." if gone else "No worker to disconnect."
    await reply(update, text, edit=True)
