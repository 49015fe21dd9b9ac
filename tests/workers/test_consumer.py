"""The worker WebSocket, driven through the real ASGI app with WebsocketCommunicator."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from core.models import OutboxMessage
from jobs.models import Job
from jobs.services import cancel_job, submit_job
from tests.workers.conftest import auth_frame, communicator
from workers.models import Worker
from workers.presence import presence
from workers.protocol import CloseCode

pytestmark = pytest.mark.django_db(transaction=True)


async def connected(account, connect_token, open_sockets, **extra):
    comm = communicator()
    open_sockets.append(comm)
    assert (await comm.connect())[0]
    await comm.send_json_to(auth_frame(token=await connect_token(account), **extra))
    response = await comm.receive_json_from(timeout=5)
    assert response["success"] is True, response
    return comm, response


@database_sync_to_async
def outbox_events(account):
    return [m.payload for m in OutboxMessage.objects.filter(account=account, kind="worker").order_by("id")]


async def test_it_authenticates_with_a_token_and_hands_out_a_credential(account, connect_token, open_sockets):
    comm, response = await connected(account, connect_token, open_sockets)
    assert response["user_id"] == account.telegram_user_id
    assert response["credential"].startswith("sbw_")
    assert response["update_required"] is False
    worker = await database_sync_to_async(Worker.objects.get)(pk=response["worker_id"])
    assert worker.is_online and worker.machine_name == "ann-laptop"
    assert worker.models_available == ["lightgbm", "random_forest", "linear"]
    assert [e["event"] for e in await outbox_events(account)] == ["connected"]


async def test_it_reconnects_with_the_credential_silently(account, connect_token, open_sockets):
    comm, response = await connected(account, connect_token, open_sockets)
    await comm.disconnect()
    again = communicator()
    open_sockets.append(again)
    await again.connect()
    await again.send_json_to(auth_frame(credential=response["credential"]))
    second = await again.receive_json_from(timeout=5)
    assert second["success"] is True and second["worker_id"] == response["worker_id"]
    assert "credential" not in second
    assert [e["event"] for e in await outbox_events(account)] == ["connected"]


async def test_it_refuses_a_used_token_with_4001(account, connect_token, open_sockets):
    token = await connect_token(account)
    first = communicator()
    open_sockets.append(first)
    await first.connect()
    await first.send_json_to(auth_frame(token=token))
    assert (await first.receive_json_from(timeout=5))["success"]
    second = communicator()
    await second.connect()
    await second.send_json_to(auth_frame(token=token))
    refusal = await second.receive_json_from(timeout=5)
    assert refusal["success"] is False and refusal["code"] == "invalid_token"
    assert "/connect" in refusal["message"]
    assert (await second.receive_output(timeout=5)) == {"type": "websocket.close", "code": CloseCode.INVALID_TOKEN}


async def test_it_refuses_a_revoked_credential_with_4003(account, connect_token, open_sockets):
    comm, response = await connected(account, connect_token, open_sockets)
    await comm.disconnect()
    worker = await database_sync_to_async(Worker.objects.get)(pk=response["worker_id"])
    await database_sync_to_async(worker.revoke)(Worker.RevokeReason.USER)
    again = communicator()
    await again.connect()
    await again.send_json_to(auth_frame(credential=response["credential"]))
    assert (await again.receive_json_from(timeout=5))["code"] == "invalid_credential"
    assert (await again.receive_output(timeout=5))["code"] == CloseCode.REVOKED


async def test_it_closes_a_connection_whose_first_frame_is_not_auth(open_sockets):
    comm = communicator()
    await comm.connect()
    await comm.send_json_to({"type": "progress", "job_id": "x"})
    error = await comm.receive_json_from(timeout=5)
    assert error == {"type": "error", "code": "auth_required", "message": "The first frame must be 'auth'."}
    assert (await comm.receive_output(timeout=5))["code"] == CloseCode.BAD_AUTH_FRAME


async def test_it_slows_down_and_then_refuses_repeated_failures(open_sockets, pauses):
    from workers.consumers import throttle

    for _ in range(throttle.LIMIT):
        throttle.record("10.9.9.9")
    comm = communicator("10.9.9.9")
    await comm.connect()
    await comm.send_json_to(auth_frame(token="sbt_guess"))
    refusal = await comm.receive_json_from(timeout=5)
    assert refusal["code"] == "too_many_attempts" and refusal["retry_after"] >= 1
    assert (await comm.receive_output(timeout=5))["code"] == CloseCode.TOO_MANY_ATTEMPTS
    assert throttle.delay("10.9.9.9") > 0 and throttle.delay("10.0.0.7") == 0


async def test_it_replaces_an_older_worker_of_the_same_account(account, connect_token, open_sockets):
    old, old_response = await connected(account, connect_token, open_sockets)
    new, new_response = await connected(account, connect_token, open_sockets)
    notice = await old.receive_json_from(timeout=5)
    assert notice["type"] == "replaced"
    assert (await old.receive_output(timeout=5))["code"] == CloseCode.REPLACED
    old_worker = await database_sync_to_async(Worker.objects.get)(pk=old_response["worker_id"])
    assert old_worker.revoke_reason == Worker.RevokeReason.REPLACED
    assert new_response["worker_id"] != old_response["worker_id"]


async def test_it_dispatches_a_job_and_records_progress_and_result(account, connect_token, open_sockets):
    comm, _ = await connected(account, connect_token, open_sockets)
    job = await database_sync_to_async(submit_job)(account, Job.Action.TRAIN, {"file_path": "~/d.csv"})
    frame = await comm.receive_json_from(timeout=5)
    assert frame == {"type": "job", "job_id": str(job.id), "action": "train", "params": {"file_path": "~/d.csv"}}
    await comm.send_json_to({"type": "progress", "job_id": str(job.id), "progress": 40, "status": "training",
                             "message": "Fitting LightGBM"})
    await comm.send_json_to({"type": "result", "job_id": str(job.id), "success": True,
                             "data": {"model_id": "lightgbm_y_1", "metrics": {"r2": 0.9}}})
    assert await comm.receive_json_from(timeout=5) == {"type": "result_ack", "job_id": str(job.id)}
    await database_sync_to_async(job.refresh_from_db)()
    assert job.state == Job.State.SUCCEEDED and job.result["model_id"] == "lightgbm_y_1"
    assert job.started_at is not None and job.stage == "training"
    rows = await database_sync_to_async(list)(
        OutboxMessage.objects.filter(edit_key=job.edit_key).values_list("payload", flat=True)
    )
    assert [r["state"] for r in rows] == ["succeeded"]  # one pending row per job, kept current


async def test_it_dispatches_queued_jobs_when_the_worker_connects(account, connect_token, open_sockets):
    job = await database_sync_to_async(submit_job)(account, Job.Action.LIST_MODELS)
    comm, _ = await connected(account, connect_token, open_sockets)
    frame = await comm.receive_json_from(timeout=5)
    assert frame["job_id"] == str(job.id) and frame["action"] == "list_models"
    await database_sync_to_async(job.refresh_from_db)()
    assert job.state == Job.State.DISPATCHED


async def test_it_resends_unreported_jobs_after_a_reconnect(account, connect_token, open_sockets):
    comm, response = await connected(account, connect_token, open_sockets)
    running = await database_sync_to_async(submit_job)(account, Job.Action.TRAIN, {"file_path": "a.csv"})
    forgotten = await database_sync_to_async(submit_job)(account, Job.Action.PREDICT, {"file_path": "b.csv"})
    await comm.receive_json_from(timeout=5)
    await comm.receive_json_from(timeout=5)
    await comm.send_json_to({"type": "progress", "job_id": str(running.id), "progress": 10})
    await comm.disconnect()
    again = communicator()
    open_sockets.append(again)
    await again.connect()
    await again.send_json_to(auth_frame(credential=response["credential"], running_jobs=[str(running.id)]))
    assert (await again.receive_json_from(timeout=5))["success"]
    resent = await again.receive_json_from(timeout=5)
    assert resent["job_id"] == str(forgotten.id)
    assert await again.receive_nothing(timeout=0.2)


async def test_it_tells_the_worker_to_cancel(account, connect_token, open_sockets):
    comm, _ = await connected(account, connect_token, open_sockets)
    job = await database_sync_to_async(submit_job)(account, Job.Action.TRAIN, {})
    await comm.receive_json_from(timeout=5)
    await database_sync_to_async(job.refresh_from_db)()
    await database_sync_to_async(cancel_job)(job)
    assert await comm.receive_json_from(timeout=5) == {"type": "cancel", "job_id": str(job.id)}
    await comm.send_json_to({"type": "result", "job_id": str(job.id), "success": False,
                             "error": "Cancelled", "error_code": "cancelled"})
    assert (await comm.receive_json_from(timeout=5))["type"] == "result_ack"
    await database_sync_to_async(job.refresh_from_db)()
    assert job.state == Job.State.CANCELLED


async def test_it_fails_a_job_whose_result_is_over_the_limit(account, connect_token, open_sockets):
    comm, _ = await connected(account, connect_token, open_sockets)
    job = await database_sync_to_async(submit_job)(account, Job.Action.PREDICT, {})
    await comm.receive_json_from(timeout=5)
    await comm.send_json_to({"type": "result", "job_id": str(job.id), "success": True,
                             "data": {"rows": ["x" * 1000] * 1010}})
    await comm.receive_json_from(timeout=5)
    await database_sync_to_async(job.refresh_from_db)()
    assert job.state == Job.State.FAILED and job.error_code == "result_too_large"
    assert "1 MB" in job.error


async def test_it_refuses_another_accounts_job(account, make_account, connect_token, open_sockets):
    other = await database_sync_to_async(make_account)()
    foreign = await database_sync_to_async(submit_job)(other, Job.Action.TRAIN, {})
    comm, _ = await connected(account, connect_token, open_sockets)
    await comm.send_json_to({"type": "result", "job_id": str(foreign.id), "success": True, "data": {}})
    error = await comm.receive_json_from(timeout=5)
    assert error["type"] == "error" and error["code"] == "unknown_job"
    await database_sync_to_async(foreign.refresh_from_db)()
    assert foreign.state == Job.State.QUEUED


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_frame"),
        (json.dumps({"no": "type"}), "invalid_frame"),
        (json.dumps({"type": "launch_missiles"}), "unknown_type"),
        (json.dumps({"type": "progress", "job_id": 7}), "invalid_field"),
        (json.dumps({"type": "progress", "job_id": "6a3b0b2e-0000-4000-8000-000000000000", "progress": "x"}),
         "invalid_field"),
        (json.dumps({"type": "result", "job_id": "6a3b0b2e-0000-4000-8000-000000000000", "success": "yes"}),
         "invalid_field"),
        (json.dumps({"type": "auth", "token": "x", "machine": {}}), "already_authenticated"),
        ("x" * (1024 * 1024 + 1), "frame_too_large"),
    ],
)
async def test_it_answers_bad_frames_with_an_error_and_stays_open(account, connect_token, open_sockets, frame, code):
    comm, _ = await connected(account, connect_token, open_sockets)
    await comm.send_to(text_data=frame)
    error = await comm.receive_json_from(timeout=5)
    assert error["type"] == "error" and error["code"] == code, error
    await comm.send_json_to({"type": "ping"})
    assert await comm.receive_json_from(timeout=5) == {"type": "pong"}


async def test_it_refuses_binary_frames(account, connect_token, open_sockets):
    comm, _ = await connected(account, connect_token, open_sockets)
    await comm.send_to(bytes_data=b"\x00\x01")
    assert (await comm.receive_json_from(timeout=5))["code"] == "binary_frame"


async def test_it_tells_an_outdated_worker_to_update(account, connect_token, open_sockets):
    machine = {**auth_frame()["machine"], "worker_version": "0.1.0"}
    comm, response = await connected(account, connect_token, open_sockets, machine=machine)
    assert response["update_required"] is True
    update = await comm.receive_json_from(timeout=5)
    assert update["type"] == "update" and update["url"].endswith("/worker")


async def test_it_dispatches_a_job_whose_doorbell_never_rang_on_the_safety_flush(account, connect_token,
                                                                                   open_sockets):
    """A job whose doorbell never rang (expired group, lost message) still goes out: the batched
    presence flush (every 20 s) finds the accounts with queued jobs."""
    comm, _ = await connected(account, connect_token, open_sockets)
    await comm.send_json_to({"type": "ping"})  # answered once the connect's own dispatch check is done
    assert await comm.receive_json_from(timeout=5) == {"type": "pong"}
    job = await database_sync_to_async(Job.objects.create)(account=account, action=Job.Action.LIST_MODELS)
    await comm.send_json_to({"type": "ping"})
    assert await comm.receive_json_from(timeout=5) == {"type": "pong"}
    assert await comm.receive_nothing(timeout=0.3)  # a ping alone does not look at the database
    findings = await presence().flush()
    assert findings.queued_accounts == {account.pk}
    frame = await comm.receive_json_from(timeout=5)
    assert frame["type"] == "job" and frame["job_id"] == str(job.id)


async def test_it_answers_pings_without_touching_the_database(account, connect_token, open_sockets, monkeypatch):
    import channels.consumer

    comm, response = await connected(account, connect_token, open_sockets)
    before = await database_sync_to_async(Worker.objects.get)(pk=response["worker_id"])
    hops = []  # Channels' own dispatch sends every message through a thread to close stale connections

    async def close_old_connections() -> None:
        hops.append(1)

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", close_old_connections)
    for _ in range(5):
        await comm.send_json_to({"type": "ping"})
        assert await comm.receive_json_from(timeout=5) == {"type": "pong"}
    assert hops == []  # not even a thread hop per ping
    monkeypatch.undo()
    unchanged = await database_sync_to_async(Worker.objects.get)(pk=response["worker_id"])
    assert unchanged.last_seen_at == before.last_seen_at  # no write per ping
    await presence().flush()  # heartbeats are written in one batch
    after = await database_sync_to_async(Worker.objects.get)(pk=response["worker_id"])
    assert after.last_seen_at > before.last_seen_at


async def test_it_closes_a_revoked_worker_on_the_safety_flush(account, connect_token, open_sockets):
    """The revoke ring closes it at once; a lost ring is caught by the next presence flush."""
    comm, response = await connected(account, connect_token, open_sockets)
    await database_sync_to_async(Worker.objects.filter(pk=response["worker_id"]).update)(
        revoked_at=timezone.now())
    findings = await presence().flush()
    assert findings.revoked == {response["worker_id"]}
    assert (await comm.receive_json_from(timeout=5))["type"] == "revoked"
    assert (await comm.receive_output(timeout=5))["code"] == CloseCode.REVOKED


async def test_it_takes_its_channel_back_after_the_stale_sweep_cleared_it(account, connect_token, open_sockets):
    """A process too busy to record heartbeats saw its worker marked disconnected: the next
    flush puts the live connection back, and the user hears "reconnected" after a notice."""
    from workers.services import announce_disconnects

    comm, response = await connected(account, connect_token, open_sockets)
    await database_sync_to_async(Worker.objects.filter(pk=response["worker_id"]).update)(
        channel_name="", disconnected_at=timezone.now() - timezone.timedelta(minutes=5))
    assert await database_sync_to_async(announce_disconnects)(30) == 1
    findings = await presence().flush()
    assert findings.lost_channel == {response["worker_id"]}
    worker = await database_sync_to_async(Worker.objects.get)(pk=response["worker_id"])
    assert worker.is_online and worker.disconnect_notified_at is None
    assert [e["event"] for e in await outbox_events(account)] == ["connected", "disconnected", "reconnected"]


async def test_it_acknowledges_a_repeated_failed_result(account, connect_token, open_sockets):
    comm, _ = await connected(account, connect_token, open_sockets)
    job = await database_sync_to_async(submit_job)(account, Job.Action.TRAIN, {})
    await comm.receive_json_from(timeout=5)
    failure = {"type": "result", "job_id": str(job.id), "success": False, "error": "boom", "error_code": "internal"}
    for _ in range(2):
        await comm.send_json_to(failure)
        assert await comm.receive_json_from(timeout=5) == {"type": "result_ack", "job_id": str(job.id)}


async def test_it_cancels_on_reconnect_a_job_cancelled_while_away(account, connect_token, open_sockets):
    comm, response = await connected(account, connect_token, open_sockets)
    job = await database_sync_to_async(submit_job)(account, Job.Action.TRAIN, {})
    await comm.receive_json_from(timeout=5)
    await comm.disconnect()
    await database_sync_to_async(job.refresh_from_db)()
    await database_sync_to_async(cancel_job)(job)
    again = communicator()
    open_sockets.append(again)
    await again.connect()
    await again.send_json_to(auth_frame(credential=response["credential"], running_jobs=[str(job.id)]))
    assert (await again.receive_json_from(timeout=5))["success"]
    assert await again.receive_json_from(timeout=5) == {"type": "cancel", "job_id": str(job.id)}


async def test_it_refuses_a_worker_revoked_while_it_connects(account, connect_token, open_sockets):
    from workers import consumers

    comm, response = await connected(account, connect_token, open_sockets)
    await comm.disconnect()
    original = consumers._connect

    def revoke_then_connect(worker, channel_name, machine=None):
        Worker.objects.filter(pk=worker.pk).update(revoked_at=timezone.now())  # lands between load and save
        return original(worker, channel_name, machine)

    consumers._connect = revoke_then_connect
    try:
        again = communicator()
        await again.connect()
        await again.send_json_to(auth_frame(credential=response["credential"]))
        assert (await again.receive_json_from(timeout=5))["code"] == "invalid_credential"
    finally:
        consumers._connect = original
    worker = await database_sync_to_async(Worker.objects.get)(pk=response["worker_id"])
    assert worker.revoked_at is not None and not worker.is_online
