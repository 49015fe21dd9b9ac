"""The bot's periodic sweeps: stalled processes, their recovery, the /status tree, bookkeeping."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from core.models import OutboxMessage
from notifications import services
from notifications.models import IdempotencyRecord, RateCounter, TrackedProcess
from tests.notifications.conftest import new_uuid

pytestmark = pytest.mark.django_db


def start(key, name="train.py", **fields):
    process, _ = services.start_process(key, uuid=new_uuid(), name=name, **fields)
    return process


def silence(process, seconds):
    TrackedProcess.objects.filter(pk=process.pk).update(last_heartbeat_at=timezone.now() - timedelta(seconds=seconds))


def events(process):
    return [m.payload for m in OutboxMessage.objects.filter(kind="process", payload__uuid=str(process.uuid))
            .order_by("id")]


def test_it_marks_a_silent_process_stalled_once(issued_key):
    key = issued_key[0]
    quiet, chatty = start(key), start(key, "eval.py")
    silence(quiet, 200)
    silence(chatty, 30)
    assert services.mark_stalled_processes(grace=timedelta(seconds=120)) == 1
    quiet.refresh_from_db()
    assert quiet.state == "stalled" and quiet.stalled_at is not None
    stalled = events(quiet)[-1]
    assert stalled["event"] == "stalled" and stalled["interval_s"] == 60 and 199 <= stalled["silent_s"] <= 202
    assert services.mark_stalled_processes(grace=120) == 0  # reported once
    assert [e["event"] for e in events(quiet)] == ["started", "stalled"]
    assert TrackedProcess.objects.get(pk=chatty.pk).state == "running"


@override_settings(HEARTBEAT_GRACE=30)
def test_it_uses_the_configured_grace(issued_key):
    process = start(issued_key[0], heartbeat_interval=10)
    silence(process, 35)
    assert services.mark_stalled_processes() == 0
    silence(process, 45)
    assert services.mark_stalled_processes() == 1


def test_it_never_stalls_processes_without_heartbeats_or_finished_ones(issued_key):
    key = issued_key[0]
    no_heartbeats = start(key, heartbeat_interval=0)
    finished = start(key)
    services.finish_process(key, uuid=finished.uuid, status="succeeded")
    silence(no_heartbeats, 10_000)
    silence(finished, 10_000)
    assert services.mark_stalled_processes(grace=0) == 0


def test_it_reports_a_recovery_when_heartbeats_resume_and_can_stall_again(api, issued_key):
    process = start(issued_key[0])
    silence(process, 400)
    services.mark_stalled_processes(grace=60)
    response = api.post("/api/heartbeat", {"uuid": str(process.uuid)})
    assert response.json() == {"state": "running", "control": "run", "actions": []}
    recovered = events(process)[-1]
    assert recovered["event"] == "recovered" and recovered["silent_s"] >= 400
    api.post("/api/heartbeat", {"uuid": str(process.uuid)})
    assert [e["event"] for e in events(process)] == ["started", "stalled", "recovered"]
    silence(process, 400)
    assert services.mark_stalled_processes(grace=60) == 1


def test_it_finishes_a_stalled_process(api, issued_key):
    process = start(issued_key[0])
    silence(process, 400)
    services.mark_stalled_processes(grace=60)
    response = api.post("/api/processes/finish", {"uuid": str(process.uuid), "status": "failed"})
    assert response.json() == {"state": "failed"}


def test_it_builds_the_process_tree_for_status(issued_key, make_account):
    key = issued_key[0]
    sweep = start(key, "sweep", tags=["grid"])
    fold1 = start(key, "fold 1", parent_uuid=sweep.uuid)
    fold2 = start(key, "fold 2", parent_uuid=sweep.uuid, total=200)
    services.heartbeat(key, uuid=fold2.uuid, done=50)
    start(key, "inner", parent_uuid=fold1.uuid)
    done_parent = start(key, "old parent")
    orphan = start(key, "orphan", parent_uuid=done_parent.uuid)
    services.finish_process(key, uuid=done_parent.uuid, status="succeeded")
    silence(orphan, 1000)
    services.mark_stalled_processes(grace=0)
    start(services.ApiKey.issue(make_account())[0], "someone else's")

    tree = services.process_tree(key.account)
    assert [n["name"] for n in tree] == ["sweep", "orphan"]
    root = tree[0]
    assert (root["tags"], root["tag_emoji"], root["state"]) == (["grid"], sweep.tag_emoji, "running")
    assert [c["name"] for c in root["children"]] == ["fold 1", "fold 2"]
    assert root["children"][0]["children"][0]["name"] == "inner"
    assert root["children"][1]["progress"] == {"done": 50, "total": 200, "percent": 25.0}
    assert root["progress"] is None and root["runtime_s"] >= 0
    assert tree[1]["state"] == "stalled" and tree[1]["children"] == []


def test_it_prunes_old_bookkeeping(issued_key):
    key = issued_key[0]
    old = timezone.now() - timedelta(days=2)
    IdempotencyRecord.objects.create(api_key=key, key="old", endpoint="notify", status_code=202, response={},
                                     created_at=old)
    IdempotencyRecord.objects.create(api_key=key, key="new", endpoint="notify", status_code=202, response={})
    RateCounter.objects.create(api_key=key, window="1h", window_start=old, count=3)
    assert services.prune_bookkeeping() == 2
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["new"]
    assert not RateCounter.objects.exists()


def test_it_prunes_files_and_rows_of_delivered_messages(account):
    from datetime import timedelta

    from django.utils import timezone

    from core.models import Attachment, OutboxMessage
    from core.outbox import FileToSend, enqueue, prune

    old = enqueue(account, text="old", files=[FileToSend("document", "log.txt", b"x" * 100)])
    week_old = enqueue(account, text="week", files=[FileToSend("document", "log.txt", b"y")])
    pending = enqueue(account, text="pending", files=[FileToSend("document", "log.txt", b"z")])
    OutboxMessage.objects.filter(pk=old.pk).update(state="sent", created_at=timezone.now() - timedelta(days=31))
    OutboxMessage.objects.filter(pk=week_old.pk).update(state="sent", created_at=timezone.now() - timedelta(days=8))
    OutboxMessage.objects.filter(pk=pending.pk).update(created_at=timezone.now() - timedelta(days=40))
    prune()
    assert list(OutboxMessage.objects.order_by("id").values_list("text", flat=True)) == ["week", "pending"]
    assert list(Attachment.objects.values_list("message__text", flat=True)) == ["pending"]
