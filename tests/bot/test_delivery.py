"""The outbox sender against the sandbox: pacing, coalescing, retries, permanent failures."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from telegram import Bot

from accounts.models import Account
from core import claims
from core.claims import claim
from core.models import OutboxMessage
from core.outbox import FileToSend, enqueue
from jobs.models import Job
from telegram_app.delivery import OutboxSender, Pacer, prepare
from tg_sandbox import SandboxThread
from tg_sandbox.testing import SandboxDriver

pytestmark = pytest.mark.django_db(transaction=True)
State = OutboxMessage.State
PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
       b"\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82")


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


_next_user = iter(range(8_000_001, 8_100_000))


@pytest.fixture
def chat(driver):
    """A sandbox user who has written to the bot, and their account."""
    user = driver.user(next(_next_user), first_name="Ann")
    user.send("hello")
    account, _ = Account.from_telegram(user_id=user.user_id, chat_id=user.user_id, first_name="Ann")
    return user, account


def make_sender(sandbox: SandboxThread, name: str = "sender") -> Callable[[], OutboxSender]:
    bot = Bot(sandbox.state.token, base_url=sandbox.api_base_url, base_file_url=sandbox.file_base_url)
    return OutboxSender(bot, name=name, pacer=Pacer(chat_rate=20, chat_burst=20))


def drain(sender: OutboxSender, until: Callable[[], bool] = lambda: False, timeout: float = 15) -> None:
    """Run sender rounds until nothing is left (or ``until`` holds); fails after ``timeout``."""

    def finished() -> bool:
        return until() or not OutboxMessage.objects.filter(state__in=[State.PENDING, State.SENDING]).exists()

    async def rounds() -> None:
        async with sender.bot:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                handled = await sender.run_once()
                if not handled and await database_sync_to_async(finished)():
                    return
                if not handled:
                    await asyncio.sleep(0.05)  # a retry is due later; check again
        rows = await database_sync_to_async(list)(OutboxMessage.objects.values_list("id", "state", "error"))
        raise AssertionError(f"outbox not drained in {timeout}s: {rows}")

    asyncio.run(rounds())


def bot_texts(user) -> list[str]:
    return [m.get("text") or m.get("caption") or "" for m in user.bot_messages()]


def test_it_sends_a_message_and_records_its_id(sandbox, driver, chat):
    user, account = chat
    row = enqueue(account, text="<b>Training</b> started", parse_mode="HTML")
    drain(make_sender(sandbox))
    row.refresh_from_db()
    sent = user.last_bot_message()
    assert row.state == State.SENT and row.sent_message_id == sent["message_id"]
    assert sent["text"] == "Training started" and sent["entities"][0]["type"] == "bold"


def test_it_edits_one_message_for_rows_sharing_an_edit_key(sandbox, driver, chat):
    user, account = chat
    sender = make_sender(sandbox)
    enqueue(account, text="10%", edit_key="t:1")
    drain(sender)
    enqueue(account, text="50%", edit_key="t:1")
    drain(sender)
    assert bot_texts(user) == ["50%"]
    assert user.last_bot_message()["version"] == 2


def test_it_sends_only_the_newest_of_pending_rows_with_one_edit_key(sandbox, driver, chat):
    user, account = chat
    for percent in (10, 20, 30):
        enqueue(account, text=f"{percent}%", edit_key="t:2")
    drain(make_sender(sandbox))
    assert bot_texts(user) == ["30%"]
    states = list(OutboxMessage.objects.order_by("id").values_list("state", flat=True))
    assert states == [State.SUPERSEDED, State.SUPERSEDED, State.SENT]
    assert driver.stats()["calls"].get("sendMessage") == 1


def test_it_treats_an_identical_edit_as_delivered(sandbox, driver, chat):
    user, account = chat
    sender = make_sender(sandbox)
    enqueue(account, text="same", edit_key="t:3")
    drain(sender)
    again = enqueue(account, text="same", edit_key="t:3")
    drain(sender)
    again.refresh_from_db()
    assert again.state == State.SENT and bot_texts(user) == ["same"]


def test_it_merges_a_burst_of_100_notices_into_few_messages_without_a_429(sandbox, driver, chat):
    user, account = chat
    driver.set_flood_control(True)
    for n in range(100):
        enqueue(account, text=f"epoch {n} done", parse_mode="HTML")
    drain(OutboxSender(make_sender(sandbox).bot))  # real pacing: 1/s per chat after a burst of 3
    texts = "\n".join(bot_texts(user))
    assert all(f"epoch {n} done" in texts for n in range(100))
    assert len(bot_texts(user)) <= 3
    assert driver.stats()["too_many_requests"] == 0
    assert not OutboxMessage.objects.exclude(state__in=[State.SENT, State.SUPERSEDED]).exists()


def test_it_honours_retry_after_and_loses_nothing(sandbox, driver, chat):
    user, account = chat
    driver.add_fault("sendMessage", "429", retry_after=1, count=1)
    for n in range(3):
        enqueue(account, text=f"message {n}", edit_key=f"n{n}")  # an edit key each: not merged
    drain(make_sender(sandbox))
    assert bot_texts(user) == ["message 0", "message 1", "message 2"]
    first = OutboxMessage.objects.order_by("id").first()
    assert first.attempts == 1  # the send; the 429 used up no attempt


def test_flood_control_however_long_uses_up_no_attempt(chat):
    _, account = chat
    row = enqueue(account, text="waits out a long flood")
    for _ in range(OutboxMessage.MAX_ATTEMPTS * 3):  # far more 429s than attempts allowed
        [claimed] = claim("flooded-sender")
        claims.postpone(claimed, "429: retry after 5s", timedelta(0))
    row.refresh_from_db()
    assert row.state == State.PENDING and row.attempts == 0 and row.error == "429: retry after 5s"


def test_it_retries_server_errors_and_sends_once(sandbox, driver, chat):
    user, account = chat
    driver.add_fault("sendMessage", "5xx", count=2)
    row = enqueue(account, text="after two 502s")
    drain(make_sender(sandbox), timeout=20)
    row.refresh_from_db()
    assert row.state == State.SENT and row.attempts == 3
    assert bot_texts(user) == ["after two 502s"]


def test_it_stops_sending_to_a_user_who_blocked_the_bot(sandbox, driver, chat):
    user, account = chat
    user.block()
    first = enqueue(account, text="one", edit_key="a")
    second = enqueue(account, text="two", edit_key="b")
    drain(make_sender(sandbox))
    first.refresh_from_db()
    second.refresh_from_db()
    account.refresh_from_db()
    assert account.blocked_at is not None
    assert first.state == State.FAILED and "blocked" in first.error
    assert second.state == State.FAILED
    assert driver.stats()["calls"].get("sendMessage") == 1


def test_it_falls_back_to_plain_text_when_markup_is_refused(sandbox, driver, chat):
    user, account = chat
    row = enqueue(account, text="<b>unclosed & broken", parse_mode="HTML")
    drain(make_sender(sandbox))
    row.refresh_from_db()
    assert row.state == State.SENT
    assert bot_texts(user) == ["unclosed & broken"]


def test_it_splits_a_text_over_the_limit(sandbox, driver, chat):
    user, account = chat
    enqueue(account, text="\n".join(f"line {n:05d} " + "x" * 40 for n in range(120)), parse_mode="")
    drain(make_sender(sandbox))
    texts = bot_texts(user)
    assert len(texts) == 2 and all(len(t) <= 4096 for t in texts)
    assert "line 00000" in texts[0] and "line 00119" in texts[1]


def test_it_sends_files_after_the_text(sandbox, driver, chat):
    user, account = chat
    enqueue(account, text="Run finished", files=[FileToSend("photo", "chart.png", PNG, "image/png", "Loss"),
                                                 FileToSend("document", "log.txt", b"all good\n", "text/plain")])
    drain(make_sender(sandbox))
    messages = user.bot_messages()
    assert [bool(m.get("photo")) for m in messages] == [False, True, False]
    assert messages[1]["caption"] == "Loss" and messages[2]["document"]["file_name"] == "log.txt"
    assert user.download(messages[2]["document"]["file_id"]) == b"all good\n"


def test_it_draws_charts_after_rendering_and_sends_the_result_without_a_chart_that_fails(sandbox, driver, chat):
    user, account = chat
    job = Job.objects.create(account=account, action=Job.Action.TRAIN, params={"model_type": "lightgbm"},
                             state=Job.State.RUNNING)
    job.succeed({"model_type": "lightgbm", "task_type": "regression", "metrics": {"r2": 0.5},
                 "feature_importance": [{"feature": "sqft", "importance": 1.0}],
                 "predicted_vs_actual": [["not a number", 1.5]]})
    enqueue(account, kind=OutboxMessage.Kind.JOB, payload={"job_id": str(job.id)}, edit_key=job.edit_key)
    [item] = prepare(claim("chart-test"))[account.chat_id]
    assert [(f.filename, f.data, f.draw is not None) for f in item.rendered.files] == [
        ("feature_importance.png", b"", True), ("predicted_vs_actual.png", b"", True)]  # nothing drawn yet
    claims.release(item.message)
    drain(make_sender(sandbox))
    messages = user.bot_messages()
    assert "Model trained" in messages[0]["text"] and "R²: 0.5" in messages[0]["text"]
    assert [m.get("caption") for m in messages[1:]] == ["Feature importance"]  # the broken chart is left out
    assert user.download(messages[1]["photo"][-1]["file_id"]).startswith(b"\x89PNG")


def test_it_releases_claimed_rows_when_stopping(sandbox, driver, chat):
    user, account = chat
    rows = [enqueue(account, text=f"r{n}", edit_key=f"k{n}") for n in range(2)]
    sender = make_sender(sandbox)
    items = prepare(claim("stopping-sender"))
    stop = asyncio.Event()
    stop.set()
    asyncio.run(sender._deliver_chat(items[account.chat_id], stop))
    for row in rows:
        row.refresh_from_db()
        assert row.state == State.PENDING and row.attempts == 0
    assert bot_texts(user) == []


def test_two_senders_never_send_one_message_twice(sandbox, driver, chat):
    users = [chat[0]] + [driver.user(next(_next_user), first_name="Bo") for _ in range(3)]
    for user in users[1:]:
        user.send("hello")
    for user in users:
        account, _ = Account.from_telegram(user_id=user.user_id, chat_id=user.user_id)
        for n in range(10):
            enqueue(account, text=f"{user.user_id}-{n}", edit_key=f"unique-{n}")
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            drain(make_sender(sandbox, name), timeout=30)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"sender-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    for user in users:
        assert bot_texts(user) == [f"{user.user_id}-{n}" for n in range(10)]  # each once, in order
    stats = driver.stats()
    # Calls refused by the sandbox's flood control (two senders together may exceed 30/s) were retried.
    assert stats["calls"]["sendMessage"] == 40 + stats["too_many_requests"]


def test_it_does_not_resend_files_that_went_out_before_a_retry(sandbox, driver, chat):
    user, account = chat
    driver.add_fault("sendPhoto", "429", retry_after=1, count=1)
    enqueue(account, text="Charts", files=[FileToSend("document", "a.txt", b"a"),
                                           FileToSend("photo", "b.png", PNG)])
    drain(make_sender(sandbox))
    kinds = ["photo" if m.get("photo") else m.get("document", {}).get("file_name", "text")
             for m in user.bot_messages()]
    assert kinds == ["text", "a.txt", "photo"]


def test_it_does_not_let_one_busy_chat_hold_up_another(sandbox, driver, chat):
    ann, ann_account = chat
    bob = driver.user(next(_next_user), first_name="Bob")
    bob.send("hello")
    bob_account, _ = Account.from_telegram(user_id=bob.user_id, chat_id=bob.user_id)
    for n in range(8):
        enqueue(ann_account, text=f"ann {n}", edit_key=f"a{n}")
    enqueue(bob_account, text="bob's only message")
    sender = OutboxSender(make_sender(sandbox).bot)  # real pacing: 1/s per chat after a burst of 3

    async def first_round() -> None:
        async with sender.bot:
            await sender.run_once()

    asyncio.run(first_round())
    assert bot_texts(bob) == ["bob's only message"]
    assert len(bot_texts(ann)) == 3


class FakeClock:
    """The clock boundary: time moves only when the pacer sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds


def test_the_pacer_keeps_a_chat_to_its_burst_then_its_rate():
    clock = FakeClock()
    pacer = Pacer(chat_rate=1.0, chat_burst=3, global_rate=100, global_burst=100, clock=clock, sleep=clock.sleep)

    async def five() -> list[float]:
        times = []
        for _ in range(5):
            await pacer.acquire(1)
            times.append(round(clock.now, 3))
        return times

    assert asyncio.run(five()) == [0, 0, 0, 1, 2]


def test_the_pacer_reserves_overall_slots_without_polling():
    clock = FakeClock()
    pacer = Pacer(chat_rate=1.0, chat_burst=3, global_rate=5.0, global_burst=2, clock=clock, sleep=clock.sleep)
    done: list[float] = []

    async def chat(chat_id: int) -> None:
        await pacer.acquire(chat_id)
        done.append(round(clock.now, 3))

    async def many() -> None:
        await asyncio.gather(*(chat(n) for n in range(12)))

    asyncio.run(many())
    # Two at once (the burst), then one every 1/5 s, whatever the number of chats waiting.
    assert sorted(done) == [0, 0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0]
    assert clock.sleeps == 10  # one sleep per caller that had to wait: no polling


def test_the_pacer_waits_out_a_pause_telegram_asked_for():
    clock = FakeClock()
    pacer = Pacer(clock=clock, sleep=clock.sleep)
    pacer.pause(7, 5.0)
    asyncio.run(pacer.acquire(7))
    assert clock.now == 5.0


def test_the_pacer_lets_no_more_than_its_release_burst_out_at_once():
    clock = FakeClock()
    pacer = Pacer(chat_burst=100, global_rate=10.0, global_burst=10, release_burst=3, clock=clock,
                  sleep=clock.sleep)

    async def ten() -> list[float]:
        times = []
        for n in range(10):  # ten slots reserved at once (late callers), released three at a time then 10/s
            await pacer.acquire(n)
            times.append(round(clock.now, 3))
        return times

    assert asyncio.run(ten()) == [0, 0, 0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
