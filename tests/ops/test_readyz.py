"""/readyz: healthy only while the outbox is being delivered; /healthz stays the cheap liveness check."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import environ
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from django.utils import timezone

from core.models import OutboxMessage
from statsbot_site.config import read_config

pytestmark = pytest.mark.django_db(transaction=True)

State = OutboxMessage.State


def message(account, *, age: float, state: str = State.PENDING, due_in: float = 0, claimed_ago: float | None = None):
    now = timezone.now()
    return OutboxMessage.objects.create(
        account=account, chat_id=account.chat_id, text="hi", state=state,
        created_at=now - timedelta(seconds=age),
        next_attempt_at=now + timedelta(seconds=due_in) if due_in else now - timedelta(seconds=age),
        claimed_at=None if claimed_ago is None else now - timedelta(seconds=claimed_ago),
    )


def ready(client):
    response = client.get("/readyz")
    return response.status_code, response.json()["checks"]


def test_it_is_ready_with_an_empty_or_moving_outbox(client, account):
    assert ready(client) == (200, {"database": "ok", "channel_layer": "ok", "outbox": "ok"})
    message(account, age=5)
    message(account, age=60, state=State.SENT, claimed_ago=2)
    assert ready(client)[0] == 200


@override_settings(READY_OUTBOX_MAX_AGE=600, READY_SENDER_IDLE=120)
def test_it_fails_when_the_oldest_deliverable_message_is_too_old(client, account):
    message(account, age=900)
    message(account, age=1, state=State.SENT, claimed_ago=1)  # a sender is alive, just far behind
    status, checks = ready(client)
    assert status == 503
    assert checks["outbox"].startswith("outbox: the oldest deliverable message has waited 9")
    assert "READY_OUTBOX_MAX_AGE 600 s" in checks["outbox"] and "sender:" not in checks["outbox"]
    assert client.get("/healthz").status_code == 200  # liveness does not look at the outbox


@override_settings(READY_OUTBOX_MAX_AGE=600, READY_SENDER_IDLE=120)
def test_it_fails_when_no_sender_claims_waiting_messages(client, account):
    message(account, age=200)
    message(account, age=3600, state=State.SENT, claimed_ago=3000)  # the last claim was long ago
    status, checks = ready(client)
    assert status == 503
    assert checks["outbox"].startswith("sender: messages have waited 2")
    assert "READY_SENDER_IDLE" in checks["outbox"]


@override_settings(READY_OUTBOX_MAX_AGE=600, READY_SENDER_IDLE=120)
def test_it_does_not_count_messages_that_cannot_be_sent_yet(client, account, make_account):
    message(account, age=3600, due_in=300)  # waiting out a 429's retry_after / a backoff
    blocked = make_account()
    blocked.mark_blocked()
    message(blocked, age=3600)  # no sender claims rows of a chat that blocked the bot
    assert ready(client)[0] == 200


def test_it_fails_loudly_on_a_bad_threshold(monkeypatch):
    monkeypatch.setenv("READY_OUTBOX_MAX_AGE", "soon")
    with pytest.raises(ImproperlyConfigured, match="READY_OUTBOX_MAX_AGE"):
        read_config(environ.Env(), Path("/srv/statsbot"))
    monkeypatch.setenv("READY_OUTBOX_MAX_AGE", "30")
    monkeypatch.setenv("READY_SENDER_IDLE", "0")
    with pytest.raises(ImproperlyConfigured, match="READY_SENDER_IDLE"):
        read_config(environ.Env(), Path("/srv/statsbot"))
