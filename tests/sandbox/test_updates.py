"""Getting updates: long polling, confirmation by offset, conflicts, webhook delivery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tg_sandbox import SandboxServer

from .helpers import call

USER = 2002
CONFLICT_POLL = (
    "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"
)
CONFLICT_WEBHOOK = "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first"


async def _send_as_user(http: aiohttp.ClientSession, sandbox: SandboxServer, text: str) -> dict:
    async with http.post(
        f"{sandbox.url}/sandbox/api/users/{USER}/messages", json={"text": text, "first_name": "Bo"}
    ) as response:
        assert response.status == 200
        return await response.json()


async def test_it_wakes_a_long_poll_as_soon_as_an_update_arrives(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    poll = asyncio.create_task(call(http, sandbox.api_base_url, sandbox.token, "getUpdates", timeout=50))
    assert await sandbox.state.wait_until_polling(5)
    started = time.monotonic()
    await _send_as_user(http, sandbox, "/start")
    status, body = await asyncio.wait_for(poll, 10)
    elapsed = time.monotonic() - started
    assert status == 200
    [update] = body["result"]
    assert update["message"]["text"] == "/start"
    assert update["message"]["entities"] == [{"offset": 0, "length": 6, "type": "bot_command"}]
    assert update["message"]["from"]["first_name"] == "Bo"
    assert elapsed < 10  # returned on the update, not at the 50 s poll timeout


async def test_it_returns_an_empty_list_when_the_poll_times_out(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    assert await call(http, sandbox.api_base_url, sandbox.token, "getUpdates", timeout=0.2) == (
        200,
        {"ok": True, "result": []},
    )


async def test_it_confirms_updates_below_the_offset(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    for text in ("one", "two", "three"):
        await _send_as_user(http, sandbox, text)
    _, body = await call(http, sandbox.api_base_url, sandbox.token, "getUpdates", limit=2)
    first, second = body["result"]
    assert [first["message"]["text"], second["message"]["text"]] == ["one", "two"]
    assert second["update_id"] == first["update_id"] + 1
    _, again = await call(http, sandbox.api_base_url, sandbox.token, "getUpdates")
    assert [u["message"]["text"] for u in again["result"]] == ["one", "two", "three"]  # not confirmed yet
    _, rest = await call(
        http, sandbox.api_base_url, sandbox.token, "getUpdates", offset=second["update_id"] + 1
    )
    assert [u["message"]["text"] for u in rest["result"]] == ["three"]
    _, last = await call(http, sandbox.api_base_url, sandbox.token, "getUpdates", offset=-1)
    assert [u["message"]["text"] for u in last["result"]] == ["three"]


async def test_it_ends_the_older_poll_with_409_when_a_second_one_comes(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    older = asyncio.create_task(call(http, sandbox.api_base_url, sandbox.token, "getUpdates", timeout=50))
    assert await sandbox.state.wait_until_polling(5)
    newer = await call(http, sandbox.api_base_url, sandbox.token, "getUpdates", timeout=0)
    status, body = await asyncio.wait_for(older, 10)
    assert (status, body) == (409, {"ok": False, "error_code": 409, "description": CONFLICT_POLL})
    assert newer == (200, {"ok": True, "result": []})


async def test_it_filters_by_allowed_updates(sandbox: SandboxServer, http: aiohttp.ClientSession) -> None:
    await call(http, sandbox.api_base_url, sandbox.token, "getUpdates", allowed_updates=["callback_query"])
    await _send_as_user(http, sandbox, "ignored")
    _, body = await call(http, sandbox.api_base_url, sandbox.token, "getUpdates", allowed_updates=[])
    assert body["result"] == []
    await _send_as_user(http, sandbox, "kept")
    _, body = await call(http, sandbox.api_base_url, sandbox.token, "getUpdates")
    assert [u["message"]["text"] for u in body["result"]] == ["kept"]


class Receiver:
    """A tiny webhook receiver: records updates and headers, fails the first ``failures`` posts."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.received: list[tuple[dict, str | None]] = []
        self.attempts = 0
        self.arrived = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.attempts <= self.failures:
            return web.Response(status=500, text="boom")
        self.received.append((await request.json(), request.headers.get("X-Telegram-Bot-Api-Secret-Token")))
        self.arrived.set()
        return web.Response(text="ok")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver(failures=1)
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hook.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield hook
    await runner.cleanup()


async def test_it_posts_updates_to_the_webhook_with_the_secret_and_retries(
    sandbox: SandboxServer, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    api = sandbox.api_base_url
    assert await call(http, api, sandbox.token, "setWebhook", url=receiver.url, secret_token="s3cret_-X") == (
        200,
        {"ok": True, "result": True},
    )
    status, body = await call(http, api, sandbox.token, "getUpdates")
    assert (status, body["description"]) == (409, CONFLICT_WEBHOOK)

    await _send_as_user(http, sandbox, "/start hooked")
    await asyncio.wait_for(receiver.arrived.wait(), 10)
    [(update, secret)] = receiver.received
    assert update["message"]["text"] == "/start hooked"
    assert secret == "s3cret_-X"
    assert receiver.attempts == 2  # the first POST got a 500 and was retried

    _, info = await call(http, api, sandbox.token, "getWebhookInfo")
    assert info["result"]["url"] == receiver.url
    assert info["result"]["pending_update_count"] == 0
    assert (
        info["result"]["last_error_message"] == "Wrong response from the webhook: 500 Internal Server Error"
    )

    assert await call(http, api, sandbox.token, "deleteWebhook") == (200, {"ok": True, "result": True})
    await _send_as_user(http, sandbox, "polled again")
    _, body = await call(http, api, sandbox.token, "getUpdates")
    assert [u["message"]["text"] for u in body["result"]] == ["polled again"]


async def test_it_drops_pending_updates_when_asked(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    await _send_as_user(http, sandbox, "stale")
    await call(http, sandbox.api_base_url, sandbox.token, "deleteWebhook", drop_pending_updates=True)
    _, body = await call(http, sandbox.api_base_url, sandbox.token, "getUpdates")
    assert body["result"] == []


async def test_it_refuses_a_bad_webhook_secret(sandbox: SandboxServer, http: aiohttp.ClientSession) -> None:
    status, body = await call(
        http,
        sandbox.api_base_url,
        sandbox.token,
        "setWebhook",
        url="http://127.0.0.1:9/x",
        secret_token="no spaces",
    )
    assert (status, body["description"]) == (400, "Bad Request: secret token contains unallowed characters")
