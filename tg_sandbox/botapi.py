"""The Bot API emulator: ``/bot<TOKEN>/<method>`` and ``/file/bot<TOKEN>/<file_path>``.

Answers use Telegram's wire format: ``{"ok": true, "result": ...}`` or
``{"ok": false, "error_code": N, "description": "...", "parameters": {...}}``, with the HTTP
status equal to ``error_code``, so python-telegram-bot raises the same exceptions it would
against Telegram.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from aiohttp import web

from tg_rules.images import image_size
from tg_rules.text import CAPTION_LIMIT, TEXT_LIMIT, utf16_len

from .entities import EntityParseError, UnsupportedParseModeError, format_text
from .faults import FaultRule
from .models import BotApiError, PrivateChat, StoredFile, StoredMessage, bad_request
from .params import Params, read_params
from .state import SandboxState

logger = logging.getLogger(__name__)

STATE_KEY: web.AppKey[SandboxState] = web.AppKey("sandbox_state", SandboxState)

MethodHandler = Callable[[SandboxState, Params], Awaitable[Any]]
METHODS: dict[str, tuple[str, MethodHandler]] = {}

PHOTO_UPLOAD_LIMIT = 10 * 1024 * 1024
DOCUMENT_UPLOAD_LIMIT = 50 * 1024 * 1024
DOWNLOAD_LIMIT = 20 * 1024 * 1024
MAX_POLL_TIMEOUT = 60.0
CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)
BUTTON_ACTIONS = (
    "url",
    "callback_data",
    "web_app",
    "login_url",
    "switch_inline_query",
    "switch_inline_query_current_chat",
    "switch_inline_query_chosen_chat",
    "copy_text",
    "callback_game",
    "pay",
)
NOT_MODIFIED = (
    "message is not modified: specified new message content and reply markup are exactly the same "
    "as a current content and reply markup of the message"
)

_dumps = partial(json.dumps, ensure_ascii=False)


def method(name: str) -> Callable[[MethodHandler], MethodHandler]:
    """Register a Bot API method handler under its canonical (camelCase) name."""

    def register(handler: MethodHandler) -> MethodHandler:
        METHODS[name.lower()] = (name, handler)
        return handler

    return register


# --------------------------------------------------------------------------- helpers


def _clean(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None and value != []}


def _format(state: SandboxState, text: str, parse_mode: str | None, entities: Any) -> tuple[str, list[Any]]:
    try:
        return format_text(text, parse_mode, entities, strict_ampersand=state.strict_html_ampersand)
    except UnsupportedParseModeError:
        raise bad_request("unsupported parse_mode") from None
    except EntityParseError as error:
        raise bad_request(f"can't parse entities: {error}") from None


def _text_fields(state: SandboxState, p: Params) -> dict[str, Any]:
    text = p.string("text")
    if not text:
        raise bad_request("message text is empty")
    plain, entities = _format(state, text, p.string("parse_mode"), p.json("entities"))
    if not plain:
        raise bad_request("message text is empty")
    if utf16_len(plain) > TEXT_LIMIT:
        raise bad_request("message is too long")
    return {"text": plain, "entities": entities or None}


def _caption_fields(state: SandboxState, p: Params) -> dict[str, Any]:
    caption = p.string("caption")
    if not caption:
        return {"caption": None, "caption_entities": None}
    plain, entities = _format(state, caption, p.string("parse_mode"), p.json("caption_entities"))
    if utf16_len(plain) > CAPTION_LIMIT:
        raise bad_request("message caption is too long")
    return {"caption": plain or None, "caption_entities": entities or None}


def _inline_keyboard(rows: Any) -> dict[str, Any] | None:
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise bad_request('field "inline_keyboard" of the InlineKeyboardMarkup must be an Array of Arrays')
    checked: list[list[dict[str, Any]]] = []
    for row in rows:
        buttons: list[dict[str, Any]] = []
        for button in row:
            if not isinstance(button, dict):
                raise bad_request(
                    "can't parse inline keyboard button: InlineKeyboardButton must be an Object"
                )
            if not isinstance(button.get("text"), str):
                raise bad_request('can\'t parse inline keyboard button: Field "text" must be of type String')
            button = {key: value for key, value in button.items() if value is not None}
            actions = [key for key in BUTTON_ACTIONS if key in button]
            if not actions:
                raise bad_request(
                    "can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard"
                )
            data = button.get("callback_data")
            if "callback_data" in button and (not isinstance(data, str) or not 1 <= len(data.encode()) <= 64):
                raise bad_request("BUTTON_DATA_INVALID")
            url = button.get("url")
            if "url" in button and (
                not isinstance(url, str) or not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$", url)
            ):
                raise bad_request(f"inline keyboard button URL '{url}' is invalid: Wrong HTTP URL")
            buttons.append(button)
        if buttons:
            checked.append(buttons)
    return {"inline_keyboard": checked} if checked else None


def _reply_markup(p: Params) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(inline keyboard to store on the message, reply keyboard / removal for the chat)."""
    raw = p.json("reply_markup", "can't parse reply keyboard markup JSON object")
    if raw is None:
        return None, None
    if not isinstance(raw, dict):
        raise bad_request("can't parse reply keyboard markup JSON object")
    if "inline_keyboard" in raw:
        return _inline_keyboard(raw["inline_keyboard"]), None
    if "keyboard" in raw:
        rows = raw["keyboard"]
        if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
            raise bad_request('field "keyboard" of the ReplyKeyboardMarkup must be an Array of Arrays')
        for button in (button for row in rows for button in row):
            if not isinstance(button, str) and not (
                isinstance(button, dict) and isinstance(button.get("text"), str)
            ):
                raise bad_request("can't parse keyboard button: KeyboardButton must be a String or an Object")
        return None, raw
    if "remove_keyboard" in raw or "force_reply" in raw:
        return None, raw
    raise bad_request("can't parse reply keyboard markup JSON object")


def _inline_markup_only(p: Params) -> dict[str, Any] | None:
    inline, other = _reply_markup(p)
    if other is not None:
        raise bad_request("inline keyboard expected")
    return inline


def _reply_to(p: Params, chat: PrivateChat) -> dict[str, Any] | None:
    params = p.json("reply_parameters")
    if isinstance(params, dict):
        message_id = params.get("message_id")
        allow = bool(params.get("allow_sending_without_reply"))
    else:
        message_id = p.integer("reply_to_message_id")
        allow = p.boolean("allow_sending_without_reply")
    if message_id is None:
        return None
    try:
        target = chat.live_message(int(message_id))
    except (TypeError, ValueError):
        target = None
    if target is None:
        if allow:
            return None
        raise bad_request("message to be replied not found")
    replied = target.public()
    replied.pop("reply_to_message", None)
    return replied


def _flood(state: SandboxState, chat: PrivateChat) -> None:
    retry_after = state.flood.acquire(chat.id)
    if retry_after is not None:
        state.flood_limited += 1
        logger.info("flood control: chat %s must wait %ss", chat.id, retry_after)
        raise BotApiError(429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after)


def _target_chat(state: SandboxState, p: Params) -> PrivateChat:
    chat = state.chat_for_bot(p.raw("chat_id"))
    state.require_not_blocked(chat)
    return chat


def _editable(state: SandboxState, p: Params) -> tuple[PrivateChat, StoredMessage]:
    if p.has("inline_message_id"):
        raise bad_request("MESSAGE_ID_INVALID")
    chat = _target_chat(state, p)
    stored = chat.live_message(p.integer("message_id"))
    if stored is None:
        raise bad_request("message to edit not found")
    if not stored.from_bot:
        raise bad_request("message can't be edited")
    return chat, stored


def _finish_edit(
    state: SandboxState, chat: PrivateChat, stored: StoredMessage, changes: dict[str, Any]
) -> dict[str, Any]:
    candidate = {**stored.payload, **changes}
    candidate = {key: value for key, value in candidate.items() if value is not None and value != []}
    preview = StoredMessage(chat.id, stored.message_id, True, candidate)
    if preview.content_key() == stored.content_key():
        raise bad_request(NOT_MODIFIED)
    _flood(state, chat)
    return state.edit_message(chat, stored, changes).public()


def _input_file(state: SandboxState, p: Params, name: str, *, kind: str) -> StoredFile:
    value = p.raw(name)
    upload = p.files.get(name)
    if upload is None and isinstance(value, str) and value.startswith("attach://"):
        upload = p.files.get(value[len("attach://") :])
        if upload is None:
            raise bad_request("wrong file identifier/HTTP URL specified")
    if upload is not None:
        if not upload.data:
            raise bad_request("file must be non-empty")
        limit = PHOTO_UPLOAD_LIMIT if kind == "photos" else DOCUMENT_UPLOAD_LIMIT
        if len(upload.data) > limit:
            raise BotApiError(413, "Request Entity Too Large")
        file_name = upload.filename if kind == "documents" else None
        return state.store_file(upload.data, kind=kind, file_name=file_name, mime_type=upload.content_type)
    if value is None or value == "":
        raise bad_request(f"there is no {name} in the request")
    if isinstance(value, str) and value in state.files:
        return state.files[value]
    raise bad_request("wrong file identifier/HTTP URL specified")


# --------------------------------------------------------------------------- methods


@method("getMe")
async def get_me(state: SandboxState, p: Params) -> Any:
    return state.bot_user(full=True)


@method("logOut")
async def log_out(state: SandboxState, p: Params) -> Any:
    return True


@method("close")
async def close(state: SandboxState, p: Params) -> Any:
    return True


@method("getUpdates")
async def get_updates(state: SandboxState, p: Params) -> Any:
    return await state.get_updates(
        offset=p.integer("offset"),
        limit=p.integer("limit", 100) or 100,
        poll_seconds=min(max(p.number("timeout", 0.0), 0.0), MAX_POLL_TIMEOUT),
        allowed_updates=p.json("allowed_updates"),
    )


@method("setWebhook")
async def set_webhook(state: SandboxState, p: Params) -> Any:
    url = (p.string("url") or "").strip()
    if url and not re.match(r"^https?://[^\s/]+", url):
        raise bad_request("bad webhook: An HTTPS URL must be provided for webhook")
    secret = p.string("secret_token")
    if secret and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", secret):
        raise bad_request("secret token contains unallowed characters")
    state.set_webhook(
        url,
        secret_token=secret,
        drop_pending=p.boolean("drop_pending_updates"),
        max_connections=p.integer("max_connections", 40) or 40,
        allowed_updates=p.json("allowed_updates"),
    )
    return True


@method("deleteWebhook")
async def delete_webhook(state: SandboxState, p: Params) -> Any:
    state.delete_webhook(drop_pending=p.boolean("drop_pending_updates"))
    return True


@method("getWebhookInfo")
async def get_webhook_info(state: SandboxState, p: Params) -> Any:
    return state.webhook_info()


@method("sendMessage")
async def send_message(state: SandboxState, p: Params) -> Any:
    chat = _target_chat(state, p)
    fields = _text_fields(state, p)
    inline, other = _reply_markup(p)
    reply = _reply_to(p, chat)
    _flood(state, chat)
    fields.update(reply_to_message=reply, reply_markup=inline)
    return state.add_message(chat, from_bot=True, fields=_clean(fields), client_markup=other).public()


@method("sendPhoto")
async def send_photo(state: SandboxState, p: Params) -> Any:
    chat = _target_chat(state, p)
    caption = _caption_fields(state, p)
    inline, other = _reply_markup(p)
    reply = _reply_to(p, chat)
    stored_file = _input_file(state, p, "photo", kind="photos")
    if stored_file.width is None:
        stored_file.width, stored_file.height = image_size(stored_file.data) or (1, 1)
    _flood(state, chat)
    fields = {
        "reply_to_message": reply,
        "photo": [stored_file.photo_size()],
        **caption,
        "reply_markup": inline,
    }
    if p.boolean("has_spoiler"):
        fields["has_media_spoiler"] = True
    return state.add_message(chat, from_bot=True, fields=_clean(fields), client_markup=other).public()


@method("sendDocument")
async def send_document(state: SandboxState, p: Params) -> Any:
    chat = _target_chat(state, p)
    caption = _caption_fields(state, p)
    inline, other = _reply_markup(p)
    reply = _reply_to(p, chat)
    stored_file = _input_file(state, p, "document", kind="documents")
    _flood(state, chat)
    fields = {
        "reply_to_message": reply,
        "document": stored_file.document(),
        **caption,
        "reply_markup": inline,
    }
    return state.add_message(chat, from_bot=True, fields=_clean(fields), client_markup=other).public()


@method("editMessageText")
async def edit_message_text(state: SandboxState, p: Params) -> Any:
    chat, stored = _editable(state, p)
    if "text" not in stored.payload:
        raise bad_request("there is no text in the message to edit")
    fields = _text_fields(state, p)
    fields["reply_markup"] = _inline_markup_only(p)
    return _finish_edit(state, chat, stored, fields)


@method("editMessageCaption")
async def edit_message_caption(state: SandboxState, p: Params) -> Any:
    chat, stored = _editable(state, p)
    if "text" in stored.payload:
        raise bad_request("there is no caption in the message to edit")
    fields = _caption_fields(state, p)
    fields["reply_markup"] = _inline_markup_only(p)
    return _finish_edit(state, chat, stored, fields)


@method("editMessageReplyMarkup")
async def edit_message_reply_markup(state: SandboxState, p: Params) -> Any:
    chat, stored = _editable(state, p)
    return _finish_edit(state, chat, stored, {"reply_markup": _inline_markup_only(p)})


@method("deleteMessage")
async def delete_message(state: SandboxState, p: Params) -> Any:
    chat = state.chat_for_bot(p.raw("chat_id"))
    stored = chat.live_message(p.integer("message_id"))
    if stored is None:
        raise bad_request("message to delete not found")
    state.delete_message(chat, stored)
    return True


@method("sendChatAction")
async def send_chat_action(state: SandboxState, p: Params) -> Any:
    chat = _target_chat(state, p)
    action = p.string("action")
    if action not in CHAT_ACTIONS:
        raise bad_request("wrong parameter action in request")
    state.chat_action(chat, action)
    return True


@method("answerCallbackQuery")
async def answer_callback_query(state: SandboxState, p: Params) -> Any:
    query_id = p.string("callback_query_id")
    if not query_id:
        raise bad_request("query is too old and response timeout expired or query ID is invalid")
    text = p.string("text")
    if text is not None and len(text) > 200:
        raise bad_request("MESSAGE_TOO_LONG")
    answer: dict[str, Any] = {"show_alert": p.boolean("show_alert")}
    if text:
        answer["text"] = text
    if p.string("url"):
        answer["url"] = p.string("url")
    state.answer_callback(query_id, answer)
    return True


@method("setMyCommands")
async def set_my_commands(state: SandboxState, p: Params) -> Any:
    commands = p.json("commands", "can't parse commands JSON object")
    if not isinstance(commands, list):
        raise bad_request('parameter "commands" is required')
    if len(commands) > 100:
        raise bad_request("BOT_COMMANDS_TOO_MUCH")
    checked = []
    for item in commands:
        if not isinstance(item, dict):
            raise bad_request("can't parse BotCommand: BotCommand must be an Object")
        command, description = item.get("command"), item.get("description")
        if not isinstance(command, str) or not re.fullmatch(r"[a-z0-9_]{1,32}", command):
            raise bad_request("BOT_COMMAND_INVALID")
        if not isinstance(description, str) or not 1 <= len(description.strip()) <= 256:
            raise bad_request("BOT_COMMAND_DESCRIPTION_INVALID")
        checked.append({"command": command, "description": description})
    key = state.commands_key(p.json("scope"), p.string("language_code"))
    if checked:
        state.commands[key] = checked
    else:
        state.commands.pop(key, None)
    return True


@method("getMyCommands")
async def get_my_commands(state: SandboxState, p: Params) -> Any:
    return state.get_commands(p.json("scope"), p.string("language_code"))


@method("deleteMyCommands")
async def delete_my_commands(state: SandboxState, p: Params) -> Any:
    state.commands.pop(state.commands_key(p.json("scope"), p.string("language_code")), None)
    return True


@method("getFile")
async def get_file(state: SandboxState, p: Params) -> Any:
    stored = state.files.get(p.string("file_id") or "")
    if stored is None:
        raise bad_request("invalid file_id")
    if stored.size > DOWNLOAD_LIMIT:
        raise bad_request("file is too big")
    return stored.file_object()


# --------------------------------------------------------------------------- dispatch


def _error_response(error: BotApiError) -> web.Response:
    return web.json_response(error.payload(), status=error.status, dumps=_dumps)


def _chat_id_of(p: Params) -> int | None:
    try:
        return int(p.raw("chat_id"))
    except (TypeError, ValueError):
        return None


async def _apply_fault(state: SandboxState, name: str, p: Params) -> FaultRule | None:
    """Apply the fault that matches this call, if any; a "slow_reply" is returned for after the call."""
    rule = state.faults.take(name, _chat_id_of(p))
    if rule is None:
        return None
    logger.info("fault %s injected into %s", rule.kind, name)
    if rule.kind == "slow":
        await asyncio.sleep(rule.delay)  # the injected fault itself: a slow Telegram
    elif rule.kind == "429":
        raise BotApiError(
            429, f"Too Many Requests: retry after {rule.retry_after}", retry_after=rule.retry_after
        )
    elif rule.kind == "5xx":
        raise BotApiError(502, "Bad Gateway")
    elif rule.kind == "blocked":
        raise BotApiError(403, "Forbidden: bot was blocked by the user")
    return rule


async def handle_bot_call(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    if request.match_info["token"] != state.token:
        state.record_status(401)
        return _error_response(BotApiError(401, "Unauthorized"))
    entry = METHODS.get(request.match_info["method"].lower())
    if entry is None:
        state.record_status(404)
        return _error_response(BotApiError(404, "Not Found"))
    name, handler = entry
    state.record_call(name)
    try:
        params = await read_params(request)
        rule = await _apply_fault(state, name, params)
        result = await handler(state, params)
        if rule is not None and rule.kind == "slow_reply":
            await asyncio.sleep(rule.delay)  # the injected fault: the call took effect, its answer is late
    except BotApiError as error:
        state.record_status(error.status)
        if error.status >= 500 or error.status == 429:
            logger.info("%s -> %s %s", name, error.status, error.description)
        return _error_response(error)
    state.record_status(200)
    return web.json_response({"ok": True, "result": result}, dumps=_dumps)


async def handle_file_download(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    if request.match_info["token"] != state.token:
        return _error_response(BotApiError(401, "Unauthorized"))
    stored = state.file_by_path(request.match_info["path"])
    if stored is None:
        return _error_response(BotApiError(404, "Not Found"))
    return web.Response(body=stored.data, content_type=stored.mime_type or "application/octet-stream")


def add_routes(app: web.Application) -> None:
    """Mount the Bot API on ``app`` (whose ``STATE_KEY`` holds the state)."""
    app.router.add_route("GET", "/bot{token}/{method}", handle_bot_call)
    app.router.add_route("POST", "/bot{token}/{method}", handle_bot_call)
    app.router.add_route("GET", "/file/bot{token}/{path:.+}", handle_file_download)
