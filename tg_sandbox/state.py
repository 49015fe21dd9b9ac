"""The sandbox's in-memory world: users, private chats, messages, updates, files, stats.

All methods run on the sandbox's event loop (the Bot API and user API handlers call them);
from another thread go through ``SandboxThread.call``. ``faults`` and ``flood`` are
thread-safe and may be changed from anywhere.
"""

from __future__ import annotations

import copy
import itertools
import logging
import mimetypes
import re
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from tg_rules.images import image_size, image_type
from tg_rules.text import CAPTION_LIMIT, TEXT_LIMIT, utf16_len

from .entities import add_automatic_entities, sort_entities
from .faults import FaultQueue
from .flood import FloodConfig, FloodControl
from .models import (
    BotApiError,
    CallbackQuery,
    PrivateChat,
    SandboxUser,
    Signal,
    StoredFile,
    StoredMessage,
    WebhookConfig,
    bad_request,
)

logger = logging.getLogger(__name__)

DEFAULT_TOKEN = "123456:SANDBOX-statsbot-local-token"
DEFAULT_BOT_USERNAME = "statsbot_sandbox_bot"
DEFAULT_BOT_FIRST_NAME = "StatsBot"

UPDATE_TYPES = (
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "business_connection",
    "business_message",
    "edited_business_message",
    "deleted_business_messages",
    "message_reaction",
    "message_reaction_count",
    "inline_query",
    "chosen_inline_result",
    "callback_query",
    "shipping_query",
    "pre_checkout_query",
    "purchased_paid_media",
    "poll",
    "poll_answer",
    "my_chat_member",
    "chat_member",
    "chat_join_request",
    "chat_boost",
    "removed_chat_boost",
)
# Telegram's default when allowed_updates was never given.
DEFAULT_ALLOWED_UPDATES = tuple(
    kind for kind in UPDATE_TYPES if kind not in ("chat_member", "message_reaction", "message_reaction_count")
)
CONFLICT_OTHER_POLL = (
    "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"
)
CONFLICT_WEBHOOK = "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first"
MAX_EVENTS_PER_CHAT = 20_000
USER_TEXT_LIMIT = TEXT_LIMIT


class UserApiError(Exception):
    """A refused user-side action (answered with an HTTP error by the user API)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _bot_id_from_token(token: str) -> int:
    digits = token.split(":", 1)[0]
    if not digits.isdigit():
        raise ValueError(f"a bot token starts with the bot's numeric id, got {token!r}")
    return int(digits)


class SandboxState:
    """Everything the emulated Telegram knows."""

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        bot_username: str = DEFAULT_BOT_USERNAME,
        bot_first_name: str = DEFAULT_BOT_FIRST_NAME,
        flood_control: bool | FloodConfig = True,
        strict_html_ampersand: bool = True,
        webhook_max_attempts: int = 4,
    ) -> None:
        self.token = token
        self.bot_id = _bot_id_from_token(token)
        self.bot_username = bot_username
        self.bot_first_name = bot_first_name
        config = (
            flood_control if isinstance(flood_control, FloodConfig) else FloodConfig(enabled=flood_control)
        )
        self.flood = FloodControl(config)
        self.faults = FaultQueue()
        self.strict_html_ampersand = strict_html_ampersand
        self.webhook_max_attempts = webhook_max_attempts
        self.users: dict[int, SandboxUser] = {}
        self.chats: dict[int, PrivateChat] = {}
        self.files: dict[str, StoredFile] = {}
        self._files_by_path: dict[str, StoredFile] = {}
        self._file_counter = itertools.count(1)
        self.callbacks: dict[str, CallbackQuery] = {}
        self._callback_counter = itertools.count(int(time.time()) % 1_000_000 * 1_000_000 + 1)
        self.commands: dict[tuple[str, str], list[dict[str, str]]] = {}
        # updates
        self.updates: deque[dict[str, Any]] = deque()
        self._next_update_id = 100_000_001
        self.allowed_updates: tuple[str, ...] = DEFAULT_ALLOWED_UPDATES
        self.updates_signal = Signal()
        self._poll_generation = 0
        self.polls_in_progress = 0
        self.poll_signal = Signal()
        self.webhook: WebhookConfig | None = None
        # user-side events
        self._seq = 0
        self.events_signal = Signal()
        # stats
        self.calls: Counter[str] = Counter()
        self.status_counts: Counter[str] = Counter()
        self.flood_limited = 0
        self.updates_created = 0
        self.webhook_deliveries = 0
        self.closed = False

    # ------------------------------------------------------------------ identity

    def bot_user(self, *, full: bool = False) -> dict[str, Any]:
        user: dict[str, Any] = {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": self.bot_first_name,
            "username": self.bot_username,
        }
        if full:
            user.update(
                can_join_groups=True,
                can_read_all_group_messages=False,
                supports_inline_queries=False,
                can_connect_to_business=False,
                has_main_web_app=False,
            )
        return user

    def close(self) -> None:
        """Wake every long poll so the server can stop promptly."""
        self.closed = True
        self.updates_signal.fire()
        self.events_signal.fire()

    # ------------------------------------------------------------------ stats

    def record_call(self, method: str) -> None:
        self.calls[method] += 1

    def record_status(self, status: int, *, flood: bool = False) -> None:
        self.status_counts[str(status)] += 1
        if flood:
            self.flood_limited += 1

    def stats(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "status_counts": dict(self.status_counts),
            "too_many_requests": self.status_counts.get("429", 0),
            "flood_limited": self.flood_limited,
            "faults_applied": self.faults.applied,
            "faults_pending": [rule.to_dict() for rule in self.faults.rules()],
            "flood_control": self.flood.config.enabled,
            "updates_created": self.updates_created,
            "updates_pending": len(self.updates),
            "get_updates_in_progress": self.polls_in_progress,
            "webhook_deliveries": self.webhook_deliveries,
            "users": len(self.users),
            "messages": sum(len(chat.messages) for chat in self.chats.values()),
        }

    def reset_stats(self) -> None:
        self.calls.clear()
        self.status_counts.clear()
        self.flood_limited = 0
        self.updates_created = 0
        self.webhook_deliveries = 0
        self.faults.applied = 0

    # ------------------------------------------------------------------ users and chats

    def ensure_user(
        self, user_id: int, first_name: str | None = None, username: str | None = None
    ) -> SandboxUser:
        user = self.users.get(user_id)
        if user is None:
            user = SandboxUser(
                id=user_id, first_name=first_name or f"User {user_id}", username=username or None
            )
            self.users[user_id] = user
            self.chats[user_id] = PrivateChat(user=user, chat_instance=str(secrets.randbits(62)))
            logger.info("sandbox user %s (%s) joined", user_id, user.first_name)
        else:
            if first_name:
                user.first_name = first_name
            if username:
                user.username = username
        return user

    def chat_for_bot(self, chat_id: Any) -> PrivateChat:
        """The chat a Bot API call addresses; 400 "chat not found" unless its user wrote first."""
        if chat_id is None or chat_id == "":
            raise bad_request("chat_id is empty")
        try:
            key = int(chat_id)
        except (TypeError, ValueError):
            raise bad_request("chat not found") from None
        chat = self.chats.get(key)
        if chat is None:
            raise bad_request("chat not found")
        return chat

    @staticmethod
    def require_not_blocked(chat: PrivateChat) -> None:
        if chat.user.blocked:
            raise BotApiError(403, "Forbidden: bot was blocked by the user")

    def set_blocked(self, user_id: int, blocked: bool) -> SandboxUser:
        user = self.ensure_user(user_id)
        if user.blocked != blocked:
            user.blocked = blocked
            old, new = ("member", "kicked") if blocked else ("kicked", "member")
            self.push_update(
                "my_chat_member",
                {
                    "chat": user.to_chat(),
                    "from": user.to_user(),
                    "date": int(time.time()),
                    "old_chat_member": self._bot_member(old),
                    "new_chat_member": self._bot_member(new),
                },
            )
        return user

    def _bot_member(self, status: str) -> dict[str, Any]:
        member: dict[str, Any] = {"user": self.bot_user(), "status": status}
        if status == "kicked":
            member["until_date"] = 0
        return member

    # ------------------------------------------------------------------ messages and events

    def _emit(
        self, chat: PrivateChat, kind: str, message: StoredMessage | None, **extra: Any
    ) -> dict[str, Any]:
        self._seq += 1
        event: dict[str, Any] = {"seq": self._seq, "kind": kind, "date": int(time.time())}
        event["message"] = message.view() if message is not None else None
        event.update(extra)
        chat.events.append(event)
        if len(chat.events) > MAX_EVENTS_PER_CHAT:
            del chat.events[: len(chat.events) - MAX_EVENTS_PER_CHAT]
        self.events_signal.fire()
        return event

    @property
    def last_seq(self) -> int:
        return self._seq

    def add_message(
        self,
        chat: PrivateChat,
        *,
        from_bot: bool,
        fields: dict[str, Any],
        client_markup: dict[str, Any] | None = None,
    ) -> StoredMessage:
        message_id = chat.next_message_id
        chat.next_message_id += 1
        sender = self.bot_user() if from_bot else chat.user.to_user()
        payload: dict[str, Any] = {
            "message_id": message_id,
            "from": sender,
            "chat": chat.user.to_chat(),
            "date": int(time.time()),
        }
        payload.update(fields)
        stored = StoredMessage(
            chat_id=chat.id,
            message_id=message_id,
            from_bot=from_bot,
            payload=payload,
            client_markup=client_markup,
        )
        if client_markup is not None:
            chat.reply_keyboard = None if client_markup.get("remove_keyboard") else client_markup
        chat.messages[message_id] = stored
        self._emit(chat, "message", stored)
        return stored

    def edit_message(
        self, chat: PrivateChat, stored: StoredMessage, changes: dict[str, Any]
    ) -> StoredMessage:
        """Apply ``changes`` (a value of None removes the field), bump version, set edit_date."""
        stored.history.append(copy.deepcopy(stored.payload) | {"version": stored.version})
        for key, value in changes.items():
            if value is None or value == []:
                stored.payload.pop(key, None)
            else:
                stored.payload[key] = value
        stored.payload["edit_date"] = int(time.time())
        stored.version += 1
        self._emit(chat, "edit", stored)
        return stored

    def delete_message(self, chat: PrivateChat, stored: StoredMessage) -> None:
        stored.deleted = True
        self._emit(chat, "delete", stored)

    def chat_action(self, chat: PrivateChat, action: str) -> None:
        self._emit(chat, "chat_action", None, action=action)

    def events_after(self, user_id: int, after: int) -> list[dict[str, Any]]:
        chat = self.chats.get(user_id)
        if chat is None:
            return []
        return [event for event in chat.events if event["seq"] > after]

    async def wait_events(
        self, user_id: int, after: int, wait_seconds: float
    ) -> tuple[list[dict[str, Any]], int]:
        """Events of ``user_id``'s chat newer than ``after``, waiting up to ``wait_seconds`` for one."""
        deadline = time.monotonic() + max(0.0, wait_seconds)
        while True:
            events = self.events_after(user_id, after)
            if events:
                return events, events[-1]["seq"]
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed:
                return [], max(after, self._seq)
            await self.events_signal.wait(remaining)

    # ------------------------------------------------------------------ user actions

    def user_send_text(
        self, user_id: int, text: str, *, first_name: str | None = None, username: str | None = None
    ) -> tuple[StoredMessage, int]:
        """A user writes ``text`` to the bot; returns (message, its event seq)."""
        if not isinstance(text, str) or not text.strip():
            raise UserApiError(400, "text must be a non-empty string")
        if utf16_len(text) > USER_TEXT_LIMIT:
            raise UserApiError(400, f"text is longer than {USER_TEXT_LIMIT} characters")
        user = self.ensure_user(user_id, first_name, username)
        chat = self.chats[user_id]
        self._unblock_on_write(user)
        fields: dict[str, Any] = {"text": text}
        entities = sort_entities(add_automatic_entities(text, []))
        if entities:
            fields["entities"] = entities
        stored = self.add_message(chat, from_bot=False, fields=fields)
        self.push_update("message", stored.public())
        return stored, self._seq

    def user_upload(
        self,
        user_id: int,
        data: bytes,
        *,
        file_name: str,
        mime_type: str | None = None,
        caption: str | None = None,
        first_name: str | None = None,
        username: str | None = None,
    ) -> tuple[StoredMessage, int]:
        """A user sends a file as a document; returns (message, its event seq)."""
        if not data:
            raise UserApiError(400, "the file is empty")
        if caption and utf16_len(caption) > CAPTION_LIMIT:
            raise UserApiError(400, "caption is longer than 1024 characters")
        user = self.ensure_user(user_id, first_name, username)
        chat = self.chats[user_id]
        self._unblock_on_write(user)
        stored_file = self.store_file(data, kind="documents", file_name=file_name, mime_type=mime_type)
        fields: dict[str, Any] = {"document": stored_file.document()}
        if caption:
            fields["caption"] = caption
            entities = sort_entities(add_automatic_entities(caption, []))
            if entities:
                fields["caption_entities"] = entities
        stored = self.add_message(chat, from_bot=False, fields=fields)
        self.push_update("message", stored.public())
        return stored, self._seq

    def _unblock_on_write(self, user: SandboxUser) -> None:
        # A user who blocked the bot has to restart it before writing, as in Telegram.
        if user.blocked:
            self.set_blocked(user.id, False)

    def user_callback(self, user_id: int, message_id: int, data: str) -> tuple[CallbackQuery, int]:
        """A user taps an inline button whose callback_data is ``data`` on ``message_id``."""
        chat = self.chats.get(user_id)
        stored = chat.live_message(message_id) if chat else None
        if chat is None or stored is None:
            raise UserApiError(404, f"message {message_id} not found in the chat of user {user_id}")
        keyboard = (stored.payload.get("reply_markup") or {}).get("inline_keyboard") or []
        datas = [button.get("callback_data") for row in keyboard for button in row]
        if data not in datas:
            raise UserApiError(400, f"message {message_id} has no button with callback_data {data!r}")
        query = CallbackQuery(
            id=str(next(self._callback_counter)), user_id=user_id, message_id=message_id, data=data
        )
        self.callbacks[query.id] = query
        self.push_update(
            "callback_query",
            {
                "id": query.id,
                "from": chat.user.to_user(),
                "message": stored.public(),
                "chat_instance": chat.chat_instance,
                "data": data,
            },
        )
        return query, self._seq

    def answer_callback(self, query_id: str, answer: dict[str, Any]) -> None:
        query = self.callbacks.get(str(query_id))
        if query is None or query.answer is not None:
            raise bad_request("query is too old and response timeout expired or query ID is invalid")
        query.answer = answer
        chat = self.chats[query.user_id]
        self._emit(
            chat,
            "callback_answer",
            chat.messages.get(query.message_id),
            callback_answer={"callback_query_id": query.id, "data": query.data, **answer},
        )

    # ------------------------------------------------------------------ files

    def store_file(
        self, data: bytes, *, kind: str, file_name: str | None = None, mime_type: str | None = None
    ) -> StoredFile:
        """Keep uploaded bytes; ``kind`` is "photos" or "documents" (the file_path folder)."""
        number = next(self._file_counter)
        sniffed = image_type(data)
        if not mime_type or mime_type == "application/octet-stream":
            guessed = mimetypes.guess_type(file_name)[0] if file_name else None
            mime_type = guessed or sniffed or mime_type or "application/octet-stream"
        extension = ""
        if file_name and "." in file_name:
            extension = "." + re.sub(r"[^A-Za-z0-9]", "", file_name.rsplit(".", 1)[1])[:8]
        elif kind == "photos":
            extension = {"image/png": ".png", "image/gif": ".gif", "image/webp": ".webp"}.get(
                sniffed or "", ".jpg"
            )
        width = height = None
        if kind == "photos":
            size = image_size(data)
            width, height = size if size else (1, 1)
        stored = StoredFile(
            file_id=f"SBX{kind[0].upper()}{number}_{secrets.token_urlsafe(18)}",
            file_unique_id=f"U{number}{secrets.token_hex(4)}",
            data=data,
            file_path=f"{kind}/file_{number}{extension}",
            file_name=file_name,
            mime_type=mime_type,
            width=width,
            height=height,
        )
        self.files[stored.file_id] = stored
        self._files_by_path[stored.file_path] = stored
        return stored

    def file_by_path(self, path: str) -> StoredFile | None:
        return self._files_by_path.get(path)

    # ------------------------------------------------------------------ updates

    def push_update(self, kind: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """Queue an update for getUpdates or the webhook (dropped when not in allowed_updates)."""
        if kind not in self.allowed_updates:
            logger.debug("update of type %s dropped: not in allowed_updates", kind)
            return None
        update = {"update_id": self._next_update_id, kind: payload}
        self._next_update_id += 1
        self.updates.append(update)
        self.updates_created += 1
        self.updates_signal.fire()
        return update

    def _set_allowed_updates(self, allowed: Any) -> None:
        if allowed is None:
            return
        if not isinstance(allowed, list) or not all(isinstance(item, str) for item in allowed):
            raise bad_request("can't parse allowed updates")
        chosen = tuple(kind for kind in allowed if kind in UPDATE_TYPES)
        self.allowed_updates = chosen or DEFAULT_ALLOWED_UPDATES

    def confirm_updates(self, offset: int) -> None:
        if offset < 0:
            keep = -offset
            while len(self.updates) > keep:
                self.updates.popleft()
            return
        while self.updates and self.updates[0]["update_id"] < offset:
            self.updates.popleft()

    async def get_updates(
        self, *, offset: int | None, limit: int, poll_seconds: float, allowed_updates: Any
    ) -> list[dict[str, Any]]:
        """getUpdates: confirm below ``offset``, then return pending updates, long-polling up to
        ``poll_seconds`` (getUpdates' ``timeout``). A newer call ends an older waiting one with 409 Conflict."""
        if self.webhook is not None:
            raise BotApiError(409, CONFLICT_WEBHOOK)
        self._poll_generation += 1
        generation = self._poll_generation
        self.updates_signal.fire()  # an older poll still waiting must give way
        self._set_allowed_updates(allowed_updates)
        if offset is not None:
            self.confirm_updates(offset)
        limit = min(max(limit, 1), 100)
        deadline = time.monotonic() + max(0.0, poll_seconds)
        self.polls_in_progress += 1
        self.poll_signal.fire()
        try:
            while True:
                if generation != self._poll_generation:
                    raise BotApiError(409, CONFLICT_OTHER_POLL)
                if self.webhook is not None:
                    raise BotApiError(409, CONFLICT_WEBHOOK)
                if self.updates:
                    return [copy.deepcopy(update) for update in itertools.islice(self.updates, limit)]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed:
                    return []
                await self.updates_signal.wait(remaining)
        finally:
            self.polls_in_progress -= 1
            self.poll_signal.fire()

    async def wait_until_polling(self, wait_seconds: float) -> bool:
        """Wait until a getUpdates call is in progress (a bot is polling); False on timeout."""
        return await self._wait_poll_state(lambda: self.polls_in_progress > 0, wait_seconds)

    @property
    def bot_listening(self) -> bool:
        """A bot is polling getUpdates or has a webhook set."""
        return self.polls_in_progress > 0 or self.webhook is not None

    async def wait_for_bot(self, wait_seconds: float) -> bool:
        """Wait until a bot polls or has set a webhook; False on timeout."""
        return await self._wait_poll_state(lambda: self.bot_listening, wait_seconds)

    async def _wait_poll_state(self, ready: Callable[[], bool], wait_seconds: float) -> bool:
        deadline = time.monotonic() + wait_seconds
        while not ready():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed:
                return False
            await self.poll_signal.wait(remaining)
        return True

    # ------------------------------------------------------------------ webhook

    def set_webhook(
        self,
        url: str,
        *,
        secret_token: str | None,
        drop_pending: bool,
        max_connections: int,
        allowed_updates: Any,
    ) -> None:
        self._set_allowed_updates(allowed_updates)
        if drop_pending:
            self.updates.clear()
        if not url:
            self.webhook = None
        else:
            self.webhook = WebhookConfig(
                url=url,
                secret_token=secret_token or None,
                max_connections=max_connections,
                allowed_updates=list(allowed_updates) if isinstance(allowed_updates, list) else None,
            )
        logger.info("webhook %s", f"set to {url}" if url else "removed")
        self.updates_signal.fire()
        self.poll_signal.fire()

    def delete_webhook(self, *, drop_pending: bool) -> None:
        if drop_pending:
            self.updates.clear()
        self.webhook = None
        self.updates_signal.fire()
        self.poll_signal.fire()

    def webhook_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "url": self.webhook.url if self.webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(self.updates),
        }
        if self.webhook is not None:
            info["max_connections"] = self.webhook.max_connections
            if self.webhook.allowed_updates is not None:
                info["allowed_updates"] = self.webhook.allowed_updates
            if self.webhook.last_error_date is not None:
                info["last_error_date"] = self.webhook.last_error_date
                info["last_error_message"] = self.webhook.last_error_message
        return info

    # ------------------------------------------------------------------ commands

    @staticmethod
    def commands_key(scope: Any, language_code: str | None) -> tuple[str, str]:
        scope_type = scope.get("type", "default") if isinstance(scope, dict) else "default"
        chat = scope.get("chat_id") if isinstance(scope, dict) else None
        return (f"{scope_type}:{chat}" if chat is not None else scope_type, language_code or "")

    def get_commands(self, scope: Any = None, language_code: str | None = None) -> list[dict[str, str]]:
        key = self.commands_key(scope, language_code)
        commands = self.commands.get(key)
        if commands is None and key[1]:
            commands = self.commands.get((key[0], ""))
        return copy.deepcopy(commands or [])
