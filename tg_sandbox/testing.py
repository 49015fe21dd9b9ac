"""A synchronous test driver for the sandbox's user API (httpx), usable whether the sandbox
runs in-process, in a thread or in another process.

    driver = SandboxDriver(sandbox_url)
    user = driver.user(1001, first_name="Ann", username="ann")
    user.send("/start")
    msg = user.wait_for_message(contains="Connect", timeout=10)
    user.tap("🔌 Connect Local Worker")
    user.wait_for_edit(msg["message_id"], contains="100%", timeout=30)

Waiting uses the events long poll with a deadline; a timeout raises AssertionError that shows
the end of the chat. Texts are compared with the plain text (entities stripped).
"""

from __future__ import annotations

import logging
import mimetypes
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

logger = logging.getLogger(__name__)

Message = dict[str, Any]
Predicate = Callable[[Message], bool]
T = TypeVar("T")

MAX_POLL_SECONDS = 10.0


class SandboxDriverError(AssertionError):
    """The sandbox refused a user action, or something awaited did not happen in time."""


def plain_text(message: Message | None) -> str:
    """The message's text, or its caption, or ""."""
    if not message:
        return ""
    return str(message.get("text") or message.get("caption") or "")


def buttons_of(message: Message) -> list[dict[str, Any]]:
    """The inline keyboard buttons of ``message``, row by row."""
    keyboard = (message.get("reply_markup") or {}).get("inline_keyboard") or []
    return [button for row in keyboard for button in row]


def _describe(message: Message) -> str:
    who = "bot" if message.get("from", {}).get("is_bot") else "user"
    if message.get("photo"):
        body = "[photo] " + plain_text(message)
    elif message.get("document"):
        body = f"[document {message['document'].get('file_name', '')}] " + plain_text(message)
    else:
        body = plain_text(message)
    body = body.replace("\n", "⏎ ")
    if len(body) > 160:
        body = body[:157] + "..."
    labels = [button.get("text", "") for button in buttons_of(message)]
    extra = f" [buttons: {' | '.join(labels)}]" if labels else ""
    flags = " (deleted)" if message.get("deleted") else ""
    version = message.get("version", 1)
    edited = f" v{version}" if version and version > 1 else ""
    return f"  #{message.get('message_id')} {who}{edited}{flags}: {body}{extra}"


class SandboxDriver:
    """Talks to a running sandbox at ``url`` (e.g. ``sandbox.url``)."""

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, timeout=timeout)

    def request(self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any) -> Any:
        """Call the user API; returns the decoded JSON, raises SandboxDriverError on an error answer."""
        if timeout is not None:
            kwargs["timeout"] = timeout
        response = self._client.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                reason = response.json().get("error", response.text)
            except ValueError:
                reason = response.text
            raise SandboxDriverError(f"{method} {path} -> {response.status_code}: {reason}")
        return response.json()

    def user(
        self, user_id: int, first_name: str | None = None, username: str | None = None
    ) -> SandboxUserDriver:
        """A user of the sandbox; created on the server by their first message."""
        return SandboxUserDriver(self, user_id, first_name or f"User{user_id}", username)

    def stats(self) -> dict[str, Any]:
        """Calls per method, ``too_many_requests`` (all 429s), ``flood_limited``, ..."""
        return self.request("GET", "/sandbox/api/stats")

    def reset_stats(self) -> dict[str, Any]:
        return self.request("DELETE", "/sandbox/api/stats")

    def add_fault(
        self,
        method: str = "*",
        kind: str = "5xx",
        *,
        count: int = 1,
        chat_id: int | None = None,
        retry_after: int = 1,
        delay: float = 1.0,
        duration: float = 0.0,
    ) -> dict[str, Any]:
        """Queue a fault rule (kind "429" | "5xx" | "slow" | "blocked" | "slow_reply"); returns it as stored.
        With ``duration`` the rule answers every matching call for that many seconds."""
        rule = {
            "method": method,
            "kind": kind,
            "count": count,
            "chat_id": chat_id,
            "retry_after": retry_after,
            "delay": delay,
            "duration": duration,
        }
        return self.request("POST", "/sandbox/api/faults", json=rule)["added"][0]

    def faults(self) -> list[dict[str, Any]]:
        return self.request("GET", "/sandbox/api/faults")["faults"]

    def clear_faults(self) -> None:
        self.request("DELETE", "/sandbox/api/faults")

    def set_flood_control(self, enabled: bool | None = None, **limits: float) -> dict[str, Any]:
        """Switch flood control on/off and/or change its limits (per_chat_burst, per_chat_rate, ...)."""
        body: dict[str, Any] = dict(limits)
        if enabled is not None:
            body["enabled"] = enabled
        return self.request("POST", "/sandbox/api/flood", json=body)

    def bot_info(self) -> dict[str, Any]:
        """``{bot, commands, webhook, listening}``."""
        return self.request("GET", "/sandbox/api/bot")

    def wait_for_bot(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until a bot polls getUpdates or has set a webhook (e.g. after starting runbot)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            info = self.request(
                "GET",
                "/sandbox/api/bot",
                params={"wait_listening": f"{max(min(remaining, MAX_POLL_SECONDS), 0):.3f}"},
                timeout=MAX_POLL_SECONDS + 15.0,
            )
            if info["listening"]:
                return info
            if remaining <= 0:
                raise SandboxDriverError(f"no bot polled the sandbox or set a webhook within {timeout:g}s")

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> SandboxDriver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SandboxUserDriver:
    """One user's side of their private chat with the bot.

    ``cursor`` is the event sequence number of the user's last action (or of the last bot
    message a ``wait_for_message`` returned): ``wait_for_message`` only looks past it.
    """

    def __init__(self, driver: SandboxDriver, user_id: int, first_name: str, username: str | None) -> None:
        self.driver = driver
        self.user_id = user_id
        self.first_name = first_name
        self.username = username
        self._base = f"/sandbox/api/users/{user_id}"
        self._log: list[dict[str, Any]] = []
        self._messages: dict[int, Message] = {}
        self._fetched = 0
        self._sync(0)
        self.cursor = self._fetched

    # ------------------------------------------------------------------ actions

    def send(self, text: str) -> Message:
        """Write ``text`` to the bot; returns the user's Message."""
        message = self.driver.request(
            "POST",
            f"{self._base}/messages",
            json={"text": text, "first_name": self.first_name, "username": self.username},
        )
        self.cursor = max(self.cursor, message.pop("event_seq"))
        return message

    def upload(
        self, path: str | Path, caption: str | None = None, *, mime_type: str | None = None
    ) -> Message:
        """Send the file at ``path`` as a document; returns the user's Message."""
        path = Path(path)
        mime = mime_type or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        data = {"first_name": self.first_name}
        if self.username:
            data["username"] = self.username
        if caption:
            data["caption"] = caption
        message = self.driver.request(
            "POST", f"{self._base}/upload", files={"file": (path.name, path.read_bytes(), mime)}, data=data
        )
        self.cursor = max(self.cursor, message.pop("event_seq"))
        return message

    def tap(
        self, label: str | None = None, *, message: Message | int | None = None, data: str | None = None
    ) -> str:
        """Tap the inline button labelled ``label`` (or with callback_data ``data``) on ``message``,
        by default on the most recent bot message that has it. Returns the callback query id, or
        the URL for a URL button (nothing is sent then)."""
        if label is None and data is None:
            raise ValueError("give the button's label or its callback data")
        self._sync(0)
        if message is not None:
            message_id = message if isinstance(message, int) else message["message_id"]
            candidates = [self._messages[message_id]] if message_id in self._messages else []
        else:
            candidates = sorted(
                (m for m in self._messages.values() if m["from"]["is_bot"] and not m.get("deleted")),
                key=lambda m: m["message_id"],
                reverse=True,
            )
        seen: list[str] = []
        for candidate in candidates:
            for button in buttons_of(candidate):
                seen.append(f"#{candidate['message_id']} {button.get('text')!r}")
                if (label is not None and button.get("text") == label) or (
                    data is not None and button.get("callback_data") == data
                ):
                    if "callback_data" not in button:
                        if "url" in button:
                            return str(button["url"])
                        raise SandboxDriverError(f"button {button.get('text')!r} has no callback_data or url")
                    answer = self.driver.request(
                        "POST",
                        f"{self._base}/callback",
                        json={"message_id": candidate["message_id"], "data": button["callback_data"]},
                    )
                    self.cursor = max(self.cursor, answer["event_seq"])
                    return str(answer["callback_query_id"])
        wanted = repr(label) if label is not None else f"with callback_data {data!r}"
        raise SandboxDriverError(
            f"no inline button {wanted} on {'that message' if message is not None else 'any bot message'}; "
            f"buttons seen: {', '.join(seen) or 'none'}\n{self._chat_tail()}"
        )

    def block(self, blocked: bool = True) -> None:
        """Block (or unblock) the bot, as the user would."""
        self.driver.request("POST", f"{self._base}/block", json={"blocked": blocked})

    # ------------------------------------------------------------------ waiting

    def wait_for_message(
        self, contains: str | None = None, *, predicate: Predicate | None = None, timeout: float = 10.0
    ) -> Message:
        """The next new bot message after ``cursor`` whose text/caption contains ``contains``
        and/or satisfies ``predicate``; moves ``cursor`` past it. Returns its current state."""

        def matches(message: Message) -> bool:
            if contains is not None and contains not in plain_text(message):
                return False
            return predicate is None or bool(predicate(message))

        def check() -> Message | None:
            for event in self._log:
                if event["seq"] <= self.cursor or event["kind"] != "message":
                    continue
                created = event["message"]
                if not created["from"]["is_bot"]:
                    continue
                current = self._messages.get(created["message_id"], created)
                if matches(created) or matches(current):
                    self.cursor = event["seq"]
                    return current
            return None

        what = "a new bot message" + (f" containing {contains!r}" if contains is not None else "")
        what += " matching the predicate" if predicate is not None else ""
        return self._wait(check, timeout, what)

    def wait_for_edit(
        self,
        message_id: int,
        contains: str | None = None,
        *,
        predicate: Predicate | None = None,
        timeout: float = 10.0,
    ) -> Message:
        """Wait until message ``message_id``'s current state contains ``contains`` / satisfies
        ``predicate``; with neither, until it is edited again. Returns its current state."""
        self._sync(0)
        start_version = self._messages.get(message_id, {}).get("version", 0)

        def check() -> Message | None:
            current = self._messages.get(message_id)
            if current is None:
                return None
            if contains is None and predicate is None:
                return current if current.get("version", 1) > start_version else None
            if contains is not None and contains not in plain_text(current):
                return None
            if predicate is not None and not predicate(current):
                return None
            return current

        what = f"message #{message_id}" + (
            f" to contain {contains!r}" if contains is not None else " to change"
        )
        return self._wait(check, timeout, what)

    def wait_for_callback_answer(
        self, callback_query_id: str | None = None, *, timeout: float = 10.0
    ) -> dict[str, Any]:
        """The bot's answerCallbackQuery for ``callback_query_id`` (default: any after ``cursor``)."""

        def check() -> dict[str, Any] | None:
            for event in self._log:
                if event["kind"] != "callback_answer":
                    continue
                answer = event["callback_answer"]
                if callback_query_id is not None and answer["callback_query_id"] == callback_query_id:
                    return answer
                if callback_query_id is None and event["seq"] > self.cursor:
                    return answer
            return None

        return self._wait(check, timeout, f"an answer to callback query {callback_query_id or '(any)'}")

    def wait_for_chat_action(self, action: str = "typing", *, timeout: float = 10.0) -> dict[str, Any]:
        """A sendChatAction of ``action`` after ``cursor``."""

        def check() -> dict[str, Any] | None:
            for event in self._log:
                if (
                    event["seq"] > self.cursor
                    and event["kind"] == "chat_action"
                    and event["action"] == action
                ):
                    return event
            return None

        return self._wait(check, timeout, f"chat action {action!r}")

    # ------------------------------------------------------------------ reading

    def messages(self, *, history: bool = False) -> list[Message]:
        """All messages of the chat, current state (with ``version`` and ``deleted``)."""
        params = {"history": "1"} if history else None
        return self.driver.request("GET", f"{self._base}/messages", params=params)["messages"]

    def bot_messages(self) -> list[Message]:
        return [m for m in self.messages() if m["from"]["is_bot"] and not m["deleted"]]

    def last_bot_message(self) -> Message | None:
        messages = self.bot_messages()
        return messages[-1] if messages else None

    def events(self) -> list[dict[str, Any]]:
        """Every event seen so far by this driver (refreshed first)."""
        self._sync(0)
        return list(self._log)

    def download(self, file_id: str) -> bytes:
        """The bytes of a photo or document in the chat."""
        response = self.driver._client.get(f"/sandbox/files/{file_id}")
        if response.status_code != 200:
            raise SandboxDriverError(f"file {file_id} -> {response.status_code}")
        return response.content

    # ------------------------------------------------------------------ internals

    def _sync(self, timeout: float) -> None:
        body = self.driver.request(
            "GET",
            f"{self._base}/events",
            params={"after": self._fetched, "timeout": f"{max(timeout, 0):.3f}"},
            timeout=max(timeout, 0) + 15.0,
        )
        for event in body["events"]:
            self._log.append(event)
            message = event.get("message")
            if message is not None and event["kind"] in ("message", "edit", "delete"):
                known = self._messages.get(message["message_id"])
                if known is None or message.get("version", 1) >= known.get("version", 1):
                    self._messages[message["message_id"]] = message
        self._fetched = max(self._fetched, body["last"])

    def _wait(self, check: Callable[[], T | None], timeout: float, what: str) -> T:
        deadline = time.monotonic() + timeout
        self._sync(0)
        while True:
            found = check()
            if found is not None:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SandboxDriverError(
                    f"user {self.user_id}: timed out after {timeout:g}s waiting for {what} (after event {self.cursor}).\n"
                    f"{self._chat_tail()}"
                )
            self._sync(min(remaining, MAX_POLL_SECONDS))

    def _chat_tail(self, count: int = 6) -> str:
        messages = sorted(self._messages.values(), key=lambda m: m["message_id"])[-count:]
        if not messages:
            return "The chat is empty."
        return "Last messages in the chat:\n" + "\n".join(_describe(m) for m in messages)
