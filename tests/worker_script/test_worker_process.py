"""The real script as a process: from a file, from a pipe, and with only the standard library."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def _env(tmp_path):
    env = dict(os.environ)
    env["STATSBOT_HOME"] = str(tmp_path / "statsbot_home")
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def _spawn(args, env, stdin=subprocess.DEVNULL):
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        env=env,
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def _finish(proc, within=30):
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        pytest.fail("worker did not exit:\n" + out.decode(errors="replace"))
    return proc.returncode, out.decode(errors="replace")


async def _list_models_roundtrip(server, ws, job_id):
    await ws.send(json.dumps({"type": "job", "job_id": job_id, "action": "list_models", "params": {}}))
    return await server.next("result", job_id, within=60)


async def test_it_runs_as_a_script_saves_its_credential_and_reconnects_with_it(
    fake_server, tmp_path, script_path
):
    env = _env(tmp_path)
    home = tmp_path / "statsbot_home"
    proc = await _spawn([str(script_path), "--server", fake_server.url, "--token", "good-token"], env)
    try:
        ws = await fake_server.connection(within=60)
        assert (await _list_models_roundtrip(fake_server, ws, "p1"))["data"] == {"models": [], "warnings": []}
        await ws.send(json.dumps({"type": "replaced", "message": "newer worker"}))
        await ws.close(4009, "replaced")
        code, out = await _finish(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert code == 0, out
    assert "Connected as" in out and "replaced this one" in out
    config = json.loads((home / "config.json").read_text())
    assert config["credential"] == "cred-1" and config["server"] == fake_server.url
    assert (home / "statsbot_worker.py").read_bytes() == script_path.read_bytes()
    assert (home / "logs" / "worker.log").read_text().count("Connected as") == 1

    proc = await _spawn([str(home / "statsbot_worker.py")], env)  # no --token: the saved credential
    try:
        ws = await fake_server.connection(within=60)
        await _list_models_roundtrip(fake_server, ws, "p2")
        assert fake_server.auths[1]["credential"] == "cred-1" and "token" not in fake_server.auths[1]
        proc.send_signal(signal.SIGTERM)
        code, out = await _finish(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert code == 0, out
    assert "Stopped" in out


async def test_it_saves_a_copy_of_itself_when_piped_into_python(fake_server, tmp_path, script_path):
    fake_server.script_text = script_path.read_text().replace(
        'DEFAULT_SERVER = "__STATSBOT_SERVER_URL__"', f'DEFAULT_SERVER = "{fake_server.url}"'
    )
    source = fake_server.script_text.encode()
    proc = await _spawn(
        ["-", "--token=good-token", "--server", fake_server.url],
        _env(tmp_path),
        stdin=asyncio.subprocess.PIPE,
    )
    try:
        proc.stdin.write(source)  # like `curl ... | python3 -`
        await proc.stdin.drain()
        proc.stdin.close()
        ws = await fake_server.connection(within=60)
        await _list_models_roundtrip(fake_server, ws, "pipe1")
        await ws.close(4009, "replaced")
        code, out = await _finish(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert code == 0, out
    saved = tmp_path / "statsbot_home" / "statsbot_worker.py"
    assert fake_server.downloads == 1
    assert saved.read_text() == fake_server.script_text


def _run_sync(args, tmp_path, **kwargs):
    return subprocess.run(
        [sys.executable, *args],
        env=_env(tmp_path),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,  # no controlling terminal: the worker must not ask
        **kwargs,
    )


def test_it_explains_what_is_missing_with_only_the_standard_library(tmp_path, script_path):
    # -S -I: no site-packages, so not one of the worker's packages can be found.
    proc = _run_sync(
        ["-S", "-I", str(script_path), "--server", "ws://127.0.0.1:9", "--token", "t", "--no-install"],
        tmp_path,
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "websockets, pandas, scikit-learn, lightgbm" in proc.stdout
    assert "pip install" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_it_prints_the_pip_command_with_no_install(tmp_path, script_path):
    proc = _run_sync(["-S", "-I", str(script_path), "--server", "ws://127.0.0.1:9", "--no-install"], tmp_path)
    assert proc.returncode == 3 and '"lightgbm==' in proc.stdout


def test_it_tells_the_user_to_connect_when_there_is_no_token_or_credential(tmp_path, script_path):
    proc = _run_sync([str(script_path), "--server", "ws://127.0.0.1:9"], tmp_path)
    assert proc.returncode == 2 and "/connect" in proc.stdout


def test_it_prints_its_version(tmp_path, script_path, current_version):
    proc = _run_sync([str(script_path), "--version"], tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"statsbot-worker {current_version} (protocol 1)"
