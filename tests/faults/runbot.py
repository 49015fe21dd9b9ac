"""A real ``manage.py runbot`` process against a sandbox the test runs, on the test database:
what the fault tests kill, restart and watch."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import connection

from tg_sandbox import SandboxThread

ROOT = Path(__file__).resolve().parents[2]
LEASE_SECONDS = "2"  # a short sender lease keeps the crash tests quick (the default is 6 s)


def server_database_url() -> str:
    """The test database as a server process is configured for it: the documented URL forms."""
    db = settings.DATABASES["default"]
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {what}"
        time.sleep(0.05)  # polling a condition, with a deadline


class Runbot:
    """``python manage.py runbot`` in a subprocess, its log in ``log``; ``port`` serves the web app."""

    def __init__(self, sandbox: SandboxThread, log: Path, port: int | None = None, **env: str) -> None:
        self.sandbox, self.log, self.port = sandbox, log, port
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self._offset = 0

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> Runbot:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "EXPERIMENT_BOT_"))}
        env.update({
            "DJANGO_SETTINGS_MODULE": "statsbot_site.settings",
            "DATABASE_URL": server_database_url(),
            "TELEGRAM_BOT_TOKEN": self.sandbox.token,
            "TELEGRAM_API_URL": self.sandbox.api_base_url,
            "OUTBOX_LEASE_SECONDS": LEASE_SECONDS,
            "LOG_LEVEL": "INFO",
            **self.env,
        })
        web = ["--port", str(self.port)] if self.port else ["--no-web"]
        if self.port:
            env["PUBLIC_URL"] = self.web_url
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "runbot", "--no-migrate", *web], cwd=ROOT, env=env,
                stdout=out, stderr=subprocess.STDOUT)
        wait_until(lambda: self._alive() and "running (polling)" in self.output(), timeout, "runbot to start")
        if self.port:
            wait_until(self._listening, timeout, "the web app to listen")
        return self

    def _alive(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.output()[-3000:]
        return True

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port or 0), timeout=0.2):
                return True
        except OSError:
            return False

    def output(self) -> str:
        """What this run of the process has logged so far."""
        with open(self.log, "rb") as log:
            log.seek(self._offset)
            return log.read().decode(errors="replace")

    def kill(self) -> None:
        """``kill -9``: nothing is released or recorded."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


class Daphne:
    """The Procfile's ``web:`` process (daphne) on the test database, its log in ``log``."""

    def __init__(self, log: Path) -> None:
        self.log = log
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> Daphne:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "EXPERIMENT_BOT_"))}
        env.update({"DJANGO_SETTINGS_MODULE": "statsbot_site.settings", "DATABASE_URL": server_database_url(),
                    "PUBLIC_URL": self.url})
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
                 "statsbot_site.asgi:application"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

        def listening() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        wait_until(listening, timeout, "daphne to listen")
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
