"""Concurrent retries against a real database: one row, one answer, whatever the interleaving."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from core.models import OutboxMessage
from notifications.models import IdempotencyRecord, TrackedProcess
from tests.notifications.conftest import ApiClient, start_body

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 6


def all_at_once(call: Callable[[], Any], threads: int = THREADS) -> list[Any]:
    barrier = threading.Barrier(threads)
    results: list[Any] = [None] * threads

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[index] = call()
        except Exception as exc:  # surfaced by the assertions below
            results[index] = exc
        finally:
            connection.close()

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    return results


def test_it_creates_one_row_for_concurrent_idempotent_retries(issued_key):
    raw = issued_key[1]

    def send():
        response = ApiClient(raw).post("/api/notify", {"text": "once"}, headers={"Idempotency-Key": "race-1"})
        return response.status_code, response.json(), response.has_header("Idempotent-Replayed")

    results = all_at_once(send)
    assert all(isinstance(r, tuple) for r in results), results
    assert {status for status, _, _ in results} == {202}
    assert len({body["message_id"] for _, body, _ in results}) == 1
    assert sorted(replayed for _, _, replayed in results) == [False] + [True] * (THREADS - 1)
    assert OutboxMessage.objects.count() == 1
    assert IdempotencyRecord.objects.count() == 1


def test_it_starts_a_process_once_under_concurrent_starts(issued_key):
    raw = issued_key[1]
    body = start_body()

    def send():
        return ApiClient(raw).post("/api/processes/start", body).status_code

    results = all_at_once(send)
    assert sorted(results) == [200] * (THREADS - 1) + [201], results
    assert TrackedProcess.objects.count() == 1
    assert OutboxMessage.objects.filter(kind="process").count() == 1


def test_it_claims_a_pairing_key_once_under_concurrent_polls(account):
    from urllib.parse import parse_qs, urlsplit

    from accounts.pairing import confirm_pairing

    started = ApiClient().post("/api/register", {"hostname": "box"}).json()
    confirm_pairing(account, started["code"])
    parts = urlsplit(started["poll_url"])
    secret = parse_qs(parts.query)["secret"][0]

    def poll():
        response = ApiClient().get(parts.path, secret=secret)
        return response.status_code, response.json()

    results = all_at_once(poll)
    assert sorted(status for status, _ in results) == [200] + [404] * (THREADS - 1), results
    assert sum("api_key" in body for _, body in results) == 1


def test_it_puts_runs_failing_at_once_into_one_digest(issued_key, settings):
    from notifications import services
    from notifications.models import FailureDigest

    settings.FAILURE_DIGEST_WINDOW, settings.FAILURE_DIGEST_HOLD, settings.FAILURE_DIGEST_THRESHOLD = 60, 5, 3
    api = ApiClient(issued_key[1])
    RUNS = 16
    uuids = []
    for _ in range(RUNS):
        body = start_body()
        assert api.post("/api/processes/start", body).status_code in (200, 201)
        uuids.append(body["uuid"])
    turn = iter(uuids)
    lock = threading.Lock()

    def crash():
        with lock:
            process_uuid = next(turn)
        process, finished = services.finish_process(issued_key[0], uuid=process_uuid, status="failed",
                                                    error="RuntimeError: node down")
        return finished

    assert all_at_once(crash, RUNS) == [True] * RUNS
    group = FailureDigest.objects.get()
    assert sorted(m["uuid"] for m in group.members) == sorted(uuids)
    alive = OutboxMessage.objects.exclude(payload__event="started").exclude(state="superseded")
    assert {row.payload["event"] for row in alive} == {"digest"}  # the first two alerts were folded
    assert alive.count() == RUNS - 2  # one digest row per failure from the third on; the sender sends the newest
