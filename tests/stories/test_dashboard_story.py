"""A user watches their runs on one live message: ``/dashboard`` while a real client script
(``examples/dashboard.py``) runs three tracked processes, edited in place through the outbox,
until it stops updating once nothing has run for ``DASHBOARD_IDLE_AFTER``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from core.models import OutboxMessage
from notifications.models import TrackedProcess
from telegram_app.models import Dashboard
from tests.stories.test_notification_story import ROOT, private_cache, script_env, text_of  # noqa: F401

pytestmark = pytest.mark.e2e


@pytest.fixture
def api_key(running_bot, user) -> str:
    user.send("/start")
    welcome = user.wait_for_message("Welcome")
    return next(word for word in welcome["text"].split() if word.startswith("exp_"))


def _running(running_bot) -> int:
    return running_bot.call(lambda: TrackedProcess.objects.filter(state=TrackedProcess.State.RUNNING).count())


def test_it_keeps_one_dashboard_message_edited_while_a_script_runs_and_stops_when_idle(
    running_bot, user, api_key, settings, tmp_path
):
    settings.DASHBOARD_REFRESH = 1
    settings.DASHBOARD_IDLE_AFTER = 3600
    config = tmp_path / "experiment_bot.toml"  # progress and metrics sent every second, not every 10
    config.write_text("[settings]\nupdate_interval = 1\n")
    # Long enough for the shortest run (0.6 of it) to be seen running on a loaded CI machine.
    script = subprocess.Popen([sys.executable, str(ROOT / "examples" / "dashboard.py"), "--seconds", "20"],
                              env=script_env(running_bot, api_key, EXPERIMENT_BOT_CONFIG=str(config)),
                              stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        assert script.stdout.readline().strip() == "running: send /dashboard in the chat"
        user.send("/dashboard")
        board = user.wait_for_message(predicate=lambda m: "Dashboard" in text_of(m), timeout=30)
        user.wait_for_edit(board["message_id"], predicate=lambda m: "3 running" in text_of(m)
                           and text_of(m).count("resnet50") == 2 and "xgboost baseline" in text_of(m), timeout=30)
        assert script.wait(60) == 0, script.stdout.read()
    finally:
        if script.poll() is None:
            script.kill()

    idle = user.wait_for_edit(board["message_id"], predicate=lambda m: "Nothing is running" in text_of(m)
                              and text_of(m).count("finished in") == 3, timeout=30)
    assert "Recently ended" in text_of(idle) and "Stopped" not in text_of(idle)
    settings.DASHBOARD_IDLE_AFTER = 1  # (the bot reads it live) an hour later, as it were
    stopped = user.wait_for_edit(board["message_id"], "Stopped updating", timeout=30)
    assert "/dashboard" in text_of(stopped)
    # Every version the message went through (the sandbox keeps them), oldest first.
    [kept] = [m for m in user.messages(history=True) if m["message_id"] == board["message_id"]]
    versions = [text_of(version) for version in kept["history"]] + [text_of(stopped)]
    assert any("3 running" in v and "ETA" in v and "loss" in v and "%" in v and "🖥" in v and "💓" in v
               and "lr=0.01" in v for v in versions), versions

    dashboards = [m for m in user.bot_messages() if text_of(m).startswith("📋 Dashboard")]
    assert [m["message_id"] for m in dashboards] == [board["message_id"]], "one message, edited in place"
    assert stopped["version"] >= 3
    dashboard = running_bot.call(Dashboard.objects.get)
    assert dashboard.state == Dashboard.State.STOPPED
    rows = running_bot.call(lambda: list(OutboxMessage.objects.filter(edit_key=dashboard.edit_key)
                                         .values_list("state", flat=True)))
    assert set(rows) <= {OutboxMessage.State.SENT, OutboxMessage.State.SUPERSEDED}


def test_it_replaces_the_old_dashboard_and_stops_on_request(running_bot, user, api_key):
    user.send("/dashboard")
    first = user.wait_for_message("Nothing is running", timeout=30)
    user.send("/dashboard")
    second = user.wait_for_message("Nothing is running", timeout=30)
    assert second["message_id"] != first["message_id"]
    user.wait_for_edit(first["message_id"], "Replaced by a newer dashboard", timeout=30)

    user.send("/dashboard stop")
    user.wait_for_message("Dashboard stopped", timeout=30)
    user.wait_for_edit(second["message_id"], "Stopped (/dashboard stop)", timeout=30)
    user.send("/dashboard now please")
    assert "/dashboard stop" in text_of(user.wait_for_message("/dashboard —", timeout=30))


def test_it_lists_dashboard_in_help_and_the_command_menu(running_bot, user, driver):
    user.send("/help")
    assert "/dashboard" in text_of(user.wait_for_message("StatsBot", timeout=30))
    assert "dashboard" in [command["command"] for command in driver.bot_info()["commands"]]
