"""Keys, methods, content types, sizes and rate limits: the checks every endpoint shares."""

from __future__ import annotations

import pytest
from django.utils import timezone

from accounts.models import ApiKey
from core.models import OutboxMessage
from notifications import ratelimit
from notifications.models import RateCounter
from tests.notifications.conftest import ApiClient, wait_for_fresh_window

pytestmark = pytest.mark.django_db


def test_it_validates_an_active_key_and_names_its_account(api, issued_key, account):
    response = api.get("/api/validate")
    assert response.status_code == 200
    assert response.json() == {
        "valid": True,
        "key_prefix": issued_key[0].prefix,
        "expires_at": None,
        "replaced_by_prefix": None,
        "allowed_networks": [],
        "account": {"telegram_user_id": account.telegram_user_id, "username": account.username,
                    "first_name": "Ann"},
    }
    assert response["Cache-Control"] == "no-store"
    issued_key[0].refresh_from_db()
    assert issued_key[0].last_used_at is not None


def test_it_refuses_a_missing_key(anonymous):
    response = anonymous.get("/api/validate")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_key"
    assert "Bearer" in response["WWW-Authenticate"]


@pytest.mark.parametrize("header", ["Bearer exp_nope", "Basic abc", "Bearer", "Token exp_x"])
def test_it_refuses_an_invalid_key(anonymous, header):
    response = anonymous.get("/api/validate", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_key"


def test_it_refuses_a_revoked_key_at_once_and_says_what_to_do(api, issued_key):
    assert api.get("/api/validate").status_code == 200
    issued_key[0].revoke()
    response = api.post("/api/notify", {"text": "hi"})
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "revoked_key"
    assert "revoked" in error["message"] and "/start" in error["message"] and "setup()" in error["message"]
    assert not OutboxMessage.objects.exists()


def test_it_keeps_a_key_working_when_another_machine_gets_one(api, account):
    ApiKey.issue(account, name="second-machine")
    assert api.get("/api/validate").json()["valid"] is True


def test_it_answers_a_wrong_method_with_405_and_allow(api):
    response = api.get("/api/notify")
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert response.json()["error"]["code"] == "method_not_allowed"
    response = api.post("/api/validate", {})
    assert response.status_code == 405 and response["Allow"] == "GET"


def test_it_refuses_a_wrong_content_type_with_415(api):
    response = api.post("/api/heartbeat", raw="uuid=1", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]["message"]
    response = api.post("/api/processes/start", raw="{}", content_type="text/plain")
    assert response.status_code == 415


def test_it_refuses_a_json_body_over_256_kib_with_413(api):
    body = {"text": "x" * (256 * 1024)}
    response = api.post("/api/notify", body)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert not OutboxMessage.objects.exists()


def test_it_checks_the_body_length_even_when_content_length_understates_it(api):
    client = api.client
    body = ('{"text": "' + "x" * (300 * 1024) + '"}').encode()
    request = client.generic("POST", "/api/notify", body, content_type="application/json",
                             headers={"Authorization": f"Bearer {api.raw_key}"}, CONTENT_LENGTH="10")
    assert request.status_code in (400, 413)  # never accepted
    assert not OutboxMessage.objects.exists()


def test_it_refuses_malformed_json_and_non_objects(api):
    response = api.post("/api/notify", raw="{not json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    response = api.post("/api/notify", raw="[1, 2]")
    assert response.status_code == 400 and "object" in response.json()["error"]["message"]
    response = api.post("/api/notify", raw='{"text": "x", "metadata": {"a": NaN}}')
    assert response.status_code == 400 and "NaN" in response.json()["error"]["message"]


def test_it_rate_limits_a_burst_with_429_and_retry_after(api, issued_key):
    wait_for_fresh_window(10, need=6)
    statuses = [api.get("/api/validate").status_code for _ in range(30)]
    assert statuses == [200] * 30
    response = api.get("/api/validate")
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(response["Retry-After"]) <= 10
    # another key is not affected
    other = ApiClient(ApiKey.issue(type(issued_key[0].account).objects.create(
        telegram_user_id=99, chat_id=99))[1])
    assert other.get("/api/validate").status_code == 200


def test_it_rate_limits_per_hour(api, issued_key):
    wait_for_fresh_window(3600, need=10)
    start = ratelimit.window_start(timezone.now(), 3600)
    RateCounter.objects.create(api_key=issued_key[0], window="1h", window_start=start, count=600)
    response = api.post("/api/notify", {"text": "hello"})
    assert response.status_code == 429
    assert 10 <= int(response["Retry-After"]) <= 3600
    assert not OutboxMessage.objects.exists()


def test_it_counts_requests_in_one_row_per_window(issued_key, django_assert_num_queries):
    now = timezone.now()
    for _ in range(5):
        with django_assert_num_queries(1):  # every window in one upsert
            assert ratelimit.charge(issued_key[0].pk, now=now).allowed
    with django_assert_num_queries(1):
        assert ratelimit.charge(issued_key[0].pk, messages=3, size=100, now=now).allowed
    counters = {c.window: c.count for c in RateCounter.objects.filter(api_key=issued_key[0])}
    assert counters == {"10s": 6, "1h": 6, "1m-messages": 3, "1m-bytes": 100}


def test_it_answers_unexpected_failures_with_json_500(api, monkeypatch):
    from notifications import services

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(services, "notify", explode)
    response = api.post("/api/notify", {"text": "hello"})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "server_error"
