"""Hostile input on the worker WebSocket (issue 11): huge numbers, deep nesting, invalid Unicode,
and address-based guessing. Every bad frame gets a clear protocol error, never ``internal``;
before auth it also ends the connection at once."""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.db import database_sync_to_async

from core.models import OutboxMessage
from jobs.models import Job
from jobs.services import submit_job
from tests.workers.conftest import auth_frame, communicator
from workers import consumers
from workers.models import ConnectToken, Worker
from workers.protocol import CloseCode

pytestmark = pytest.mark.django_db(transaction=True)

HUGE = "9" * 5000


async def connected(account, connect_token, open_sockets, **extra):
    comm = communicator()
    open_sockets.append(comm)
    assert (await comm.connect())[0]
    await comm.send_json_to(auth_frame(token=await connect_token(account), **extra))
    response = await comm.receive_json_from(timeout=5)
    assert response["success"] is True, response
    return comm, response


async def assert_closed_at_once(comm, code: int = CloseCode.BAD_AUTH_FRAME) -> None:
    """The close follows the error at once (well before the 10 s auth timeout)."""
    assert await comm.receive_output(timeout=2) == {"type": "websocket.close", "code": code}


# A 5,000-digit integer -----------------------------------------------------------------------


async def test_it_answers_a_5000_digit_integer_after_auth_with_a_protocol_error(account, connect_token,
                                                                                  open_sockets):
    comm, _ = await connected(account, connect_token, open_sockets)
    await comm.send_to(text_data='{"type": "progress", "job_id": "x", "progress": ' + HUGE + "}")
    error = await comm.receive_json_from(timeout=5)
    assert error["type"] == "error" and error["code"] == "number_too_large", error
    assert "5000 digits" in error["message"] and "Traceback" not in json.dumps(error)
    await comm.send_json_to({"type": "ping"})
    assert await comm.receive_json_from(timeout=5) == {"type": "pong"}


async def test_it_closes_at_once_on_a_5000_digit_integer_before_auth(open_sockets):
    comm = communicator()
    await comm.connect()
    await comm.send_to(text_data='{"type": "auth", "token": "sbt_x", "running_jobs": [], "n": ' + HUGE + "}")
    error = await comm.receive_json_from(timeout=5)
    assert error["type"] == "error" and error["code"] == "number_too_large", error
    await assert_closed_at_once(comm)


async def test_it_refuses_infinite_numbers(account, connect_token, open_sockets):
    comm, _ = await connected(account, connect_token, open_sockets)
    for number in ("1e999", "NaN", "-Infinity"):
        await comm.send_to(text_data='{"type": "ping", "x": ' + number + "}")
        error = await comm.receive_json_from(timeout=5)
        assert error["type"] == "error" and error["code"] in {"number_too_large", "invalid_json"}, error


# Deep nesting --------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [100, 900, 100_000])
async def test_it_refuses_a_deeply_nested_result_and_stores_nothing(account, connect_token, open_sockets, depth):
    comm, _ = await connected(account, connect_token, open_sockets)
    job = await database_sync_to_async(submit_job)(account, Job.Action.TRAIN, {})
    await comm.receive_json_from(timeout=5)
    nested = "[" * depth + "]" * depth
    await comm.send_to(text_data=f'{{"type": "result", "job_id": "{job.id}", "success": true, "data": {{"x": {nested}}}}}')
    error = await comm.receive_json_from(timeout=5)
    assert error["type"] == "error" and error["code"] == "too_deep", error
    await database_sync_to_async(job.refresh_from_db)()
    assert job.state == Job.State.DISPATCHED and job.result is None
    await comm.send_json_to({"type": "ping"})
    assert await comm.receive_json_from(timeout=5) == {"type": "pong"}


async def test_it_closes_at_once_on_deep_nesting_before_auth(open_sockets):
    comm = communicator()
    await comm.connect()
    nested = "{\"a\": " * 200 + "1" + "}" * 200
    await comm.send_to(text_data='{"type": "auth", "token": "sbt_x", "machine": {"packages": ' + nested + "}}")
    error = await comm.receive_json_from(timeout=5)
    assert error["code"] == "too_deep", error
    await assert_closed_at_once(comm)


# Invalid Unicode -----------------------------------------------------------------------------


async def test_it_replaces_lone_surrogates_in_an_auth_frame(account, connect_token, open_sockets):
    token = await connect_token(account)
    comm = communicator()
    open_sockets.append(comm)
    await comm.connect()
    frame = json.dumps(auth_frame(token=token)).replace("ann-laptop", "ann\\ud800-lap\\u0000top")
    await comm.send_to(text_data=frame)
    response = await comm.receive_json_from(timeout=5)
    assert response["success"] is True, response
    worker = await database_sync_to_async(Worker.objects.get)(pk=response["worker_id"])
    assert worker.machine_name == "ann\ufffd-laptop"


async def test_it_replaces_lone_surrogates_in_progress_and_results(account, connect_token, open_sockets):
    comm, _ = await connected(account, connect_token, open_sockets)
    job = await database_sync_to_async(submit_job)(account, Job.Action.TRAIN, {})
    await comm.receive_json_from(timeout=5)
    await comm.send_to(text_data=json.dumps(
        {"type": "progress", "job_id": str(job.id), "progress": 50, "status": "training", "message": "x"}
    ).replace('"x"', '"caf\\udce9.csv"'))
    await comm.send_to(text_data=json.dumps(
        {"type": "result", "job_id": str(job.id), "success": False, "error": "E", "error_code": "internal"}
    ).replace('"E"', '"Crashed reading caf\\udce9.csv \\ud83d"'))
    assert await comm.receive_json_from(timeout=5) == {"type": "result_ack", "job_id": str(job.id)}
    await database_sync_to_async(job.refresh_from_db)()
    assert job.state == Job.State.FAILED
    assert job.error == "Crashed reading caf\ufffd.csv \ufffd"
    notices = await database_sync_to_async(list)(
        OutboxMessage.objects.filter(edit_key=job.edit_key).values_list("payload", flat=True))
    assert [n["state"] for n in notices] == ["failed"]  # the crash notice is queued for the chat


async def test_it_takes_a_text_frame_holding_raw_surrogates(account, connect_token, open_sockets):
    """A text frame is UTF-8 on the wire; an ASGI server in between could still hand over a str
    holding surrogates: it is repaired, not a crash."""
    comm, _ = await connected(account, connect_token, open_sockets)
    await comm.send_to(text_data='{"type": "ping", "note": "\ud800"}')
    assert await comm.receive_json_from(timeout=5) == {"type": "pong"}
    await comm.send_to(text_data='{"type": "\udfff"}')
    error = await comm.receive_json_from(timeout=5)
    assert error["code"] == "unknown_type", error


# Guessing from one address -------------------------------------------------------------------


async def test_it_refuses_a_throttled_address_before_looking_at_the_secret(account, connect_token, pauses):
    """Even a valid token is not looked at from an address that is refused: the token stays unused."""
    for _ in range(consumers.throttle.LIMIT):
        consumers.throttle.record("10.9.9.9")
    token = await connect_token(account)
    comm = communicator("10.9.9.9")
    await comm.connect()
    await comm.send_json_to(auth_frame(token=token))
    refusal = await comm.receive_json_from(timeout=5)
    assert refusal["code"] == "too_many_attempts" and refusal["retry_after"] >= 1
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": CloseCode.TOO_MANY_ATTEMPTS}
    row = await database_sync_to_async(ConnectToken.objects.get)(account=account)
    assert row.used_at is None
    assert pauses == [consumers.throttle.MAX_DELAY]  # the delay stays in force for refusals


async def test_it_keeps_50_failed_auths_from_one_address_slow(account, connect_token, pauses):
    """50 guesses: the first LIMIT are looked at (each answered after the growing delay), every
    later one is refused unread after the full delay, and a valid token at the end is not read."""
    codes = []
    for attempt in range(50):
        comm = communicator("10.7.7.7")
        await comm.connect()
        await comm.send_json_to(auth_frame(credential=f"sbw_guess{attempt}"))
        codes.append((await comm.receive_json_from(timeout=5))["code"])
        await comm.receive_output(timeout=5)
    limit = consumers.throttle.LIMIT
    assert codes == ["invalid_credential"] * limit + ["too_many_attempts"] * (50 - limit)
    free = consumers.throttle.FREE
    assert pauses[:free] == [0.0] * free
    assert all(p > 0 for p in pauses[free:]) and pauses[limit:] == [consumers.throttle.MAX_DELAY] * (50 - limit)
    token = await connect_token(account)
    comm = communicator("10.7.7.7")
    await comm.connect()
    await comm.send_json_to(auth_frame(token=token))
    assert (await comm.receive_json_from(timeout=5))["code"] == "too_many_attempts"
    assert (await database_sync_to_async(ConnectToken.objects.get)(account=account)).used_at is None
    other = communicator("10.7.7.8")  # another address is not affected
    await other.connect()
    await other.send_json_to(auth_frame(token=token))
    assert (await other.receive_json_from(timeout=5))["success"] is True
    await other.disconnect()


async def test_it_does_not_count_a_successful_auth_as_a_failure(account, connect_token, open_sockets):
    for _ in range(3):
        await connected(account, connect_token, open_sockets)
    assert consumers.throttle.delay("10.0.0.1") == 0
    assert len(consumers.throttle._recent("10.0.0.1")) == 0


async def test_it_lets_many_workers_behind_one_address_connect_at_once(make_account, connect_token, open_sockets):
    """Only failures count: 20 workers behind one NAT authenticating together are all let in."""
    accounts = [await database_sync_to_async(make_account)() for _ in range(20)]
    tokens = [await connect_token(account) for account in accounts]
    sockets = [communicator("10.5.5.5") for _ in tokens]
    open_sockets.extend(sockets)
    for comm in sockets:
        await comm.connect()
    await asyncio.gather(*(comm.send_json_to(auth_frame(token=t)) for comm, t in zip(sockets, tokens, strict=True)))
    replies = await asyncio.gather(*(comm.receive_json_from(timeout=10) for comm in sockets))
    assert [r["success"] for r in replies] == [True] * 20
