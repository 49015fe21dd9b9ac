"""50 concurrent notify clients against a real server, with the outbox sender and a connected
worker busy on the same database (issue 12, items 2 and 3): no 5xx, no "database is locked",
every accepted message a row, and on PostgreSQL no connection per thread (a bounded pool).

Runs on whichever database the pass uses: the SQLite file of the embedded default (WAL, busy
timeout, IMMEDIATE transactions) and PostgreSQL with its default ``max_connections`` (100).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
from django.conf import settings
from django.db import connection
from telegram import Bot

from accounts.models import Account, ApiKey
from core.models import OutboxMessage
from telegram_app.delivery import OutboxSender, Pacer
from tests.bot.conftest import free_port
from tg_sandbox import SandboxThread
from tg_sandbox.testing import SandboxDriver
from workers.models import Worker
from workers.script import latest_version

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 50
SINGLES = 5  # per client, then one batch of BATCH
BATCH = 5
MACHINE = {"machine_id": "m-load", "hostname": "load-box", "platform": "Linux", "python": "3.11",
           "worker_version": latest_version(), "packages": {}}


def server_database_url() -> str:
    """The test database as a server process is configured for it: the documented URL forms."""
    db = settings.DATABASES["default"]
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"  # no options: WAL, the busy timeout and IMMEDIATE are the default
    return f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def server(tmp_path) -> Iterator[tuple[str, Path]]:
    """One daphne process as the Procfile's ``web:`` runs it; its log in a file."""
    port = free_port()
    log = tmp_path / "daphne.log"
    # The channel layer is not under test here (only a doorbell; the sender also polls): the
    # in-memory one keeps this test about the database. The Redis layer under load is issue 12,
    # item 4 (redis-py's socket timeout cutting channels-redis's blocking receive).
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_POOL_SIZE", "REDIS_URL")}
    env.update({"DATABASE_URL": server_database_url(), "PUBLIC_URL": f"http://127.0.0.1:{port}",
                "DJANGO_SETTINGS_MODULE": "statsbot_site.settings"})
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "statsbot_site.asgi:application"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                with __import__("socket").create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "daphne did not listen within 30 s"
                time.sleep(0.05)  # the port is not open yet: poll the condition
        yield f"http://127.0.0.1:{port}", log
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


class SenderThread(threading.Thread):
    """The outbox sender draining rows into the sandbox while the clients write them."""

    def __init__(self, sandbox: SandboxThread) -> None:
        super().__init__(daemon=True)
        self.sandbox = sandbox
        self.stop = threading.Event()
        self.rounds = 0
        self.failure: BaseException | None = None

    def run(self) -> None:
        sandbox = self.sandbox
        try:
            bot = Bot(sandbox.state.token, base_url=sandbox.api_base_url, base_file_url=sandbox.file_base_url)
            sender = OutboxSender(bot, name="load-test", pacer=Pacer(chat_rate=50, chat_burst=50))

            async def rounds() -> None:
                async with sender.bot:
                    while not self.stop.is_set():
                        if not await sender.run_once():
                            await asyncio.sleep(0.05)  # nothing claimable right now
                        self.rounds += 1

            asyncio.run(rounds())
        except BaseException as exc:  # reported by the test
            self.failure = exc
        finally:
            connection.close()


async def worker_heartbeats(ws_url: str, credential: str, stop: asyncio.Event) -> int:
    """A connected worker sending pings the whole time (the consumer reads the database too)."""
    pongs = 0
    async with websockets.connect(ws_url) as socket:
        await socket.send(json.dumps({"type": "auth", "credential": credential, "machine": MACHINE,
                                      "running_jobs": []}))
        reply = json.loads(await asyncio.wait_for(socket.recv(), 20))
        assert reply.get("success"), reply
        while not stop.is_set():
            await socket.send(json.dumps({"type": "ping"}))
            while True:
                frame = json.loads(await asyncio.wait_for(socket.recv(), 20))
                if frame.get("type") == "pong":
                    pongs += 1
                    break
            await asyncio.sleep(0.2)
    return pongs


def peak_connections(stop: threading.Event, seen: list[int]) -> None:
    import psycopg

    db = settings.DATABASES["default"]
    with psycopg.connect(host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"],
                         dbname="postgres", autocommit=True) as conn:
        while not stop.is_set():
            seen.append(conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                     [db["NAME"]]).fetchone()[0])
            stop.wait(0.05)


async def notify_client(session: aiohttp.ClientSession, url: str, key: str, n: int) -> list[tuple[int, Any]]:
    headers = {"Authorization": f"Bearer {key}"}
    answers = []
    for i in range(SINGLES):
        body = {"text": f"client {n} message {i} \ud800", "metadata": {"client": n}}
        async with session.post(f"{url}/api/notify", data=json.dumps(body), headers={
                **headers, "Content-Type": "application/json", "Idempotency-Key": f"c{n}-{i}"}) as response:
            answers.append((response.status, await response.json(content_type=None)))
    batch = {"messages": [{"text": f"client {n} batch {i}"} for i in range(BATCH)]}
    async with session.post(f"{url}/api/notify/batch", json=batch, headers=headers) as response:
        answers.append((response.status, await response.json(content_type=None)))
    return answers


@pytest.fixture
def sandbox() -> Iterator[SandboxThread]:
    with SandboxThread() as running:
        yield running


def test_50_concurrent_notify_clients_with_the_sender_and_a_worker(server, sandbox):
    url, log = server
    keys = []
    with SandboxDriver(sandbox.url) as driver:
        for n in range(CLIENTS):
            user_id = 6_600_000 + n
            driver.user(user_id, first_name="Load").send("hello")  # the chat exists on Telegram's side
            account, _ = Account.from_telegram(user_id=user_id, chat_id=user_id, first_name="Load")
            keys.append(ApiKey.issue(account)[1])
    _, credential = Worker.enroll(Account.objects.first(), dict(MACHINE))
    sender = SenderThread(sandbox)
    sender.start()
    sampling = threading.Event()
    seen: list[int] = []
    sampler = None
    if connection.vendor == "postgresql":
        sampler = threading.Thread(target=peak_connections, args=(sampling, seen), daemon=True)
        sampler.start()

    async def scenario() -> tuple[list[tuple[int, Any]], int]:
        stop = asyncio.Event()
        worker = asyncio.create_task(worker_heartbeats(url.replace("http", "ws") + "/ws/worker/", credential, stop))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            results = await asyncio.gather(*(notify_client(session, url, key, n) for n, key in enumerate(keys)))
        stop.set()
        return [answer for answers in results for answer in answers], await worker

    try:
        answers, pongs = asyncio.run(scenario())
    finally:
        sampling.set()
        sender.stop.set()
        sender.join(30)
    statuses = Counter(status for status, _ in answers)
    assert statuses == {202: CLIENTS * SINGLES, 200: CLIENTS}, statuses  # no 5xx, and nothing refused
    accepted = [body["message_id"] for status, body in answers if status == 202]
    accepted += [r["body"]["message_id"] for status, body in answers if status == 200 for r in body["results"]]
    assert len(accepted) == CLIENTS * (SINGLES + BATCH)
    rows = set(OutboxMessage.objects.filter(kind="notify").values_list("pk", flat=True))
    assert set(accepted) <= rows and len(rows) == len(accepted)  # every accepted message is one row
    texts = OutboxMessage.objects.filter(kind="notify").values_list("payload__text", flat=True)
    assert sum("\ufffd" in text for text in texts) == CLIENTS * SINGLES  # invalid Unicode replaced, not lost

    assert sender.failure is None, repr(sender.failure)
    assert sender.rounds > 0 and OutboxMessage.objects.filter(state="sent").exists()
    assert not OutboxMessage.objects.filter(state="failed").exists()
    assert pongs > 0
    server_log = log.read_text(errors="replace")
    assert "database is locked" not in server_log and "Traceback" not in server_log, server_log[-3000:]
    if seen:  # a bounded pool: far below max_connections (100), not one connection per thread
        assert max(seen) <= 30, max(seen)
