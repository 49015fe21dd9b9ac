"""/metrics: what it exposes moves when connects, jobs, notifications and deliveries happen, and
only loopback requests (or a bearer token) may read it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from accounts.models import Account, ApiKey
from core.models import OutboxMessage
from notifications.models import TrackedProcess
from tests.bot.test_delivery import drain, make_sender
from tests.ops.conftest import connect, finished_job, issued
from tg_sandbox import SandboxThread
from tg_sandbox.testing import SandboxDriver

pytestmark = pytest.mark.django_db(transaction=True)


def scrape(client, **headers) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "process"))
            values[(sample.name, labels)] = values.get((sample.name, labels), 0.0) + sample.value
    return values


def delta(before, after, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.fixture
def sandbox():
    with SandboxThread() as running:
        yield running


def test_it_counts_connects_jobs_notifications_and_deliveries(client, make_account, sandbox):
    with SandboxDriver(sandbox.url) as driver:
        user = driver.user(8_200_001, first_name="Ann")
        user.send("hello")
        ann, _ = Account.from_telegram(user_id=user.user_id, chat_id=user.user_id, first_name="Ann")
        before = scrape(client)

        # A worker connects with a fresh token; someone tries an unknown token; a token expires unused.
        _, raw = issued(ann, 5)
        assert connect(raw)["success"] is True
        assert connect("sbt_not-a-real-token", address="10.0.0.9")["success"] is False
        issued(make_account(), 3600)
        # Jobs: one succeeds after ~40 s, one fails.
        job = finished_job(ann, "succeeded")
        job.__class__.objects.filter(pk=job.pk).update(created_at=job.finished_at - timedelta(seconds=40))
        finished_job(ann, "failed", "file_not_found")
        # The notify API: one accepted, one with a bad key.
        _, key = ApiKey.issue(ann)
        accepted = client.post("/api/notify", {"text": "epoch 3 done"}, content_type="application/json",
                               HTTP_AUTHORIZATION=f"Bearer {key}")
        assert accepted.status_code == 202
        refused = client.post("/api/notify", {"text": "x"}, content_type="application/json",
                              HTTP_AUTHORIZATION="Bearer exp_wrong")
        assert refused.status_code == 401
        # A tracked process stops sending heartbeats.
        process = TrackedProcess.objects.create(account=ann, name="train.py")
        process.mark_stalled()

        middle = scrape(client)
        assert middle[("statsbot_outbox_messages", (("state", "pending"),))] >= 2  # the notice, "connected"
        assert middle[("statsbot_outbox_oldest_pending_age_seconds", ())] >= 0

        # The bot's sender delivers them, after Telegram answers one send with 429 and one with a 5xx.
        driver.add_fault("sendMessage", "429", retry_after=1, count=1)
        driver.add_fault("sendMessage", "5xx", count=1)
        drain(make_sender(sandbox))
        assert any("epoch 3 done" in (m.get("text") or "") for m in user.bot_messages())
        after = scrape(client)

    assert after[("statsbot_workers_connected", ())] == 0  # it connected and left
    assert delta(before, after, "statsbot_workers_enrolled") == 1
    assert delta(before, after, "statsbot_connect_tokens_issued_total") == 2
    assert delta(before, after, "statsbot_connect_attempts_total", result="ready") == 1
    assert delta(before, after, "statsbot_connect_attempts_total", result="expired_unused") == 1
    assert delta(before, after, "statsbot_worker_auth_refused_total", reason="invalid_token") == 1
    assert delta(before, after, "statsbot_jobs_finished_total", action="train", outcome="succeeded") == 1
    assert delta(before, after, "statsbot_jobs_finished_total", action="train", outcome="failed") == 1
    assert delta(before, after, "statsbot_job_duration_seconds_count", action="train", outcome="succeeded") == 1
    assert delta(before, after, "statsbot_job_duration_seconds_bucket", action="train", outcome="succeeded",
                 le="15.0") == 0
    assert delta(before, after, "statsbot_job_duration_seconds_bucket", action="train", outcome="succeeded",
                 le="60.0") == 1
    assert delta(before, after, "statsbot_job_duration_seconds_sum", action="train",
                 outcome="succeeded") == pytest.approx(40, abs=2)
    assert delta(before, after, "statsbot_api_requests_total", endpoint="notify", status="202") == 1
    assert delta(before, after, "statsbot_api_requests_total", endpoint="notify", status="401") == 1
    assert delta(before, after, "statsbot_tracked_processes_stalled") == 1
    sent = OutboxMessage.objects.filter(state=OutboxMessage.State.SENT).count()
    assert sent >= 2
    assert delta(before, after, "statsbot_outbox_sent_total", kind="notify") == 1
    assert delta(before, after, "statsbot_outbox_retries_total") == 1  # the 5xx; a 429 uses up no attempt
    assert delta(before, after, "statsbot_telegram_429_total") == 1
    assert after[("statsbot_outbox_messages", (("state", "pending"),))] == 0
    assert after[("statsbot_outbox_oldest_pending_age_seconds", ())] == 0


def test_it_serves_loopback_only_by_default(client, db):
    assert client.get("/metrics").status_code == 200  # the test client is 127.0.0.1
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.7").status_code == 403
    # A proxy on this machine forwards outside requests from loopback: those are not local.
    assert client.get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.7").status_code == 403
    assert client.post("/metrics").status_code == 405


@override_settings(METRICS_TOKEN="s3cret-metrics-token-0123")
def test_it_wants_the_bearer_token_when_one_is_set(client, db):
    assert client.get("/metrics").status_code == 401  # loopback is not enough then
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    good = client.get("/metrics", REMOTE_ADDR="203.0.113.7", HTTP_AUTHORIZATION="Bearer s3cret-metrics-token-0123")
    assert good.status_code == 200 and b"statsbot_workers_connected" in good.content


def test_it_answers_on_an_empty_database(client, db):
    values = scrape(client)
    assert values[("statsbot_workers_connected", ())] == 0
    assert values[("statsbot_outbox_oldest_pending_age_seconds", ())] == 0
    assert timezone.now()  # the scrape itself needed no row
