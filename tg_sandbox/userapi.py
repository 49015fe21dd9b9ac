"""The user side of the sandbox: a JSON API for the web chat and the test driver.

Routes (all JSON unless noted):

- ``POST /sandbox/api/users/{user_id}/messages`` ``{text, first_name?, username?}`` → the user's
  Message (Telegram fields + ``version``, ``deleted``, ``event_seq``)
- ``POST /sandbox/api/users/{user_id}/callback`` ``{message_id, data}`` → ``{callback_query_id, event_seq}``
- ``POST /sandbox/api/users/{user_id}/upload`` multipart ``file`` (+ ``caption``, ``first_name``,
  ``username``) → the user's document Message
- ``GET  /sandbox/api/users/{user_id}/events?after=SEQ&timeout=S`` → ``{events, last}`` (long poll)
- ``GET  /sandbox/api/users/{user_id}/messages[?history=1]`` → ``{messages, last, user}``
- ``POST /sandbox/api/users/{user_id}/block`` ``{blocked}`` → ``{user}``
- ``GET  /sandbox/api/bot[?wait_listening=S]`` → ``{bot, commands, webhook, listening}``; with
  ``wait_listening`` it first waits up to S seconds for a bot to poll getUpdates or set a webhook
- ``GET  /sandbox/api/stats``, ``DELETE /sandbox/api/stats`` (reset)
- ``GET|POST|DELETE /sandbox/api/faults``
- ``GET|POST /sandbox/api/flood`` ``{enabled?, per_chat_burst?, per_chat_rate?, global_burst?, global_rate?}``
- ``GET  /sandbox/files/{file_id}`` → the bytes (photos inline, documents as attachments)
"""

from __future__ import annotations

import json
import logging
from functools import partial
from typing import Any

from aiohttp import web

from .botapi import STATE_KEY
from .faults import FaultRule
from .state import SandboxState, UserApiError

logger = logging.getLogger(__name__)

MAX_EVENTS_TIMEOUT = 60.0
_dumps = partial(json.dumps, ensure_ascii=False)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


def _user_id(request: web.Request) -> int:
    try:
        user_id = int(request.match_info["user_id"])
    except ValueError:
        raise UserApiError(400, "user_id must be an integer") from None
    if user_id <= 0:
        raise UserApiError(400, "user_id must be positive")
    return user_id


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise UserApiError(400, "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise UserApiError(400, "the body must be a JSON object")
    return body


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise UserApiError(400, f"{key} must be a string")
    return value.strip() or None


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except UserApiError as error:
        return _json({"ok": False, "error": error.message}, status=error.status)


def _state(request: web.Request) -> SandboxState:
    return request.app[STATE_KEY]


async def post_message(request: web.Request) -> web.Response:
    body = await _body(request)
    text = body.get("text")
    if not isinstance(text, str):
        raise UserApiError(400, "text must be a string")
    stored, seq = _state(request).user_send_text(
        _user_id(request),
        text,
        first_name=_optional_str(body, "first_name"),
        username=_optional_str(body, "username"),
    )
    return _json(stored.view() | {"event_seq": seq})


async def post_callback(request: web.Request) -> web.Response:
    body = await _body(request)
    message_id, data = body.get("message_id"), body.get("data")
    if not isinstance(message_id, int) or not isinstance(data, str):
        raise UserApiError(400, "message_id (integer) and data (string) are required")
    query, seq = _state(request).user_callback(_user_id(request), message_id, data)
    return _json({"callback_query_id": query.id, "event_seq": seq})


async def post_upload(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    if request.content_type != "multipart/form-data":
        raise UserApiError(400, "send the file as multipart/form-data in a part named 'file'")
    form = await request.post()
    upload = form.get("file")
    if not isinstance(upload, web.FileField):
        raise UserApiError(400, "no file part named 'file'")
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    stored, seq = _state(request).user_upload(
        user_id,
        upload.file.read(),
        file_name=upload.filename or "file",
        mime_type=upload.content_type,
        caption=_optional_str(fields, "caption"),
        first_name=_optional_str(fields, "first_name"),
        username=_optional_str(fields, "username"),
    )
    return _json(stored.view() | {"event_seq": seq})


async def get_events(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    try:
        after = int(request.query.get("after", "0"))
        timeout = min(max(float(request.query.get("timeout", "0")), 0.0), MAX_EVENTS_TIMEOUT)
    except ValueError:
        raise UserApiError(400, "after must be an integer and timeout a number") from None
    events, last = await _state(request).wait_events(user_id, after, timeout)
    return _json({"events": events, "last": last})


async def get_messages(request: web.Request) -> web.Response:
    state = _state(request)
    user_id = _user_id(request)
    with_history = request.query.get("history") in ("1", "true")
    chat = state.chats.get(user_id)
    messages = [m.view(with_history=with_history) for m in chat.messages.values()] if chat else []
    user = state.users.get(user_id)
    payload = {
        "messages": messages,
        "last": state.last_seq,
        "user": user.to_user() | {"blocked": user.blocked} if user else None,
        "reply_keyboard": chat.reply_keyboard if chat else None,
    }
    return _json(payload)


async def post_block(request: web.Request) -> web.Response:
    body = await _body(request)
    blocked = body.get("blocked")
    if not isinstance(blocked, bool):
        raise UserApiError(400, "blocked must be true or false")
    user = _state(request).set_blocked(_user_id(request), blocked)
    return _json({"user": user.to_user() | {"blocked": user.blocked}})


async def get_bot(request: web.Request) -> web.Response:
    state = _state(request)
    try:
        wait = min(max(float(request.query.get("wait_listening", "0")), 0.0), MAX_EVENTS_TIMEOUT)
    except ValueError:
        raise UserApiError(400, "wait_listening must be a number of seconds") from None
    if wait:
        await state.wait_for_bot(wait)
    return _json(
        {
            "bot": state.bot_user(),
            "commands": state.get_commands(),
            "webhook": state.webhook_info(),
            "listening": state.bot_listening,
        }
    )


async def get_stats(request: web.Request) -> web.Response:
    return _json(_state(request).stats())


async def delete_stats(request: web.Request) -> web.Response:
    state = _state(request)
    state.reset_stats()
    return _json(state.stats())


async def get_faults(request: web.Request) -> web.Response:
    return _json({"faults": [rule.to_dict() for rule in _state(request).faults.rules()]})


async def post_faults(request: web.Request) -> web.Response:
    body = await _body(request)
    items = body.get("faults", [body])
    if not isinstance(items, list):
        raise UserApiError(400, "faults must be a list of rules")
    allowed = set(FaultRule.__dataclass_fields__)
    added = []
    for item in items:
        if not isinstance(item, dict) or set(item) - allowed:
            raise UserApiError(400, f"a fault rule has only the fields {sorted(allowed)}")
        try:
            rule = FaultRule(**item)
        except (TypeError, ValueError) as error:
            raise UserApiError(400, str(error)) from None
        added.append(_state(request).faults.add(rule).to_dict())
    return _json({"added": added, "faults": [rule.to_dict() for rule in _state(request).faults.rules()]})


async def delete_faults(request: web.Request) -> web.Response:
    _state(request).faults.clear()
    return _json({"faults": []})


async def flood_settings(request: web.Request) -> web.Response:
    state = _state(request)
    config = state.flood.config
    if request.method == "POST":
        body = await _body(request)
        for key, value in body.items():
            if key == "enabled" and isinstance(value, bool):
                config.enabled = value
            elif key in ("per_chat_burst", "per_chat_rate", "global_burst", "global_rate") and isinstance(
                value, int | float
            ):
                setattr(config, key, float(value))
            else:
                raise UserApiError(400, f"unknown or invalid flood setting {key!r}")
        state.flood.reset()
    return _json(
        {
            "enabled": config.enabled,
            "per_chat_burst": config.per_chat_burst,
            "per_chat_rate": config.per_chat_rate,
            "global_burst": config.global_burst,
            "global_rate": config.global_rate,
        }
    )


async def get_file(request: web.Request) -> web.Response:
    stored = _state(request).files.get(request.match_info["file_id"])
    if stored is None:
        raise UserApiError(404, "no such file")
    mime = stored.mime_type or "application/octet-stream"
    response = web.Response(body=stored.data, content_type=mime)
    if stored.file_path.startswith("photos/") and mime.startswith("image/"):
        response.headers["Content-Disposition"] = "inline"
    else:
        name = (stored.file_name or stored.file_path.rsplit("/", 1)[-1]).replace('"', "")
        response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def add_routes(app: web.Application) -> None:
    """Mount the user API (needs ``app[STATE_KEY]``); adds its error middleware."""
    app.middlewares.append(_errors)
    r = app.router
    r.add_post("/sandbox/api/users/{user_id}/messages", post_message)
    r.add_get("/sandbox/api/users/{user_id}/messages", get_messages)
    r.add_post("/sandbox/api/users/{user_id}/callback", post_callback)
    r.add_post("/sandbox/api/users/{user_id}/upload", post_upload)
    r.add_get("/sandbox/api/users/{user_id}/events", get_events)
    r.add_post("/sandbox/api/users/{user_id}/block", post_block)
    r.add_get("/sandbox/api/bot", get_bot)
    r.add_get("/sandbox/api/stats", get_stats)
    r.add_delete("/sandbox/api/stats", delete_stats)
    r.add_get("/sandbox/api/faults", get_faults)
    r.add_post("/sandbox/api/faults", post_faults)
    r.add_delete("/sandbox/api/faults", delete_faults)
    r.add_get("/sandbox/api/flood", flood_settings)
    r.add_post("/sandbox/api/flood", flood_settings)
    r.add_get("/sandbox/files/{file_id}", get_file)
