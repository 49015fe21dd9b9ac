"""A stalled run does not stay "⏸️ stalled" forever: its message has a Dismiss button, and after
PROCESS_LOST_AFTER seconds without a heartbeat it is marked lost (and a heartbeat still brings it back)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import Account
from notifications import services
from notifications.models import TrackedProcess
from tests.stories.test_notification_story import private_cache, script_env, text_of  # noqa: F401

pytestmark = pytest.mark.e2e


@pytest.fixture
def api_key(running_bot, user) -> str:
    user.send("/start")
    welcome = user.wait_for_message("Welcome")
    return next(word for word in welcome["text"].split() if word.startswith("exp_"))


def _stalled_process(running_bot, user, name: str) -> str:
    """A tracked process whose heartbeats stopped an hour ago; the sweeps mark it stalled."""
    account = running_bot.call(Account.objects.get, telegram_user_id=user.user_id)
    process_uuid = str(uuid.uuid4())

    def start() -> None:
        services.start_process(account.active_key(), uuid=process_uuid, name=name, heartbeat_interval=5)
        TrackedProcess.objects.filter(uuid=process_uuid).update(
            last_heartbeat_at=timezone.now() - timedelta(hours=1))

    running_bot.call(start)
    return process_uuid


def _state(running_bot, process_uuid: str) -> str:
    return running_bot.call(lambda: TrackedProcess.objects.get(uuid=process_uuid).state)


def test_it_dismisses_a_killed_run_from_its_stalled_message(running_bot, user, api_key, settings):
    settings.HEARTBEAT_GRACE = 1
    script = textwrap.dedent("""
        import time
        from experiment_bot import bot
        with bot.track("doomed run", heartbeat_interval=1):
            print("started", flush=True)
            while True:
                time.sleep(0.5)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], env=script_env(running_bot, api_key),
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "started"
        user.wait_for_message("doomed run", timeout=30)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        stalled = user.wait_for_message(predicate=lambda m: "no heartbeat" in text_of(m), timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert "marked lost" in text_of(stalled)
    user.send("/status")
    assert "doomed run" in user.wait_for_message("Running processes")["text"]
    user.tap("🗑 Dismiss", message=stalled)
    edited = user.wait_for_edit(stalled["message_id"], "Dismissed")
    assert "doomed run" in edited["text"] and not (edited.get("reply_markup") or {}).get("inline_keyboard")
    assert running_bot.call(lambda: TrackedProcess.objects.get().state) == TrackedProcess.State.LOST
    user.send("/status")
    status = user.wait_for_message("Running processes")["text"]
    assert "doomed run" not in status


def test_it_marks_a_run_lost_after_the_configured_time_and_a_heartbeat_brings_it_back(
    running_bot, user, api_key, settings
):
    settings.PROCESS_LOST_AFTER = 2
    process_uuid = _stalled_process(running_bot, user, "overnight sweep")
    user.wait_for_message(predicate=lambda m: "overnight sweep" in text_of(m) and "no heartbeat" in text_of(m),
                          timeout=30)
    lost = user.wait_for_message(predicate=lambda m: "marked lost" in text_of(m) and "🪦" in text_of(m), timeout=30)
    assert "overnight sweep" in text_of(lost)
    assert _state(running_bot, process_uuid) == TrackedProcess.State.LOST
    user.send("/status")
    assert "overnight sweep" not in user.wait_for_message("Running processes")["text"]

    account = running_bot.call(Account.objects.get, telegram_user_id=user.user_id)
    running_bot.call(lambda: services.heartbeat(account.active_key(), uuid=process_uuid))
    user.wait_for_message(predicate=lambda m: "is back" in text_of(m), timeout=30)
    assert _state(running_bot, process_uuid) == TrackedProcess.State.RUNNING


def test_it_leaves_a_run_that_came_back_when_its_old_message_is_dismissed(running_bot, user, api_key):
    process_uuid = _stalled_process(running_bot, user, "flaky wifi run")
    stalled = user.wait_for_message(predicate=lambda m: "flaky wifi run" in text_of(m) and "no heartbeat" in text_of(m),
                                    timeout=30)
    account = running_bot.call(Account.objects.get, telegram_user_id=user.user_id)
    running_bot.call(lambda: services.heartbeat(account.active_key(), uuid=process_uuid))
    query_id = user.tap("🗑 Dismiss", message=stalled)
    assert "running again" in user.wait_for_callback_answer(query_id).get("text", "")
    assert _state(running_bot, process_uuid) == TrackedProcess.State.RUNNING
