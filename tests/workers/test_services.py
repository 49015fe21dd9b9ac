"""Connect commands, /worker, connecttoken, disconnect notices, lost jobs and the token race."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import Account
from core.models import OutboxMessage
from jobs.models import Job
from jobs.services import mark_lost_jobs, record_progress
from workers.models import ConnectToken, Worker
from workers.script import latest_version, websocket_url
from workers.services import announce_disconnects, issue_connect_command

pytestmark = pytest.mark.django_db

MACHINE = {"hostname": "ann-laptop", "worker_version": latest_version()}


def test_it_builds_connect_commands_from_the_public_url(account, settings):
    settings.PUBLIC_URL = "https://bot.example.com"
    command = issue_connect_command(account)
    assert command.unix == f"curl -sL https://bot.example.com/worker | python3 - --token={command.token}"
    assert command.windows == f"irm https://bot.example.com/worker | python - --token={command.token}"
    assert ConnectToken.consume(command.token).account == account


@pytest.mark.parametrize(
    ("public_url", "expected"),
    [
        ("https://bot.example.com", "wss://bot.example.com/ws/worker/"),
        ("http://127.0.0.1:8000", "ws://127.0.0.1:8000/ws/worker/"),
        ("https://example.com/statsbot/", "wss://example.com/statsbot/ws/worker/"),
    ],
)
def test_it_derives_the_websocket_url(public_url, expected):
    assert websocket_url(public_url) == expected


def test_it_serves_the_worker_script_with_the_server_filled_in(client, settings):
    settings.PUBLIC_URL = "https://bot.example.com"
    response = client.get("/worker")
    body = response.content.decode()
    assert response.status_code == 200
    assert response["Content-Type"] == "text/x-python; charset=utf-8"
    assert response["Cache-Control"] == "public, max-age=300"
    assert response["X-StatsBot-Worker-Version"] and f'"{response["X-StatsBot-Worker-Version"]}"' in body
    assert "wss://bot.example.com/ws/worker/" in body and "__STATSBOT_SERVER_URL__" not in body
    compile(body, "statsbot_worker.py", "exec")
    assert client.post("/worker").status_code == 405
    assert client.head("/worker")["X-StatsBot-Worker-Version"] == response["X-StatsBot-Worker-Version"]


def test_it_prints_a_connect_command_for_an_operator(account, capsys):
    call_command("connecttoken", str(account.telegram_user_id))
    out = capsys.readouterr().out
    assert "curl -sL http://127.0.0.1:8000/worker | python3 - --token=sbt_" in out
    assert "irm http://127.0.0.1:8000/worker | python - --token=sbt_" in out
    assert ConnectToken.objects.filter(account=account).count() == 1


def test_it_creates_the_account_when_asked(capsys):
    with pytest.raises(CommandError, match="must /start the bot first"):
        call_command("connecttoken", "424242")
    call_command("connecttoken", "424242", "--create")
    assert Account.objects.filter(telegram_user_id=424242).exists()
    assert "Created account" in capsys.readouterr().out


def _away_worker(account, seconds: float) -> Worker:
    worker, _ = Worker.enroll(account, MACHINE)
    worker.mark_connected("chan")
    worker.mark_disconnected("chan")
    Worker.objects.filter(pk=worker.pk).update(disconnected_at=timezone.now() - timedelta(seconds=seconds))
    return Worker.objects.get(pk=worker.pk)


def test_it_announces_a_disconnect_once_after_the_grace(account):
    _away_worker(account, seconds=5)
    assert announce_disconnects(grace=30) == 0
    assert announce_disconnects(grace=1) == 1
    assert announce_disconnects(grace=1) == 0
    events = list(OutboxMessage.objects.filter(kind="worker").values_list("payload", flat=True))
    assert [e["event"] for e in events] == ["disconnected"]


def test_it_marks_jobs_lost_when_their_worker_stays_away(account, make_account):
    worker = _away_worker(account, seconds=700)
    lost = Job.objects.create(account=account, action=Job.Action.TRAIN)
    lost.mark_dispatched(worker)
    queued = Job.objects.create(account=account, action=Job.Action.PREDICT)
    other = make_account()
    online, _ = Worker.enroll(other, MACHINE)
    online.mark_connected("other-chan")
    running = Job.objects.create(account=other, action=Job.Action.TRAIN)
    running.mark_dispatched(online)

    assert mark_lost_jobs(grace=600) == 1
    lost.refresh_from_db()
    queued.refresh_from_db()
    running.refresh_from_db()
    assert (lost.state, queued.state, running.state) == (Job.State.LOST, Job.State.QUEUED, Job.State.DISPATCHED)
    row = OutboxMessage.objects.get(edit_key=lost.edit_key)
    assert row.payload == {"job_id": str(lost.id), "state": "lost"}


def test_it_marks_jobs_of_a_replaced_worker_lost(account):
    old, _ = Worker.enroll(account, MACHINE)
    job = Job.objects.create(account=account, action=Job.Action.TRAIN)
    job.mark_dispatched(old)
    Worker.enroll(account, {**MACHINE, "hostname": "desktop"})
    assert mark_lost_jobs(grace=600) == 1


def _race(raw: str, contenders: int = 6) -> list[ConnectToken | None]:
    """``contenders`` threads present ``raw`` at the same moment; returns what each got."""
    from django.db import connection

    barrier = threading.Barrier(contenders)
    winners: list[ConnectToken | None] = []

    def attempt() -> None:
        barrier.wait()
        try:
            winners.append(ConnectToken.consume(raw))
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return winners


@pytest.mark.django_db(transaction=True)
def test_it_consumes_a_token_once_when_connections_race(account):
    """The database lets exactly one of many simultaneous connections use a token."""
    for _ in range(10):
        _, raw = ConnectToken.issue(account)
        winners = _race(raw)
        assert len(winners) == 6
        assert sum(1 for won in winners if won is not None) == 1


def _orphaned_worker(account: Account, *, seen_seconds_ago: float) -> Worker:
    """A worker whose web process died without closing its socket: still "online", no heartbeats."""
    worker, _ = Worker.enroll(account, MACHINE)
    worker.mark_connected("specific.dead-process!abc")
    seen = timezone.now() - timedelta(seconds=seen_seconds_ago)
    Worker.objects.filter(pk=worker.pk).update(last_seen_at=seen, connected_at=seen)
    worker.refresh_from_db()
    return worker


def test_it_disconnects_workers_whose_heartbeats_stopped(account, make_account):
    from workers.services import mark_stale_workers

    stale = _orphaned_worker(account, seen_seconds_ago=200)
    fresh = _orphaned_worker(make_account(), seen_seconds_ago=10)
    assert mark_stale_workers(stale_after=90) == 1
    assert mark_stale_workers(stale_after=90) == 0
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert stale.channel_name == "" and not stale.is_online
    assert stale.disconnected_at == stale.last_seen_at  # away since it was last seen
    assert fresh.is_online and fresh.disconnected_at is None


def test_it_sends_the_disconnect_notice_and_the_lost_notice_once_for_a_stale_worker(account):
    from workers.services import mark_stale_workers

    worker = _orphaned_worker(account, seen_seconds_ago=700)
    job = Job.objects.create(account=account, action=Job.Action.TRAIN)
    job.mark_dispatched(worker)
    record_progress(job, 40, "training", "Fitting")  # "running 40%"
    assert mark_lost_jobs(grace=600) == 0  # "online" hides it until the sweep sees the silence
    assert announce_disconnects(grace=30) == 0
    for _ in range(3):  # every sweep round, as telegram_app.sweeps runs them
        mark_stale_workers(stale_after=90)
        announce_disconnects(grace=30)
        mark_lost_jobs(grace=600)
    job.refresh_from_db()
    assert job.state == Job.State.LOST
    events = list(OutboxMessage.objects.filter(account=account).values_list("kind", "payload"))
    assert [p["event"] for k, p in events if k == "worker"] == ["disconnected"]
    assert [p for k, p in events if p.get("job_id") == str(job.id)] == [{"job_id": str(job.id), "state": "lost"}]


def test_it_leaves_a_worker_that_reconnected_meanwhile(account):
    from workers.services import mark_stale_workers

    worker = _orphaned_worker(account, seen_seconds_ago=200)
    worker.mark_connected("specific.new!x")  # a reconnect lands between the sweep's read and write
    assert mark_stale_workers(stale_after=90) == 0
    worker.refresh_from_db()
    assert worker.channel_name == "specific.new!x"


def test_it_authenticates_a_credential_in_two_round_trips(account, django_assert_max_num_queries):
    """Every worker reconnects with its credential after a deploy: one SELECT, one UPDATE."""
    from workers.consumers import _authenticate_and_connect

    worker, credential = Worker.enroll(account, MACHINE)
    worker.mark_connected("specific.old!1")
    frame = {"type": "auth", "credential": credential, "machine": {**MACHINE, "hostname": "new-name"},
             "running_jobs": []}
    with django_assert_max_num_queries(2):
        found, new_credential, old_channel = _authenticate_and_connect(frame, "specific.new!2")
    assert (found.pk, new_credential, old_channel) == (worker.pk, None, "specific.old!1")
    worker.refresh_from_db()
    assert worker.channel_name == "specific.new!2" and worker.machine_name == "new-name"
    assert not OutboxMessage.objects.filter(kind=OutboxMessage.Kind.WORKER).exists()  # a quick reconnect is silent


def test_it_connects_and_tells_the_user_in_one_transaction_after_a_disconnect_notice(account):
    from workers.consumers import _authenticate_and_connect

    worker, credential = Worker.enroll(account, MACHINE)
    worker.mark_connected("specific.old!1")
    worker.mark_disconnected("specific.old!1")
    assert worker.mark_disconnect_notified()
    frame = {"type": "auth", "credential": credential, "machine": MACHINE, "running_jobs": []}
    with CaptureQueriesContext(connection) as queries:
        _authenticate_and_connect(frame, "specific.new!2")
    [notice] = OutboxMessage.objects.filter(kind=OutboxMessage.Kind.WORKER, account=account)
    assert notice.payload == {"event": "reconnected", "worker_id": worker.pk}
    statements = [q["sql"].split()[0].upper() for q in queries.captured_queries]
    # SELECT the worker, then one savepoint (the test's transaction stands in for BEGIN) holds the
    # worker's UPDATE and the notice's INSERT: no commit between the state and what it causes.
    assert statements[0] == "SELECT" and statements[1:3] == ["SAVEPOINT", "UPDATE"] and statements[-1] == "RELEASE"
    assert "INSERT" in statements[3:-1]


def test_it_reconciles_a_reconnect_without_jobs_in_one_query(account, django_assert_max_num_queries):
    from jobs.services import reconcile_after_reconnect

    worker, _ = Worker.enroll(account, MACHINE)
    with django_assert_max_num_queries(1):
        assert reconcile_after_reconnect(worker, []) == []


def test_it_loads_an_authenticated_worker_as_the_orm_does(account):
    """Worker.authenticate is hand-written SQL: every field, the account's too, comes back converted."""
    worker, credential = Worker.enroll(account, {**MACHINE, "packages": {"pandas": "3.0"}})
    worker.mark_connected("specific.a!1")
    found = Worker.authenticate(credential)
    expected = Worker.objects.select_related("account").get(pk=worker.pk)
    for f in Worker._meta.concrete_fields:
        assert getattr(found, f.attname) == getattr(expected, f.attname), f.name
    for f in Account._meta.concrete_fields:
        assert getattr(found.account, f.attname) == getattr(expected.account, f.attname), f.name
    assert found.connected_at.tzinfo is not None and found.packages == {"pandas": "3.0"}
    assert not found._state.adding  # a saved row: save() updates it
    worker.revoke(Worker.RevokeReason.USER)
    assert Worker.authenticate(credential) is None
