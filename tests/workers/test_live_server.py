"""The worker protocol against real daphne processes, with a real ``websockets`` client.

Two server processes on the Redis channel layer prove that a job submitted elsewhere
reaches a worker connected to either of them. That test uses ``REDIS_URL`` or, on the run
without it (the SQLite pass of CI), a local Redis when one answers (``TEST_REDIS_URL``,
default db 15), so it runs wherever Redis does.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from socket import create_connection
from urllib.parse import urlsplit

import pytest
import websockets
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection

from jobs.models import Job
from jobs.services import submit_job
from statsbot_site.config import redis_channel_layer
from tests.bot.conftest import free_port
from tests.workers.conftest import MACHINE
from workers.models import ConnectToken, Worker

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    db = settings.DATABASES["default"]
    if connection.vendor == "sqlite":  # as the embedded default: writers wait for each other
        return f"sqlite:///{db['NAME']}?timeout=20&transaction_mode=IMMEDIATE"
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def reachable_redis_url() -> str | None:
    url = os.environ.get("REDIS_URL") or os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    parts = urlsplit(url)
    try:
        with create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=1):
            return url
    except OSError:
        return None


@pytest.fixture
def redis_layer(settings) -> str:
    """This process and the daphne processes share one Redis channel layer."""
    url = reachable_redis_url()
    if url is None:
        pytest.skip("no Redis answers at REDIS_URL or TEST_REDIS_URL (redis://127.0.0.1:6379/15)")
    settings.CHANNEL_LAYERS = {"default": redis_channel_layer(url)}
    return url


class DaphneProcess:
    def __init__(self, port: int, redis_url: str | None = None) -> None:
        self.port = port
        env = {**os.environ, "DATABASE_URL": database_url(), "PUBLIC_URL": f"http://127.0.0.1:{port}",
               "DJANGO_SETTINGS_MODULE": "statsbot_site.settings"}
        if redis_url:
            env["REDIS_URL"] = redis_url
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "statsbot_site.asgi:application"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/worker/"

    def wait_until_listening(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"daphne exited: {self.process.stdout.read()}")
            try:
                with __import__("socket").create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)  # the port is not open yet: poll the condition
        raise AssertionError("daphne did not listen in time")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture
def daphne_processes(request) -> Iterator[list[DaphneProcess]]:
    redis_url = request.getfixturevalue("redis_layer") if "redis_layer" in request.fixturenames else None
    processes = [DaphneProcess(free_port(), redis_url) for _ in range(request.param)]
    try:
        for process in processes:
            process.wait_until_listening()
        yield processes
    finally:
        for process in processes:
            process.stop()


async def authenticate(ws_url: str, **secret: str):
    socket = await websockets.connect(ws_url)
    await socket.send(json.dumps({"type": "auth", "machine": MACHINE, "running_jobs": [], **secret}))
    return socket, json.loads(await asyncio.wait_for(socket.recv(), 10))


async def next_frame(socket, kind: str) -> dict:
    while True:
        frame = json.loads(await asyncio.wait_for(socket.recv(), 10))
        if frame["type"] == kind:
            return frame


@pytest.mark.parametrize("daphne_processes", [1], indirect=True)
def test_it_runs_the_whole_protocol_on_a_real_server(daphne_processes, account):
    """queued job → token auth → job → progress → result → reconnect with the credential."""
    server = daphne_processes[0]
    _, token = ConnectToken.issue(account)
    # Queued before the worker connects: this test process shares no channel layer with
    # daphne on the in-memory default, so the job must reach the worker through the database.
    job = submit_job(account, Job.Action.TRAIN, {"file_path": "~/d.csv"})

    async def session() -> None:
        socket, response = await authenticate(server.ws_url, token=token)
        assert response["success"] and response["credential"].startswith("sbw_")
        frame = await next_frame(socket, "job")
        assert frame["job_id"] == str(job.id) and frame["params"] == {"file_path": "~/d.csv"}
        await socket.send(json.dumps({"type": "progress", "job_id": frame["job_id"], "progress": 60,
                                      "message": "Fitting"}))
        await socket.send(json.dumps({"type": "result", "job_id": frame["job_id"], "success": True,
                                      "data": {"model_id": "m"}}))
        assert (await next_frame(socket, "result_ack"))["job_id"] == str(job.id)
        await socket.close()
        again, second = await authenticate(server.ws_url, credential=response["credential"])
        assert second["success"] and "credential" not in second
        await again.send(json.dumps({"type": "ping"}))
        assert (await next_frame(again, "pong")) == {"type": "pong"}
        await again.close()

    asyncio.run(session())
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED and job.result == {"model_id": "m"}
    assert job.stage == "" and job.started_at is not None


@pytest.mark.parametrize("daphne_processes", [2], indirect=True)
def test_it_reaches_workers_connected_to_other_processes(redis_layer, daphne_processes, make_account):
    """Jobs submitted here (as the bot process would) reach workers on either web process."""
    accounts = [make_account(), make_account()]
    tokens = [ConnectToken.issue(account)[1] for account in accounts]

    async def scenario() -> list[dict]:
        sockets = [(await authenticate(server.ws_url, token=token))[0]
                   for server, token in zip(daphne_processes, tokens, strict=True)]
        assert await sync_to_async(Worker.objects.live().exclude(channel_name="").count)() == 2
        for account in accounts:
            jobs.append(await sync_to_async(submit_job)(account, Job.Action.LIST_MODELS))
        frames = await asyncio.gather(*(next_frame(socket, "job") for socket in sockets))
        for socket in sockets:
            await socket.close()
        return frames

    jobs: list[Job] = []
    frames = asyncio.run(scenario())
    assert [frame["job_id"] for frame in frames] == [str(job.id) for job in jobs]
