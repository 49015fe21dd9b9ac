"""The user-side API (web chat, driver) and the synchronous test driver."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import httpx
import pytest

from tg_sandbox import SandboxServer, SandboxThread
from tg_sandbox.testing import SandboxDriver, SandboxDriverError

from .helpers import call

USER = 5005
KEYBOARD = {
    "inline_keyboard": [
        [{"text": "🔌 Connect Local Worker", "callback_data": "connect"}],
        [{"text": "Docs", "url": "https://example.org/docs"}],
    ]
}


class FakeBot:
    """Plays the bot by calling the Bot API directly (synchronously)."""

    def __init__(self, sandbox: SandboxThread) -> None:
        self.base = f"{sandbox.api_base_url}{sandbox.token}"

    def __call__(self, method: str, **params: object) -> dict:
        response = httpx.post(f"{self.base}/{method}", json=params)
        body = response.json()
        assert body["ok"], body
        return body["result"]


@pytest.fixture
def bot(sandbox_thread: SandboxThread) -> FakeBot:
    return FakeBot(sandbox_thread)


async def test_it_long_polls_user_events_until_one_arrives(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = f"{sandbox.url}/sandbox/api/users/{USER}"
    async with http.post(f"{base}/messages", json={"text": "/start", "first_name": "Flo"}) as response:
        sent = await response.json()
    assert sent["text"] == "/start" and sent["version"] == 1 and sent["deleted"] is False
    assert sent["from"] == {"id": USER, "is_bot": False, "first_name": "Flo", "language_code": "en"}
    after = sent["event_seq"]

    async def poll() -> dict:
        async with http.get(f"{base}/events", params={"after": after, "timeout": 30}) as response:
            return await response.json()

    waiting = asyncio.create_task(poll())
    await call(
        http,
        sandbox.api_base_url,
        sandbox.token,
        "sendMessage",
        chat_id=USER,
        text="<b>Hi</b>",
        parse_mode="HTML",
        reply_markup=KEYBOARD,
    )
    body = await asyncio.wait_for(waiting, 10)
    [event] = body["events"]
    assert body["last"] == event["seq"] == after + 1
    assert event["kind"] == "message"
    assert event["message"]["text"] == "Hi"
    assert event["message"]["entities"] == [{"offset": 0, "length": 2, "type": "bold"}]
    assert event["message"]["from"]["is_bot"] is True
    assert event["message"]["version"] == 1

    async with http.get(f"{base}/events", params={"after": 0, "timeout": 5}) as response:
        everything = await response.json()
    assert [e["kind"] for e in everything["events"]] == ["message", "message"]


async def test_it_lists_messages_with_versions_and_history(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    sandbox.state.user_send_text(USER, "hi")
    _, sent = await call(http, sandbox.api_base_url, sandbox.token, "sendMessage", chat_id=USER, text="v1")
    await call(
        http,
        sandbox.api_base_url,
        sandbox.token,
        "editMessageText",
        chat_id=USER,
        message_id=sent["result"]["message_id"],
        text="v2",
    )
    async with http.get(
        f"{sandbox.url}/sandbox/api/users/{USER}/messages", params={"history": "1"}
    ) as response:
        body = await response.json()
    user_message, bot_message = body["messages"]
    assert user_message["text"] == "hi"
    assert (bot_message["text"], bot_message["version"]) == ("v2", 2)
    assert [old["text"] for old in bot_message["history"]] == ["v1"]
    assert body["user"]["first_name"] == f"User {USER}"


async def test_it_refuses_callbacks_for_buttons_that_do_not_exist(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    sandbox.state.user_send_text(USER, "hi")
    _, sent = await call(
        http,
        sandbox.api_base_url,
        sandbox.token,
        "sendMessage",
        chat_id=USER,
        text="x",
        reply_markup=KEYBOARD,
    )
    base = f"{sandbox.url}/sandbox/api/users/{USER}/callback"
    async with http.post(
        base, json={"message_id": sent["result"]["message_id"], "data": "forged"}
    ) as response:
        assert response.status == 400
        assert "no button with callback_data 'forged'" in (await response.json())["error"]
    async with http.post(base, json={"message_id": 99, "data": "connect"}) as response:
        assert response.status == 404
    async with http.post(
        base, json={"message_id": sent["result"]["message_id"], "data": "connect"}
    ) as response:
        query_id = (await response.json())["callback_query_id"]
    _, updates = await call(http, sandbox.api_base_url, sandbox.token, "getUpdates")
    callback = updates["result"][-1]["callback_query"]
    assert callback["id"] == query_id
    assert callback["data"] == "connect"
    assert callback["message"]["message_id"] == sent["result"]["message_id"]
    assert callback["from"]["id"] == USER
    assert callback["chat_instance"]


def test_it_drives_a_conversation_with_cursor_semantics(driver: SandboxDriver, bot: FakeBot) -> None:
    user = driver.user(USER, first_name="Ann", username="ann")
    sent = user.send("/start")
    assert sent["text"] == "/start" and sent["from"]["username"] == "ann"
    bot("sendMessage", chat_id=USER, text="Welcome")
    menu = bot(
        "sendMessage",
        chat_id=USER,
        text="<b>Connect</b> your worker",
        parse_mode="HTML",
        reply_markup=KEYBOARD,
    )

    found = user.wait_for_message(contains="Connect", timeout=5)
    assert found["message_id"] == menu["message_id"]
    assert found["text"] == "Connect your worker"  # plain text, entities stripped
    with pytest.raises(AssertionError):
        user.wait_for_message(contains="Welcome", timeout=0.2)  # before the cursor now

    query_id = user.tap("🔌 Connect Local Worker")
    bot("answerCallbackQuery", callback_query_id=query_id, text="Connecting…")
    bot("editMessageText", chat_id=USER, message_id=menu["message_id"], text="Connected: 100%")
    assert user.wait_for_callback_answer(query_id, timeout=5)["text"] == "Connecting…"
    edited = user.wait_for_edit(menu["message_id"], contains="100%", timeout=5)
    assert edited["version"] == 2 and "reply_markup" not in edited
    assert user.last_bot_message()["text"] == "Connected: 100%"
    assert [m["text"] for m in user.messages()] == ["/start", "Welcome", "Connected: 100%"]


def test_it_explains_a_timeout_with_the_end_of_the_chat(driver: SandboxDriver, bot: FakeBot) -> None:
    user = driver.user(USER, first_name="Ann")
    user.send("/train")
    bot("sendMessage", chat_id=USER, text="Which file?", reply_markup=KEYBOARD)
    with pytest.raises(AssertionError) as error:
        user.wait_for_message(contains="Training started", timeout=0.3)
    message = str(error.value)
    assert "waiting for a new bot message containing 'Training started'" in message
    assert "bot: Which file? [buttons: 🔌 Connect Local Worker | Docs]" in message
    assert "user: /train" in message


def test_it_lists_the_buttons_it_saw_when_tapping_a_missing_one(driver: SandboxDriver, bot: FakeBot) -> None:
    user = driver.user(USER)
    user.send("/start")
    bot("sendMessage", chat_id=USER, text="menu", reply_markup=KEYBOARD)
    with pytest.raises(SandboxDriverError) as error:
        user.tap("Disconnect")
    assert "no inline button 'Disconnect'" in str(error.value)
    assert "'🔌 Connect Local Worker'" in str(error.value) and "'Docs'" in str(error.value)
    assert user.tap("Docs") == "https://example.org/docs"


def test_it_uploads_files_and_waits_with_a_predicate(
    driver: SandboxDriver, bot: FakeBot, tmp_path: Path
) -> None:
    user = driver.user(USER)
    path = tmp_path / "sales.csv"
    path.write_text("region,amount\nnorth,3\n")
    uploaded = user.upload(path, caption="my data")
    assert uploaded["document"]["file_name"] == "sales.csv"
    assert uploaded["document"]["mime_type"] == "text/csv"
    assert user.download(uploaded["document"]["file_id"]) == path.read_bytes()
    bot("sendChatAction", chat_id=USER, action="upload_document")
    bot("sendDocument", chat_id=USER, document=uploaded["document"]["file_id"], caption="echo")
    assert user.wait_for_chat_action("upload_document", timeout=5)["kind"] == "chat_action"
    echoed = user.wait_for_message(predicate=lambda m: "document" in m, timeout=5)
    assert echoed["caption"] == "echo"


def test_it_exposes_stats_and_faults_through_the_driver(driver: SandboxDriver, bot: FakeBot) -> None:
    user = driver.user(USER)
    user.send("hello")
    rule = driver.add_fault("sendMessage", "429", retry_after=5)
    assert rule["retry_after"] == 5
    assert driver.faults() == [rule]
    response = httpx.post(f"{bot.base}/sendMessage", json={"chat_id": USER, "text": "x"})
    assert response.status_code == 429 and response.json()["parameters"] == {"retry_after": 5}
    driver.add_fault("sendMessage", "5xx")
    driver.clear_faults()
    bot("sendMessage", chat_id=USER, text="ok")
    stats = driver.stats()
    assert stats["calls"]["sendMessage"] == 2
    assert stats["too_many_requests"] == 1
    assert stats["flood_limited"] == 0
    assert driver.reset_stats()["calls"] == {}
    info = driver.bot_info()
    assert info["bot"]["username"] == "statsbot_sandbox_bot"


def test_it_serves_the_web_chat_page_and_assets(sandbox_thread: SandboxThread) -> None:
    page = httpx.get(f"{sandbox_thread.url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for element_id in ("name-input", "start-chat", "message-input", "send-button"):
        assert f'id="{element_id}"' in page.text
    script = httpx.get(f"{sandbox_thread.url}/static/chat.js")
    assert script.status_code == 200 and "innerHTML" not in script.text.replace("(never innerHTML)", "")
    assert httpx.get(f"{sandbox_thread.url}/static/chat.css").status_code == 200


def test_it_runs_state_code_on_the_sandbox_loop(sandbox_thread: SandboxThread) -> None:
    stored, seq = sandbox_thread.call(sandbox_thread.state.user_send_text, USER, "from another thread")
    assert stored.payload["text"] == "from another thread" and seq >= 1
    assert sandbox_thread.call(sandbox_thread.state.wait_until_polling, 0.05) is False


def test_it_waits_until_a_bot_listens(driver: SandboxDriver, sandbox_thread: SandboxThread) -> None:
    assert driver.bot_info()["listening"] is False
    with pytest.raises(AssertionError, match="no bot polled the sandbox"):
        driver.wait_for_bot(timeout=0.2)
    bot = FakeBot(sandbox_thread)
    bot("setWebhook", url="http://127.0.0.1:9/hook")
    assert driver.wait_for_bot(timeout=5)["webhook"]["url"] == "http://127.0.0.1:9/hook"
    bot("deleteWebhook")
    assert driver.bot_info()["listening"] is False
