"""The web chat page in headless Chromium, against the sandbox and a real PTB bot."""

from __future__ import annotations

import html
from collections.abc import Iterator

import pytest

from tests.browser import needs_chromium
from tg_sandbox import SandboxThread

from .helpers import BotThread, build_demo_application

pytestmark = [
    pytest.mark.browser,
    needs_chromium,
]


@pytest.fixture
def bot(sandbox_thread: SandboxThread) -> Iterator[BotThread]:
    with BotThread(
        lambda: build_demo_application(
            sandbox_thread.token, sandbox_thread.api_base_url, sandbox_thread.file_base_url
        )
    ) as running:
        yield running


def test_it_chats_taps_and_sees_edits_in_the_browser(
    sandbox_thread: SandboxThread, bot: BotThread, page
) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{sandbox_thread.url}/")
    page.fill("#name-input", "Ann")
    page.click("#start-chat")

    page.fill("#message-input", "/start")
    page.press("#message-input", "Enter")
    reply = page.locator(".message.bot").first
    reply.locator(".inline-button").first.wait_for()
    assert reply.locator(".text").inner_text() == "Hi Ann! Worker: not connected.\nRun /start any time."
    assert reply.locator(".text strong").inner_text() == "Ann"
    assert reply.locator(".text em").inner_text() == "not connected"
    assert page.locator(".message.user .text").first.inner_text() == "/start"
    docs_button = page.locator("a.inline-button", has_text="Docs")
    assert docs_button.get_attribute("href") == "https://example.org/docs"

    page.click(".inline-button:has-text('Connect Local Worker')")
    page.locator(".message.bot .text", has_text="Local Worker Connected!").wait_for()
    assert reply.locator(".meta .edited").inner_text() == "edited"
    assert reply.locator(".inline-button").count() == 0  # the edit removed the keyboard
    page.locator("#toast", has_text="Connecting…").wait_for()

    page.fill("#message-input", "sales by region")
    page.click("#send-button")
    image = page.locator(".message img")
    image.wait_for()
    page.wait_for_function(
        "() => { const i = document.querySelector('.message img'); return i && i.naturalWidth === 64; }"
    )
    assert page.locator(".message.bot .text", has_text="Chart for: sales by region").count() == 1

    page.fill("#message-input", "/start")
    page.press("#message-input", "Enter")
    page.locator(".message.bot").nth(2).locator(".inline-button").first.wait_for()

    hostile = '<img src=x onerror="document.body.dataset.pwned=1"> & <b>not bold</b>'
    [chat_id] = sandbox_thread.state.chats
    bot.run_coroutine(bot.application.bot.send_message(chat_id, html.escape(hostile), parse_mode="HTML"))
    shown = page.locator(".message.bot .text", has_text="onerror")
    shown.wait_for()
    assert shown.inner_text() == hostile
    assert shown.locator("img, b").count() == 0
    assert page.evaluate("() => document.body.dataset.pwned") is None

    page.fill("#message-input", "/")
    page.locator(".command-hint", has_text="/start").wait_for()
    assert errors == []


def test_it_fits_a_phone_screen(sandbox_thread: SandboxThread, bot: BotThread, page) -> None:
    page.set_viewport_size({"width": 375, "height": 700})
    page.goto(f"{sandbox_thread.url}/")
    page.fill("#name-input", "Bo")
    page.click("#start-chat")
    page.fill("#message-input", "/start")
    page.click("#send-button")
    page.locator(".message.bot .inline-button").first.wait_for()
    from telegram import ReplyKeyboardMarkup

    [chat_id] = sandbox_thread.state.chats
    markup = ReplyKeyboardMarkup([["LightGBM", "Random Forest"]], one_time_keyboard=True)
    bot.run_coroutine(bot.application.bot.send_message(chat_id, "Which model?", reply_markup=markup))
    page.click(".reply-button:has-text('LightGBM')")
    page.locator(".message.user .text", has_text="LightGBM").wait_for()
    assert page.locator("#reply-keyboard").is_hidden()
    scroll_width = page.evaluate("() => document.documentElement.scrollWidth")
    assert scroll_width <= 375
    box = page.locator("#send-button").bounding_box()
    assert box is not None and box["x"] + box["width"] <= 375
