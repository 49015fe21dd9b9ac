"""Flood control (429 + retry_after), blocked users and injected faults."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tg_sandbox import FaultRule, FloodConfig, SandboxServer
from tg_sandbox.faults import FaultQueue
from tg_sandbox.flood import FloodControl

from .helpers import call

USER = 3003
OTHER = 3004


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def users(sandbox: SandboxServer) -> None:
    sandbox.state.user_send_text(USER, "hi", first_name="Cy")
    sandbox.state.user_send_text(OTHER, "hi", first_name="Di")


def test_it_allows_a_burst_of_20_per_chat_then_one_per_second() -> None:
    clock = FakeClock()
    flood = FloodControl(FloodConfig(), clock=clock)
    assert [flood.acquire(1) for _ in range(20)] == [None] * 20
    assert flood.acquire(1) == 1
    assert flood.acquire(2) is None  # another chat has its own bucket
    clock.now += 1.0
    assert flood.acquire(1) is None
    assert flood.acquire(1) == 1


def test_it_limits_the_whole_bot_to_30_per_second() -> None:
    clock = FakeClock()
    flood = FloodControl(FloodConfig(), clock=clock)
    assert all(flood.acquire(chat) is None for chat in range(30))
    assert flood.acquire(99) == 1
    clock.now += 0.5
    assert all(flood.acquire(chat) is None for chat in range(100, 115))
    assert flood.acquire(200) == 1


def test_it_reports_retry_after_as_whole_seconds_at_least_one() -> None:
    clock = FakeClock()
    flood = FloodControl(FloodConfig(per_chat_burst=1, per_chat_rate=0.25), clock=clock)
    assert flood.acquire(1) is None
    assert flood.acquire(1) == 4
    clock.now += 3.5
    assert flood.acquire(1) == 1


def test_it_never_limits_when_disabled() -> None:
    flood = FloodControl(FloodConfig(enabled=False))
    assert all(flood.acquire(1) is None for _ in range(100))


async def test_it_answers_429_with_retry_after_when_a_chat_floods(
    sandbox: SandboxServer, http: aiohttp.ClientSession, users: None
) -> None:
    clock = FakeClock()
    sandbox.state.flood.clock = clock
    for index in range(20):
        status, _ = await call(
            http, sandbox.api_base_url, sandbox.token, "sendMessage", chat_id=USER, text=f"m{index}"
        )
        assert status == 200
    status, body = await call(
        http, sandbox.api_base_url, sandbox.token, "sendMessage", chat_id=USER, text="one more"
    )
    assert (status, body) == (
        429,
        {
            "ok": False,
            "error_code": 429,
            "description": "Too Many Requests: retry after 1",
            "parameters": {"retry_after": 1},
        },
    )
    status, _ = await call(
        http, sandbox.api_base_url, sandbox.token, "sendMessage", chat_id=OTHER, text="fine"
    )
    assert status == 200
    clock.now += 1.0
    status, _ = await call(
        http, sandbox.api_base_url, sandbox.token, "sendMessage", chat_id=USER, text="later"
    )
    assert status == 200
    stats = sandbox.state.stats()
    assert stats["too_many_requests"] == 1
    assert stats["flood_limited"] == 1
    assert stats["calls"]["sendMessage"] == 23


async def test_it_counts_edits_against_the_flood_limit(
    sandbox: SandboxServer, http: aiohttp.ClientSession, users: None
) -> None:
    sandbox.state.flood.clock = FakeClock()
    _, sent = await call(http, sandbox.api_base_url, sandbox.token, "sendMessage", chat_id=USER, text="0%")
    message_id = sent["result"]["message_id"]
    statuses = []
    for percent in range(1, 22):
        status, _ = await call(
            http,
            sandbox.api_base_url,
            sandbox.token,
            "editMessageText",
            chat_id=USER,
            message_id=message_id,
            text=f"{percent}%",
        )
        statuses.append(status)
    assert statuses == [200] * 19 + [429, 429]


async def test_it_refuses_a_user_who_blocked_the_bot_and_tells_the_bot(
    sandbox: SandboxServer, http: aiohttp.ClientSession, users: None
) -> None:
    await call(http, sandbox.api_base_url, sandbox.token, "getUpdates", offset=10**12)  # confirm the "hi"s
    async with http.post(f"{sandbox.url}/sandbox/api/users/{USER}/block", json={"blocked": True}) as response:
        assert (await response.json())["user"]["blocked"] is True
    status, body = await call(
        http, sandbox.api_base_url, sandbox.token, "sendMessage", chat_id=USER, text="hello?"
    )
    assert (status, body) == (
        403,
        {"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked by the user"},
    )
    _, updates = await call(http, sandbox.api_base_url, sandbox.token, "getUpdates")
    [update] = updates["result"]
    assert update["my_chat_member"]["new_chat_member"] == {
        "user": sandbox.state.bot_user(),
        "status": "kicked",
        "until_date": 0,
    }
    assert update["my_chat_member"]["old_chat_member"]["status"] == "member"
    sandbox.state.user_send_text(USER, "/start")  # writing again restarts the bot, as in Telegram
    status, _ = await call(
        http, sandbox.api_base_url, sandbox.token, "sendMessage", chat_id=USER, text="welcome back"
    )
    assert status == 200


@pytest.mark.parametrize(
    ("rule", "status", "body"),
    [
        (
            FaultRule(method="sendMessage", kind="429", retry_after=7),
            429,
            {
                "ok": False,
                "error_code": 429,
                "description": "Too Many Requests: retry after 7",
                "parameters": {"retry_after": 7},
            },
        ),
        (
            FaultRule(method="*", kind="5xx"),
            502,
            {"ok": False, "error_code": 502, "description": "Bad Gateway"},
        ),
        (
            FaultRule(method="sendmessage", kind="blocked", chat_id=USER),
            403,
            {"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked by the user"},
        ),
    ],
)
async def test_it_injects_faults_into_matching_calls(
    sandbox: SandboxServer, http: aiohttp.ClientSession, users: None, rule: FaultRule, status: int, body: dict
) -> None:
    sandbox.state.faults.add(rule)
    assert await call(http, sandbox.api_base_url, sandbox.token, "sendMessage", chat_id=USER, text="x") == (
        status,
        body,
    )
    again, _ = await call(http, sandbox.api_base_url, sandbox.token, "sendMessage", chat_id=USER, text="x")
    assert again == 200  # count=1: used up
    assert sandbox.state.stats()["faults_applied"] == 1


async def test_it_applies_fault_rules_in_order_and_only_to_matching_chats(
    sandbox: SandboxServer, http: aiohttp.ClientSession, users: None
) -> None:
    sandbox.state.faults.add(method="sendMessage", kind="5xx", chat_id=OTHER, count=2)
    sandbox.state.faults.add(method="sendMessage", kind="429", retry_after=2)
    statuses = []
    for chat in (USER, OTHER, OTHER, OTHER):
        status, _ = await call(
            http, sandbox.api_base_url, sandbox.token, "sendMessage", chat_id=chat, text="x"
        )
        statuses.append(status)
    assert statuses == [429, 502, 502, 200]


async def test_it_spares_get_updates_from_wildcard_faults(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    sandbox.state.faults.add(method="*", kind="5xx")
    status, _ = await call(http, sandbox.api_base_url, sandbox.token, "getUpdates")
    assert status == 200
    assert [rule.kind for rule in sandbox.state.faults.rules()] == ["5xx"]
    sandbox.state.faults.clear()
    sandbox.state.faults.add(method="getUpdates", kind="5xx")
    status, _ = await call(http, sandbox.api_base_url, sandbox.token, "getUpdates")
    assert status == 502


async def test_it_slows_calls_down_when_asked(
    sandbox: SandboxServer, http: aiohttp.ClientSession, users: None
) -> None:
    sandbox.state.faults.add(method="sendChatAction", kind="slow", delay=0.3)
    started = time.monotonic()
    status, _ = await call(
        http, sandbox.api_base_url, sandbox.token, "sendChatAction", chat_id=USER, action="typing"
    )
    assert status == 200
    assert time.monotonic() - started >= 0.3


async def test_it_manages_faults_over_the_user_api(
    sandbox: SandboxServer, http: aiohttp.ClientSession, users: None
) -> None:
    base = f"{sandbox.url}/sandbox/api/faults"
    async with http.post(
        base, json={"method": "sendMessage", "kind": "429", "count": 2, "retry_after": 3}
    ) as response:
        body = await response.json()
    assert body["added"] == [
        {"method": "sendMessage", "kind": "429", "count": 2, "chat_id": None, "retry_after": 3, "delay": 1.0,
         "duration": 0.0}
    ]
    async with http.post(base, json={"kind": "meteor"}) as response:
        assert response.status == 400
        assert "unknown fault kind" in (await response.json())["error"]
    status, _ = await call(http, sandbox.api_base_url, sandbox.token, "sendMessage", chat_id=USER, text="x")
    assert status == 429
    async with http.delete(base) as response:
        assert (await response.json()) == {"faults": []}
    status, _ = await call(http, sandbox.api_base_url, sandbox.token, "sendMessage", chat_id=USER, text="x")
    assert status == 200


async def test_it_switches_flood_control_over_the_user_api(
    sandbox: SandboxServer, http: aiohttp.ClientSession, users: None
) -> None:
    async with http.post(
        f"{sandbox.url}/sandbox/api/flood", json={"per_chat_burst": 2, "per_chat_rate": 0.01}
    ) as response:
        assert (await response.json())["per_chat_burst"] == 2
    statuses = [
        (await call(http, sandbox.api_base_url, sandbox.token, "sendMessage", chat_id=USER, text="x"))[0]
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]
    async with http.post(f"{sandbox.url}/sandbox/api/flood", json={"enabled": False}) as response:
        assert (await response.json())["enabled"] is False
    status, _ = await call(http, sandbox.api_base_url, sandbox.token, "sendMessage", chat_id=USER, text="x")
    assert status == 200


def test_a_rule_with_a_duration_answers_every_call_until_it_ends() -> None:
    now = [100.0]
    faults = FaultQueue(clock=lambda: now[0])
    faults.add(method="sendMessage", kind="429", retry_after=5, duration=60)
    taken = [faults.take("sendMessage", 1) for _ in range(50)]  # far more than its count of 1
    assert all(rule is not None and rule.retry_after == 5 for rule in taken)
    now[0] += 59.9
    assert faults.take("sendMessage", 2) is not None
    now[0] += 0.2
    assert faults.take("sendMessage", 2) is None and faults.rules() == []


async def test_it_answers_429_for_the_rules_duration_over_the_bot_api(
    sandbox: SandboxServer, http: aiohttp.ClientSession, users: None
) -> None:
    async with http.post(f"{sandbox.url}/sandbox/api/faults",
                         json={"method": "sendMessage", "kind": "429", "retry_after": 7, "duration": 0.5}):
        pass
    statuses = [(await call(http, sandbox.api_base_url, sandbox.token, "sendMessage", chat_id=USER, text="x"))
                for _ in range(5)]
    assert [status for status, _ in statuses] == [429] * 5
    assert all(body["parameters"]["retry_after"] == 7 for _, body in statuses)
    deadline = time.monotonic() + 10
    while (await call(http, sandbox.api_base_url, sandbox.token, "sendMessage", chat_id=USER, text="y"))[0] == 429:
        assert time.monotonic() < deadline, "the rule did not end"
        await asyncio.sleep(0.05)  # polling until the rule's minute (here half a second) is over
