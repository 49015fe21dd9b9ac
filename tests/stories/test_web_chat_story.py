"""A person tries StatsBot in the sandbox web chat: headless Chromium against the real bot.

Set SAVE_SCREENSHOT=1 to refresh docs/web-chat.png (the README's picture).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser import needs_chromium

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "web-chat.png"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,
    needs_chromium,
]


def test_it_starts_and_shows_the_connect_command_in_the_browser(running_bot, page):
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{running_bot.sandbox_url}/")
    page.fill("#name-input", "Ann")
    page.click("#start-chat")
    page.fill("#message-input", "/start")
    page.press("#message-input", "Enter")

    welcome = page.locator(".message.bot", has_text="Welcome to StatsBot, Ann!")
    welcome.wait_for()
    assert "Local worker: ❌ Not connected" in welcome.locator(".text").inner_text()
    welcome.locator(".inline-button", has_text="Connect Local Worker").click()

    command = page.locator(".message.bot", has_text="Run this in a terminal").last
    command.locator(".text code").first.wait_for()
    text = command.locator(".text").inner_text()
    assert f"curl -sL {running_bot.web_url}/worker | python3 - --token=sbt_" in text
    assert "Token expires in 5 minutes" in text
    assert errors == []
    if os.environ.get("SAVE_SCREENSHOT") == "1":
        page.screenshot(path=str(SCREENSHOT))


def test_it_pairs_a_machine_by_opening_the_printed_link(running_bot, page, tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "EXPERIMENT_BOT_URL": running_bot.web_url, "PYTHONPATH": str(root / "client")}
    env.pop("EXPERIMENT_BOT_KEY", None)
    setup = subprocess.Popen([sys.executable, "-c", "import experiment_bot; experiment_bot.setup()"], cwd=tmp_path,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        link = next(word for line in setup.stdout for word in line.split() if "?start=pair_" in word)
        assert link.startswith(f"{running_bot.sandbox_url}/?start=pair_")
        page.goto(link)
        page.fill("#name-input", "Ann")
        page.click("#start-chat")
        question = page.locator(".message.bot", has_text="Pair a machine with this chat?")
        question.locator(".inline-button", has_text="Approve").click()
        page.locator(".message.bot", has_text="Paired!").wait_for()
        output = setup.communicate(timeout=60)[0]
    finally:
        if setup.poll() is None:
            setup.kill()
    assert setup.returncode == 0, output
    assert "EXPERIMENT_BOT_KEY=exp_" in (tmp_path / ".env").read_text()
