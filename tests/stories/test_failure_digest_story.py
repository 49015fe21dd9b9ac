"""Several runs of one user fail together (a node went down): one digest message, not N alerts.

Real client scripts (``examples/failure_digest.py`` launches them as separate processes) against
the real server and bot, through the Telegram sandbox.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from core.models import OutboxMessage
from notifications.models import FailureDigest, TrackedProcess
from tests.stories.test_notification_story import ROOT, api_key, private_cache, script_env, text_of  # noqa: F401

pytestmark = pytest.mark.e2e

RUNS = 4
# The stories hold the first alert 10 s (the default is 5 s): on a loaded CI machine four scripts
# killed together may take a few seconds to report.
ALERT_WORDS = ("failed after", "cancelled after", "no heartbeat for", "marked lost")


def settled(running_bot) -> bool:
    """Every run has ended or stalled, and every outbox row is delivered (or folded)."""
    def check() -> bool:
        runs = TrackedProcess.objects.filter(state__in=["running"]).exists()
        waiting = OutboxMessage.objects.filter(state__in=["pending", "sending"]).exists()
        return TrackedProcess.objects.count() == RUNS and not runs and not waiting
    return bool(running_bot.call(check))


def wait_settled(running_bot, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not settled(running_bot):
        assert time.monotonic() < deadline, "the runs or their messages never settled"
        time.sleep(0.2)  # polling a condition, not synchronising on time


def launch(running_bot, api_key: str, *args: str) -> subprocess.CompletedProcess:  # noqa: F811
    return subprocess.run([sys.executable, str(ROOT / "examples" / "failure_digest.py"), "--runs", str(RUNS), *args],
                          env=script_env(running_bot, api_key), capture_output=True, text=True, timeout=120)


def failure_messages(user) -> list[dict]:
    """Messages telling of failures; each run's progress bar (edited to its end state) is not one."""
    return [m for m in user.bot_messages() if "░" not in text_of(m) and "▓" not in text_of(m)
            and ("🚨" in text_of(m) or any(w in text_of(m) for w in ALERT_WORDS))]


def test_it_sends_one_digest_when_four_runs_crash_or_are_killed_together(running_bot, user, api_key, settings):  # noqa: F811
    settings.FAILURE_DIGEST_WINDOW, settings.FAILURE_DIGEST_HOLD, settings.FAILURE_DIGEST_THRESHOLD = 60, 10, 3
    result = launch(running_bot, api_key)
    assert result.returncode == 0, result.stdout + result.stderr
    digest = user.wait_for_message(predicate=lambda m: "🚨" in text_of(m), timeout=60)
    wait_settled(running_bot)
    [only] = failure_messages(user)
    assert only["message_id"] == digest["message_id"]
    text = text_of(user.wait_for_edit(digest["message_id"], f"{RUNS} runs failed", timeout=30))
    for seed in range(RUNS):
        assert f"seed {seed}" in text
    assert text.count("crashed after") == 2 and text.count("killed (SIGTERM)") == 2
    assert text.count("CUDA error: an illegal memory access") == 2
    states = running_bot.call(lambda: sorted(TrackedProcess.objects.values_list("state", flat=True)))
    assert states == ["cancelled", "cancelled", "failed", "failed"]
    group = running_bot.call(FailureDigest.objects.get)
    assert sorted(m["what"] for m in group.members) == ["crashed", "crashed", "killed", "killed"]

    user.tap("🔎 seed 0", message=user.wait_for_edit(digest["message_id"], "seed 3"))
    details = user.wait_for_message(predicate=lambda m: "seed 0 failed after" in text_of(m), timeout=30)
    assert "Traceback" in text_of(details) and "CUDA error" in text_of(details)


def test_it_sends_one_digest_when_four_runs_are_killed_and_stall_together(running_bot, user, api_key, settings):  # noqa: F811
    settings.HEARTBEAT_GRACE = 1
    settings.FAILURE_DIGEST_WINDOW, settings.FAILURE_DIGEST_HOLD, settings.FAILURE_DIGEST_THRESHOLD = 60, 10, 3
    result = launch(running_bot, api_key, "--kill")
    assert result.returncode == 0, result.stdout + result.stderr
    digest = user.wait_for_message(predicate=lambda m: "🚨" in text_of(m), timeout=60)
    wait_settled(running_bot)
    [only] = failure_messages(user)
    text = text_of(user.wait_for_edit(only["message_id"], f"{RUNS} runs stopped sending heartbeats", timeout=30))
    assert only["message_id"] == digest["message_id"]
    assert text.count("⏸️ no heartbeat") == RUNS
    assert running_bot.call(lambda: set(TrackedProcess.objects.values_list("state", flat=True))) == {"stalled"}


def test_it_still_alerts_a_lone_crash_on_its_own(running_bot, user, api_key, settings):  # noqa: F811
    settings.FAILURE_DIGEST_WINDOW, settings.FAILURE_DIGEST_HOLD, settings.FAILURE_DIGEST_THRESHOLD = 60, 2, 3
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "crash.py")],
                            env=script_env(running_bot, api_key), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    crash = user.wait_for_message(predicate=lambda m: "failed after" in text_of(m), timeout=30)
    assert "train on sales.csv" in text_of(crash) and "🚨" not in text_of(crash)
    assert not [m for m in user.bot_messages() if "🚨" in text_of(m)]
