"""Records the sandbox keeps in memory, and the error type of the Bot API."""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field
from typing import Any


class BotApiError(Exception):
    """A Bot API failure, answered as ``{"ok": false, "error_code": status, "description": ...}``."""

    def __init__(self, status: int, description: str, *, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.retry_after = retry_after

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": False, "error_code": self.status, "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


def bad_request(reason: str) -> BotApiError:
    return BotApiError(400, f"Bad Request: {reason}")


class Signal:
    """A broadcast wake-up: waiters check their condition, then ``await wait()``; ``fire()``
    wakes every current waiter. All use happens on the sandbox's event loop, so checking a
    condition and starting to wait cannot miss a ``fire()`` in between."""

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def fire(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self, seconds: float | None) -> bool:
        """Wait for the next ``fire()``; False when ``seconds`` passed first (None: no limit)."""
        if self._event is None:
            self._event = asyncio.Event()
        event = self._event
        if seconds is not None and seconds <= 0:
            return False
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except TimeoutError:
            return False
        return True


@dataclass
class SandboxUser:
    """A Telegram user talking to the bot in a private chat."""

    id: int
    first_name: str
    username: str | None = None
    last_name: str | None = None
    language_code: str = "en"
    blocked: bool = False

    def to_user(self) -> dict[str, Any]:
        user: dict[str, Any] = {"id": self.id, "is_bot": False, "first_name": self.first_name}
        if self.last_name:
            user["last_name"] = self.last_name
        if self.username:
            user["username"] = self.username
        user["language_code"] = self.language_code
        return user

    def to_chat(self) -> dict[str, Any]:
        chat: dict[str, Any] = {"id": self.id, "first_name": self.first_name}
        if self.last_name:
            chat["last_name"] = self.last_name
        if self.username:
            chat["username"] = self.username
        chat["type"] = "private"
        return chat


@dataclass
class StoredFile:
    """Bytes the bot or a user uploaded, addressable by file_id and by file_path."""

    file_id: str
    file_unique_id: str
    data: bytes
    file_path: str
    file_name: str | None = None
    mime_type: str | None = None
    width: int | None = None
    height: int | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    def photo_size(self) -> dict[str, Any]:
        return {
            "file_id": self.file_id,
            "file_unique_id": self.file_unique_id,
            "file_size": self.size,
            "width": self.width or 1,
            "height": self.height or 1,
        }

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"file_id": self.file_id, "file_unique_id": self.file_unique_id}
        if self.file_name:
            doc["file_name"] = self.file_name
        if self.mime_type:
            doc["mime_type"] = self.mime_type
        doc["file_size"] = self.size
        return doc

    def file_object(self) -> dict[str, Any]:
        return {
            "file_id": self.file_id,
            "file_unique_id": self.file_unique_id,
            "file_size": self.size,
            "file_path": self.file_path,
        }


@dataclass
class StoredMessage:
    """A message in a private chat: its current Telegram payload plus edit history."""

    chat_id: int
    message_id: int
    from_bot: bool
    payload: dict[str, Any]
    version: int = 1
    history: list[dict[str, Any]] = field(default_factory=list)
    deleted: bool = False
    # A reply keyboard / removal / force_reply sent with the message: Telegram shows it to the
    # user but never returns it in the bot's Message, so only the user API sees it.
    client_markup: dict[str, Any] | None = None

    def public(self) -> dict[str, Any]:
        """The Telegram ``Message`` object, as the Bot API returns it."""
        return copy.deepcopy(self.payload)

    def view(self, *, with_history: bool = False) -> dict[str, Any]:
        """The message for the user API: Telegram's fields plus ``version`` and ``deleted``."""
        data = self.public()
        data["version"] = self.version
        data["deleted"] = self.deleted
        if self.client_markup is not None:
            data["client_reply_markup"] = copy.deepcopy(self.client_markup)
        if with_history:
            data["history"] = copy.deepcopy(self.history)
        return data

    def plain_text(self) -> str:
        return str(self.payload.get("text", self.payload.get("caption", "")))

    def content_key(self) -> tuple[Any, ...]:
        """What an edit must change for Telegram not to answer "message is not modified"."""
        p = self.payload
        return (
            p.get("text"),
            p.get("entities") or [],
            p.get("caption"),
            p.get("caption_entities") or [],
            p.get("reply_markup"),
        )


@dataclass
class PrivateChat:
    """The private chat between the bot and one user (chat id = user id, like Telegram)."""

    user: SandboxUser
    chat_instance: str
    messages: dict[int, StoredMessage] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    next_message_id: int = 1
    reply_keyboard: dict[str, Any] | None = None

    @property
    def id(self) -> int:
        return self.user.id

    def live_message(self, message_id: int | None) -> StoredMessage | None:
        message = self.messages.get(message_id) if message_id is not None else None
        if message is None or message.deleted:
            return None
        return message


@dataclass
class CallbackQuery:
    """A button press sent to the bot, and the bot's answer once it gives one."""

    id: str
    user_id: int
    message_id: int
    data: str
    answer: dict[str, Any] | None = None


@dataclass
class WebhookConfig:
    """The webhook set with setWebhook."""

    url: str
    secret_token: str | None = None
    max_connections: int = 40
    allowed_updates: list[str] | None = None
    last_error_date: int | None = None
    last_error_message: str | None = None
