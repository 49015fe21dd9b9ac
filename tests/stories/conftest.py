"""Whole user stories: the real bot, the real web app, the real worker script as a subprocess."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bot.conftest import driver, running_bot, user  # noqa: F401  (the same fixtures)

COMMAND_RE = re.compile(r"curl -sL \S+/worker \| python3 - --token=\S+")


class WorkerProcess:
    """The connect command run in a shell, as a user would paste it; output captured."""

    def __init__(self, command: str, home: Path) -> None:
        env = {
            **os.environ,
            "HOME": str(home),
            "STATSBOT_HOME": str(home / ".statsbot"),
            # `python3` in the pasted command is this interpreter, with the test's packages.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
        }
        self.lines: list[str] = []
        self._changed = threading.Condition()
        # Its own process group: stopping it stops the whole pipeline, not only bash (the worker,
        # `python3 -`, outlived every story and kept reconnecting: ~40 of them after a day's runs).
        self.process = subprocess.Popen(
            ["bash", "-c", command], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for_output(self, text: str, timeout: float = 60) -> str:
        with self._changed:
            found = self._changed.wait_for(lambda: any(text in line for line in self.lines), timeout)
        assert found, f"worker never printed {text!r}; output:\n" + "\n".join(self.lines[-30:])
        return next(line for line in self.lines if text in line)

    def stop(self) -> None:
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(5)
        self._signal(signal.SIGKILL)  # whatever the group still holds (the worker after bash)

    def _signal(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass


@pytest.fixture
def home(tmp_path) -> Path:
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    return home


@pytest.fixture
def connected_worker(running_bot, user, home) -> Iterator[WorkerProcess]:  # noqa: F811
    """/start, /connect, and the printed command run for real until the chat says it is connected."""
    user.send("/start")
    user.wait_for_message("Welcome")
    user.tap("🔌 Connect Local Worker")
    command = COMMAND_RE.search(user.wait_for_message("Connect Local Worker")["text"]).group(0)
    worker = WorkerProcess(command, home)
    try:
        user.wait_for_message("Local Worker Connected!", timeout=90)
        yield worker
    finally:
        worker.stop()
