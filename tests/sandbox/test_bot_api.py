"""The Bot API emulator over HTTP: wire format, Telegram's errors and limits, edits."""

from __future__ import annotations

import json

import aiohttp
import pytest

from tg_sandbox import SandboxServer

from .helpers import call

USER = 1001
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are exactly "
    "the same as a current content and reply markup of the message"
)
KEYBOARD = {
    "inline_keyboard": [
        [{"text": "Go", "callback_data": "go"}, {"text": "Docs", "url": "https://example.org"}]
    ]
}


@pytest.fixture
def api(sandbox: SandboxServer, http: aiohttp.ClientSession):
    sandbox.state.user_send_text(USER, "/start", first_name="Ann", username="ann")

    async def invoke(method: str, **params: object) -> tuple[int, dict]:
        return await call(http, sandbox.api_base_url, sandbox.token, method, **params)

    return invoke


async def test_it_answers_get_me_with_the_bot_user(api) -> None:
    status, body = await api("getMe")
    assert status == 200
    assert body["ok"] is True
    assert body["result"]["id"] == 123456
    assert body["result"]["is_bot"] is True
    assert body["result"]["username"] == "statsbot_sandbox_bot"
    assert body["result"]["first_name"] == "StatsBot"


async def test_it_refuses_an_unknown_token_and_method(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    status, body = await call(http, sandbox.api_base_url, "999:wrong", "getMe")
    assert (status, body) == (401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
    status, body = await call(http, sandbox.api_base_url, sandbox.token, "sendTelepathy")
    assert (status, body) == (404, {"ok": False, "error_code": 404, "description": "Not Found"})


async def test_it_treats_method_names_case_insensitively_and_reads_query_and_forms(
    sandbox: SandboxServer, http: aiohttp.ClientSession, api
) -> None:
    async with http.get(f"{sandbox.api_base_url}{sandbox.token}/GETME") as response:
        assert (await response.json())["result"]["username"] == "statsbot_sandbox_bot"
    form = {
        "chat_id": str(USER),
        "text": "<b>form</b>",
        "parse_mode": "HTML",
        "reply_markup": json.dumps(KEYBOARD),
    }
    async with http.post(f"{sandbox.api_base_url}{sandbox.token}/sendmessage", data=form) as response:
        body = await response.json()
    assert body["result"]["text"] == "form"
    assert body["result"]["entities"] == [{"offset": 0, "length": 4, "type": "bold"}]
    assert body["result"]["reply_markup"] == KEYBOARD
    multipart = aiohttp.FormData()
    multipart.add_field("chat_id", str(USER))
    multipart.add_field("text", "multipart")
    async with http.post(f"{sandbox.api_base_url}{sandbox.token}/sendMessage", data=multipart()) as response:
        assert (await response.json())["result"]["text"] == "multipart"
    async with http.get(
        f"{sandbox.api_base_url}{sandbox.token}/sendMessage?chat_id={USER}&text=query"
    ) as response:
        assert (await response.json())["result"]["text"] == "query"


async def test_it_returns_a_full_telegram_message(api) -> None:
    status, body = await api(
        "sendMessage",
        chat_id=USER,
        text="Hi <i>Ann</i>, try /train",
        parse_mode="HTML",
        reply_markup=KEYBOARD,
        link_preview_options={"is_disabled": True},
        disable_notification=True,
    )
    assert status == 200
    message = body["result"]
    assert message["message_id"] == 2  # the user's /start was 1
    assert message["from"] == {
        "id": 123456,
        "is_bot": True,
        "first_name": "StatsBot",
        "username": "statsbot_sandbox_bot",
    }
    assert message["chat"] == {"id": USER, "first_name": "Ann", "username": "ann", "type": "private"}
    assert isinstance(message["date"], int)
    assert message["text"] == "Hi Ann, try /train"
    assert message["entities"] == [
        {"offset": 3, "length": 3, "type": "italic"},
        {"offset": 12, "length": 6, "type": "bot_command"},
    ]
    assert message["reply_markup"] == KEYBOARD
    assert "edit_date" not in message


@pytest.mark.parametrize(
    ("params", "description"),
    [
        ({"chat_id": 4242, "text": "hi"}, "Bad Request: chat not found"),
        ({"chat_id": "@someone", "text": "hi"}, "Bad Request: chat not found"),
        ({"text": "hi"}, "Bad Request: chat_id is empty"),
        ({"chat_id": USER, "text": ""}, "Bad Request: message text is empty"),
        ({"chat_id": USER}, "Bad Request: message text is empty"),
        ({"chat_id": USER, "text": "<b> </b>", "parse_mode": "HTML"}, "Bad Request: message text is empty"),
        ({"chat_id": USER, "text": "x" * 4097}, "Bad Request: message is too long"),
        ({"chat_id": USER, "text": "😀" * 2049}, "Bad Request: message is too long"),
        (
            {"chat_id": USER, "text": "a <foo>", "parse_mode": "HTML"},
            'Bad Request: can\'t parse entities: Unsupported start tag "foo" at byte offset 2',
        ),
        (
            {"chat_id": USER, "text": "<b>x", "parse_mode": "HTML"},
            "Bad Request: can't parse entities: Can't find end tag corresponding to start tag \"b\"",
        ),
        ({"chat_id": USER, "text": "Done.", "parse_mode": "MarkdownV2"}, "Bad Request: unsupported parse_mode"),
        ({"chat_id": USER, "text": "x", "parse_mode": "BBCode"}, "Bad Request: unsupported parse_mode"),
        (
            {"chat_id": USER, "text": "x", "reply_markup": {"inline_keyboard": [[{"text": "plain"}]]}},
            "Bad Request: can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard",
        ),
        (
            {
                "chat_id": USER,
                "text": "x",
                "reply_markup": {"inline_keyboard": [[{"text": "b", "callback_data": "d" * 65}]]},
            },
            "Bad Request: BUTTON_DATA_INVALID",
        ),
        (
            {"chat_id": USER, "text": "x", "reply_markup": "{not json"},
            "Bad Request: can't parse reply keyboard markup JSON object",
        ),
        (
            {"chat_id": USER, "text": "x", "reply_parameters": {"message_id": 999}},
            "Bad Request: message to be replied not found",
        ),
    ],
)
async def test_it_refuses_what_telegram_refuses(api, params: dict, description: str) -> None:
    status, body = await api("sendMessage", **params)
    assert (status, body) == (400, {"ok": False, "error_code": 400, "description": description})


async def test_it_accepts_exactly_4096_utf16_units(api) -> None:
    status, body = await api("sendMessage", chat_id=USER, text="😀" * 2048)
    assert status == 200
    assert len(body["result"]["text"]) == 2048


async def test_it_limits_captions_to_1024(api, sandbox: SandboxServer) -> None:
    photo_id = sandbox.state.store_file(b"\x89PNG\r\n\x1a\n", kind="photos").file_id
    status, body = await api("sendPhoto", chat_id=USER, photo=photo_id, caption="c" * 1025)
    assert (status, body["description"]) == (400, "Bad Request: message caption is too long")
    status, body = await api("sendPhoto", chat_id=USER, photo=photo_id, caption="c" * 1024)
    assert status == 200 and body["result"]["caption"] == "c" * 1024


async def test_it_replies_with_the_quoted_message(api) -> None:
    status, body = await api("sendMessage", chat_id=USER, text="answer", reply_parameters={"message_id": 1})
    assert status == 200
    assert body["result"]["reply_to_message"]["text"] == "/start"


async def test_it_edits_text_in_place_and_refuses_identical_edits(api, sandbox: SandboxServer) -> None:
    _, sent = await api("sendMessage", chat_id=USER, text="Training 0%", reply_markup=KEYBOARD)
    message_id = sent["result"]["message_id"]
    status, body = await api(
        "editMessageText",
        chat_id=USER,
        message_id=message_id,
        text="Training <b>50%</b>",
        parse_mode="HTML",
        reply_markup=KEYBOARD,
    )
    assert status == 200
    edited = body["result"]
    assert edited["text"] == "Training 50%"
    assert edited["entities"] == [{"offset": 9, "length": 3, "type": "bold"}]
    assert edited["reply_markup"] == KEYBOARD
    assert isinstance(edited["edit_date"], int)
    stored = sandbox.state.chats[USER].messages[message_id]
    assert stored.version == 2
    assert stored.history[0]["text"] == "Training 0%"

    status, body = await api(
        "editMessageText",
        chat_id=USER,
        message_id=message_id,
        text="Training <b>50%</b>",
        parse_mode="HTML",
        reply_markup=KEYBOARD,
    )
    assert (status, body["description"]) == (400, NOT_MODIFIED)
    # same text but without the keyboard is a change: Telegram drops the keyboard
    status, body = await api(
        "editMessageText", chat_id=USER, message_id=message_id, text="Training <b>50%</b>", parse_mode="HTML"
    )
    assert status == 200 and "reply_markup" not in body["result"]
    # same characters without the bold entity is a change too
    status, body = await api("editMessageText", chat_id=USER, message_id=message_id, text="Training 50%")
    assert status == 200 and "entities" not in body["result"]
    assert sandbox.state.chats[USER].messages[message_id].version == 4


async def test_it_refuses_edits_of_missing_or_foreign_messages(api) -> None:
    status, body = await api("editMessageText", chat_id=USER, message_id=999, text="x")
    assert (status, body["description"]) == (400, "Bad Request: message to edit not found")
    status, body = await api("editMessageText", chat_id=USER, message_id=1, text="x")
    assert (status, body["description"]) == (400, "Bad Request: message can't be edited")


async def test_it_edits_and_removes_reply_markup(api) -> None:
    _, sent = await api("sendMessage", chat_id=USER, text="Pick", reply_markup=KEYBOARD)
    message_id = sent["result"]["message_id"]
    status, body = await api(
        "editMessageReplyMarkup", chat_id=USER, message_id=message_id, reply_markup=KEYBOARD
    )
    assert (status, body["description"]) == (400, NOT_MODIFIED)
    status, body = await api("editMessageReplyMarkup", chat_id=USER, message_id=message_id)
    assert status == 200
    assert body["result"]["text"] == "Pick" and "reply_markup" not in body["result"]


async def test_it_deletes_messages(api, sandbox: SandboxServer) -> None:
    _, sent = await api("sendMessage", chat_id=USER, text="temporary")
    message_id = sent["result"]["message_id"]
    assert await api("deleteMessage", chat_id=USER, message_id=message_id) == (
        200,
        {"ok": True, "result": True},
    )
    status, body = await api("deleteMessage", chat_id=USER, message_id=message_id)
    assert (status, body["description"]) == (400, "Bad Request: message to delete not found")
    assert [e["kind"] for e in sandbox.state.events_after(USER, 0)][-1] == "delete"


async def test_it_records_chat_actions_and_refuses_unknown_ones(api, sandbox: SandboxServer) -> None:
    assert await api("sendChatAction", chat_id=USER, action="typing") == (200, {"ok": True, "result": True})
    event = sandbox.state.events_after(USER, 0)[-1]
    assert (event["kind"], event["action"]) == ("chat_action", "typing")
    status, body = await api("sendChatAction", chat_id=USER, action="dancing")
    assert (status, body["description"]) == (400, "Bad Request: wrong parameter action in request")


async def test_it_stores_bot_commands_per_scope(api) -> None:
    commands = [
        {"command": "start", "description": "Begin"},
        {"command": "train", "description": "Train a model"},
    ]
    assert await api("setMyCommands", commands=commands) == (200, {"ok": True, "result": True})
    assert (await api("getMyCommands"))[1]["result"] == commands
    assert (await api("getMyCommands", language_code="de"))[1]["result"] == commands
    assert (await api("getMyCommands", scope={"type": "all_private_chats"}))[1]["result"] == []
    status, body = await api("setMyCommands", commands=[{"command": "Bad-Name", "description": "x"}])
    assert (status, body["description"]) == (400, "Bad Request: BOT_COMMAND_INVALID")
    await api("deleteMyCommands")
    assert (await api("getMyCommands"))[1]["result"] == []


async def test_it_records_callback_answers_once(api, sandbox: SandboxServer) -> None:
    _, sent = await api("sendMessage", chat_id=USER, text="Pick", reply_markup=KEYBOARD)
    query, _ = sandbox.state.user_callback(USER, sent["result"]["message_id"], "go")
    assert await api("answerCallbackQuery", callback_query_id=query.id, text="Done!") == (
        200,
        {"ok": True, "result": True},
    )
    event = sandbox.state.events_after(USER, 0)[-1]
    assert event["kind"] == "callback_answer"
    assert event["callback_answer"] == {
        "callback_query_id": query.id,
        "data": "go",
        "show_alert": False,
        "text": "Done!",
    }
    status, body = await api("answerCallbackQuery", callback_query_id=query.id)
    assert (status, body["description"]) == (
        400,
        "Bad Request: query is too old and response timeout expired or query ID is invalid",
    )


async def test_it_ignores_unknown_optional_parameters(api) -> None:
    status, body = await api(
        "sendMessage",
        chat_id=USER,
        text="x",
        protect_content=True,
        message_effect_id="1",
        allow_paid_broadcast=False,
        business_connection_id=None,
    )
    assert status == 200 and body["result"]["text"] == "x"


async def test_it_keeps_reply_keyboards_out_of_the_bots_message(
    api, sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    keyboard = {"keyboard": [["LightGBM", {"text": "Random Forest"}]], "one_time_keyboard": True}
    status, body = await api("sendMessage", chat_id=USER, text="Which model?", reply_markup=keyboard)
    assert status == 200 and "reply_markup" not in body["result"]
    async with http.get(f"{sandbox.url}/sandbox/api/users/{USER}/messages") as response:
        listing = await response.json()
    assert listing["messages"][-1]["client_reply_markup"] == keyboard
    assert listing["reply_keyboard"] == keyboard
    await api("sendMessage", chat_id=USER, text="ok", reply_markup={"remove_keyboard": True})
    async with http.get(f"{sandbox.url}/sandbox/api/users/{USER}/messages") as response:
        assert (await response.json())["reply_keyboard"] is None
    status, body = await api("sendMessage", chat_id=USER, text="x", reply_markup={"keyboard": [[1]]})
    assert (status, body["description"]) == (
        400,
        "Bad Request: can't parse keyboard button: KeyboardButton must be a String or an Object",
    )


def test_it_derives_the_bot_from_the_token_and_falls_back_to_defaults() -> None:
    assert SandboxServer("777:abc", bot_username="my_bot").state.bot_user() == {
        "id": 777,
        "is_bot": True,
        "first_name": "StatsBot",
        "username": "my_bot",
    }
    fallback = SandboxServer(None, bot_username="")
    assert fallback.token == "123456:SANDBOX-statsbot-local-token"
    assert fallback.state.bot_user()["username"] == "statsbot_sandbox_bot"
    with pytest.raises(ValueError, match="numeric id"):
        SandboxServer("not-a-token")
