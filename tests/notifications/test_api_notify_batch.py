"""POST /api/notify/batch: many messages in one request, each answered as if it came alone;
the per-minute budgets; invalid Unicode in either form."""

from __future__ import annotations

import json

import pytest
from django.utils import timezone

from core.models import OutboxMessage
from notifications import ratelimit
from notifications.models import IdempotencyRecord, RateCounter
from tests.notifications.conftest import ApiClient, start_body, wait_for_fresh_window

pytestmark = pytest.mark.django_db

BATCH = "/api/notify/batch"


def item(text: str, **fields) -> dict:
    return {"text": text, **fields}


def payloads() -> list[dict]:
    return list(OutboxMessage.objects.filter(kind="notify").order_by("id").values_list("payload", flat=True))


def counter(issued_key, window) -> int:
    start = ratelimit.window_start(timezone.now(), window.seconds)
    row = RateCounter.objects.filter(api_key=issued_key[0], window=window.name, window_start=start).first()
    return row.count if row else 0


def test_it_queues_every_message_of_a_batch_in_order(api, account):
    process = start_body()
    api.post("/api/processes/start", process)
    response = api.post(BATCH, {"messages": [
        item("epoch 1", metadata={"host": "gpu-box"}, process_id=process["uuid"], idempotency_key="k-1"),
        item("*epoch 2*", level="success", format="markdown"),
        item("<b>epoch 3</b>", level="warning", format="html", unknown="ignored"),
    ]})
    assert response.status_code == 200
    rows = list(OutboxMessage.objects.filter(kind="notify").order_by("id"))
    assert response.json() == {
        "results": [{"status": 202, "body": {"message_id": row.pk, "status": "queued"}} for row in rows],
        "queued": 3,
        "rejected": 0,
    }
    assert [(row.account, row.chat_id) for row in rows] == [(account, account.chat_id)] * 3
    assert payloads() == [
        {"text": "epoch 1", "level": "info", "format": "text", "metadata": {"host": "gpu-box"},
         "process_uuid": process["uuid"]},
        {"text": "*epoch 2*", "level": "success", "format": "markdown", "metadata": {}, "process_uuid": None},
        {"text": "<b>epoch 3</b>", "level": "warning", "format": "html", "metadata": {}, "process_uuid": None},
    ]


def test_it_answers_a_bad_message_in_its_place_and_queues_the_rest(api):
    response = api.post(BATCH, {"messages": [
        item("fine"),
        item("x", level="loud"),
        "not an object",
        item("bad key", idempotency_key="has spaces"),
        item("   "),
        item("also fine", idempotency_key="k-2"),
    ]})
    assert response.status_code == 200
    body = response.json()
    assert [r["status"] for r in body["results"]] == [202, 400, 400, 400, 400, 202]
    errors = [r["body"]["error"] for r in body["results"] if r["status"] == 400]
    assert [e["code"] for e in errors] == ["invalid_input", "invalid_input", "invalid_idempotency_key",
                                          "invalid_input"]
    assert errors[0]["message"].startswith("'level' must be one of info, success, warning, error")
    assert "must be an object" in errors[1]["message"]
    assert (body["queued"], body["rejected"]) == (2, 4)
    assert [p["text"] for p in payloads()] == ["fine", "also fine"]
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["k-2"]


def test_it_queues_all_or_nothing_in_one_transaction(api, monkeypatch):
    from notifications import services

    real_notify = services.notify
    calls = []

    def fail_on_the_third(*args, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            raise RuntimeError("the database went away")
        return real_notify(*args, **kwargs)

    monkeypatch.setattr(services, "notify", fail_on_the_third)
    response = api.post(BATCH, {"messages": [item(f"m{n}", idempotency_key=f"k{n}") for n in range(5)]})
    assert response.status_code == 500
    assert not OutboxMessage.objects.exists()
    assert not IdempotencyRecord.objects.exists()  # so a retry of the batch queues every message

    monkeypatch.setattr(services, "notify", real_notify)
    assert api.post(BATCH, {"messages": [item(f"m{n}", idempotency_key=f"k{n}") for n in range(5)]}).json()[
        "queued"] == 5
    assert [p["text"] for p in payloads()] == [f"m{n}" for n in range(5)]


def test_it_replays_each_message_by_its_own_key_in_either_form(api):
    first = api.post(BATCH, {"messages": [item("a", idempotency_key="k-a"), item("b", idempotency_key="k-b")]})
    ids = [r["body"]["message_id"] for r in first.json()["results"]]

    again = api.post(BATCH, {"messages": [item("a", idempotency_key="k-a"), item("b", idempotency_key="k-b"),
                                          item("c", idempotency_key="k-c")]})
    results = again.json()["results"]
    assert [r.get("replayed", False) for r in results] == [True, True, False]
    assert [r["body"]["message_id"] for r in results[:2]] == ids
    assert again.json()["queued"] == 3  # replays are answered 202 like the first time

    single = api.post("/api/notify", {"text": "a"}, headers={"Idempotency-Key": "k-a"})
    assert single.status_code == 202 and single["Idempotent-Replayed"] == "true"
    assert single.json()["message_id"] == ids[0]

    alone_first = api.post("/api/notify", {"text": "d"}, headers={"Idempotency-Key": "k-d"})
    in_batch = api.post(BATCH, {"messages": [item("d", idempotency_key="k-d")]}).json()["results"][0]
    assert in_batch == {"status": 202, "body": alone_first.json(), "replayed": True}
    assert [p["text"] for p in payloads()] == ["a", "b", "c", "d"]


def test_it_queues_a_key_repeated_within_a_batch_once(api):
    results = api.post(BATCH, {"messages": [item("twice", idempotency_key="k"),
                                            item("twice", idempotency_key="k")]}).json()["results"]
    assert results[1] == {**results[0], "replayed": True}
    assert OutboxMessage.objects.count() == 1


def test_it_refuses_an_item_key_used_on_another_endpoint(api):
    api.post("/api/processes/start", start_body(), headers={"Idempotency-Key": "k-start"})
    [result] = api.post(BATCH, {"messages": [item("x", idempotency_key="k-start")]}).json()["results"]
    assert result["status"] == 409
    assert result["body"]["error"]["code"] == "idempotency_key_reused"
    assert not OutboxMessage.objects.filter(kind="notify").exists()


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        ({}, 400, "invalid_input", "'messages' is required"),
        ({"messages": "hi"}, 400, "invalid_input", "'messages' is required"),
        ({"messages": []}, 400, "invalid_input", "'messages' must not be empty"),
        ({"messages": [item(f"m{n}") for n in range(101)]}, 413, "too_many_messages",
         "a batch holds at most 100 messages (got 101)"),
    ],
)
def test_it_refuses_what_is_not_a_batch(api, body, status, code, message):
    response = api.post(BATCH, body)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"].startswith(message)
    assert not OutboxMessage.objects.exists()


def test_it_takes_a_batch_as_json_only_within_256_kib(api):
    assert api.multipart(BATCH, {"payload": json.dumps({"messages": [item("x")]})}).status_code == 415
    big = {"messages": [item("x" * 60_000) for _ in range(5)]}
    assert api.post(BATCH, big).status_code == 413
    assert not OutboxMessage.objects.exists()


def test_it_counts_a_batch_as_one_request(api, issued_key):
    wait_for_fresh_window(10, need=6)
    for _ in range(29):
        assert api.get("/api/validate").status_code == 200
    response = api.post(BATCH, {"messages": [item(f"burst {n}") for n in range(100)]})
    assert response.status_code == 200 and response.json()["queued"] == 100
    assert counter(issued_key, ratelimit.WINDOWS[0]) == 30
    assert OutboxMessage.objects.count() == 100
    assert api.post(BATCH, {"messages": [item("one too many")]}).status_code == 429


def test_it_charges_messages_and_bytes_per_minute(api, issued_key):
    wait_for_fresh_window(60, need=10)
    raw = json.dumps({"messages": [item(f"m{n}") for n in range(10)]})
    assert api.post(BATCH, raw=raw).status_code == 200
    single = json.dumps({"text": "alone"})
    assert api.post("/api/notify", raw=single).status_code == 202
    assert counter(issued_key, ratelimit.MESSAGES_PER_MINUTE) == 11
    assert counter(issued_key, ratelimit.BYTES_PER_MINUTE) == len(raw) + len(single)

    replay = api.post("/api/notify", raw=single, headers={"Idempotency-Key": "k1"})
    api.post("/api/notify", raw=single, headers={"Idempotency-Key": "k1"})
    assert replay.status_code == 202
    assert counter(issued_key, ratelimit.MESSAGES_PER_MINUTE) == 12  # the replay is free


def test_it_refuses_a_batch_over_the_message_budget_and_keeps_nothing(api, issued_key):
    wait_for_fresh_window(60, need=10)
    window = ratelimit.MESSAGES_PER_MINUTE
    start = ratelimit.window_start(timezone.now(), window.seconds)
    RateCounter.objects.create(api_key=issued_key[0], window=window.name, window_start=start,
                               count=window.limit - 60)
    response = api.post(BATCH, {"messages": [item(f"m{n}", idempotency_key=f"k{n}") for n in range(100)]})
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert "600 messages of notifications per minute" in response.json()["error"]["message"]
    assert 1 <= int(response["Retry-After"]) <= 60
    assert not OutboxMessage.objects.exists() and not IdempotencyRecord.objects.exists()
    assert counter(issued_key, window) == window.limit - 60  # a refusal does not use the budget up

    assert api.post(BATCH, {"messages": [item(f"m{n}") for n in range(60)]}).json()["queued"] == 60


def test_it_refuses_a_single_message_over_the_byte_budget(api, issued_key):
    wait_for_fresh_window(60, need=10)
    window = ratelimit.BYTES_PER_MINUTE
    start = ratelimit.window_start(timezone.now(), window.seconds)
    RateCounter.objects.create(api_key=issued_key[0], window=window.name, window_start=start,
                               count=window.limit - 10)
    response = api.post("/api/notify", {"text": "a little too much"})
    assert response.status_code == 429
    assert "bytes of notifications per minute" in response.json()["error"]["message"]
    assert not OutboxMessage.objects.exists()


INVALID_UNICODE = (
    '{"text": "run \\ud800 of \\udcff.csv \\ud83d\\ude00", "metadata": {"file\\uDC80": ["\\udfff"]}}'
)


def test_it_replaces_invalid_unicode_in_the_single_form(api):
    response = api.post("/api/notify", raw=INVALID_UNICODE)
    assert response.status_code == 202
    [payload] = payloads()
    assert payload["text"] == "run \ufffd of \ufffd.csv \U0001f600"
    assert payload["metadata"] == {"file\ufffd": ["\ufffd"]}


def test_it_replaces_invalid_unicode_in_a_multipart_payload(api):
    from tests.notifications.test_api_notify import upload

    response = api.multipart("/api/notify", {"payload": INVALID_UNICODE, "file": upload(b"log", "a.log")})
    assert response.status_code == 202
    assert payloads()[0]["text"] == "run \ufffd of \ufffd.csv \U0001f600"


def test_it_replaces_invalid_unicode_in_a_batch(api):
    raw = '{"messages": [' + INVALID_UNICODE + ', {"text": "\\ud800", "idempotency_key": "k1"}]}'
    response = api.post(BATCH, raw=raw)
    assert response.status_code == 200 and response.json()["queued"] == 2
    assert [p["text"] for p in payloads()] == ["run \ufffd of \ufffd.csv \U0001f600", "\ufffd"]


def test_it_never_fails_on_deep_nesting_with_invalid_unicode(api):
    for depth in (50, 900, 990, 5000):
        raw = '{"text": "x", "metadata": {"a": ' + "[" * depth + '"\\ud800"' + "]" * depth + "}}"
        response = api.post("/api/notify", raw=raw)
        assert response.status_code in (202, 400), (depth, response.status_code)


@pytest.mark.django_db(transaction=True)
def test_it_queues_concurrent_retries_of_one_batch_once(issued_key):
    from tests.notifications.test_concurrency import all_at_once

    body = {"messages": [item(f"race {n}", idempotency_key=f"race-{n}") for n in range(10)]}

    def send():
        response = ApiClient(issued_key[1]).post(BATCH, body)
        return response.status_code, response.json()

    results = all_at_once(send)
    assert all(isinstance(r, tuple) for r in results), results
    assert {status for status, _ in results} == {200}
    answers = {tuple(r["body"]["message_id"] for r in answer["results"]) for _, answer in results}
    assert len(answers) == 1  # every request got the same ten messages
    assert OutboxMessage.objects.count() == 10


def test_it_costs_a_bounded_number_of_queries_per_message(api, django_assert_max_num_queries):
    api.post(BATCH, {"messages": [item("warm up")]})  # the key's counters exist from here on
    with django_assert_max_num_queries(20 + 3 * 10):
        assert api.post(BATCH, {"messages": [item(f"plain {n}") for n in range(10)]}).json()["queued"] == 10
    with django_assert_max_num_queries(20 + 10 * 10):  # an idempotency record claimed per message
        keyed = [item(f"keyed {n}", idempotency_key=f"k{n}") for n in range(10)]
        assert api.post(BATCH, {"messages": keyed}).json()["queued"] == 10
