"""Fault injection around delivery (issue 12, item 7), with a real ``manage.py runbot`` process and
the sandbox standing in for Telegram:

- ``kill -9`` of the bot mid-delivery of 300 messages to 6 chats: after a restart every message
  arrives, at most one twice per chat, and delivery resumes within 10 s;
- a burst of 100 notifications from a real client script that then exits: all 100 arrive;
- the sandbox's flood control answering 429 with ``retry_after`` for a minute: nothing is lost.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from accounts.models import ApiKey
from core.models import OutboxMessage
from core.outbox import enqueue
from tests.faults.runbot import ROOT, Daphne, Runbot, wait_until
from tg_sandbox import SandboxThread
from tg_sandbox.testing import SandboxDriver, SandboxUserDriver

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
State = OutboxMessage.State
_next_user = iter(range(9_100_001, 9_200_000))


@pytest.fixture
def sandbox() -> Iterator[SandboxThread]:
    with SandboxThread() as running:
        yield running


@pytest.fixture
def driver(sandbox) -> Iterator[SandboxDriver]:
    with SandboxDriver(sandbox.url) as sandbox_driver:
        yield sandbox_driver


@pytest.fixture
def bots(sandbox, tmp_path) -> Iterator[list[Runbot | Daphne]]:
    """Every server process a test starts; stopped at the end, whatever happened."""
    started: list[Runbot | Daphne] = []
    yield started
    for bot in started:
        bot.stop()


def chats(driver: SandboxDriver, make_account, count: int) -> list[tuple[SandboxUserDriver, object]]:
    out = []
    for _ in range(count):
        user = driver.user(next(_next_user), first_name="Fault")
        user.send("hello")  # the chat exists on Telegram's side
        out.append((user, make_account(telegram_user_id=user.user_id)))
    return out


def texts_of(user: SandboxUserDriver) -> list[str]:
    return [m.get("text") or m.get("caption") or "" for m in user.bot_messages()]


def sends(driver: SandboxDriver) -> int:
    return int(driver.stats()["calls"].get("sendMessage", 0))


def unsent() -> int:
    return OutboxMessage.objects.exclude(state=State.SENT).count()


def test_kill_9_of_the_bot_mid_delivery_loses_nothing_doubles_one_per_chat_and_resumes_in_10_s(
        sandbox, driver, bots, tmp_path, make_account):
    people = chats(driver, make_account, 6)
    for n in range(50):
        for _, account in people:  # an edit key each: 300 messages, none merged
            enqueue(account, text=f"{account.chat_id} message {n:02d}", edit_key=f"fault-{n}")
    log = tmp_path / "runbot.log"
    first = Runbot(sandbox, log)
    bots.append(first)
    first.start()
    wait_until(lambda: OutboxMessage.objects.filter(state=State.SENT).count() >= 60, 120, "60 messages delivered")
    # The worst moment: every chat has a message that reached Telegram but whose answer has not
    # come back yet (the sender cannot have recorded it). Then kill -9.
    for _, account in people:
        driver.add_fault("sendMessage", "slow_reply", chat_id=account.chat_id, delay=120)
    wait_until(lambda: not driver.faults(), 60, "a message in flight in every chat")
    first.kill()
    driver.clear_faults()
    assert unsent() > 0

    before = sends(driver)
    restarted = time.monotonic()
    second = Runbot(sandbox, log)
    bots.append(second)
    second.start()
    wait_until(lambda: sends(driver) > before, 30, "delivery to resume")
    resumed_after = time.monotonic() - restarted
    wait_until(lambda: unsent() == 0, 240, "every message delivered")

    assert resumed_after < 10, f"delivery resumed {resumed_after:.1f}s after the restart"
    doubled = {}
    for user, account in people:  # (the bot also answered each user's "hello": not counted)
        texts = [text for text in texts_of(user) if text.startswith(f"{account.chat_id} message")]
        expected = {f"{account.chat_id} message {n:02d}" for n in range(50)}
        assert set(texts) == expected  # nothing lost
        doubled[account.chat_id] = sum(count - 1 for count in Counter(texts).values())
    assert all(count <= 1 for count in doubled.values()), doubled  # at most the one in flight
    assert sum(doubled.values()) >= 1  # the in-flight messages were sent again (at least once)
    assert not OutboxMessage.objects.filter(state=State.FAILED).exists()
    assert "Traceback" not in second.output(), second.output()[-3000:]


def test_a_burst_of_100_notifications_from_a_script_that_exits_all_arrive(
        sandbox, driver, bots, tmp_path, make_account):
    [(user, account)] = chats(driver, make_account, 1)
    _, key = ApiKey.issue(account)
    # The production shape (Procfile): a daphne web process and the bot process (runbot --no-web).
    web = Daphne(tmp_path / "daphne.log")
    bots.append(web)
    web.start()
    bot = Runbot(sandbox, tmp_path / "runbot.log")
    bots.append(bot)
    bot.start()
    with httpx.Client(timeout=30) as http:  # the server has answered once: its start is not what is measured
        assert http.get(f"{web.url}/api/openapi.json").status_code == 200
    script = textwrap.dedent("""
        import experiment_bot
        for n in range(100):
            experiment_bot.notify(f"burst {n:03d} done")
    """)
    env = {**os.environ, "EXPERIMENT_BOT_URL": web.url, "EXPERIMENT_BOT_KEY": key,
           "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "PYTHONPATH": f"{ROOT / 'client'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 60
    assert "dropped" not in result.stderr and "spooled" not in result.stderr.replace("0 spooled", ""), result.stderr

    texts = [f"burst {n:03d} done" for n in range(100)]
    wait_until(lambda: all(text in "\n".join(texts_of(user)) for text in texts), 120, "all 100 in the chat")
    everything = "\n".join(texts_of(user))
    assert [everything.count(text) for text in texts] == [1] * 100  # each once, whatever the merging
    rows = list(OutboxMessage.objects.filter(kind="notify").order_by("id").values_list("payload__text", flat=True))
    assert rows == texts
    assert driver.stats()["too_many_requests"] == 0


def test_a_minute_of_429s_from_flood_control_loses_nothing(sandbox, driver, bots, tmp_path, make_account):
    people = chats(driver, make_account, 3)
    for n in range(10):
        for _, account in people:
            enqueue(account, text=f"{account.chat_id} flood {n}", edit_key=f"flood-{n}")
    driver.reset_stats()
    flood = driver.add_fault("sendMessage", "429", retry_after=5, duration=60)  # every send, for a minute
    started = time.monotonic()
    bot = Runbot(sandbox, tmp_path / "runbot.log")
    bots.append(bot)
    bot.start()
    wait_until(lambda: unsent() == 0, 180, "every message delivered after the flood")
    assert time.monotonic() - started >= flood["duration"]  # delivered only once the minute was over
    for user, account in people:
        texts = [text for text in texts_of(user) if text.startswith(f"{account.chat_id} flood")]
        assert texts == [f"{account.chat_id} flood {n}" for n in range(10)]  # each once, in order
    stats = driver.stats()
    assert stats["too_many_requests"] >= 10  # the sender kept being told to wait, and waited
    assert not OutboxMessage.objects.filter(state=State.FAILED).exists()
    assert set(OutboxMessage.objects.values_list("attempts", flat=True)) == {1}  # no attempt used up by a 429
