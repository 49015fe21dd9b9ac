"""Failure digests: runs of one account that fail together become one message (notifications.digests).

The clock is the only thing faked (``timezone.now`` where the digest and the services read it).
"""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from django.test import override_settings
from django.utils import timezone

from accounts.models import Account, ApiKey
from core.models import OutboxMessage
from notifications import services
from notifications.digests import digest_edit_key, send_run_alert
from notifications.models import FailureDigest, TrackedProcess
from telegram_app.rendering import render
from tests.notifications.conftest import new_uuid

pytestmark = pytest.mark.django_db

WINDOW = override_settings(FAILURE_DIGEST_WINDOW=60, FAILURE_DIGEST_HOLD=5, FAILURE_DIGEST_THRESHOLD=3)


class Clock:
    """``timezone.now`` for the code under test, moved by hand."""

    def __init__(self) -> None:
        self.now = timezone.now()

    def __call__(self):
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock():
    clock = Clock()
    with mock.patch("django.utils.timezone.now", clock):
        yield clock


def start(key: ApiKey, name: str, **fields) -> TrackedProcess:
    process, _ = services.start_process(key, uuid=new_uuid(), name=name, **fields)
    return process


def crash(key: ApiKey, process: TrackedProcess, error: str = "RuntimeError: CUDA error: device lost") -> None:
    services.finish_process(key, uuid=process.uuid, status="failed", error=error,
                            traceback=f"Traceback (most recent call last):\n  File \"train.py\"\n{error}")


def failure_rows():
    """What the chat gets besides the 'started' messages: rows not superseded, and of rows
    sharing an edit key only the newest (the sender coalesces them: one message)."""
    rows = list(OutboxMessage.objects.exclude(payload__event="started").exclude(state="superseded").order_by("id"))
    newest = {row.edit_key: row.pk for row in rows if row.edit_key}
    return [row for row in rows if not row.edit_key or newest[row.edit_key] == row.pk]


def pending_payloads():
    return [(r.payload["event"], r.edit_key) for r in failure_rows()]


@WINDOW
def test_it_sends_a_lone_failure_on_its_own_after_the_short_hold(issued_key, clock):
    key = issued_key[0]
    run = start(key, "lonely.py")
    crash(key, run)
    [row] = failure_rows()
    assert row.payload["event"] == "finished" and row.payload["uuid"] == str(run.uuid) and row.edit_key == ""
    assert row.next_attempt_at == clock.now + timedelta(seconds=5)  # held 5 s, not the 60 s window
    assert "lonely.py" in render(row).text and "Traceback" in render(row).text


@WINDOW
def test_it_folds_failures_within_the_hold_into_one_digest_row(issued_key, clock):
    key = issued_key[0]
    runs = [start(key, f"seed-{i}.py") for i in range(4)]
    for run in runs:
        crash(key, run)
        clock.advance(1)
    [digest] = failure_rows()
    group = FailureDigest.objects.get()
    assert digest.payload == {"event": "digest", "digest": group.pk, "uuid": str(runs[-1].uuid)}
    assert digest.edit_key == digest_edit_key(group.pk)
    assert digest.next_attempt_at == group.opened_at + timedelta(seconds=5)
    assert [m["uuid"] for m in group.members] == [str(r.uuid) for r in runs]
    folded = OutboxMessage.objects.filter(state="superseded", payload__event="finished")
    assert folded.count() == 2 and all("folded into the failure digest" in r.error for r in folded)
    # Runs 3 and 4 each queued a digest row; the sender keeps the newest (same edit key).
    assert OutboxMessage.objects.filter(edit_key=digest.edit_key).count() == 2
    text = render(digest).text
    assert "4 runs failed" in text
    for run in runs:
        assert run.name in text
    assert text.count("CUDA error: device lost") == 4 and "Traceback" not in text


@WINDOW
def test_it_keeps_failures_below_the_threshold_as_their_own_alerts(issued_key, clock):
    key = issued_key[0]
    first, second = start(key, "a.py"), start(key, "b.py")
    crash(key, first)
    clock.advance(2)
    crash(key, second)
    assert pending_payloads() == [("finished", ""), ("finished", "")]
    assert {r.payload["uuid"] for r in failure_rows()} == {str(first.uuid), str(second.uuid)}


@WINDOW
def test_it_starts_a_new_group_for_a_failure_after_the_window(issued_key, clock):
    key = issued_key[0]
    early = [start(key, f"early-{i}.py") for i in range(3)]
    late = start(key, "late.py")
    for run in early:
        crash(key, run)
    clock.advance(61)
    crash(key, late)
    assert FailureDigest.objects.count() == 2
    assert pending_payloads() == [("digest", digest_edit_key(FailureDigest.objects.earliest("opened_at").pk)),
                                  ("finished", "")]
    assert failure_rows()[-1].next_attempt_at == clock.now + timedelta(seconds=5)


@WINDOW
def test_it_lists_later_failures_of_the_window_in_the_same_digest_message(issued_key, clock):
    key = issued_key[0]
    runs = [start(key, f"r{i}.py") for i in range(5)]
    for run in runs[:3]:
        crash(key, run)
    first_digest = failure_rows()[-1]
    first_digest.next_attempt_at = clock.now  # delivered: the sender's record of it
    first_digest.state = "sent"
    first_digest.sent_message_id = 77
    first_digest.save()
    clock.advance(30)  # past the hold, inside the window
    crash(key, runs[3])
    later = failure_rows()[-1]
    assert later.edit_key == first_digest.edit_key and later.next_attempt_at == clock.now  # not held again
    assert "4 runs failed" in render(later).text and "r3.py" in render(later).text


@WINDOW
def test_it_makes_a_digest_once_the_threshold_is_reached_after_the_first_alerts_went_out(issued_key, clock):
    key = issued_key[0]
    runs = [start(key, f"slow-{i}.py") for i in range(3)]
    crash(key, runs[0])
    OutboxMessage.objects.filter(payload__event="finished").update(state="sent", sent_message_id=5)
    clock.advance(20)
    crash(key, runs[1])
    OutboxMessage.objects.filter(payload__event="finished").update(state="sent", sent_message_id=6)
    clock.advance(20)
    crash(key, runs[2])
    events = pending_payloads()
    assert [e for e, _ in events] == ["finished", "finished", "digest"]
    assert "3 runs failed</b> within 40s" in render(failure_rows()[-1]).text


@WINDOW
def test_it_groups_crashed_killed_stalled_and_lost_runs_together(issued_key, clock):
    key = issued_key[0]
    crashed, killed, stalled, lost = (start(key, n, heartbeat_interval=10)
                                      for n in ("crashed.py", "killed.py", "stalled.py", "lost.py"))
    TrackedProcess.objects.filter(pk=lost.pk).update(state="stalled", stalled_at=clock.now - timedelta(days=2))
    crash(key, crashed, "ValueError: shapes (3,) and (4,) not aligned")
    services.finish_process(key, uuid=killed.uuid, status="cancelled", error="SIGTERM", exit_reason="SIGTERM")
    TrackedProcess.objects.filter(pk=stalled.pk).update(last_heartbeat_at=clock.now - timedelta(seconds=300))
    assert services.mark_stalled_processes(grace=60) == 1
    assert services.mark_lost_processes(after=3600) == 1
    [digest] = failure_rows()
    assert [m["what"] for m in FailureDigest.objects.get().members] == ["crashed", "killed", "stalled", "lost"]
    text = render(digest).text
    assert "4 runs failed or stopped sending heartbeats" in text
    assert "❌" in text and "shapes (3,) and (4,) not aligned" in text
    assert "💀 killed (SIGTERM)" in text and "⏸️ no heartbeat" in text and "🪦 lost" in text


@WINDOW
def test_it_does_not_group_successes_or_deliberate_stops(issued_key, clock):
    key = issued_key[0]
    runs = [start(key, f"fine-{i}.py") for i in range(4)]
    services.finish_process(key, uuid=runs[0].uuid, status="succeeded")
    services.finish_process(key, uuid=runs[1].uuid, status="cancelled", error="KeyboardInterrupt",
                            exit_reason="KeyboardInterrupt")
    services.finish_process(key, uuid=runs[2].uuid, status="succeeded")
    crash(key, runs[3])
    assert [m["uuid"] for m in FailureDigest.objects.get().members] == [str(runs[3].uuid)]
    assert [(e, k) for e, k in pending_payloads()] == [("finished", "")] * 4
    assert [r.next_attempt_at > clock.now for r in failure_rows()] == [False, False, False, True]


@WINDOW
def test_it_keeps_each_accounts_failures_apart(issued_key, clock):
    other_key, _ = ApiKey.issue(Account.objects.create(telegram_user_id=999, chat_id=999))
    key = issued_key[0]
    mine = [start(key, f"mine-{i}.py") for i in range(2)]
    theirs = [start(other_key, f"theirs-{i}.py") for i in range(2)]
    for a, b in zip(mine, theirs, strict=True):
        crash(key, a)
        crash(other_key, b)
    assert FailureDigest.objects.count() == 2
    assert [e for e, _ in pending_payloads()] == ["finished"] * 4


@override_settings(FAILURE_DIGEST_WINDOW=0)
def test_it_sends_every_alert_at_once_when_digests_are_off(issued_key, clock):
    key = issued_key[0]
    runs = [start(key, f"x{i}.py") for i in range(4)]
    for run in runs:
        crash(key, run)
    assert pending_payloads() == [("finished", "")] * 4
    assert all(r.next_attempt_at <= clock.now for r in failure_rows())
    assert not FailureDigest.objects.exists()


@WINDOW
def test_it_names_the_machine_once_when_every_run_was_on_it(issued_key, clock):
    key = issued_key[0]
    runs = [start(key, f"node-{i}.py", metadata={"host": "gpu-node-3"}) for i in range(3)]
    for run in runs:
        crash(key, run)
    assert "all on <code>gpu-node-3</code>" in render(failure_rows()[-1]).text


@WINDOW
def test_it_offers_each_runs_own_alert_from_the_digest(issued_key, clock):
    key = issued_key[0]
    runs = [start(key, f"b{i}.py") for i in range(3)]
    for run in runs:
        crash(key, run)
    digest = failure_rows()[-1]
    buttons = [b for row in render(digest).buttons for b in row]
    assert [b["text"] for b in buttons] == ["🔎 b0.py", "🔎 b1.py", "🔎 b2.py"]
    assert buttons[1]["callback_data"] == f"pf:{runs[1].uuid}"
    account = key.account
    assert send_run_alert(account, str(runs[1].uuid)) == runs[1]
    details = OutboxMessage.objects.latest("id")
    assert details.payload == {"uuid": str(runs[1].uuid), "event": "finished"} and details.next_attempt_at <= clock.now
    assert "Traceback" in render(details).text
    for _ in range(5):  # tapped again and again: one copy, not six
        assert send_run_alert(account, str(runs[1].uuid)) == runs[1]
    assert OutboxMessage.objects.filter(payload={"uuid": str(runs[1].uuid), "event": "finished"}).count() == 1
    assert send_run_alert(account, str(runs[2].uuid)) == runs[2]  # another run's button still works
    assert OutboxMessage.objects.latest("id").payload == {"uuid": str(runs[2].uuid), "event": "finished"}
    other = Account.objects.create(telegram_user_id=998, chat_id=998)
    assert send_run_alert(other, str(runs[1].uuid)) is None  # not someone else's run
    assert send_run_alert(account, "not-a-uuid") is None


def test_it_prunes_groups_a_week_old(issued_key, clock):
    key = issued_key[0]
    crash(key, start(key, "old.py"))
    clock.advance(8 * 24 * 3600)
    crash(key, start(key, "new.py"))
    assert services.prune_bookkeeping() >= 1
    [kept] = FailureDigest.objects.all()
    assert kept.opened_at == clock.now


@WINDOW
def test_it_keeps_a_huge_digest_within_telegrams_limit_and_escapes_names(issued_key, clock):
    from tg_rules.text import TEXT_LIMIT, utf16_len

    key = issued_key[0]
    runs = [start(key, f"<b>run</b> {i} " + "x" * 150) for i in range(120)]
    for run in runs:
        crash(key, run, "ValueError: <script>" + "y" * 500)
    rendered = render(failure_rows()[-1])
    assert utf16_len(rendered.text) <= TEXT_LIMIT
    assert "120 runs failed" in rendered.text and "more" in rendered.text.splitlines()[-1]
    assert "<script>" not in rendered.text and "&lt;b&gt;run&lt;/b&gt; 0" in rendered.text
    assert sum(len(row) for row in rendered.buttons) == 10
