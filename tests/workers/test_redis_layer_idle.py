"""100 idle workers on the Redis channel layer for 2 minutes: zero drops (issue 12, item 4).

With redis-py 8's default 5 s socket timeout, channels_redis's 5 s blocking receive raced the
read timeout and lost (channels_redis issue 422): idle consumers died with ``TimeoutError``
and their WebSockets closed. The layer's client options (``statsbot_site.config``) keep the
read timeout above the blocking wait.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import websockets
from asgiref.sync import sync_to_async

from jobs.models import Job
from jobs.services import submit_job
from tests.bot.conftest import free_port
from tests.workers.conftest import MACHINE
from tests.workers.server_process import ServerProcess
from tests.workers.test_live_server import redis_layer  # noqa: F401  (fixture)
from workers.models import Worker

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
WORKERS = 100
IDLE_SECONDS = 120
PING_EVERY = 20  # the heartbeat interval the server hands out


async def idle_worker(url: str, credential: str, idle: dict[str, float], drops: list[str], ready: asyncio.Event,
                      connected: list[int]) -> websockets.ClientConnection | None:
    """Authenticates, waits for the others, then pings every 20 s as the worker script does
    until ``idle["until"]``; a close in that time is a drop."""
    socket = await websockets.connect(url, open_timeout=60, ping_interval=20, ping_timeout=60)
    await socket.send(json.dumps({"type": "auth", "credential": credential, "machine": MACHINE, "running_jobs": []}))
    response = json.loads(await asyncio.wait_for(socket.recv(), 60))
    assert response["success"], response
    connected.append(1)
    await ready.wait()
    try:
        while time.monotonic() < idle["until"]:
            await socket.send(json.dumps({"type": "ping"}))
            deadline = time.monotonic() + PING_EVERY
            while (left := deadline - time.monotonic()) > 0:
                try:
                    frame = json.loads(await asyncio.wait_for(socket.recv(), left))
                except TimeoutError:
                    break
                assert frame["type"] == "pong", frame
    except websockets.ConnectionClosed as closed:
        drops.append(f"{credential[:8]}: closed {closed.rcvd}")
        return None
    return socket


async def next_job(socket: websockets.ClientConnection) -> dict | None:
    deadline = time.monotonic() + 60
    try:
        while (frame := json.loads(await asyncio.wait_for(socket.recv(), deadline - time.monotonic())))["type"] != "job":
            pass
    except (TimeoutError, websockets.ConnectionClosed):
        return None
    return frame


def test_it_keeps_100_idle_workers_for_2_minutes_on_redis(redis_layer, make_account, tmp_path):  # noqa: F811
    accounts = [make_account() for _ in range(WORKERS)]
    credentials = [Worker.enroll(account, MACHINE)[1] for account in accounts]
    server = ServerProcess(free_port(), tmp_path / "daphne.log", redis_url=redis_layer).start()
    try:
        async def scenario() -> tuple[list[str], list[dict]]:
            drops: list[str] = []
            connected: list[int] = []
            ready = asyncio.Event()
            idle: dict[str, float] = {}
            tasks = [asyncio.create_task(idle_worker(server.ws_url, c, idle, drops, ready, connected))
                     for c in credentials]
            while len(connected) < WORKERS:  # every worker authenticated before the clock starts
                done = [t for t in tasks if t.done() and t.exception()]
                assert not done, done[0].exception()
                await asyncio.sleep(0.1)
            idle["until"] = time.monotonic() + IDLE_SECONDS
            ready.set()
            sockets = await asyncio.gather(*tasks)
            # Still reachable through the layer: a job for every account rings its worker's group.
            for account in accounts:
                await sync_to_async(submit_job)(account, Job.Action.LIST_MODELS)
            live = [socket for socket in sockets if socket is not None]
            frames = await asyncio.gather(*(next_job(socket) for socket in live))
            for socket in live:
                await socket.close()
            return drops, [frame for frame in frames if frame is not None]

        try:
            drops, frames = asyncio.run(scenario())
        except AssertionError as failure:
            raise AssertionError(f"{failure}\n--- server log ---\n{server.log.read_text()[-4000:]}") from None
    finally:
        server.stop()
    log = server.log.read_text()
    assert drops == [], drops
    assert len(frames) == WORKERS
    assert "TimeoutError" not in log, log[-3000:]
