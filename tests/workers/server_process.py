"""A web process as the Procfile runs it (daphne), on the test database, its output in a file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def server_database_url() -> str:
    """The test database as a server process is configured for it."""
    db = settings.DATABASES["default"]
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class ServerProcess:
    def __init__(self, port: int, log: Path, *, redis_url: str | None = None, **env: str) -> None:
        self.port = port
        self.log = log
        self.env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        self.env.update({"DATABASE_URL": server_database_url(), "PUBLIC_URL": f"http://127.0.0.1:{port}",
                         "DJANGO_SETTINGS_MODULE": "statsbot_site.settings", **env})
        if redis_url:
            self.env["REDIS_URL"] = redis_url
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/worker/"

    def start(self, timeout: float = 60) -> ServerProcess:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
                 "statsbot_site.asgi:application"],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, self.log.read_text()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                assert time.monotonic() < deadline, f"daphne did not listen within {timeout} s"
                time.sleep(0.05)  # the port is not open yet: poll the condition

    def kill(self) -> None:
        """``kill -9``: no disconnect handler runs."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
