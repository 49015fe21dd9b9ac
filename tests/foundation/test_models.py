"""State machines and database constraints of the data model."""

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import ApiKey, PairingRequest
from core.models import OutboxMessage
from core.secrets import hash_secret
from core.state_machine import InvalidTransition
from jobs.models import Job
from notifications.models import TrackedProcess
from workers.models import ConnectToken, Worker
from workers.script import latest_version

pytestmark = pytest.mark.django_db

MACHINE = {"hostname": "laptop", "platform": "Linux", "python": "3.11.7", "worker_version": latest_version(),
           "packages": {"pandas": "2.2"}, "models": ["lightgbm"]}


def test_it_creates_an_account_once_and_refreshes_it(make_account):
    account = make_account(telegram_user_id=42, username="ann")
    again, created = type(account).from_telegram(user_id=42, chat_id=42, username="ann_new")
    assert not created and again.pk == account.pk and again.username == "ann_new"


def test_it_issues_keys_that_are_stored_hashed(account):
    key, raw = ApiKey.issue(account)
    assert raw.startswith("exp_") and len(raw) > 40
    assert key.secret_hash == hash_secret(raw) and raw not in key.secret_hash
    assert raw.startswith(key.prefix)
    assert ApiKey.authenticate(raw) == key
    assert ApiKey.authenticate(raw + "x") is None
    assert ApiKey.authenticate("") is None


def test_it_keeps_the_other_keys_working_when_one_is_issued(account):
    first, first_raw = ApiKey.issue(account)
    second, _ = ApiKey.issue(account, name="gpu-box")
    first.refresh_from_db()
    assert first.is_active and second.is_active and second.name == "gpu-box"
    assert ApiKey.authenticate(first_raw).is_active
    assert account.active_keys() == [second, first]


def test_it_renames_a_key_to_one_clean_line(account):
    key, _ = ApiKey.issue(account)
    assert key.label == key.prefix + "…"
    assert key.rename("  my\nlaptop\x07 ") == "my laptop"
    key.refresh_from_db()
    assert key.name == "my laptop" and key.label == "my laptop"
    assert len(key.rename("x" * 500)) == 64
    with pytest.raises(ValueError):
        key.rename(" \n ")


def test_it_refuses_to_revoke_a_key_twice(account):
    key, _ = ApiKey.issue(account)
    key.revoke()
    with pytest.raises(InvalidTransition):
        key.revoke()


def test_it_consumes_a_connect_token_once(account):
    token, raw = ConnectToken.issue(account)
    assert token.expires_at - token.created_at == timedelta(minutes=5)
    assert ConnectToken.consume(raw).account == account
    assert ConnectToken.consume(raw) is None


def test_it_refuses_an_expired_connect_token(account):
    token, raw = ConnectToken.issue(account)
    ConnectToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert ConnectToken.consume(raw) is None
    assert ConnectToken.objects.get(pk=token.pk).used_at is None


def test_it_enforces_unique_token_hashes(account):
    ConnectToken.objects.create(account=account, token_hash="a" * 64, prefix="sbt_a", expires_at=timezone.now())
    with pytest.raises(IntegrityError), transaction.atomic():
        ConnectToken.objects.create(account=account, token_hash="a" * 64, prefix="sbt_b", expires_at=timezone.now())


def test_it_replaces_the_older_worker_on_enrollment(account):
    old, old_credential = Worker.enroll(account, MACHINE)
    new, new_credential = Worker.enroll(account, {**MACHINE, "hostname": "desktop"})
    old.refresh_from_db()
    assert old.revoked_at is not None and old.revoke_reason == Worker.RevokeReason.REPLACED
    assert Worker.authenticate(old_credential) is None
    assert Worker.authenticate(new_credential) == new
    assert new.machine_name == "desktop" and new.packages == {"pandas": "2.2"}


def test_it_keeps_one_live_worker_per_account(account):
    Worker.enroll(account, MACHINE)
    with pytest.raises(IntegrityError), transaction.atomic():
        Worker.objects.create(account=account, machine_name="x", credential_hash="b" * 64, credential_prefix="x")


def test_it_announces_first_connection_but_not_a_quick_reconnect(account):
    worker, _ = Worker.enroll(account, MACHINE)
    assert worker.mark_connected("chan-1") is True
    assert worker.mark_disconnected("chan-1") is True
    assert worker.mark_connected("chan-2") is False
    assert worker.is_online


def test_it_ignores_the_disconnect_of_a_replaced_connection(account):
    worker, _ = Worker.enroll(account, MACHINE)
    worker.mark_connected("chan-1")
    worker.mark_connected("chan-2")
    assert worker.mark_disconnected("chan-1") is False
    worker.refresh_from_db()
    assert worker.channel_name == "chan-2"


def test_it_claims_the_disconnect_notice_once(account):
    worker, _ = Worker.enroll(account, MACHINE)
    worker.mark_connected("chan-1")
    worker.mark_disconnected("chan-1")
    assert worker.mark_disconnect_notified() is True
    assert worker.mark_disconnect_notified() is False
    assert worker.mark_connected("chan-2") is True  # back after a notice: say so


def test_it_moves_a_job_through_its_happy_path(account):
    worker, _ = Worker.enroll(account, MACHINE)
    job = Job.objects.create(account=account, action=Job.Action.TRAIN)
    job.mark_dispatched(worker)
    job.record_progress(40, "training", "Fitting")
    job.succeed({"model_id": "m1"})
    job.refresh_from_db()
    assert (job.state, job.progress, job.result) == (Job.State.SUCCEEDED, 100, {"model_id": "m1"})
    assert job.dispatched_at and job.started_at and job.finished_at


@pytest.mark.parametrize(
    ("start", "target"),
    [
        (Job.State.QUEUED, Job.State.RUNNING),
        (Job.State.QUEUED, Job.State.SUCCEEDED),
        (Job.State.SUCCEEDED, Job.State.FAILED),
        (Job.State.SUCCEEDED, Job.State.QUEUED),
        (Job.State.CANCELLED, Job.State.SUCCEEDED),
        (Job.State.RUNNING, Job.State.QUEUED),
    ],
)
def test_it_refuses_job_transitions_outside_the_machine(account, start, target):
    job = Job.objects.create(account=account, action=Job.Action.TRAIN, state=start)
    with pytest.raises(InvalidTransition):
        job._move(target)
    job.refresh_from_db()
    assert job.state == start


def test_it_lets_a_lost_job_take_a_late_result(account):
    job = Job.objects.create(account=account, action=Job.Action.TRAIN, state=Job.State.RUNNING)
    job.mark_lost()
    job.succeed({"model_id": "late"})
    assert job.state == Job.State.SUCCEEDED


def test_it_refuses_progress_for_a_finished_job(account):
    job = Job.objects.create(account=account, action=Job.Action.TRAIN, state=Job.State.FAILED)
    with pytest.raises(InvalidTransition):
        job.record_progress(10, "x", "y")


def test_it_detects_a_concurrent_job_change(account):
    job = Job.objects.create(account=account, action=Job.Action.TRAIN, state=Job.State.RUNNING)
    Job.objects.filter(pk=job.pk).update(state=Job.State.CANCELLED)
    with pytest.raises(InvalidTransition):
        job.succeed({})


def test_it_moves_an_outbox_message_through_retries(account):
    message = OutboxMessage.objects.create(account=account, chat_id=account.chat_id, text="hi")
    message._move(OutboxMessage.State.SENDING, attempts=1)
    message.retry_later("502", timedelta(seconds=2))
    assert message.state == OutboxMessage.State.PENDING and message.next_attempt_at > timezone.now()
    message._move(OutboxMessage.State.SENDING, attempts=OutboxMessage.MAX_ATTEMPTS)
    message.retry_later("502", timedelta(seconds=2))
    assert message.state == OutboxMessage.State.FAILED
    message.requeue()
    assert (message.state, message.attempts) == (OutboxMessage.State.PENDING, 0)
    with pytest.raises(InvalidTransition):
        message.mark_sent(1)  # only a claimed message can be sent


def test_it_stalls_and_recovers_a_tracked_process(account):
    process = TrackedProcess.objects.create(account=account, name="train.py", heartbeat_interval=10)
    grace = timedelta(seconds=5)
    assert not process.is_overdue(grace)
    assert process.is_overdue(grace, now=timezone.now() + timedelta(seconds=16))
    process.mark_stalled()
    assert process.heartbeat(done=5, total=10, metrics={"loss": 0.5}, step=5) is True
    assert process.state == TrackedProcess.State.RUNNING and process.metric_series[-1]["step"] == 5
    assert process.heartbeat() is False
    process.finish(TrackedProcess.State.SUCCEEDED, metrics={"acc": 0.9})
    assert process.metrics == {"loss": 0.5, "acc": 0.9} and process.runtime_s is not None
    with pytest.raises(InvalidTransition):
        process.heartbeat()
    with pytest.raises(InvalidTransition):
        process.mark_stalled()


def test_it_pairs_a_device_and_hands_the_key_over_once(account):
    pairing, secret = PairingRequest.start(hostname="gpu-box")
    key = pairing.confirm(account)
    raw = pairing.claim(secret)
    assert ApiKey.authenticate(raw) == key and key.account == account
    with pytest.raises(InvalidTransition):
        pairing.claim(secret)
    assert "exp_" not in pairing.key_hash


def test_it_refuses_a_pairing_claim_with_the_wrong_secret(account):
    pairing, _ = PairingRequest.start()
    pairing.confirm(account)
    with pytest.raises(PermissionError):
        pairing.claim("pair_wrong")


def test_it_refuses_to_confirm_an_expired_pairing(account):
    pairing, _ = PairingRequest.start()
    PairingRequest.objects.filter(pk=pairing.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    pairing.refresh_from_db()
    with pytest.raises(InvalidTransition):
        pairing.confirm(account)
