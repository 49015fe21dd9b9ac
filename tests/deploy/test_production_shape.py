"""The production shape, end to end: the Procfile's processes behind a load balancer.

Two web processes (the Procfile's ``web:`` command, each on its own port) behind a small TCP
load balancer (``balancer.py``), the bot (the Procfile's ``bot:`` command) in webhook mode
against the Telegram sandbox, PostgreSQL (or a SQLite file) and one Redis channel layer; the
real worker script, started by the connect command the chat shows, reaches the server through
the balancer. The balancer sends the worker's connections to web process 1 while it is up and
Telegram's webhook calls to web process 2, so a ``/train`` typed in the chat enters through
process 2 and its job reaches the worker through process 1. Then process 1 is killed in the
middle of a training job: the worker reconnects through the balancer to process 2, the job's
result arrives there, and the chat gets every message once.

Slow (several server processes): run in the PostgreSQL + Redis pass, or with ``--run-slow``
when a Redis answers at ``TEST_REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pytest
from channels.db import database_sync_to_async
from django.db import connections, transaction
from django.utils import timezone
from telegram import Bot

from core.models import OutboxMessage
from core.outbox import enqueue
from jobs.models import Job
from statsbot_site.config import SANDBOX_BOT_TOKEN, redis_channel_layer
from telegram_app.delivery import OutboxSender
from tests.bot.conftest import free_port
from tests.deploy.balancer import Balancer
from tests.workers.test_live_server import database_url, reachable_redis_url
from tg_sandbox.testing import SandboxDriver, SandboxUserDriver, buttons_of, plain_text

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
WEBHOOK_SECRET = "deploy-test-webhook-secret"
COMMAND_RE = re.compile(r"curl -sL \S+/worker \| python3 - --token=\S+")
NOTES = 4  # bursts of one message to each of the 40 chats
NOT_MERGEABLE = [[{"text": "Docs", "url": "https://example.com/docs"}]]
DONE_STATES = {OutboxMessage.State.SENT, OutboxMessage.State.SUPERSEDED}
T = TypeVar("T")


def procfile(kind: str) -> str:
    """The command of a Procfile process type, as the platform would run it."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == kind:
            return command.strip()
    raise AssertionError(f"the Procfile has no {kind}: process")


def wait_until(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``check`` until it returns something truthy (a condition, not a sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


class Service:
    """One process of the deployment, in its own process group, its output in a log file."""

    def __init__(self, name: str, command: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            ["bash", "-c", command], cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )

    def output(self, tail: int = 40) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return f"--- {self.name} (last {tail} lines) ---\n" + "\n".join(lines[-tail:])

    def wait_until_listening(self, port: int, timeout: float = 90) -> None:
        def listening() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return True
            except OSError:
                return False

        wait_until(listening, timeout, f"{self.name} to listen on {port}")

    def kill(self) -> None:
        """As a crash or an out-of-memory kill: SIGKILL, no chance to say goodbye."""
        self._signal(signal.SIGKILL)
        self.process.wait(15)

    def stop(self) -> None:
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(10)
        self._signal(signal.SIGKILL)  # whatever the group still holds (the worker's pipeline)
        self._log.close()

    def _signal(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass


@dataclass
class Deployment:
    balancer: Balancer
    sandbox: SandboxDriver
    web: list[Service]
    web_ports: list[int]
    bot: Service
    env: dict[str, str]
    log_dir: Path
    services: list[Service]

    def start_worker(self, command: str, home: Path) -> Service:
        env = {**self.env, "HOME": str(home), "STATSBOT_HOME": str(home / ".statsbot")}
        worker = Service("worker", command, env, self.log_dir)
        self.services.append(worker)
        return worker

    def logs(self) -> str:
        return "\n".join(service.output() for service in self.services)


@pytest.fixture
def deployment(transactional_db, settings, tmp_path) -> Iterator[Deployment]:
    redis_url = reachable_redis_url()
    if redis_url is None:
        pytest.skip("no Redis answers at REDIS_URL or TEST_REDIS_URL")
    # This test process enqueues too: its doorbell must ring in the same Redis.
    settings.CHANNEL_LAYERS = {"default": redis_channel_layer(redis_url)}
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    services: list[Service] = []
    sandbox_port, web_ports = free_port(), [free_port(), free_port()]
    balancer = Balancer(web_ports, prefer={"/": web_ports[0], "/telegram/": web_ports[1]}).start()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "statsbot_site.settings",
        "DATABASE_URL": database_url(),
        "REDIS_URL": redis_url,
        "PUBLIC_URL": balancer.url,  # where users' workers and Telegram reach the deployment
        "TELEGRAM_BOT_TOKEN": SANDBOX_BOT_TOKEN,
        "TELEGRAM_API_URL": f"http://127.0.0.1:{sandbox_port}/bot",
        "TELEGRAM_WEBHOOK_SECRET": WEBHOOK_SECRET,
        # `daphne`, `python` and the worker's `python3` are this interpreter's.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    }
    driver = SandboxDriver(f"http://127.0.0.1:{sandbox_port}")
    try:
        sandbox = Service("sandbox", f"exec python -m tg_sandbox --port {sandbox_port} --token {SANDBOX_BOT_TOKEN}",
                          env, log_dir)
        services.append(sandbox)
        web = [Service(f"web{i + 1}", f"exec {procfile('web')}", {**env, "PORT": str(port)}, log_dir)
               for i, port in enumerate(web_ports)]
        services.extend(web)
        sandbox.wait_until_listening(sandbox_port)
        for process, port in zip(web, web_ports, strict=True):
            process.wait_until_listening(port)
        bot = Service("bot", f"exec {procfile('bot')} --webhook", env, log_dir)
        services.append(bot)
        wait_until(lambda: bot.process.poll() is None and driver.bot_info()["webhook"]["url"], 90,
                   "the bot to set its webhook")
        assert driver.bot_info()["webhook"]["url"] == f"{balancer.url}/telegram/webhook/"
        yield Deployment(balancer, driver, web, web_ports, bot, env, log_dir, services)
    except BaseException:
        print("\n".join(service.output() for service in services))  # noqa: T201 - shown on failure
        raise
    finally:
        for service in reversed(services):
            service.stop()
        balancer.stop()
        driver.close()


def labels(message: dict[str, Any]) -> list[str]:
    return [button["text"] for button in buttons_of(message)]


def assert_each_outbox_message_delivered_once(user: SandboxUserDriver) -> list[OutboxMessage]:
    in_flight = OutboxMessage.objects.filter(
        chat_id=user.user_id, state__in=[OutboxMessage.State.PENDING, OutboxMessage.State.SENDING])
    wait_until(lambda: not in_flight.exists(), 90, f"the outbox of chat {user.user_id} to drain")
    rows = list(OutboxMessage.objects.filter(chat_id=user.user_id).order_by("id"))
    undelivered = [(row.pk, row.kind, row.state, row.error) for row in rows if row.state not in DONE_STATES]
    assert not undelivered, f"outbox rows not delivered: {undelivered}"
    messages = user.bot_messages()
    in_chat = {message["message_id"] for message in messages}
    sent_ids = {row.sent_message_id for row in rows if row.state == OutboxMessage.State.SENT}
    assert sent_ids <= in_chat, f"rows marked sent to messages the chat lacks: {sent_ids - in_chat}"
    # A message sent twice shows as two identical bot messages (Telegram has no idempotent send).
    shapes = Counter((plain_text(m), bool(m.get("photo")), bool(m.get("document"))) for m in messages)
    doubled = [shape for shape, count in shapes.items() if count > 1]
    assert not doubled, f"sent more than once: {doubled}"
    return rows


def write_training_data(path: Path, rows: int = 150_000) -> None:
    """Large enough that training takes seconds: the web process dies while it runs."""
    rng = np.random.default_rng(7)
    features = rng.normal(size=(rows, 12))
    frame = pd.DataFrame(features, columns=[f"x{i}" for i in range(12)])
    frame["target"] = features @ rng.normal(size=12) + np.sin(features[:, 0] * 3) + rng.normal(0, 0.1, rows)
    frame.to_csv(path, index=False)


def test_it_keeps_the_job_and_the_chat_when_the_web_process_holding_the_worker_dies(deployment, tmp_path):
    d = deployment
    web1_port, web2_port = d.web_ports
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    write_training_data(home / "data" / "big.csv")
    user = d.sandbox.user(8_100_001, first_name="Lea", username="lea")

    user.send("/start")
    user.wait_for_message("Welcome", timeout=60)
    user.tap("🔌 Connect Local Worker")
    command = COMMAND_RE.search(user.wait_for_message("Connect Local Worker")["text"]).group(0)
    assert command.startswith(f"curl -sL {d.balancer.url}/worker ")  # the public URL: the balancer
    d.start_worker(command, home)
    user.wait_for_message("Local Worker Connected!", timeout=120)
    assert {route.port for route in d.balancer.routes_to("/ws/worker/")} == {web1_port}
    assert {route.port for route in d.balancer.routes_to("/worker")} == {web1_port}

    user.send("/train")
    user.wait_for_message("Where is the data?", timeout=60)
    user.tap(labels(user.last_bot_message())[0])
    user.send("~/data/big.csv")
    columns = user.wait_for_message("Which column should the model predict?", timeout=120)
    # The update entered through web process 2; the describe job reached the worker through process 1.
    webhook_routes = d.balancer.routes_to("/telegram/webhook/")
    assert webhook_routes and {route.port for route in webhook_routes} == {web2_port}
    describe = Job.objects.get(action=Job.Action.DESCRIBE)
    assert describe.state == Job.State.SUCCEEDED and describe.result["rows"] == 150_000

    user.tap("target", message=columns)
    task = user.wait_for_message("Target: target", timeout=120)  # after the data checks on the machine
    user.tap(next(label for label in labels(task) if "Regression" in label))
    user.wait_for_edit(task["message_id"], "Which model?")
    user.tap("LightGBM")
    user.wait_for_edit(task["message_id"], "Ready to train")
    user.tap("🚀 Start training")
    train = wait_until(lambda: Job.objects.filter(action=Job.Action.TRAIN, state=Job.State.RUNNING).first(), 120,
                       "the training job to run on the worker")

    killed_at = timezone.now()
    d.web[0].kill()
    ws_routes_before = len(d.balancer.routes_to("/ws/worker/"))
    done = user.wait_for_message("Model trained", timeout=240)
    assert "R²:" in done["text"]
    user.wait_for_message(predicate=lambda m: m.get("caption") == "Feature importance", timeout=60)

    train.refresh_from_db()
    assert train.state == Job.State.SUCCEEDED
    assert train.finished_at > killed_at, "the job finished before web process 1 died: it proved nothing"
    reconnects = d.balancer.routes_to("/ws/worker/")[ws_routes_before:]
    assert reconnects and {route.port for route in reconnects} == {web2_port}
    assert not d.balancer.refused
    assert_each_outbox_message_delivered_once(user)


class ThreadedSender:
    """A second outbox sender, as a second bot process would run it: its own loop and Bot client."""

    def __init__(self, api_url: str, name: str) -> None:
        self.api_url = api_url
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name=name, daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        bot = Bot(SANDBOX_BOT_TOKEN, base_url=self.api_url, base_file_url=self.api_url.replace("/bot", "/file/bot"))
        async with bot:
            self._started.set()
            await OutboxSender(bot, name=self.name).run(self._stop)
        await database_sync_to_async(connections.close_all)()

    def start(self) -> ThreadedSender:
        self._thread.start()
        assert self._started.wait(30), "the second sender did not start"
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the second sender did not stop"


def test_it_delivers_each_message_exactly_once_with_two_senders(deployment, make_account):
    """The bot process's sender and a second one share bursts: every row goes out exactly once."""
    d = deployment
    users = [d.sandbox.user(8_200_001 + i, first_name=f"U{i}") for i in range(40)]
    for user in users:
        user.block(False)  # the chat exists in the sandbox (as if the user had written), the bot is not involved
    accounts = [make_account(telegram_user_id=user.user_id, chat_id=user.user_id) for user in users]
    d.sandbox.reset_stats()
    second = ThreadedSender(d.env["TELEGRAM_API_URL"], "second-sender").start()
    try:
        ids = []
        for n in range(NOTES):  # each burst one transaction: its one ring wakes both senders at once
            with transaction.atomic():
                ids += [enqueue(account, text=f"note {n} for {account.chat_id}", buttons=NOT_MERGEABLE).pk
                        for account in accounts]
            time.sleep(0.3)  # bursts a little apart, as traffic arrives (pacing the test's load, not a sync)
        wait_until(lambda: OutboxMessage.objects.filter(pk__in=ids, state__in=DONE_STATES).count() == len(ids),
                   180, "both senders to deliver every row")
    finally:
        second.stop()
    sent = OutboxMessage.objects.filter(pk__in=ids, state=OutboxMessage.State.SENT)
    assert sent.count() == len(ids)  # each its own message (a button keeps rows from being merged)
    senders = Counter(sent.values_list("claimed_by", flat=True))
    assert len(senders) == 2 and senders["second-sender"], senders  # the bot process's and this one's
    for user in users:
        texts = sorted(plain_text(message) for message in user.bot_messages())
        assert texts == sorted(f"note {n} for {user.user_id}" for n in range(NOTES))
        assert_each_outbox_message_delivered_once(user)
    print("two senders:", dict(senders), "sandbox:", d.sandbox.stats())  # noqa: T201 - 429s, for the record
