"""Shared fixtures for the worker script tests.

The worker is a single script, not a package, so it is loaded from its path. These tests need
neither Django nor a database; the in-test WebSocket server in ``fake_server.py`` speaks the
worker protocol (docs/worker-protocol.md).
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import os
import sys
from http import HTTPStatus
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "worker_script" / "statsbot_worker.py"


def load_worker_module():
    """Import statsbot_worker.py from its path (registered in sys.modules for dataclasses)."""
    name = "statsbot_worker_under_test"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def script_path():
    return SCRIPT


@pytest.fixture(scope="session")
def sw():
    return load_worker_module()


@pytest.fixture(scope="session")
def current_version(sw):
    """The version the script under test reports (what "up to date" means)."""
    return sw.WORKER_VERSION


@pytest.fixture(scope="session")
def newer_version(current_version):
    """A version strictly newer than the script's (its patch number + 1): an update offer."""
    major, minor, patch = (int(part) for part in current_version.split(".")[:3])
    return f"{major}.{minor}.{patch + 1}"


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    return Path(os.path.realpath(root))


@pytest.fixture
def settings(sw, tmp_path, data_root):
    home = tmp_path / "statsbot_home"
    return sw.Settings(
        paths=sw.Paths(home),
        server="ws://127.0.0.1:9/ws/worker/",
        machine_id="test-machine",
        allowed_roots=[data_root],
        models_dir=home / "models",
        max_file_bytes=50 * 1024 * 1024,
    )


@pytest.fixture
def run_job(sw, settings):
    """Run one action synchronously; returns (result message, progress messages)."""

    def run(fn, params, **kwargs):
        progress = []
        ctx = sw.JobContext("job-1", params, settings, emit=progress.append)
        result = sw.execute_job(lambda c: fn(c, **kwargs), ctx)
        return result, progress

    return run


@pytest.fixture(scope="session")
def breast_cancer_frame():
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame["target"] = frame["target"].map({0: "malignant", 1: "benign"})
    return frame


@pytest.fixture(scope="session")
def diabetes_frame():
    from sklearn.datasets import load_diabetes

    return load_diabetes(as_frame=True).frame


class FakeServer:
    """A small server speaking the worker protocol (auth, ping/pong, result_ack, /worker)."""

    def __init__(self, script_text: str = "") -> None:
        self.tokens = {"good-token"}
        self.credentials: set[str] = set()
        self.auths: list[dict] = []
        self.messages: asyncio.Queue = asyncio.Queue()
        self.connections: asyncio.Queue = asyncio.Queue()
        self.auto_ack = True
        self.heartbeat_interval = 20
        self.script_text = script_text
        self.downloads = 0
        self.redirect_to: str | None = None  # when set, /worker answers 302 to this URL
        self.files: dict[str, str] = {}  # other paths served over HTTP (e.g. "/worker_evil")
        self.http_requests: list[str] = []
        self._server = None
        self.latest_version = load_worker_module().WORKER_VERSION  # the script it serves: up to date

    async def start(self) -> FakeServer:
        from websockets.asyncio.server import serve

        self._server = await serve(self._handler, "127.0.0.1", 0, process_request=self._process_request)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/worker/"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/worker"

    def _process_request(self, connection, request):
        self.http_requests.append(request.path)
        if request.path in self.files:
            return connection.respond(HTTPStatus.OK, self.files[request.path])
        if request.path == "/worker":
            self.downloads += 1
            if self.redirect_to:
                response = connection.respond(HTTPStatus.FOUND, "")
                response.headers["Location"] = self.redirect_to
                return response
            return connection.respond(HTTPStatus.OK, self.script_text)
        return None

    async def _handler(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            auth = json.loads(await asyncio.wait_for(ws.recv(), 10))
            self.auths.append(auth)
            credential = None
            if "token" in auth:
                if auth["token"] not in self.tokens:
                    await self._refuse(ws, 4001, "invalid_token", "Token unknown, expired or used")
                    return
                self.tokens.discard(auth["token"])
                credential = f"cred-{len(self.credentials) + 1}"
                self.credentials.add(credential)
            elif auth.get("credential") not in self.credentials:
                await self._refuse(ws, 4003, "invalid_credential", "Credential revoked")
                return
            reply = {
                "type": "auth_response",
                "success": True,
                "user_id": 1,
                "worker_id": 7,
                "message": "Authentication successful",
                "latest_version": self.latest_version,
                "update_required": False,
                "heartbeat_interval": self.heartbeat_interval,
            }
            if credential:
                reply["credential"] = credential
            await ws.send(json.dumps(reply))
            await self.connections.put(ws)
            async for raw in ws:
                msg = json.loads(raw)
                if msg["type"] == "ping":
                    await ws.send(json.dumps({"type": "pong"}))
                await self.messages.put(msg)
                if msg["type"] == "result" and self.auto_ack:
                    await ws.send(json.dumps({"type": "result_ack", "job_id": msg["job_id"]}))
        except ConnectionClosed:
            pass

    async def _refuse(self, ws, close_code: int, code: str, message: str) -> None:
        await ws.send(
            json.dumps({"type": "auth_response", "success": False, "code": code, "message": message})
        )
        await ws.close(close_code, message)

    async def next(self, kind: str, job_id: str | None = None, within: float = 15) -> dict:
        """The next message of a type (and job), skipping others."""

        async def wait():
            while True:
                msg = await self.messages.get()
                if msg["type"] == kind and (job_id is None or msg.get("job_id") == job_id):
                    return msg

        return await asyncio.wait_for(wait(), within)

    async def connection(self, within: float = 15):
        return await asyncio.wait_for(self.connections.get(), within)


@pytest.fixture
async def fake_server():
    server = await FakeServer().start()
    yield server
    await server.stop()


@pytest.fixture
def make_client(sw, settings, fake_server):
    clients = []

    def make(token="good-token", credential=None, **kwargs):
        settings.server = fake_server.url
        settings.token = token
        settings.credential = credential
        store = sw.ConfigStore(settings.paths.config)
        console = sw.Console(stream=io.StringIO())
        client = sw.WorkerClient(settings, store, console, backoff=sw.Backoff(base=0.05, cap=0.2), **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.executor.shutdown(wait=True, cancel_futures=True)
