"""Issue 11 (trust): each attack on the worker from the issue's table, tried for real.

A fake server speaking docs/worker-protocol.md drives the real worker script as a subprocess
(updates, planted models, hostile frames, the token in the environment); the data budget, hidden
folders and never-overwrite rules are checked on the job functions as well. Every test here
failed against the worker before issue 11.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.timeout(180)]

POSIX = pytest.mark.skipif(os.name == "nt", reason="POSIX ownership and permissions")
AS_ROOT = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to give a folder to another user"
)
OTHER_UID = 65534  # "nobody": another local user


def _ok(result):
    assert result["success"], result
    assert json.dumps(result, allow_nan=False)
    return result["data"]


def _versioned(script_path, version):
    """The script under test with its WORKER_VERSION line set to ``version``."""
    text, count = re.subn(
        r'^WORKER_VERSION = "[^"]+"$', f'WORKER_VERSION = "{version}"', script_path.read_text(), flags=re.M
    )
    assert count == 1
    return text


# ----------------------------------------------------------------- the real worker as a process


class WorkerProcess:
    """The worker script run as `python statsbot_worker.py …` with its own STATSBOT_HOME."""

    def __init__(self, script, home, server, args=(), env=None):
        self.script, self.home, self.server = script, home, server
        self.args = list(args)
        self.env = dict(os.environ, STATSBOT_HOME=str(home), PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = None
        self.output = ""

    async def start(self):
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(self.script),
            "--server",
            self.server.url,
            *self.args,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return self

    async def connected(self, within=60):
        """The server side of the worker's next connection; fails at once if the worker exits."""
        connection = asyncio.ensure_future(self.server.connection(within))
        exited = asyncio.ensure_future(self.proc.wait())
        done, _ = await asyncio.wait({connection, exited}, return_when=asyncio.FIRST_COMPLETED)
        if connection in done:
            exited.cancel()
            return connection.result()
        connection.cancel()
        out = (await self.proc.stdout.read()).decode(errors="replace")
        pytest.fail(f"the worker exited with code {self.proc.returncode}:\n{out}")

    async def stop(self, ws):
        """Replace the worker (close 4009): it exits 0; returns its terminal output."""
        await ws.close(4009, "replaced")
        try:
            out, _ = await asyncio.wait_for(self.proc.communicate(), 60)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
        self.output = out.decode(errors="replace")
        assert self.proc.returncode == 0, self.output
        return self.output

    def kill(self):
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


@pytest.fixture
def worker_home(tmp_path):
    return tmp_path / "statsbot_home"


@pytest.fixture
def worker(fake_server, worker_home, script_path):
    started = []

    async def start(*args, env=None, script=None):
        process = await WorkerProcess(script or script_path, worker_home, fake_server, args, env).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


async def _job(server, ws, job_id, action, params=None, within=60):
    await ws.send(json.dumps({"type": "job", "job_id": job_id, "action": action, "params": params or {}}))
    return await server.next("result", job_id, within=within)


# ----------------------------------------------------------------- row 1: updates


@pytest.mark.parametrize("flags", [(), ("--auto-update",)], ids=["default", "auto-update"])
async def test_it_never_downloads_an_update_offered_from_another_path_of_its_server(
    fake_server, worker, worker_home, script_path, flags
):
    fake_server.files["/worker_evil"] = _versioned(script_path, "9.0.0")
    proc = await worker("--token", "good-token", *flags)  # even with automatic updates on
    ws = await proc.connected()
    evil = f"http://127.0.0.1:{fake_server.port}/worker_evil"
    await ws.send(json.dumps({"type": "update", "url": evil, "latest_version": "9.0.0"}))
    assert (await _job(fake_server, ws, "after", "list_models"))["success"] is True
    out = await proc.stop(ws)
    assert "/worker_evil" not in fake_server.http_requests
    assert f"Ignoring an update offered from {evil}: updates come only from {fake_server.http_url}." in out
    assert (worker_home / "statsbot_worker.py").read_bytes() == script_path.read_bytes()
    assert len(fake_server.auths) == 1


async def test_it_only_announces_an_update_unless_the_user_opted_in(
    fake_server, worker, worker_home, script_path, current_version, newer_version
):
    fake_server.script_text = _versioned(script_path, newer_version)
    proc = await worker("--token", "good-token")
    ws = await proc.connected()
    await ws.send(json.dumps({"type": "update", "url": fake_server.http_url, "latest_version": newer_version}))
    await _job(fake_server, ws, "after", "list_models")
    out = await proc.stop(ws)
    assert f"Update available {current_version} \u2192 {newer_version}" in out
    assert f"python3 {worker_home / 'statsbot_worker.py'} --update" in out
    assert "/worker" not in fake_server.http_requests and fake_server.downloads == 0
    assert (worker_home / "statsbot_worker.py").read_bytes() == script_path.read_bytes()
    assert json.loads((worker_home / "config.json").read_text())["auto_update"] is False


async def test_it_updates_itself_when_opted_in_and_keeps_the_previous_copy(
    fake_server, worker, worker_home, script_path, current_version, newer_version
):
    new = _versioned(script_path, newer_version)
    fake_server.script_text = new
    proc = await worker("--auto-update", env={"STATSBOT_TOKEN": "good-token"})
    ws = await proc.connected()
    await ws.send(json.dumps({"type": "update", "url": fake_server.http_url, "latest_version": newer_version}))
    ws = await proc.connected()  # the same process, now running the new version
    second = fake_server.auths[1]
    assert second["machine"]["worker_version"] == newer_version
    assert second["credential"] == "cred-1" and "token" not in second  # the used token is not tried again
    out = await proc.stop(ws)
    digest = hashlib.sha256(new.encode()).hexdigest()
    assert f"Updating worker {current_version} \u2192 {newer_version} from {fake_server.http_url} (SHA-256 {digest})" in out
    assert (worker_home / "statsbot_worker.py").read_text() == new
    assert (worker_home / "statsbot_worker.previous.py").read_bytes() == script_path.read_bytes()


def _fails_to_start(script_path, version):
    """A newer version that passes its --self-check (which stops before connecting) but exits with 7."""
    start_line = (
        "        client = WorkerClient(settings, store, console, versions=versions, reexec_argv=argv_again)\n"
    )
    assert start_line in script_path.read_text()
    return _versioned(script_path, version).replace(start_line, "        raise SystemExit(7)\n")


async def _update_command(script, server, home):
    update = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        "--update",
        "--server",
        server.url,
        env=dict(os.environ, STATSBOT_HOME=str(home)),
        stdin=subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out = (await asyncio.wait_for(update.communicate(), 120))[0].decode()
    assert update.returncode == 0, out
    return out


async def test_it_rolls_back_an_update_that_fails_to_start(
    fake_server, worker, worker_home, script_path, current_version, newer_version
):
    broken = _fails_to_start(script_path, newer_version)
    fake_server.script_text = broken
    proc = await worker("--token", "good-token", "--auto-update")
    ws = await proc.connected()
    await ws.send(json.dumps({"type": "update", "url": fake_server.http_url, "latest_version": newer_version}))
    ws = await proc.connected()  # rolled back: the previous version connects again
    assert [a["machine"]["worker_version"] for a in fake_server.auths] == [current_version, current_version]
    await ws.send(json.dumps({"type": "update", "url": fake_server.http_url, "latest_version": newer_version}))
    await _job(fake_server, ws, "after", "list_models")
    out = await proc.stop(ws)
    assert "Self-check" not in out  # the self-check passed quietly
    assert f"exited with code 7 before it connected, so the update was rolled back to {current_version}" in out
    assert "it failed to start here before and was rolled back" in out
    assert fake_server.downloads == 1  # the failed version is not tried again automatically
    assert (worker_home / "statsbot_worker.py").read_bytes() == script_path.read_bytes()
    assert (worker_home / "statsbot_worker.failed.py").read_text() == broken
    assert json.loads((worker_home / "config.json").read_text())["update_failed_version"] == newer_version


async def test_it_updates_on_the_users_command_and_a_running_worker_switches_to_it(
    fake_server, worker, worker_home, script_path, newer_version
):
    fake_server.heartbeat_interval = 1
    new = _versioned(script_path, newer_version)
    fake_server.script_text = new
    proc = await worker("--token", "good-token")
    await proc.connected()
    out = await _update_command(script_path, fake_server, worker_home)
    assert f"SHA-256 {hashlib.sha256(new.encode()).hexdigest()}" in out and f"Installed worker {newer_version}" in out
    ws = await proc.connected()  # the running worker noticed the new copy and restarted with it
    assert fake_server.auths[-1]["machine"]["worker_version"] == newer_version
    await proc.stop(ws)
    assert (worker_home / "statsbot_worker.previous.py").read_bytes() == script_path.read_bytes()


async def test_it_rolls_back_an_update_installed_by_command_that_fails_when_started(
    fake_server, worker, worker_home, script_path, current_version, newer_version
):
    proc = await worker("--token", "good-token")  # connected once: credential and saved copy
    await proc.stop(await proc.connected())
    fake_server.script_text = _fails_to_start(script_path, newer_version)
    await _update_command(script_path, fake_server, worker_home)
    saved = worker_home / "statsbot_worker.py"
    proc = await worker(script=saved)  # the user starts the new copy (or autostart does)
    ws = await proc.connected()
    assert fake_server.auths[-1]["machine"]["worker_version"] == current_version
    out = await proc.stop(ws)
    assert f"exited with code 7 before it connected, so the update was rolled back to {current_version}" in out
    assert saved.read_bytes() == script_path.read_bytes()
    config = json.loads((worker_home / "config.json").read_text())
    assert config["update_failed_version"] == newer_version and "update_probation" not in config


def test_it_says_when_it_is_up_to_date_and_refuses_a_failing_update(tmp_path, script_path, newer_version):
    """--update against a server that offers the same version, then one that cannot start here."""
    import http.server
    import threading

    served = {"text": script_path.read_text()}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the http.server API)
            body = served["text"].encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        env = dict(os.environ, STATSBOT_HOME=str(tmp_path / "h"))

        def update():
            return subprocess.run(
                [sys.executable, str(script_path), "--update", "--server", url],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=120,
            )

        same = update()
        assert same.returncode == 0 and "This worker is up to date" in same.stdout, same.stdout
        served["text"] = _versioned(script_path, newer_version).replace(
            "    if args.self_check:\n        return self_check(args)\n",
            "    if args.self_check:\n        raise SystemExit('no module named statsbot_helpers')\n",
        )
        failing = update()
        assert failing.returncode == 1, failing.stdout
        assert "failed its self-check (exit code 1): no module named statsbot_helpers" in failing.stdout
        assert not (tmp_path / "h" / "statsbot_worker.py").exists()
    finally:
        server.shutdown()
        server.server_close()


def test_it_passes_its_self_check_only_with_its_packages(tmp_path, script_path, current_version):
    env = dict(os.environ, STATSBOT_HOME=str(tmp_path / "h"))
    args = [str(script_path), "--self-check", "--server", "ws://127.0.0.1:9"]
    ok = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and f"Self-check passed: statsbot-worker {current_version}" in ok.stdout, ok.stdout
    bare = subprocess.run(
        [sys.executable, "-S", "-I", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert bare.returncode == 3 and "websockets" in bare.stdout
    assert not (tmp_path / "h").exists()  # a self-check changes nothing


# ----------------------------------------------------------------- row 2: planted models


def _plant_model(models, model_id, marker):
    """What another user could leave: a folder with a pickle that runs code when it is loaded."""
    import joblib

    class Planted:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    folder = models / model_id
    folder.mkdir(parents=True)
    joblib.dump(Planted(), folder / "model.joblib")
    meta = {
        "format": "statsbot-model",
        "format_version": 1,
        "model_id": model_id,
        "model_type": "linear",
        "task_type": "regression",
        "target": "y",
        "features": ["x"],
        "feature_schema": [{"name": "x", "kind": "numeric"}],
        "created_at": "2025-01-01T00:00:00+00:00",
        "worker_version": "1.0.0",
        "model_file": "model.joblib",
        "model_sha256": hashlib.sha256((folder / "model.joblib").read_bytes()).hexdigest(),
    }
    (folder / "metadata.json").write_text(json.dumps(meta))
    for path in (models, folder, folder / "model.joblib", folder / "metadata.json"):
        os.chown(path, OTHER_UID, OTHER_UID)
        path.chmod(0o755 if path.is_dir() else 0o644)


@POSIX
@AS_ROOT
async def test_it_never_loads_a_model_planted_in_another_users_folder(
    fake_server, worker, tmp_path, data_root
):
    models, marker = tmp_path / "shared-models", tmp_path / "planted-code-ran"
    _plant_model(models, "planted", marker)
    (data_root / "new.csv").write_text("x\n1\n2\n")
    proc = await worker("--token", "good-token", "--models-dir", str(models), "--allow-dir", str(data_root))
    ws = await proc.connected()
    result = await _job(
        fake_server, ws, "p1", "predict", {"model_id": "planted", "file_path": str(data_root / "new.csv")}
    )
    assert result["error_code"] == "model_refused", result
    assert f"belongs to another user (uid {OTHER_UID})" in result["error"]
    listed = (await _job(fake_server, ws, "l1", "list_models"))["data"]["models"]
    assert [m["model_id"] for m in listed] == ["planted"] and "another user" in listed[0]["refused"]
    out = await proc.stop(ws)
    assert "Warning: Refusing to load models from" in out  # also said at start
    assert not marker.exists()  # the pickle never ran


@pytest.fixture
def trained(sw, run_job, data_root, diabetes_frame):
    path = data_root / "d.csv"
    diabetes_frame.to_csv(path, index=False)
    model_id = _ok(
        run_job(sw.job_train, {"file_path": str(path), "target_column": "target", "model_type": "linear"})[0]
    )["model_id"]
    return path, model_id


def _predict_and_list(sw, run_job, path, model_id):
    result = run_job(sw.job_predict, {"file_path": str(path), "model_id": model_id})[0]
    listed = {m["model_id"]: m for m in _ok(run_job(sw.job_list_models, {})[0])["models"]}
    return result, listed[model_id]["refused"]


def test_it_records_the_model_files_sha256_and_lists_good_models_as_usable(sw, run_job, settings, trained):
    path, model_id = trained
    folder = settings.models_dir / model_id
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["model_sha256"] == hashlib.sha256((folder / "model.joblib").read_bytes()).hexdigest()
    if os.name != "nt":
        assert {oct(p.stat().st_mode & 0o777) for p in folder.iterdir()} == {"0o600"}
    result, refused = _predict_and_list(sw, run_job, path, model_id)
    assert result["success"] and refused is None


def test_it_refuses_a_model_whose_file_changed_after_it_was_saved(sw, run_job, settings, trained):
    path, model_id = trained
    with open(settings.models_dir / model_id / "model.joblib", "ab") as fh:
        fh.write(b"\0")
    result, refused = _predict_and_list(sw, run_job, path, model_id)
    assert result["error_code"] == "model_refused" and "SHA-256 does not match" in result["error"]
    assert "SHA-256 does not match" in refused


def test_it_refuses_a_model_saved_without_a_checksum(sw, run_job, settings, trained):
    path, model_id = trained
    meta_file = settings.models_dir / model_id / "metadata.json"
    meta = json.loads(meta_file.read_text())
    del meta["model_sha256"]
    meta_file.write_text(json.dumps(meta))
    result, refused = _predict_and_list(sw, run_job, path, model_id)
    assert result["error_code"] == "model_refused" and "without a checksum" in result["error"]
    assert "Train it again" in refused


@POSIX
@AS_ROOT
@pytest.mark.parametrize("owned_by_other", ["home", "models", "model folder", "model file"])
def test_it_refuses_a_model_when_any_folder_down_to_it_belongs_to_another_user(
    sw, run_job, settings, trained, owned_by_other
):
    path, model_id = trained
    target = {
        "home": settings.paths.home,
        "models": settings.models_dir,
        "model folder": settings.models_dir / model_id,
        "model file": settings.models_dir / model_id / "model.joblib",
    }[owned_by_other]
    os.chown(target, OTHER_UID, -1)
    try:
        result, refused = _predict_and_list(sw, run_job, path, model_id)
    finally:
        os.chown(target, os.getuid(), -1)
    assert result["error_code"] == "model_refused" and f"{target} belongs to another user" in result["error"]
    assert refused is not None and "another user" in refused


@POSIX
def test_it_refuses_a_model_file_others_can_write(sw, run_job, settings, trained):
    path, model_id = trained
    model_file = settings.models_dir / model_id / "model.joblib"
    model_file.chmod(0o620)
    result, refused = _predict_and_list(sw, run_job, path, model_id)
    assert result["error_code"] == "model_refused" and f"chmod go-w {model_file}" in result["error"]


# ----------------------------------------------------------------- rows 3 and 4: the data budget


def _values_outside_sample(obj, key=None):
    """Every leaf of a result except what sits under "sample"."""
    if key == "sample":
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _values_outside_sample(v, k)
    elif isinstance(obj, list):
        for v in obj:
            yield from _values_outside_sample(v)
    else:
        yield obj


def test_it_sends_at_most_50_of_150_email_classes(sw, run_job, data_root):
    rng = np.random.default_rng(3)
    emails = [f"person.{i}.{rng.integers(10**9)}@example.org" for i in range(150)]
    frame = pd.DataFrame({"a": rng.normal(size=600), "b": rng.normal(size=600), "email": emails * 4})
    path = data_root / "people.csv"
    frame.to_csv(path, index=False)
    trained = _ok(
        run_job(sw.job_train, {"file_path": str(path), "target_column": "email", "model_type": "linear"})[0]
    )
    assert len(trained["classes"]) == 50 and set(trained["classes"]) <= set(emails)
    assert trained["n_classes"] == 150 and "confusion_matrix" not in trained
    assert len({v for v in _values_outside_sample(trained) if v in emails}) == 50
    predicted = _ok(run_job(sw.job_predict, {"file_path": str(path), "model_id": trained["model_id"]})[0])
    named = {v for v in _values_outside_sample(predicted) if v in emails}
    assert 0 < len(named) <= 50 and len(predicted["summary"]["counts"]) <= 50
    shown = [c for c in predicted["columns"] if c.startswith("proba_")]
    assert 0 < len(shown) <= 50 and {c[len("proba_") :] for c in shown} <= set(predicted["summary"]["counts"])
    assert predicted["n_columns"] == 3 + 1 + 150  # the file on disk has every class's column
    assert len(predicted["sample"]["rows"]) == 10
    assert (
        len(predicted["sample"]["columns"])
        == len(predicted["sample"]["rows"][0])
        == 3 + len(predicted["columns"])
    )
    assert pd.read_csv(predicted["output_path"]).shape == (600, 154)


def test_it_sends_predicted_vs_actual_as_bins_not_target_values(sw, run_job, data_root):
    rng = np.random.default_rng(4)
    x = rng.normal(size=150)
    target = np.round(1000 + 50 * x + rng.normal(size=150), 6)
    assert len(set(target)) == 150
    path = data_root / "reg.csv"
    pd.DataFrame({"x": x, "noise": rng.normal(size=150), "y": target}).to_csv(path, index=False)
    data = _ok(
        run_job(
            sw.job_train,
            {"file_path": str(path), "target_column": "y", "model_type": "linear", "test_size": 0.5},
        )[0]
    )
    assert data["n_test"] == 75
    bins = data["predicted_vs_actual"]
    assert len(bins) == 15 and sum(b[2] for b in bins) == 75 and min(b[2] for b in bins) >= 5
    raw = set(pd.read_csv(path)["y"])
    assert not [v for v in _values_outside_sample(data) if isinstance(v, float) and v in raw]


def test_it_bins_raw_points_and_drops_chart_data_it_cannot_bin(sw):
    points = [[float(i) + 0.5, float(i)] for i in range(12)]
    bins = sw.bounded_result({"predicted_vs_actual": points})["predicted_vs_actual"]
    assert bins == [[3.0, 2.5, 6], [9.0, 8.5, 6]]  # [mean predicted, mean actual, rows], by actual
    assert "predicted_vs_actual" not in sw.bounded_result({"predicted_vs_actual": points[:4]})
    assert "predicted_vs_actual" not in sw.bounded_result({"predicted_vs_actual": {"x": [1]}})
    kept = sw.bounded_result({"predicted_vs_actual": [[1, 2, 5], [3, 4, 2], ["a", 1, 9]]})
    assert kept["predicted_vs_actual"] == [[1, 2, 5]]  # a bin of 2 rows is two rows: dropped


def test_it_holds_every_label_field_to_one_shared_budget(sw):
    labels = [f"label-{i}-" + "x" * 300 for i in range(80)]
    data = sw.bounded_result(
        {
            "classes": labels,
            "confusion_matrix": {"labels": labels[:20], "matrix": [[0] * 20] * 20},
            "summary": {"counts": {f"other-{i}": i for i in range(60)}},
            "sample": [{"a": "v" * 100}] * 30,
        }
    )
    assert data["n_classes"] == 80 and len(data["classes"]) == 50
    assert all(len(c) == 200 and c.endswith("\u2026") for c in data["classes"])
    assert data["confusion_matrix"]["labels"] == data["classes"][:20]
    assert data["summary"]["counts"] == {}  # the 50 labels are spent on the classes
    assert len(data["sample"]) == 10 and len(data["sample"][0]["a"]) == 60
    counts = sw.bounded_result({"summary": {"counts": {f"c{i}": i for i in range(60)}}})["summary"]["counts"]
    assert list(counts) == [f"c{i}" for i in range(59, 9, -1)]  # the 50 largest


# ----------------------------------------------------------------- row 5: hidden files and folders


@pytest.fixture
def home_settings(sw, tmp_path, monkeypatch):
    """Settings as a user gets them with no --allow-dir: the home folder is the allowed root."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / "data").mkdir()
    monkeypatch.setenv("HOME", str(home))
    paths = sw.Paths(home / ".statsbot")

    def make(*args):
        return sw.resolve_settings(sw.parse_args(["--server", "ws://x", *args]), {}, paths)

    return home, make


def _describe(sw, settings, path):
    ctx = sw.JobContext("j", {"file_path": str(path)}, settings)
    return sw.execute_job(sw.job_describe, ctx)


def test_it_refuses_hidden_files_and_folders_in_the_default_allowed_folder(sw, home_settings):
    home, make = home_settings
    (home / ".ssh" / "keys.csv").write_text("user,key\nme,AAAAB3Nza\n")
    (home / ".env.csv").write_text("name,secret\nAWS_SECRET,wJalrXUtn\n")
    (home / "data" / "sales.csv").write_text("a,b\n1,2\n")
    settings = make()
    keys = _describe(sw, settings, home / ".ssh" / "keys.csv")
    assert "AAAAB3Nza" not in json.dumps(keys) and keys["error_code"] == "path_not_allowed"
    assert "hidden folder .ssh" in keys["error"] and f"--allow-dir {home / '.ssh'}" in keys["error"]
    env = _describe(sw, settings, "~/.env.csv")
    assert "wJalrXUtn" not in json.dumps(env) and env["error_code"] == "path_not_allowed"
    assert "hidden file" in env["error"] and "Rename it" in env["error"]
    assert _describe(sw, settings, home / "data" / "sales.csv")["success"] is True
    allowed = make("--allow-dir", str(home / ".ssh"))  # allowed by name: the user's explicit choice
    assert _ok(_describe(sw, allowed, home / ".ssh" / "keys.csv"))["rows"] == 1


def test_it_refuses_hidden_folders_reached_through_a_symlink(sw, home_settings):
    home, make = home_settings
    (home / ".aws").mkdir()
    (home / ".aws" / "credentials.csv").write_text("key,secret\nAKIA,abc\n")
    (home / "data" / "innocent.csv").symlink_to(home / ".aws" / "credentials.csv")
    result = _describe(sw, make(), home / "data" / "innocent.csv")
    assert not result["success"] and "hidden folder .aws" in result["error"]


def test_it_reads_its_own_outputs_but_nothing_else_of_its_folder(sw, home_settings):
    home, make = home_settings
    settings = make()
    outputs = settings.paths.outputs
    outputs.mkdir(parents=True)
    (outputs / "x_predictions.csv").write_text("a,prediction\n1,2\n")
    (settings.paths.home / "notes.csv").write_text("a\n1\n")
    assert _describe(sw, settings, outputs / "x_predictions.csv")["success"] is True
    refused = _describe(sw, settings, settings.paths.home / "notes.csv")
    assert refused["error_code"] == "path_not_allowed" and "hidden folder .statsbot" in refused["error"]


@pytest.mark.parametrize("raw", ["/etc/passwd", "/etc/ssh/sshd_config.csv", "/usr/share/data.csv", "/x.csv"])
def test_it_never_suggests_allowing_a_system_location(sw, data_root, raw):
    with pytest.raises(sw.JobError) as info:
        sw.resolve_user_path(raw, [data_root])
    assert info.value.code == "path_not_allowed"
    assert "--allow-dir" not in info.value.message and "system folder" in info.value.message


def test_it_suggests_the_folder_of_a_refused_file_never_the_file(sw, data_root, tmp_path):
    with pytest.raises(sw.JobError) as info:
        sw.resolve_user_path(str(tmp_path / "elsewhere" / "passwd"), [data_root])
    assert f"--allow-dir {tmp_path / 'elsewhere'} " in info.value.message


# ----------------------------------------------------------------- row 6: never overwrite


def test_it_never_overwrites_the_users_own_predictions_file(sw, run_job, data_root, trained):
    path, model_id = trained
    mine = data_root / "d_predictions.csv"
    mine.write_text("my own analysis, do not touch\n")
    data = _ok(run_job(sw.job_predict, {"file_path": str(path), "model_id": model_id})[0])
    assert mine.read_text() == "my own analysis, do not touch\n"
    assert data["output_path"] == str(data_root / "d_predictions_2.csv")
    assert len(pd.read_csv(data["output_path"])) == 442
    (data_root / "d_predictions_3.csv").write_text("also mine\n")
    again = _ok(run_job(sw.job_predict, {"file_path": str(path), "model_id": model_id})[0])
    assert again["output_path"] == str(data_root / "d_predictions_4.csv")
    assert (data_root / "d_predictions_3.csv").read_text() == "also mine\n"


# ----------------------------------------------------------------- hostile frames and any input


@pytest.fixture
def odd_file(data_root):
    """A CSV whose file name and header are not UTF-8 (Latin-1 "café")."""
    path = Path(os.fsdecode(os.fsencode(str(data_root)) + b"/caf\xe9.csv"))
    path.write_bytes(b"n,caf\xe9\n1,2\n3,4\n")
    return path


async def test_it_answers_hostile_frames_with_clear_errors_and_keeps_running(
    fake_server, worker, data_root, odd_file
):
    proc = await worker("--token", "good-token", "--allow-dir", str(data_root))
    ws = await proc.connected()

    async def raw_job(job_id, text):
        await ws.send(text)
        return await fake_server.next("result", job_id, within=30)

    huge = await raw_job(
        "huge",
        '{"type": "job", "job_id": "huge", "action": "describe", "params": {"file_path": '
        + "9" * 5000
        + "}}",
    )
    assert huge["error_code"] == "invalid_params" and "file_path must be a non-empty path" in huge["error"]
    deep = await raw_job(
        "deep",
        '{"type": "job", "job_id": "deep", "action": "describe", "params": {"x": '
        + "[" * 100_000
        + "]" * 100_000
        + "}}",
    )
    assert deep["error_code"] == "invalid_params" and "nested too deeply" in deep["error"]
    big = await _job(fake_server, ws, "big", "describe", {"file_path": "a" * 200_000})
    assert big["error_code"] == "invalid_params" and "over this worker's limit" in big["error"]
    lone = await raw_job(
        "lone",
        '{"type": "job", "job_id": "lone", "action": "describe", "params": {"file_path": "'
        + str(data_root)
        + '/x\\ud800.csv"}}',
    )
    assert lone["error_code"] == "invalid_params" and "x\ufffd.csv" in lone["error"]
    described = await raw_job(
        "odd",
        '{"type": "job", "job_id": "odd", "action": "describe", "params": {"file_path": "'
        + str(data_root)
        + '/caf\\udce9.csv"}}',
    )
    assert described["success"], described
    assert described["data"]["file_path"].endswith("caf\ufffd.csv")
    assert [c["name"] for c in described["data"]["columns"]] == ["n", "caf\ufffd"]
    assert (await _job(fake_server, ws, "t1", "describe", "oops"))["error_code"] == "invalid_params"
    assert (await _job(fake_server, ws, "t2", ["describe"]))["error_code"] == "unsupported"
    assert (await _job(fake_server, ws, "t3", "format_disk"))["error_code"] == "unsupported"
    for frame in (
        {"type": 5},
        {"type": "cancel", "job_id": {"x": 1}},
        {"type": "job", "job_id": 10**50},
        [1],
    ):
        await ws.send(json.dumps(frame))
    assert (await _job(fake_server, ws, "last", "list_models"))["success"] is True
    await proc.stop(ws)
    assert len(fake_server.auths) == 1  # one connection throughout


def test_it_replaces_lone_surrogates_in_everything_it_sends(sw, settings):
    def odd(ctx):
        return {"name\ud800": ["value \udcff", {"k": "\ud83d"}], "file_path": "/tmp/caf\udce9.csv"}

    result = sw.execute_job(odd, sw.JobContext("j", {}, settings))
    json.dumps(result, ensure_ascii=False).encode("utf-8")  # no lone surrogate is left
    assert result["data"] == {
        "name\ufffd": ["value \ufffd", {"k": "\ufffd"}],
        "file_path": "/tmp/caf\ufffd.csv",
    }

    def fails(ctx):
        raise ValueError("cannot parse '\udcff'")

    failed = sw.execute_job(fails, sw.JobContext("j", {}, settings))
    assert failed["error"] == "Unexpected error (ValueError): cannot parse '\ufffd'"
    assert sw.Console(stream=None).plain("\ud800") is None  # the terminal and log lines, too
    assert sw.strip_controls("a\ud800\x1b[2Jb") == "a\ufffd[2Jb"


# ----------------------------------------------------------------- the token outside `ps`


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
async def test_it_takes_the_token_from_the_environment_so_ps_does_not_show_it(
    fake_server, worker, worker_home
):
    fake_server.tokens = {"secret-token-from-env"}
    proc = await worker(env={"STATSBOT_TOKEN": "secret-token-from-env"})
    ws = await proc.connected()
    cmdline = await asyncio.to_thread(Path(f"/proc/{proc.proc.pid}/cmdline").read_bytes)
    assert b"secret-token-from-env" not in cmdline
    assert fake_server.auths[0]["token"] == "secret-token-from-env"
    await proc.stop(ws)
    assert json.loads((worker_home / "config.json").read_text())["credential"] == "cred-1"
