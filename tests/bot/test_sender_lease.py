"""Sender leases (issue 12, item 5): a claim carries its sender's id and a lease the live sender
renews; the claims of a sender that stopped renewing go back to the queue within one lease, not
after the old five minutes. Also the duplicate bound of item 6: a crash between sending and
recording doubles at most the one message a chat had in flight, and an edit sent again is no
new message."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from core import claims
from core.models import OutboxMessage
from core.outbox import enqueue
from telegram_app.delivery import OutboxSender
from tests.bot.test_delivery import bot_texts, make_sender
from tg_sandbox import SandboxThread
from tg_sandbox.testing import SandboxDriver

pytestmark = pytest.mark.django_db(transaction=True)
State = OutboxMessage.State


def wait_until(condition: Callable[[], bool], timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)  # polling a condition, with a deadline


class RunningSender:
    """``OutboxSender.run`` in a thread with its own loop, as ``runbot`` runs it."""

    def __init__(self, sender: OutboxSender) -> None:
        self.sender = sender
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop: asyncio.Event | None = None
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.stop = asyncio.Event()
            self.started.set()
            async with self.sender.bot:
                await self.sender.run(self.stop)

        try:
            asyncio.run(main())
        finally:
            connection.close()

    def __enter__(self) -> RunningSender:
        self.thread.start()
        self.started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.loop is not None and self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxThread]:
    with SandboxThread() as running:
        yield running


@pytest.fixture
def driver(sandbox) -> Iterator[SandboxDriver]:
    with SandboxDriver(sandbox.url) as sandbox_driver:
        sandbox_driver.clear_faults()
        sandbox_driver.reset_stats()
        yield sandbox_driver


_next_user = iter(range(8_300_001, 8_400_000))


@pytest.fixture
def chat(driver, make_account):
    """A sandbox user who has written to the bot, and their account."""
    user = driver.user(next(_next_user), first_name="Ann")
    user.send("hello")
    return user, make_account(telegram_user_id=user.user_id)


@pytest.fixture
def short_lease(settings) -> Iterator[float]:
    settings.OUTBOX_LEASE = 1.5
    yield settings.OUTBOX_LEASE


def test_it_claims_rows_under_its_senders_id_and_lease(chat, short_lease):
    _, account = chat
    row = enqueue(account, text="hello")
    before = timezone.now()
    [claimed] = claims.claim("host:1:abcd")
    assert claimed.pk == row.pk and claimed.claimed_by == "host:1:abcd"
    assert before + timedelta(seconds=short_lease) <= claimed.lease_expires_at
    assert claimed.lease_expires_at <= timezone.now() + timedelta(seconds=short_lease)
    assert claims.live_senders() == [{"sender": "host:1:abcd", "rows": 1, "lease_expires_at": claimed.lease_expires_at}]


def test_it_releases_only_claims_whose_lease_ran_out(make_account, short_lease):
    alive, dead = make_account(), make_account()
    alive_row, dead_row = enqueue(alive, text="a"), enqueue(dead, text="d")
    claims.claim("alive", max_chats=1)
    claims.claim("dead", max_chats=1)
    OutboxMessage.objects.filter(pk=dead_row.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    OutboxMessage.objects.filter(pk=alive_row.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert claims.renew_lease("alive") == 1  # the live sender renews before anyone looks
    assert claims.release_expired_claims() == 1
    alive_row.refresh_from_db()
    dead_row.refresh_from_db()
    assert alive_row.state == State.SENDING and alive_row.claimed_by == "alive"
    assert dead_row.state == State.PENDING and dead_row.claimed_by == "" and dead_row.lease_expires_at is None
    assert dead_row.attempts == 1  # still counted: the crashed try may have reached Telegram


def test_a_starting_sender_resumes_the_chats_of_a_crashed_one_at_once(sandbox, driver, chat, short_lease):
    user, account = chat
    rows = [enqueue(account, text=f"m{n}", edit_key=f"k{n}") for n in range(3)]
    claims.claim("crashed-sender")  # claimed, then the process died: nobody renews
    OutboxMessage.objects.update(lease_expires_at=timezone.now() - timedelta(milliseconds=1))
    started = time.monotonic()
    with RunningSender(make_sender(sandbox, name="restarted")):
        wait_until(lambda: not OutboxMessage.objects.exclude(state=State.SENT).exists(), what="all rows sent")
    assert time.monotonic() - started < 10
    assert bot_texts(user) == ["m0", "m1", "m2"]
    assert [row.pk for row in rows] == list(OutboxMessage.objects.filter(state=State.SENT).values_list("pk", flat=True))


def test_a_live_sender_keeps_its_claim_through_a_send_longer_than_its_lease(sandbox, driver, chat, short_lease):
    user, account = chat
    driver.add_fault("sendMessage", "slow", delay=short_lease * 3)
    row = enqueue(account, text="slow one")
    sender = make_sender(sandbox, name="slow-sender")
    with RunningSender(sender):
        wait_until(lambda: driver.stats()["calls"].get("sendMessage", 0) >= 1, what="the send to start")
        deadline = time.monotonic() + short_lease * 2
        while time.monotonic() < deadline:  # longer than a lease: others sweep, the claim stays
            claims.release_expired_claims()
            row.refresh_from_db()
            if row.state == State.SENT:
                break
            assert row.state == State.SENDING and row.claimed_by == "slow-sender"
            time.sleep(0.1)  # sampling the row while the slow send runs
        wait_until(lambda: OutboxMessage.objects.filter(pk=row.pk, state=State.SENT).exists(), what="the row sent")
    assert bot_texts(user) == ["slow one"]
    assert driver.stats()["calls"]["sendMessage"] == 1


def test_a_crash_mid_delivery_doubles_at_most_the_one_message_in_flight_per_chat(
        sandbox, driver, chat, make_account, short_lease):
    users = [chat[0]]
    accounts = [chat[1]]
    for _ in range(2):
        user = driver.user(next(_next_user), first_name="Bo")
        user.send("hello")
        users.append(user)
        accounts.append(make_account(telegram_user_id=user.user_id))
    for account in accounts:
        for n in range(6):
            enqueue(account, text=f"{account.chat_id}-{n}", edit_key=f"own-{n}")
    # Each chat's first message reaches Telegram but its answer hangs: the crash comes while it is
    # in flight (sent, not recorded).
    for account in accounts:
        driver.add_fault("sendMessage", "slow_reply", chat_id=account.chat_id, delay=30)
    crashed = make_sender(sandbox, name="crashing")

    async def crash_mid_delivery() -> None:
        async with crashed.bot:
            task = asyncio.create_task(crashed.run_once())
            await asyncio.to_thread(wait_until, lambda: driver.stats()["calls"].get("sendMessage", 0) >= 3,
                                    10, "each chat's send in flight")
            task.cancel()  # the process dies here: nothing after the send is recorded
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(crash_mid_delivery())
    driver.clear_faults()
    assert OutboxMessage.objects.filter(state=State.SENDING, claimed_by="crashing").exists()
    OutboxMessage.objects.update(lease_expires_at=timezone.now() - timedelta(milliseconds=1))  # the lease runs out
    with RunningSender(make_sender(sandbox, name="after-restart")):
        wait_until(lambda: not OutboxMessage.objects.exclude(state=State.SENT).exists(), 30, "all rows sent")
    for user, account in zip(users, accounts, strict=True):
        texts = bot_texts(user)
        expected = [f"{account.chat_id}-{n}" for n in range(6)]
        assert set(texts) == set(expected)  # nothing lost
        doubled = sum(count - 1 for count in Counter(texts).values())
        assert doubled <= 1, texts  # at most the one message in flight


def test_a_progress_edit_sent_again_after_a_crash_is_no_new_message(sandbox, driver, chat, short_lease):
    user, account = chat
    sender = make_sender(sandbox)
    first = enqueue(account, text="10%", edit_key="job:x")
    with RunningSender(sender):
        wait_until(lambda: OutboxMessage.objects.filter(pk=first.pk, state=State.SENT).exists(), what="sent")
    again = enqueue(account, text="50%", edit_key="job:x")
    [claimed] = claims.claim("crashing")
    assert claimed.pk == again.pk
    asyncio.run(_edit_without_recording(make_sender(sandbox), claimed))  # the edit went out, then the crash
    OutboxMessage.objects.filter(pk=again.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    with RunningSender(make_sender(sandbox, name="after-restart")):
        wait_until(lambda: OutboxMessage.objects.filter(pk=again.pk, state=State.SENT).exists(), what="resent")
    assert bot_texts(user) == ["50%"]  # one message, edited; the repeat edit changed nothing
    again.refresh_from_db()
    assert again.sent_message_id == user.last_bot_message()["message_id"] and again.error == ""


async def _edit_without_recording(sender: OutboxSender, row: OutboxMessage) -> None:
    async with sender.bot:
        await sender.bot.edit_message_text("50%", chat_id=row.chat_id,
                                           message_id=await _previous(row))


async def _previous(row: OutboxMessage) -> int:
    from channels.db import database_sync_to_async

    message_id = await database_sync_to_async(claims.previous_message_id)(row)
    assert message_id is not None
    return message_id
