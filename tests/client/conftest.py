"""Fixtures for the experiment_bot client tests: a fake API server and isolated bots."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
for folder in (HERE, HERE.parents[1] / "client"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import experiment_bot  # noqa: E402
from experiment_bot import tracker  # noqa: E402
from experiment_bot.client import ExperimentBot  # noqa: E402
from experiment_bot_fake import TEST_KEY, FakeServer  # noqa: E402


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No EXPERIMENT_BOT_* variables, a clean working directory, a private cache folder (the
    spool; subprocesses inherit it), fresh module state."""
    for name in list(os.environ):
        if name.startswith("EXPERIMENT_BOT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tracker, "_inherited_parent", None)
    monkeypatch.setattr(tracker, "_original_parent_env", None)
    experiment_bot._reset_default_bot()
    yield work
    experiment_bot._reset_default_bot()


@pytest.fixture
def fake() -> Any:
    server = FakeServer().start()
    yield server
    server.stop()


@pytest.fixture
def make_bot() -> Any:
    """Build bots pointed at a server with fast retries; all are closed after the test."""
    bots: list[ExperimentBot] = []

    def factory(server: Any, **kwargs: Any) -> ExperimentBot:
        url = server if isinstance(server, str) else server.url
        kwargs.setdefault("api_key", TEST_KEY)
        kwargs.setdefault("retry_base_delay", 0.02)
        kwargs.setdefault("retry_max_delay", 0.1)
        kwargs.setdefault("heartbeat_interval", 0)
        kwargs.setdefault("update_interval", 0)
        bot = ExperimentBot(server=url, **kwargs)
        bots.append(bot)
        return bot

    yield factory
    for bot in bots:
        bot.close(timeout=0.2)
