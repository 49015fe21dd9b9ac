"""The first run, as a new user does it: headless Chromium in the sandbox web chat, the real bot,
the real worker started with the command the chat printed, then the client paired with the link
``experiment_bot.setup()`` printed. From ``/start`` to a trained model and a paired client."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sklearn.datasets import load_diabetes

from accounts.models import Account, ApiKey
from jobs.models import Job
from tests.browser import needs_chromium
from tests.stories.conftest import COMMAND_RE, WorkerProcess

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.slow, needs_chromium]


def bot_says(page, text: str, timeout: float = 30):
    """The newest bot message containing ``text``, once it is there."""
    message = page.locator(".message.bot", has_text=text).last
    message.wait_for(timeout=timeout * 1000)
    return message


def tap(message, label: str | re.Pattern[str]) -> None:
    message.locator(".inline-button", has_text=label).first.click()


def send(page, text: str) -> None:
    page.fill("#message-input", text)
    page.press("#message-input", "Enter")


def test_it_walks_the_first_run_from_start_to_a_trained_model_and_a_paired_client(running_bot, page, tmp_path):
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    load_diabetes(as_frame=True).frame.to_csv(home / "data" / "diabetes.csv", index=False)

    # The printed web app address says what it is and where the chat is.
    page.goto(f"{running_bot.web_url}/")
    page.locator("a", has_text="Telegram sandbox web chat").click()
    page.fill("#name-input", "Ann")
    page.click("#start-chat")
    send(page, "/start")
    welcome = bot_says(page, "Welcome to StatsBot, Ann!")
    assert "Local worker: ❌ Not connected" in welcome.inner_text()

    # Lost? Any text gets a short help with the next step as a button.
    send(page, "how do I start?")
    tap(bot_says(page, "I only understand commands here"), "Connect Local Worker")

    command = COMMAND_RE.search(bot_says(page, "Run this in a terminal").locator(".text").inner_text()).group(0)
    worker = WorkerProcess(command, home)
    try:
        bot_says(page, "Local Worker Connected!", timeout=90)

        send(page, "/train")
        tap(bot_says(page, "Where is the data?"), "Local Path")
        bot_says(page, "Send the path")
        send(page, "~/data/diabetes.csv")
        columns = bot_says(page, "Which column should the model predict?", timeout=60)
        tap(columns, re.compile(r"^target$"))
        tap(bot_says(page, "This looks like regression", timeout=60), "Regression")  # after the data checks
        tap(bot_says(page, "Which model?"), re.compile(r"^LightGBM$"))  # one model: ⭐ Auto searches for minutes
        tap(bot_says(page, "Ready to train"), "Start training")
        trained = bot_says(page, "Model trained", timeout=180)
        assert "Model id:" in trained.inner_text()
        job = running_bot.call(lambda: Job.objects.get(action="train"))
        assert job.state == Job.State.SUCCEEDED and job.params["file_path"] == "~/data/diabetes.csv"

        send(page, "/jobs")
        jobs = bot_says(page, "Your recent jobs")
        assert "on diabetes.csv" in jobs.inner_text() and "succeeded" in jobs.inner_text()
    finally:
        worker.stop()

    # Pair this machine's scripts with the chat: the link setup() prints opens the same chat.
    env = {**os.environ, "EXPERIMENT_BOT_URL": running_bot.web_url, "PYTHONPATH": str(ROOT / "client")}
    env.pop("EXPERIMENT_BOT_KEY", None)
    setup = subprocess.Popen([sys.executable, "-c", "import experiment_bot; experiment_bot.setup()"], cwd=tmp_path,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        link = next(word for line in setup.stdout for word in line.split() if "?start=pair_" in word)
        page.goto(link)  # the browser remembers Ann: the same chat
        tap(bot_says(page, "Pair a machine with this chat?"), "Approve")
        bot_says(page, "Paired!")
        output = setup.communicate(timeout=60)[0]
    finally:
        if setup.poll() is None:
            setup.kill()
    assert setup.returncode == 0, output
    key = re.search(r"EXPERIMENT_BOT_KEY=(exp_\S+)", (tmp_path / ".env").read_text()).group(1)
    account = running_bot.call(Account.objects.get, first_name="Ann")
    assert running_bot.call(lambda: ApiKey.authenticate(key).account_id) == account.pk
    assert errors == []
