"""The worker's WebSocket client against an in-test server that speaks the protocol.

Synchronisation is by awaiting the server's messages (with timeouts) and threading events;
nothing sleeps to wait for something to happen.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
import sys
import threading

import pytest

pytestmark = pytest.mark.timeout(60)


async def _start(client):
    return asyncio.create_task(client.run())


async def _stop(client, task):
    client.request_stop()
    outcome = await asyncio.wait_for(task, 15)
    assert outcome.kind == "stopped"
    return outcome


async def _job(ws, job_id, action, params=None):
    await ws.send(json.dumps({"type": "job", "job_id": job_id, "action": action, "params": params or {}}))


def gated_action(gate: threading.Event):
    """A job that reports progress and then waits for the gate, honouring cancel."""

    def action(ctx):
        ctx.progress(10, "working", "started", force=True)
        while not gate.wait(0.01):
            ctx.checkpoint()
        return {"done": True}

    return action


def _actions(sw, gate):
    return {**sw.JOB_ACTIONS, "gated": gated_action(gate)}


async def test_it_trades_the_token_for_a_credential_and_saves_it(sw, make_client, fake_server, settings):
    client = make_client()
    task = await _start(client)
    ws = await fake_server.connection()
    await _job(ws, "j1", "list_models")
    assert (await fake_server.next("result", "j1"))["success"] is True
    auth = fake_server.auths[0]
    assert auth["token"] == "good-token" and "credential" not in auth
    assert auth["protocol"] == 1 and auth["running_jobs"] == []
    machine = auth["machine"]
    assert machine["machine_id"] == "test-machine" and machine["worker_version"] == sw.WORKER_VERSION
    assert set(machine) >= {"hostname", "platform", "os_release", "python", "packages", "models"}
    assert "lightgbm" in machine["models"] and "xgboost" in machine["packages"]
    config = json.loads(settings.paths.config.read_text())
    assert config["credential"] == "cred-1" and config["server"] == fake_server.url
    if os.name != "nt":
        assert stat.S_IMODE(settings.paths.config.stat().st_mode) == 0o600
    assert any(line.startswith("Connected as") for line in client.console.lines)
    await _stop(client, task)


async def test_it_reconnects_with_the_credential_after_the_server_drops_it(make_client, fake_server):
    client = make_client()
    task = await _start(client)
    ws = await fake_server.connection()
    await ws.close(1012, "restarting")
    ws2 = await fake_server.connection()
    assert "token" not in fake_server.auths[1] and fake_server.auths[1]["credential"] == "cred-1"
    await _job(ws2, "j1", "list_models")
    await fake_server.next("result", "j1")
    assert any("retrying in" in line for line in client.console.lines)
    await _stop(client, task)


async def test_it_runs_a_job_with_progress_then_result_then_ack(sw, make_client, fake_server, data_root):
    (data_root / "people.csv").write_text("age,city\n31,Oslo\n45,Rome\n22,Oslo\n")
    client = make_client()
    task = await _start(client)
    ws = await fake_server.connection()
    await _job(ws, "d1", "describe", {"file_path": str(data_root / "people.csv")})
    progress = await fake_server.next("progress", "d1")
    assert progress["status"] == "reading" and 0 <= progress["progress"] <= 100
    result = await fake_server.next("result", "d1")
    assert result["success"] and result["data"]["rows"] == 3
    assert [c["name"] for c in result["data"]["columns"]] == ["age", "city"]
    await _job(ws, "j2", "list_models")
    await fake_server.next("result", "j2")
    assert "d1" not in client.unacked
    await _stop(client, task)


async def test_it_reports_bad_jobs_as_error_results(make_client, fake_server, data_root):
    client = make_client()
    task = await _start(client)
    ws = await fake_server.connection()
    await _job(ws, "x1", "format_disk")
    assert (await fake_server.next("result", "x1"))["error_code"] == "unsupported"
    await ws.send(json.dumps({"type": "job", "job_id": "x2", "action": "describe", "params": [1]}))
    assert (await fake_server.next("result", "x2"))["error_code"] == "invalid_params"
    await _job(ws, "x3", "describe", {"file_path": "/etc/passwd"})
    assert (await fake_server.next("result", "x3"))["error_code"] in ("path_not_allowed", "bad_extension")
    await ws.send("this is not json")
    await _job(ws, "x4", "list_models")
    assert (await fake_server.next("result", "x4"))["success"]
    await _stop(client, task)


async def test_it_ignores_a_duplicate_job_and_resends_an_unacked_result(sw, make_client, fake_server):
    gate = threading.Event()
    fake_server.auto_ack = False
    client = make_client(actions=_actions(sw, gate))
    task = await _start(client)
    ws = await fake_server.connection()
    await _job(ws, "g1", "gated")
    await fake_server.next("progress", "g1")
    await _job(ws, "g1", "gated")  # duplicate while running: ignored
    await _job(ws, "m0", "list_models")  # frames are handled in order: the duplicate was seen
    await fake_server.next("result", "m0")
    gate.set()
    first = await fake_server.next("result", "g1")
    assert first["data"] == {"done": True}
    await _job(ws, "g1", "gated")  # duplicate after finishing: the stored result again
    again = await fake_server.next("result", "g1")
    assert again == first
    await ws.send(json.dumps({"type": "result_ack", "job_id": "g1"}))
    await _job(ws, "g1", "gated")  # acknowledged: ignored
    await _job(ws, "m1", "list_models")
    nxt = await fake_server.next("result")
    assert nxt["job_id"] == "m1"
    started = [line for line in client.console.lines if "g1" in line and "started" in line]
    assert len(started) == 1
    await _stop(client, task)


async def test_it_cancels_a_running_job(sw, make_client, fake_server):
    gate = threading.Event()
    client = make_client(actions=_actions(sw, gate))
    task = await _start(client)
    ws = await fake_server.connection()
    await _job(ws, "c1", "gated")
    await fake_server.next("progress", "c1")
    await ws.send(json.dumps({"type": "cancel", "job_id": "c1"}))
    result = await fake_server.next("result", "c1")
    assert result["success"] is False and result["error_code"] == "cancelled"
    await _stop(client, task)


async def test_it_lists_running_jobs_and_resends_unacked_results_after_reconnecting(
    sw, make_client, fake_server
):
    gate = threading.Event()
    fake_server.auto_ack = False
    client = make_client(actions=_actions(sw, gate))
    task = await _start(client)
    ws = await fake_server.connection()
    await _job(ws, "r1", "gated")
    await fake_server.next("progress", "r1")
    await ws.close(1012, "restarting")
    ws2 = await fake_server.connection()
    assert fake_server.auths[1]["running_jobs"] == ["r1"]
    gate.set()
    result = await fake_server.next("result", "r1")
    await ws2.close(1012, "restarting again")
    await fake_server.connection()
    assert fake_server.auths[2]["running_jobs"] == []
    resent = await fake_server.next("result", "r1")
    assert resent == result
    await _stop(client, task)


async def test_it_stops_with_a_message_when_the_credential_is_revoked(sw, make_client, fake_server, settings):
    store = sw.ConfigStore(settings.paths.config)
    store.update(credential="stale", server=fake_server.url)
    client = make_client(token=None, credential="stale")
    outcome = await asyncio.wait_for(client.run(), 15)
    assert outcome.kind == "fatal" and outcome.exit_code == sw.EXIT_OK
    assert "revoked" in outcome.message and "/connect" in outcome.message
    assert "credential" not in store.load()
    assert client.settings.credential is None


async def test_it_stops_when_the_token_is_refused(sw, make_client, fake_server):
    outcome = await asyncio.wait_for(make_client(token="bad-token").run(), 15)
    assert outcome.kind == "fatal" and outcome.exit_code == sw.EXIT_USAGE and "/connect" in outcome.message


async def test_it_stops_without_fighting_when_replaced(sw, make_client, fake_server):
    client = make_client()
    task = asyncio.create_task(client.run())
    ws = await fake_server.connection()
    await ws.send(json.dumps({"type": "replaced", "message": "A newer worker connected"}))
    await ws.close(4009, "replaced")
    outcome = await asyncio.wait_for(task, 15)
    assert outcome.kind == "fatal" and "replaced" in outcome.message
    assert len(fake_server.auths) == 1


async def test_it_exchanges_the_token_only_when_asked(make_client, fake_server):
    outcome = await asyncio.wait_for(make_client().run(stop_after_auth=True), 15)
    assert outcome.kind == "authenticated" and fake_server.credentials == {"cred-1"}


async def test_it_sends_application_pings(make_client, fake_server):
    fake_server.heartbeat_interval = 1
    client = make_client()
    task = await _start(client)
    await fake_server.connection()
    assert (await fake_server.next("ping", within=10)) == {"type": "ping"}
    await _stop(client, task)


async def test_it_updates_itself_from_the_server_and_asks_to_restart(
    sw, make_client, fake_server, settings, script_path, newer_version
):
    new_text = script_path.read_text().replace(
        f'WORKER_VERSION = "{sw.WORKER_VERSION}"', f'WORKER_VERSION = "{newer_version}"'
    )
    assert new_text != script_path.read_text()
    fake_server.script_text = new_text
    settings.auto_update = True
    argv = [sys.executable, "statsbot_worker.py", "--server", fake_server.url]
    client = make_client(reexec_argv=argv)
    task = await _start(client)
    ws = await fake_server.connection()
    await ws.send(json.dumps({"type": "update", "url": fake_server.http_url, "latest_version": newer_version}))
    outcome = await asyncio.wait_for(task, 60)
    assert outcome.kind == "reexec" and outcome.argv == argv
    assert settings.paths.script.read_text() == new_text and fake_server.downloads == 1


async def test_it_keeps_running_when_the_update_is_broken(sw, make_client, fake_server, settings):
    fake_server.script_text = 'WORKER_VERSION = "2.0.0"\ndef broken(:\n'
    settings.auto_update = True
    client = make_client()
    task = await _start(client)
    ws = await fake_server.connection()
    await ws.send(json.dumps({"type": "update", "url": fake_server.http_url, "latest_version": "2.0.0"}))
    await _job(ws, "after", "list_models")
    await fake_server.next("result", "after")
    assert any(
        "Update failed" in line and f"keeping version {sw.WORKER_VERSION}" in line for line in client.console.lines
    )
    assert not settings.paths.script.exists()
    await ws.send(json.dumps({"type": "update", "url": "https://elsewhere.example/worker"}))
    await _job(ws, "after2", "list_models")
    await fake_server.next("result", "after2")
    assert any("updates come only from" in line for line in client.console.lines)
    await _stop(client, task)


def test_it_waits_retry_after_when_rate_limited(sw, settings):
    client = sw.WorkerClient(
        settings, sw.ConfigStore(settings.paths.config), sw.Console(stream=io.StringIO()), versions={}
    )
    client._auth_failure = {"retry_after": 30}
    assert client._decide_close(4029, "") == 30
    client._auth_failure = None
    assert client._decide_close(4029, "retry in 12 s") == 12
    assert client._decide_close(4008, "") is None
    assert client._decide_close(1006, "") is None
    client.executor.shutdown()


async def test_it_drops_a_result_the_server_says_it_will_never_accept(sw, make_client, fake_server):
    fake_server.auto_ack = False
    client = make_client()
    task = await _start(client)
    ws = await fake_server.connection()
    await _job(ws, "u1", "list_models")
    await fake_server.next("result", "u1")
    assert "u1" in client.unacked
    await ws.send(
        json.dumps({"type": "error", "code": "unknown_job", "message": "No such job", "job_id": "u1"})
    )
    await _job(ws, "u2", "list_models")
    await fake_server.next("result", "u2")
    assert "u1" not in client.unacked
    await _stop(client, task)
