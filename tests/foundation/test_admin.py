"""The operator console: every model listed and viewable by staff, refused to others, actions work."""

import re

import pytest
from django.contrib import admin
from django.urls import reverse
from django.utils import timezone

from accounts.models import ApiKey, PairingRequest
from core.models import Attachment, OutboxMessage
from core.site import publish_bot
from jobs.models import Job
from notifications.models import AddressCounter, FailureDigest, IdempotencyRecord, RateCounter, TrackedProcess
from telegram_app.models import BotState, Dashboard
from workers.models import ConnectToken, Worker

pytestmark = pytest.mark.django_db


@pytest.fixture
def one_of_each(account):
    key, raw = ApiKey.issue(account)
    worker, credential = Worker.enroll(account, {"hostname": "laptop"})
    token, token_raw = ConnectToken.issue(account)
    pairing, _ = PairingRequest.start(hostname="gpu")
    job = Job.objects.create(account=account, action=Job.Action.TRAIN, worker=worker)
    message = OutboxMessage.objects.create(account=account, chat_id=account.chat_id, text="hello",
                                           state=OutboxMessage.State.FAILED)
    Attachment.objects.create(message=message, kind="document", filename="log.txt", data=b"x")
    process = TrackedProcess.objects.create(account=account, name="train.py")
    IdempotencyRecord.objects.create(api_key=key, key="k1", endpoint="notify", status_code=202, response={})
    RateCounter.objects.create(api_key=key, window="10s", window_start=timezone.now(), count=1)
    AddressCounter.objects.create(address="203.0.113.1", window="bad-keys", window_start=timezone.now(), count=1)
    FailureDigest.objects.create(account=account, members=[{"uuid": str(process.uuid), "what": "crashed"}])
    BotState.objects.create(kind="user_data", key="1", data={})
    Dashboard.objects.create(account=account, edit_key=f"dash:{account.pk}:abc", text="📋 Dashboard")
    publish_bot(username="statsbot_test_bot")
    return {"secrets": [raw, credential, token_raw], "account": account, "key": key, "worker": worker,
            "job": job, "message": message, "process": process, "token": token, "pairing": pairing}


OUR_APPS = {"core", "accounts", "workers", "jobs", "notifications", "telegram_app"}


def _admin_urls():
    for model in admin.site._registry:
        if model._meta.app_label not in OUR_APPS:
            continue
        yield model, f"admin:{model._meta.app_label}_{model._meta.model_name}"


def test_it_lists_and_shows_every_model_without_secrets(staff_client, one_of_each):
    for model, base in _admin_urls():
        listing = staff_client.get(reverse(f"{base}_changelist"))
        assert listing.status_code == 200, base
        obj = model.objects.first()
        assert obj is not None, f"fixture lacks a {model.__name__}"
        page = staff_client.get(reverse(f"{base}_change", args=[obj.pk]))
        assert page.status_code == 200, base
        body = listing.content.decode() + page.content.decode()
        for secret in one_of_each["secrets"]:
            assert secret not in body
        for hashed in (one_of_each["key"].secret_hash, one_of_each["worker"].credential_hash,
                       one_of_each["token"].token_hash, one_of_each["pairing"].key_hash):
            assert hashed not in body, f"{base} shows a hash"


def test_it_refuses_non_staff(client, django_user_model, one_of_each):
    user = django_user_model.objects.create_user("someone", password="pw")
    client.force_login(user)
    for _, base in _admin_urls():
        response = client.get(reverse(f"{base}_changelist"))
        assert response.status_code == 302 and "/admin/login/" in response["Location"]


def _act(staff_client, model, action, objects):
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    return staff_client.post(url, {"action": action, "_selected_action": [o.pk for o in objects]}, follow=True)


def test_it_revokes_keys_from_the_console(staff_client, one_of_each):
    _act(staff_client, ApiKey, "revoke_keys", [one_of_each["key"]])
    assert ApiKey.objects.get(pk=one_of_each["key"].pk).revoked_at is not None


def test_it_disconnects_a_worker_from_the_console(staff_client, one_of_each):
    _act(staff_client, Worker, "disconnect_workers", [one_of_each["worker"]])
    worker = Worker.objects.get(pk=one_of_each["worker"].pk)
    assert worker.revoked_at is not None and worker.revoke_reason == Worker.RevokeReason.OPERATOR


def test_it_cancels_and_requeues_jobs_from_the_console(staff_client, one_of_each):
    job = one_of_each["job"]
    _act(staff_client, Job, "cancel_jobs", [job])
    assert Job.objects.get(pk=job.pk).state == Job.State.CANCELLED
    _act(staff_client, Job, "requeue_jobs", [job])
    assert Job.objects.get(pk=job.pk).state == Job.State.QUEUED


def test_it_retries_a_failed_outbox_message_from_the_console(staff_client, one_of_each):
    _act(staff_client, OutboxMessage, "retry_messages", [one_of_each["message"]])
    assert OutboxMessage.objects.get(pk=one_of_each["message"].pk).state == OutboxMessage.State.PENDING


def test_it_issues_a_connect_command_from_the_console(staff_client, one_of_each):
    from accounts.models import Account

    response = _act(staff_client, Account, "issue_connect_token", [one_of_each["account"]])
    assert "curl -sL http://127.0.0.1:8000/worker | python3 - --token=sbt_" in response.content.decode()
    assert ConnectToken.objects.filter(account=one_of_each["account"]).count() == 2


def test_it_creates_accounts_keys_jobs_and_messages_from_the_console(staff_client, one_of_each):
    from accounts.models import Account

    account = one_of_each["account"]
    response = staff_client.post(reverse("admin:accounts_account_add"), {
        "telegram_user_id": 777, "chat_id": 777, "username": "newbie", "created_at_0": "2026-11-23",
        "created_at_1": "08:00:00", "last_active_at_0": "2026-11-23", "last_active_at_1": "08:00:00",
        "api_keys-TOTAL_FORMS": 0, "api_keys-INITIAL_FORMS": 0}, follow=True)
    assert response.status_code == 200 and Account.objects.filter(telegram_user_id=777).exists()

    response = staff_client.post(reverse("admin:accounts_apikey_add"), {"account": account.pk}, follow=True)
    shown = re.search(r"shown only now, hand it over securely: (exp_[\w-]+)", response.content.decode()).group(1)
    assert ApiKey.authenticate(shown).account == account and ApiKey.authenticate(shown).is_active

    staff_client.post(reverse("admin:jobs_job_add"), {"account": account.pk, "action": "list_models",
                                                      "params": "{}"}, follow=True)
    job = Job.objects.get(action="list_models")
    assert job.state == Job.State.QUEUED and job.params == {"_context": "operator"}

    staff_client.post(reverse("admin:core_outboxmessage_add"),
                      {"account": account.pk, "text": "Maintenance at 18:00 UTC"}, follow=True)
    sent = OutboxMessage.objects.get(text="Maintenance at 18:00 UTC")
    assert (sent.state, sent.chat_id, sent.parse_mode) == (OutboxMessage.State.PENDING, account.chat_id, "")
    assert staff_client.get(reverse("admin:core_outboxmessage_add")).status_code == 200


def test_the_outbox_page_lists_the_senders_holding_claims_and_their_leases(staff_client, account):
    from core import claims
    from core.outbox import enqueue

    enqueue(account, text="in flight")
    claims.claim("box-1:4242:cafe")
    page = staff_client.get(reverse("admin:core_outboxmessage_changelist")).content.decode()
    assert "Senders holding claims now" in page and "box-1:4242:cafe" in page
    claims.release_expired_claims()  # a live lease is kept
    assert "box-1:4242:cafe" in staff_client.get(reverse("admin:core_outboxmessage_changelist")).content.decode()
