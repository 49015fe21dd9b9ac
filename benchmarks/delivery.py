"""Outbox delivery through the Telegram sandbox with its Telegram-like flood control on.

1,000 messages to 100 chats (``--quick``: 300 to 30) are queued in a fresh database; the real
outbox sender (``telegram_app.delivery.OutboxSender``, as ``runbot`` runs it) delivers them to a
sandbox process (``python -m tg_sandbox``: per chat a burst of 20 then 1/s, overall 30/s, as
Telegram documents "about 30 messages per second"). Every message has its own edit key, so none
is merged: this measures the send rate, not coalescing.

Printed: the achieved rate as a fraction of Telegram's allowed 30/s, the 429s received, and the
messages lost or doubled (read back from the sandbox's chats). The baseline, measured in the
same run against the same sandbox: a bare sender (the same python-telegram-bot client, no
database, one token bucket of 30/s shared by all chats, every chat's sends pipelined).

Usage (from the repository root):

    python benchmarks/delivery.py                 # 1,000 messages to 100 chats
    python benchmarks/delivery.py --quick         # CI: 300 messages to 30 chats
    python benchmarks/delivery.py --database-url postgres://postgres@127.0.0.1:5432/bench_delivery

Exit status 1 when a message is lost or doubled (a rate shortfall or a 429 only prints: timing
belongs here, not in pass/fail).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
ALLOWED_RATE = 30.0  # Telegram's overall limit for a bot, messages per second
TARGET = 0.9
FIRST_USER = 9_500_001


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fresh_postgres(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


class Sandbox:
    """``python -m tg_sandbox`` in its own process (Telegram is not in the bot's process either)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tg_sandbox", "--port", str(self.port), "--log-level", "WARNING"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the sandbox did not start: {self.process.stderr.read()!r}") from None
                time.sleep(0.05)  # waiting for the port to open

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def chat_texts(driver, user_ids: list[int]) -> dict[int, list[str]]:
    return {uid: [m.get("text") or "" for m in driver.user(uid).bot_messages()] for uid in user_ids}


def check(texts: dict[int, list[str]], expected: dict[int, list[str]]) -> tuple[int, int]:
    lost = doubled = 0
    for uid, want in expected.items():
        got = Counter(texts[uid])
        lost += sum(1 for text in want if not got[text])
        doubled += sum(count - 1 for count in got.values() if count > 1)
    return lost, doubled


async def bare_sender(bot, messages: list[tuple[int, str]]) -> float:
    """The baseline: one 30/s bucket, per chat 1/s after a burst of 3 (Telegram's per-chat limit),
    all chats pipelined, no database."""
    from telegram.error import RetryAfter

    from telegram_app.delivery import Pacer

    pacer = Pacer(global_rate=ALLOWED_RATE)
    per_chat: dict[int, list[str]] = {}
    for chat_id, text in messages:
        per_chat.setdefault(chat_id, []).append(text)

    async def chat(chat_id: int, texts: list[str]) -> None:
        for text in texts:
            await pacer.acquire(chat_id)
            while True:
                try:
                    await bot.send_message(chat_id, text)
                    break
                except RetryAfter as exc:  # wait as told, then again
                    retry_after = exc.retry_after
                    await asyncio.sleep(retry_after.total_seconds() if isinstance(retry_after, timedelta)
                                        else float(retry_after))

    started = time.monotonic()
    await asyncio.gather(*(chat(chat_id, texts) for chat_id, texts in per_chat.items()))
    return time.monotonic() - started


async def with_bot(bot, run: Coroutine[Any, Any, float]) -> float:
    async with bot:
        return await run


async def statsbot_sender(bot) -> float:
    from channels.db import database_sync_to_async

    from core.models import OutboxMessage
    from telegram_app.delivery import OutboxSender

    def left() -> int:
        return OutboxMessage.objects.exclude(state__in=["sent", "failed"]).count()

    sender = OutboxSender(bot)
    stop = asyncio.Event()
    started = time.monotonic()
    task = asyncio.create_task(sender.run(stop))
    while await database_sync_to_async(left)():  # noqa: ASYNC110 (the outbox is in the database)
        await asyncio.sleep(0.1)  # polling the outbox until it is drained
    elapsed = time.monotonic() - started
    stop.set()
    await task
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 messages to 30 chats (CI)")
    parser.add_argument("--chats", type=int, default=None)
    parser.add_argument("--per-chat", type=int, default=10)
    parser.add_argument("--database-url", default="", help="a PostgreSQL database to drop and create "
                        "(default: a SQLite file in a temporary folder)")
    args = parser.parse_args()
    chats = args.chats or (30 if args.quick else 100)
    total = chats * args.per_chat

    workdir = Path(tempfile.mkdtemp(prefix="statsbot-delivery-bench-"))
    for name in ("REDIS_URL", "TELEGRAM_BOT_TOKEN", "TELEGRAM_API_URL"):
        os.environ.pop(name, None)
    if args.database_url:
        fresh_postgres(args.database_url)
        os.environ["DATABASE_URL"] = args.database_url
    else:
        os.environ["DATABASE_URL"] = f"sqlite:///{workdir / 'bench.sqlite3'}"
    os.environ.update({"DJANGO_SETTINGS_MODULE": "statsbot_site.settings", "LOG_LEVEL": "WARNING",
                       "MEDIA_ROOT": str(workdir / "media")})
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command
    from telegram import Bot
    from telegram.request import HTTPXRequest

    from accounts.models import Account
    from core.outbox import enqueue
    from tg_sandbox.server import DEFAULT_TOKEN
    from tg_sandbox.testing import SandboxDriver

    call_command("migrate", interactive=False, verbosity=0)
    database = "PostgreSQL" if args.database_url else "SQLite"
    print(f"delivery: {total} messages to {chats} chats, sandbox flood control on "
          f"(per chat 20 burst + 1/s, overall {ALLOWED_RATE:g}/s), {database}")

    results = {}
    for name in ("bare sender", "StatsBot outbox"):
        sandbox = Sandbox()
        try:
            driver = SandboxDriver(sandbox.url)
            base = FIRST_USER + (0 if name == "bare sender" else 100_000)
            user_ids = [base + n for n in range(chats)]
            for uid in user_ids:
                driver.user(uid, first_name="Bench").send("hello")
            expected = {uid: [f"{uid} message {n:03d}" for n in range(args.per_chat)] for uid in user_ids}
            # As runbot's ApplicationBuilder makes it: a pool of 256 connections (a bare Bot has one).
            bot = Bot(DEFAULT_TOKEN, base_url=f"{sandbox.url}/bot", base_file_url=f"{sandbox.url}/file/bot",
                      request=HTTPXRequest(connection_pool_size=256))
            driver.reset_stats()
            if name == "bare sender":
                messages = [(uid, text) for n in range(args.per_chat) for uid in user_ids
                            for text in [expected[uid][n]]]
                elapsed = asyncio.run(with_bot(bot, bare_sender(bot, messages)))
            else:
                for n in range(args.per_chat):
                    for uid in user_ids:
                        account, _ = Account.from_telegram(user_id=uid, chat_id=uid, first_name="Bench")
                        enqueue(account, text=expected[uid][n], parse_mode="", edit_key=f"bench-{n}")
                elapsed = asyncio.run(with_bot(bot, statsbot_sender(bot)))
            stats = driver.stats()
            lost, doubled = check(chat_texts(driver, user_ids), expected)
            results[name] = (elapsed, stats.get("too_many_requests", 0), lost, doubled)
        finally:
            sandbox.stop()

    print(f"{'sender':<18} {'seconds':>8} {'msg/s':>7} {'of 30/s':>8} {'429s':>5} {'lost':>5} {'doubled':>8}")
    for name, (elapsed, too_many, lost, doubled) in results.items():
        rate = total / elapsed
        print(f"{name:<18} {elapsed:8.1f} {rate:7.1f} {rate / ALLOWED_RATE:8.2f} {too_many:5d} {lost:5d} {doubled:8d}")
    ours = total / results["StatsBot outbox"][0]
    bare = total / results["bare sender"][0]
    print(f"StatsBot / allowed rate: {ours / ALLOWED_RATE:.2f} (target ≥ {TARGET}, with zero 429s: "
          f"{'met' if ours / ALLOWED_RATE >= TARGET and not results['StatsBot outbox'][1] else 'NOT met'}); "
          f"StatsBot / bare sender: {ours / bare:.2f}")
    broken = any(lost or doubled for _, _, lost, doubled in results.values())
    if broken:
        print("FAIL: a message was lost or doubled")
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
