"""Abuse controls that hold (issue 11, item 7): refused requests use no quota, unknown keys are
throttled per client address (behind a set number of trusted proxies), and an idempotency key
reused with a different body is refused with 422."""

from __future__ import annotations

import io
import json

import pytest
from django.utils import timezone

from core.models import OutboxMessage
from notifications import ratelimit
from notifications.models import AddressCounter, IdempotencyRecord, RateCounter
from tests.notifications.conftest import ApiClient, start_body, wait_for_fresh_window

pytestmark = pytest.mark.django_db

BAD_KEYS = ratelimit.BAD_KEYS_PER_ADDRESS.limit


def counter(api_key, window: ratelimit.Window) -> int:
    start = ratelimit.window_start(timezone.now(), window.seconds)
    row = RateCounter.objects.filter(api_key=api_key, window=window.name, window_start=start).first()
    return row.count if row else 0


def from_address(client: ApiClient, address: str, forwarded_for: str | None = None) -> ApiClient:
    client.client.defaults["REMOTE_ADDR"] = address
    if forwarded_for is not None:
        client.client.defaults["HTTP_X_FORWARDED_FOR"] = forwarded_for
    return client


# ---------------------------------------------------------------------------------- refusals use no quota


def test_it_does_not_count_refused_requests_toward_the_quotas(api, issued_key):
    wait_for_fresh_window(10, need=6)
    assert [api.get("/api/validate").status_code for _ in range(30)] == [200] * 30
    refused = [api.post("/api/notify", {"text": f"burst {n}"}) for n in range(40)]
    assert {r.status_code for r in refused} == {429}
    assert not OutboxMessage.objects.exists()
    # Only the 30 answered requests count: the refusals did not push the hourly window toward its
    # limit (today's main locked a bursting key out for ~20 minutes) nor use the message budget.
    assert counter(issued_key[0], ratelimit.WINDOWS[0]) == 30
    assert counter(issued_key[0], ratelimit.WINDOWS[1]) == 30
    assert counter(issued_key[0], ratelimit.MESSAGES_PER_MINUTE) == 0


def test_it_keeps_a_key_at_its_hourly_limit_not_past_it(api, issued_key):
    wait_for_fresh_window(3600, need=10)
    start = ratelimit.window_start(timezone.now(), 3600)
    RateCounter.objects.create(api_key=issued_key[0], window="1h", window_start=start, count=599)
    assert api.post("/api/notify", {"text": "the last one this hour"}).status_code == 202
    for _ in range(5):
        response = api.post("/api/notify", {"text": "one more"})
        assert response.status_code == 429 and "1h window" in response.json()["error"]["message"]
    assert counter(issued_key[0], ratelimit.WINDOWS[1]) == 600
    assert OutboxMessage.objects.count() == 1


def test_it_counts_a_bad_request_of_a_valid_key(api, issued_key):
    wait_for_fresh_window(10, need=3)
    assert api.post("/api/notify", {"text": ""}).status_code == 400
    assert api.post("/api/heartbeat", {"uuid": start_body()["uuid"]}).status_code == 404
    assert api.post("/api/notify", raw="{oops").status_code == 400
    assert counter(issued_key[0], ratelimit.WINDOWS[0]) == 3  # answered, so counted
    assert counter(issued_key[0], ratelimit.MESSAGES_PER_MINUTE) == 0  # but no message was queued


# ---------------------------------------------------------------------------------- unknown keys per address


def test_it_throttles_unknown_keys_per_client_address(issued_key):
    wait_for_fresh_window(600, need=10)
    guesser = from_address(ApiClient("exp_guess"), "203.0.113.7")
    for n in range(BAD_KEYS):
        response = guesser.get("/api/validate", headers={"Authorization": f"Bearer exp_guess{n}"})
        assert response.status_code == 401, n
    response = guesser.get("/api/validate")
    assert response.status_code == 429
    assert response.json()["error"]["message"].startswith(
        f"more than {BAD_KEYS} requests with an unknown API key from this address")
    assert 1 <= int(response["Retry-After"]) <= 600
    # Refused before its key is looked at: a right guess from that address is refused alike.
    right_guess = from_address(ApiClient(issued_key[1]), "203.0.113.7")
    assert right_guess.post("/api/notify", {"text": "hi"}).status_code == 429
    assert not OutboxMessage.objects.exists()
    # Other addresses are not affected, with a bad key or a good one.
    assert from_address(ApiClient("exp_other"), "198.51.100.1").get("/api/validate").status_code == 401
    assert from_address(ApiClient(issued_key[1]), "198.51.100.1").get("/api/validate").status_code == 200
    assert AddressCounter.objects.get(address="203.0.113.7").count == BAD_KEYS + 1  # counted once over


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "Token exp_x", "Bearer not-a-key"])
def test_it_counts_any_credential_that_is_not_a_key(header):
    wait_for_fresh_window(600, need=10)
    client = from_address(ApiClient(), "203.0.113.8")
    for _ in range(BAD_KEYS):
        assert client.get("/api/validate", headers={"Authorization": header}).status_code == 401
    assert client.get("/api/validate", headers={"Authorization": header}).status_code == 429


def test_it_does_not_count_a_missing_key_or_a_revoked_one(api, issued_key):
    wait_for_fresh_window(600, need=10)
    from_address(api, "203.0.113.9")
    issued_key[0].revoke()
    for _ in range(BAD_KEYS + 5):
        assert api.get("/api/validate").json()["error"]["code"] == "revoked_key"
        assert from_address(ApiClient(), "203.0.113.9").get("/api/validate").status_code == 401
    assert not AddressCounter.objects.exists()


def test_it_believes_only_the_trusted_proxies_in_x_forwarded_for(settings, issued_key):
    """Behind one proxy the client is the last X-Forwarded-For entry: whatever the client wrote
    to the left of it changes nothing."""
    wait_for_fresh_window(600, need=10)
    settings.TRUSTED_PROXY_COUNT = 1
    for n in range(BAD_KEYS):
        client = from_address(ApiClient(f"exp_guess{n}"), "10.0.0.2", f"192.0.2.{n}, 203.0.113.10")
        assert client.get("/api/validate").status_code == 401
    spoofing = from_address(ApiClient("exp_guess"), "10.0.0.2", "192.0.2.200, 203.0.113.10")
    assert spoofing.get("/api/validate").status_code == 429
    assert list(AddressCounter.objects.values_list("address", flat=True)) == ["203.0.113.10"]
    # Another client behind the same proxy is another address.
    assert from_address(ApiClient("exp_x"), "10.0.0.2", "203.0.113.11").get("/api/validate").status_code == 401


def test_it_ignores_x_forwarded_for_without_trusted_proxies(settings):
    wait_for_fresh_window(600, need=10)
    settings.TRUSTED_PROXY_COUNT = 0
    for n in range(BAD_KEYS):
        client = from_address(ApiClient(f"exp_guess{n}"), "203.0.113.12", f"192.0.2.{n}")
        assert client.get("/api/validate").status_code == 401
    assert from_address(ApiClient("exp_x"), "203.0.113.12", "192.0.2.250").get("/api/validate").status_code == 429


def test_pairing_limits_the_same_client_address(settings):
    from notifications.ratelimit import PAIRINGS_PER_IP

    settings.TRUSTED_PROXY_COUNT = 1
    for n in range(PAIRINGS_PER_IP):
        client = from_address(ApiClient(), "10.0.0.2", f"192.0.2.{n}, 203.0.113.20")
        assert client.post("/api/register", {"hostname": "box"}).status_code == 201
    spoofing = from_address(ApiClient(), "10.0.0.2", "192.0.2.99, 203.0.113.20")
    assert spoofing.post("/api/register", {"hostname": "box"}).status_code == 429
    assert from_address(ApiClient(), "10.0.0.2", "203.0.113.21").post("/api/register", {}).status_code == 201


# ---------------------------------------------------------------------------------- idempotency: same key, other body


def test_it_refuses_an_idempotency_key_reused_with_a_different_body(api):
    first = api.post("/api/notify", {"text": "epoch 1"}, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 202
    second = api.post("/api/notify", {"text": "epoch 2"}, headers={"Idempotency-Key": "k-1"})
    assert second.status_code == 422
    error = second.json()["error"]
    assert error["code"] == "idempotency_key_mismatch"
    assert "different body" in error["message"] and "new key" in error["message"]
    assert [m.payload["text"] for m in OutboxMessage.objects.all()] == ["epoch 1"]
    # The same request again, however its JSON is laid out, is still a replay.
    again = api.post("/api/notify", raw='{ "level": "info",  "text": "epoch 1" }', headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 202 and again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()


def test_it_refuses_a_reused_key_with_another_file(api):
    def send(data: bytes):
        part = io.BytesIO(data)
        part.name = "log.txt"
        return api.multipart("/api/notify", {"payload": json.dumps({"text": "log"}), "file": part},
                             headers={"Idempotency-Key": "k-file"})

    assert send(b"first run").status_code == 202
    assert send(b"first run").status_code == 202
    assert send(b"second run").status_code == 422
    assert OutboxMessage.objects.count() == 1


def test_it_refuses_a_reused_key_across_other_endpoints_bodies(api):
    body = start_body()
    assert api.post("/api/processes/start", body, headers={"Idempotency-Key": "k-s"}).status_code == 201
    other = api.post("/api/processes/start", {**body, "name": "eval.py"}, headers={"Idempotency-Key": "k-s"})
    assert other.status_code == 422


def test_it_refuses_a_reused_key_inside_a_batch_item_by_item(api):
    api.post("/api/notify", {"text": "alone"}, headers={"Idempotency-Key": "k-a"})
    response = api.post("/api/notify/batch", {"messages": [
        {"text": "alone", "idempotency_key": "k-a"},
        {"text": "changed", "idempotency_key": "k-a"},
        {"text": "new", "idempotency_key": "k-b"},
    ]})
    results = response.json()["results"]
    assert [r["status"] for r in results] == [202, 422, 202]
    assert results[0]["replayed"] is True
    assert results[1]["body"]["error"]["code"] == "idempotency_key_mismatch"
    assert [m.payload["text"] for m in OutboxMessage.objects.order_by("id")] == ["alone", "new"]
    assert IdempotencyRecord.objects.count() == 2
