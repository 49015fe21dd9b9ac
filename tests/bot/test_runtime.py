"""runbot itself: commands registered, webhook mode, restarts, the command line and signals."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from accounts.models import Account
from jobs.models import Job
from telegram_app.runtime import RunOptions
from tests.bot.conftest import RunningBot, free_port
from tests.bot.scripted_worker import MACHINE, ScriptedWorker
from tg_sandbox.testing import SandboxDriver
from workers.models import ConnectToken

ROOT = Path(__file__).resolve().parents[2]


def test_it_registers_its_commands(running_bot, driver):
    commands = [c["command"] for c in driver.bot_info()["commands"]]
    assert commands[:3] == ["start", "connect", "train"] and "cancel" in commands


@pytest.mark.django_db(transaction=True)
def test_it_takes_updates_through_the_webhook_view(settings):
    port = free_port()
    settings.PUBLIC_URL = f"http://127.0.0.1:{port}"
    settings.TELEGRAM_WEBHOOK_SECRET = "s3cret"
    bot = RunningBot(RunOptions(port=port, sandbox_port=0, webhook=True)).start()
    try:
        with SandboxDriver(bot.sandbox_url) as driver:
            assert driver.bot_info()["webhook"]["url"] == f"http://127.0.0.1:{port}/telegram/webhook/"
            user = driver.user(9_000_001, first_name="Wes")
            user.send("/start")
            user.wait_for_message("Welcome to StatsBot, Wes!")
    finally:
        bot.stop()


def test_it_refuses_webhook_calls_without_the_secret(client, settings, db):
    settings.TELEGRAM_WEBHOOK_SECRET = "s3cret"
    update = {"update_id": 1, "message": {"message_id": 1, "date": 0, "chat": {"id": 1, "type": "private"}}}
    assert client.post("/telegram/webhook/", update, content_type="application/json").status_code == 403
    headers = {"X-Telegram-Bot-Api-Secret-Token": "s3cret"}
    assert client.post("/telegram/webhook/", update, content_type="application/json", headers=headers).json() == {
        "ok": True}
    # Telegram's retry of the same update is stored once.
    assert client.post("/telegram/webhook/", update, content_type="application/json", headers=headers).json() == {
        "ok": True}
    from telegram_app.models import IncomingUpdate

    assert IncomingUpdate.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_it_remembers_a_conversation_across_a_restart(settings):
    port = free_port()
    settings.PUBLIC_URL = f"http://127.0.0.1:{port}"
    first = RunningBot(RunOptions(port=port, sandbox_port=0)).start()
    try:
        with SandboxDriver(first.sandbox_url) as driver:
            user = driver.user(9_000_002, first_name="Rae")
            user.send("/start")
            user.wait_for_message("Welcome")
            account = first.call(Account.objects.get, telegram_user_id=user.user_id)
            _, token = first.call(ConnectToken.issue, account)
            worker = ScriptedWorker(f"ws://127.0.0.1:{port}/ws/worker/", token).start()
            user.wait_for_message("Local Worker Connected!")
            user.send("/train")
            user.wait_for_message("Where is the data?")
            user.tap(user.last_bot_message()["reply_markup"]["inline_keyboard"][0][0]["text"])
            user.wait_for_edit(user.last_bot_message()["message_id"], "Send the path")
    finally:
        worker.stop()
        first.stop()
    second = RunningBot(RunOptions(port=port, sandbox_port=0)).start()  # a new process, same database
    try:
        with SandboxDriver(second.sandbox_url) as driver:
            user = driver.user(9_000_002, first_name="Rae")
            user.send("~/data/sales.csv")  # the path step survived the restart
            queued = user.wait_for_message("Reading the file")
            assert "waiting for scripted-box, offline since" in queued["text"]
            job = second.call(Job.objects.get)
            assert (job.action, job.params["file_path"]) == ("describe", "~/data/sales.csv")
    finally:
        second.stop()


def test_it_queues_a_step_when_the_worker_drops_mid_conversation(running_bot, user):
    user.send("/start")
    user.wait_for_message("Welcome")
    account = running_bot.call(Account.objects.get, telegram_user_id=user.user_id)
    _, token = running_bot.call(ConnectToken.issue, account)
    worker = ScriptedWorker(running_bot.web_url.replace("http", "ws") + "/ws/worker/", token).start()
    user.wait_for_message("Local Worker Connected!")
    user.send("/train")
    user.wait_for_message("Where is the data?")
    user.tap(user.last_bot_message()["reply_markup"]["inline_keyboard"][0][0]["text"])
    worker.stop()
    user.send("~/data/sales.csv")
    assert "waiting for scripted-box" in user.wait_for_message("Reading the file")["text"]


@pytest.mark.e2e
def test_it_runs_from_the_command_line_and_stops_cleanly_on_sigterm(tmp_path):
    port, sandbox_port = free_port(), free_port()
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "PYTHONUNBUFFERED": "1"}
    for name in ("REDIS_URL", "TELEGRAM_BOT_TOKEN", "PUBLIC_URL"):
        env.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "manage.py", "runbot", "--port", str(port), "--sandbox-port", str(sandbox_port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if "Telegram sandbox web chat" in line:
                break
        chat_url = re.search(r"http://127\.0\.0\.1:\d+/", lines[-1]).group(0)
        assert chat_url == f"http://127.0.0.1:{sandbox_port}/"
        with SandboxDriver(chat_url.rstrip("/")) as driver:
            user = driver.user(9_000_003, first_name="Cli")
            user.send("/start")
            user.wait_for_message("Welcome to StatsBot, Cli!", timeout=20)
            user.tap("🔌 Connect Local Worker")  # with PUBLIC_URL unset, commands point where runbot serves
            assert f"curl -sL http://127.0.0.1:{port}/worker | python3 -" in user.wait_for_message("Run this")["text"]
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, "".join(lines) + (out or "")
    assert "Stopped cleanly." in out
    assert django_settings.TELEGRAM_USE_SANDBOX


def test_it_stops_while_a_connected_worker_has_gone_silent(running_bot, account):
    """A worker whose machine froze never answers the close: stopping still ends (the web server's
    grace, then its tasks are cancelled), and the worker's row is left as the runtime last knew it."""
    _, token = running_bot.call(ConnectToken.issue, account)
    host, port = running_bot.web_url.removeprefix("http://").split(":")
    silent = socket.create_connection((host, int(port)))
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        silent.sendall(
            f"GET /ws/worker/ HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        assert b" 101 " in silent.recv(4096).split(b"\r\n")[0]
        silent.sendall(_masked_text(json.dumps({"type": "auth", "token": token, "machine": MACHINE, "running_jobs": []})))
        assert b'"success": true' in silent.recv(4096).replace(b'"success":true', b'"success": true')
        # From here the worker reads nothing and answers nothing: a frozen machine, a dead NAT.
        running_bot.stop()  # raises if the runtime is still running after 30 s
    finally:
        silent.close()


def _masked_text(text: str) -> bytes:
    """One client-to-server WebSocket text frame (RFC 6455: clients mask what they send)."""
    payload, mask = text.encode(), os.urandom(4)
    length = len(payload)
    header = struct.pack("!BB", 0x81, 0x80 | length) if length < 126 else struct.pack("!BBH", 0x81, 0x80 | 126, length)
    return header + mask + bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
