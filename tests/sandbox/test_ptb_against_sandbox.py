"""The real python-telegram-bot against the sandbox, driven by the test driver."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter

from tg_sandbox import SandboxThread
from tg_sandbox.testing import SandboxDriver

from .helpers import BotThread, build_demo_application, make_png

USER = 6006


@pytest.fixture
def bot(sandbox_thread: SandboxThread) -> Iterator[BotThread]:
    build = lambda: build_demo_application(  # noqa: E731
        sandbox_thread.token, sandbox_thread.api_base_url, sandbox_thread.file_base_url
    )
    with BotThread(build) as running:
        yield running


def test_it_runs_a_ptb_conversation_end_to_end(bot: BotThread, driver: SandboxDriver) -> None:
    assert driver.wait_for_bot(timeout=10)["listening"] is True
    user = driver.user(USER, first_name="Ann", username="ann")
    user.send("/start")
    menu = user.wait_for_message(contains="Worker: not connected", timeout=10)
    assert menu["text"] == "Hi Ann! Worker: not connected.\nRun /start any time."
    assert {"offset": 3, "length": 3, "type": "bold"} in menu["entities"]
    assert [b["text"] for row in menu["reply_markup"]["inline_keyboard"] for b in row] == [
        "🔌 Connect Local Worker",
        "Docs",
    ]

    query_id = user.tap("🔌 Connect Local Worker")
    edited = user.wait_for_edit(menu["message_id"], contains="100%", timeout=10)
    assert edited["text"] == "✅ Local Worker Connected! 100%"
    assert edited["version"] == 2 and "reply_markup" not in edited
    assert user.wait_for_callback_answer(query_id, timeout=10)["text"] == "Connecting…"

    user.send("/Users/me/data/sales.csv")  # a path, not a command: the text handler answers
    photo = user.wait_for_message(predicate=lambda m: "photo" in m, timeout=10)
    assert photo["caption"] == "Chart for: /Users/me/data/sales.csv"
    [size] = photo["photo"]
    assert (size["width"], size["height"]) == (64, 48)
    assert user.download(size["file_id"]) == make_png(64, 48)
    assert driver.bot_info()["commands"] == [
        {"command": "start", "description": "Show the worker status"},
        {"command": "help", "description": "What I can do"},
    ]
    stats = driver.stats()
    assert stats["too_many_requests"] == 0
    assert stats["calls"]["sendPhoto"] == 1 and stats["calls"]["editMessageText"] == 1


# PTB itself warns about RetryAfter.retry_after becoming a timedelta when it builds the error.
@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
def test_it_raises_ptb_errors_like_telegram(bot: BotThread, driver: SandboxDriver) -> None:
    user = driver.user(USER, first_name="Ann")
    user.send("/start")
    user.wait_for_message(contains="Worker", timeout=10)
    app_bot = bot.application.bot

    with pytest.raises(BadRequest, match="(?i)can't parse entities: can't find end tag"):
        bot.run_coroutine(app_bot.send_message(USER, "<b>unclosed", parse_mode="HTML"))
    with pytest.raises(BadRequest, match="(?i)chat not found"):
        bot.run_coroutine(app_bot.send_message(987654, "hello"))
    with pytest.raises(BadRequest, match="(?i)message is too long"):
        bot.run_coroutine(app_bot.send_message(USER, "x" * 4097))

    driver.add_fault("sendMessage", "429", retry_after=3)
    with pytest.raises(RetryAfter) as retry:
        bot.run_coroutine(app_bot.send_message(USER, "flood"))
    retry_after = retry.value.retry_after  # a timedelta with PTB_TIMEDELTA (set in settings), else seconds
    assert getattr(retry_after, "total_seconds", lambda: retry_after)() == 3
    driver.add_fault("sendMessage", "5xx")
    with pytest.raises(NetworkError, match="Bad Gateway"):
        bot.run_coroutine(app_bot.send_message(USER, "gateway"))

    user.block()
    with pytest.raises(Forbidden, match="(?i)bot was blocked by the user"):
        bot.run_coroutine(app_bot.send_message(USER, "are you there?"))


def test_it_serves_uploads_to_ptb_get_file(bot: BotThread, driver: SandboxDriver, tmp_path) -> None:
    user = driver.user(USER, first_name="Ann")
    path = tmp_path / "sales.csv"
    path.write_bytes(b"region,amount\nnorth,3\n")
    user.upload(path)
    user.wait_for_message(contains="Got sales.csv", timeout=10)
    document = user.messages()[0]["document"]
    telegram_file = bot.run_coroutine(bot.application.bot.get_file(document["file_id"]))
    assert telegram_file.file_size == len(path.read_bytes())
    assert bytes(bot.run_coroutine(telegram_file.download_as_bytearray())) == path.read_bytes()
