"""``kill -9`` of the server and of the worker mid-job; only the server comes back (issue 12, item 5).

Neither process said goodbye, so the database still shows the worker online on a channel nobody
reads and its job "running 40%". The restarted server's sweeps see that the worker's heartbeats
stopped, mark it disconnected, and after the graces the chat gets the disconnect notice and the
job's "lost" notice, each exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from accounts.models import Account
from core.models import OutboxMessage
from jobs.models import Job
from jobs.services import submit_job
from tests.bot.conftest import free_port
from tests.workers.server_process import ROOT, server_database_url
from tg_sandbox import SandboxThread
from tg_sandbox.testing import SandboxDriver
from workers.models import Worker
from workers.script import latest_version

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
MACHINE = {"machine_id": "m-kill", "hostname": "kill-box", "platform": "Linux", "python": "3.11",
           "worker_version": latest_version(), "packages": {}}

# A worker that takes its job, reports 40 % and then works "forever" (until kill -9).
WORKER = r"""
import asyncio, json, sys, websockets
async def main():
    async with websockets.connect(sys.argv[1]) as ws:
        await ws.send(json.dumps({"type": "auth", "credential": sys.argv[2], "running_jobs": [],
                                  "machine": json.loads(sys.argv[3])}))
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "job":
                await ws.send(json.dumps({"type": "progress", "job_id": frame["job_id"], "progress": 40,
                                          "status": "training", "message": "Fitting"}))
asyncio.run(main())
"""


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.2)  # polling the database for the condition
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Runbot:
    """``manage.py runbot`` (web + bot + sweeps in one process) against the sandbox."""

    def __init__(self, port: int, sandbox: SandboxThread, log: Path) -> None:
        self.port, self.log = port, log
        self.env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_POOL_SIZE")}
        self.env.update({
            "DATABASE_URL": server_database_url(), "PUBLIC_URL": f"http://127.0.0.1:{port}",
            "DJANGO_SETTINGS_MODULE": "statsbot_site.settings",
            "TELEGRAM_BOT_TOKEN": sandbox.token, "TELEGRAM_API_URL": sandbox.api_base_url,
            "TELEGRAM_BOT_USERNAME": "statsbot_sandbox_bot",
            # Short graces so the test takes seconds: heartbeats (written every 20 s) count as
            # stopped after 3 s, "disconnected" after 2 s away, "lost" after 4 s away.
            "WORKER_STALE_AFTER": "3", "WORKER_DISCONNECT_GRACE": "2", "JOB_LOST_GRACE": "4",
        })
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Runbot:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "runbot", "--no-migrate", "--port", str(self.port)],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)

        def listening() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        wait_for(listening, 90, "runbot listening")
        return self

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


@pytest.fixture
def sandbox() -> Iterator[SandboxThread]:
    with SandboxThread() as running:
        yield running


def test_it_sends_the_lost_notice_once_after_server_and_worker_die(sandbox, tmp_path):
    with SandboxDriver(sandbox.url) as driver:
        chat = driver.user(7001, first_name="Kill")
        chat.send("hello")  # the chat exists on Telegram's side
    account, _ = Account.from_telegram(user_id=7001, chat_id=7001, first_name="Kill")
    worker, credential = Worker.enroll(account, MACHINE)
    job = submit_job(account, Job.Action.TRAIN, {"file_path": "~/d.csv"})

    server = Runbot(free_port(), sandbox, tmp_path / "runbot.log").start()
    fake_worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, f"ws://127.0.0.1:{server.port}/ws/worker/", credential, json.dumps(MACHINE)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def running() -> bool:
            job.refresh_from_db()
            return job.state == Job.State.RUNNING and job.progress == 40

        try:
            wait_for(running, 90, "the job running at 40 %")
        except AssertionError as failure:
            raise AssertionError(f"{failure}\n{server.log.read_text()[-3000:]}") from None
        server.kill()
        fake_worker.send_signal(signal.SIGKILL)
        fake_worker.wait(10)
        worker.refresh_from_db()
        assert worker.is_online  # nobody said goodbye: the row still shows it online
        server.start()  # only the server comes back

        def lost_and_told() -> bool:
            # Every row settled: sent, or superseded by a newer row for the same message (the
            # "running" row the killed sender had in flight is folded into the "lost" one).
            job.refresh_from_db()
            rows = list(OutboxMessage.objects.filter(account=account))
            sent = [r.payload for r in rows if r.state == OutboxMessage.State.SENT]
            return (job.state == Job.State.LOST
                    and all(r.state in (OutboxMessage.State.SENT, OutboxMessage.State.SUPERSEDED) for r in rows)
                    and {"job_id": str(job.id), "state": "lost"} in sent
                    and any(p.get("event") == "disconnected" for p in sent))

        try:
            wait_for(lost_and_told, 120, "the job lost and both notices sent")
        except AssertionError as failure:
            rows = "\n".join(f"#{r.pk} {r.kind} {r.state} {r.payload} {r.error!r}"
                             for r in OutboxMessage.objects.filter(account=account).order_by("id"))
            raise AssertionError(f"{failure}\n{rows}\n{server.log.read_text()[-3000:]}") from None
        time.sleep(12)  # not a synchronisation: an observation window of two more sweep rounds (every 5 s)
        worker.refresh_from_db()
        assert not worker.is_online and worker.disconnect_notified_at is not None
        rows = list(OutboxMessage.objects.filter(account=account).order_by("id"))
        assert [r.payload.get("event") for r in rows if r.kind == "worker"] == ["reconnected", "disconnected"]
        assert [r.payload for r in rows if r.payload.get("state") == "lost"] == [
            {"job_id": str(job.id), "state": "lost"}]
        assert all(r.state in (OutboxMessage.State.SENT, OutboxMessage.State.SUPERSEDED) for r in rows)
    finally:
        server.kill()
        if fake_worker.poll() is None:
            fake_worker.kill()
