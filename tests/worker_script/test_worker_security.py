"""Hardening from the security review: what a hostile or broken server can no longer make the worker do.

Self-update (no redirects, same origin, newer versions only, announced), network paths never
touched, column names capped in results, explicit outputs never overwritten, only real models
deleted, no terminal escapes printed, private folders, and one bad frame never costs the
connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import io
import json
import logging
import os
import re
import stat
import subprocess
import sys
import threading

import pandas as pd
import pytest

pytestmark = pytest.mark.timeout(60)

POSIX = pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")


def _ok(result):
    assert result["success"], result
    assert json.dumps(result, allow_nan=False)
    return result["data"]


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


async def _stop(client, task):
    client.request_stop()
    outcome = await asyncio.wait_for(task, 15)
    assert outcome.kind == "stopped"


async def _roundtrip(fake_server, ws, job_id):
    """A job sent after the frames under test still gets its result on the same connection."""
    await ws.send(json.dumps({"type": "job", "job_id": job_id, "action": "list_models", "params": {}}))
    return await fake_server.next("result", job_id)


def _new_version_script(script_path, version):
    """The script under test with its WORKER_VERSION line set to ``version``."""
    text, count = re.subn(
        r'^WORKER_VERSION = "[^"]+"$', f'WORKER_VERSION = "{version}"', script_path.read_text(), flags=re.M
    )
    assert count == 1
    return text


# ----------------------------------------------------------------- 1. self-update


class _RedirectingHandler(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 (the http.server API)
        type(self).hits.append(self.path)
        if self.path == "/worker":
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.end_headers()
            return
        body = b'WORKER_VERSION = "9.9.9"\n'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def redirecting_http():
    _RedirectingHandler.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RedirectingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_it_never_follows_a_redirect_when_downloading_the_script(sw, redirecting_http):
    assert sw.fetch_text(f"{redirecting_http}/plain") == 'WORKER_VERSION = "9.9.9"\n'
    with pytest.raises(ValueError, match="redirect"):
        sw.fetch_text(f"{redirecting_http}/worker")
    assert _RedirectingHandler.hits == ["/plain", "/worker"]  # /elsewhere was never asked for


def test_it_accepts_only_the_exact_worker_url_of_its_server_for_updates(sw):
    ws_server, wss_server = "ws://bot.example:8000/ws/worker/", "wss://bot.example/ws/worker/"
    assert sw.is_update_url(ws_server, "http://bot.example:8000/worker")
    assert sw.is_update_url(wss_server, "https://BOT.example:443/worker")
    assert sw.is_update_url("wss://bot.example/prefix/ws/worker/", "https://bot.example/prefix/worker")
    for other in (
        "https://bot.example:8000/worker",  # scheme must match too
        "http://bot.example:8000/worker_evil",
        "http://bot.example:8000/worker/",
        "http://bot.example:8000/worker/../evil",
        "http://bot.example:8000/other/worker",
        "http://bot.example:8000/worker?v=2",
        "http://bot.example:8000/worker#x",
        "http://user:pw@bot.example:8000/worker",
    ):
        assert not sw.is_update_url(ws_server, other), other
    for malformed in (
        "https://bot.example:99999/worker",
        "https://bot.example:abc/",
        "https://[::1/",
        42,
        None,
    ):
        assert sw.is_update_url(wss_server, malformed) is False  # never raises


@pytest.mark.parametrize(
    ("candidate", "newer"),
    [
        ("1.0.1", True),
        ("1.1", True),
        ("2.0.0rc1", True),
        ("1.0.0", False),
        ("1.0", False),
        ("0.9.9", False),
        ("x", False),
    ],
)
def test_it_treats_only_strictly_newer_versions_as_updates(sw, candidate, newer):
    assert sw.version_is_newer(candidate, "1.0.0") is newer


@pytest.mark.parametrize("served_version", ["1.0.0", "0.9.0"])
def test_it_refuses_an_update_that_is_not_newer_before_writing_anything(sw, tmp_path, served_version):
    paths = sw.Paths(tmp_path)
    announced = []
    with pytest.raises(sw.UpToDate, match="not newer"):
        sw.install_update(
            "http://x/worker",
            paths,
            fetch=lambda url: f'WORKER_VERSION = "{served_version}"\n',
            current="1.0.0",
            announce=lambda *a: announced.append(a),
        )
    assert os.listdir(tmp_path) == [] and announced == []
    paths.script.write_text("old copy")
    with pytest.raises(sw.UpdateError, match="compile"):
        sw.install_update("http://x/worker", paths, fetch=lambda url: 'WORKER_VERSION = "2.0"\ndef (:\n')
    assert paths.script.read_text() == "old copy" and os.listdir(tmp_path) == ["statsbot_worker.py"]


def test_it_shows_the_sha256_before_the_new_code_runs_and_keeps_the_previous_copy(sw, tmp_path, newer_version):
    paths = sw.Paths(tmp_path)
    paths.script.write_text('WORKER_VERSION = "1.0.0"\n')
    new = f'WORKER_VERSION = "{newer_version}"\n'  # newer than the running script (install_update's default)
    events = []

    def check(candidate):
        events.append(("check", candidate.read_text()))

    version, digest = sw.install_update(
        "http://x/worker",
        paths,
        fetch=lambda url: new,
        announce=lambda v, d: events.append(("announce", v, d)),
        check=check,
    )
    assert (version, digest) == (newer_version, hashlib.sha256(new.encode()).hexdigest())
    assert events == [("announce", newer_version, digest), ("check", new)]  # the hash is shown first
    assert (
        paths.script.read_text() == new and paths.previous_script.read_text() == 'WORKER_VERSION = "1.0.0"\n'
    )


def test_it_installs_nothing_when_the_new_version_fails_its_self_check(sw, tmp_path, newer_version):
    paths = sw.Paths(tmp_path)
    paths.script.write_text('WORKER_VERSION = "1.0.0"\n')
    broken = f'WORKER_VERSION = "{newer_version}"\nimport sys\nprint("cannot start: no module named foo")\nsys.exit(4)\n'
    with pytest.raises(sw.UpdateError, match=r"self-check \(exit code 4\): cannot start"):
        sw.install_update(
            "http://x/worker",
            paths,
            fetch=lambda url: broken,
            check=lambda candidate: sw.run_self_check(sys.executable, candidate, [], tmp_path),
        )
    assert paths.script.read_text() == 'WORKER_VERSION = "1.0.0"\n'
    assert sorted(os.listdir(tmp_path)) == ["statsbot_worker.py"]  # no candidate left behind


async def test_it_announces_the_update_on_the_terminal_before_restarting(
    sw, make_client, fake_server, settings, script_path, current_version, newer_version
):
    fake_server.script_text = _new_version_script(script_path, newer_version)
    settings.auto_update = True
    client = make_client()
    task = asyncio.create_task(client.run())
    ws = await fake_server.connection()
    await ws.send(json.dumps({"type": "update", "url": fake_server.http_url, "latest_version": newer_version}))
    outcome = await asyncio.wait_for(task, 60)
    assert outcome.kind == "reexec"
    terminal = client.console.stream.getvalue()
    digest = hashlib.sha256(fake_server.script_text.encode()).hexdigest()
    assert f"Updating worker {current_version} \u2192 {newer_version} from {fake_server.http_url} (SHA-256 {digest})" in terminal
    assert settings.paths.script.read_text() == fake_server.script_text


async def test_it_refuses_a_redirected_update_and_an_offer_that_is_not_newer(
    sw, make_client, fake_server, settings, script_path, current_version, newer_version
):
    fake_server.script_text = _new_version_script(script_path, newer_version)
    fake_server.redirect_to = fake_server.http_url + "?evil"
    settings.auto_update = True
    client = make_client()
    task = asyncio.create_task(client.run())
    ws = await fake_server.connection()
    await ws.send(json.dumps({"type": "update", "url": fake_server.http_url, "latest_version": newer_version}))
    await _roundtrip(fake_server, ws, "after-redirect")
    assert any("Update failed" in line and "redirect" in line for line in client.console.lines)
    assert fake_server.downloads == 1 and not settings.paths.script.exists()
    await ws.send(json.dumps({"type": "update", "latest_version": current_version}))
    await _roundtrip(fake_server, ws, "after-same")
    assert any(f"Ignoring an update to version {current_version}" in line for line in client.console.lines)
    assert fake_server.downloads == 1 and len(fake_server.auths) == 1
    await _stop(client, task)


async def test_it_only_announces_an_update_unless_auto_update_is_on(
    sw, make_client, fake_server, settings, script_path, current_version, newer_version
):
    fake_server.script_text = _new_version_script(script_path, newer_version)
    assert settings.auto_update is False  # the default
    client = make_client()
    task = asyncio.create_task(client.run())
    ws = await fake_server.connection()
    for job_id in ("j1", "j2"):  # offered on every connection: said once
        await ws.send(json.dumps({"type": "update", "url": fake_server.http_url, "latest_version": newer_version}))
        await _roundtrip(fake_server, ws, job_id)
    offers = [line for line in client.console.lines if "Update available" in line]
    assert len(offers) == 1 and f"{current_version} \u2192 {newer_version}" in offers[0]
    assert f"python3 {settings.paths.script} --update" in offers[0] and "--auto-update" in offers[0]
    assert fake_server.downloads == 0 and not settings.paths.script.exists()
    await _stop(client, task)


# ----------------------------------------------------------------- 2. network paths


NETWORK_PATHS = [
    "\\\\attacker\\share\\x.csv",
    "//attacker/share/x.csv",
    "\\\\?\\UNC\\attacker\\share\\x.csv",
    "\\\\?\\C:\\Users\\me\\x.csv",
    "\\\\.\\pipe\\x.csv",
    "/\\attacker\\share\\x.csv",
    "  \\\\attacker\\share\\x.csv",
]


@pytest.fixture
def realpath_calls(sw, monkeypatch):
    calls = []
    real = os.path.realpath

    def spy(path, *args, **kwargs):
        calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(sw.os.path, "realpath", spy)
    return calls


@pytest.mark.parametrize("raw", NETWORK_PATHS)
def test_it_rejects_network_and_device_paths_without_touching_them(sw, data_root, realpath_calls, raw):
    with pytest.raises(sw.JobError) as info:
        sw.check_input_file(raw, [data_root], 1024)
    assert info.value.code == "path_not_allowed" and "network" in info.value.message
    inp = data_root / "in.csv"
    with pytest.raises(sw.JobError) as info:
        sw.check_output_path(raw, [data_root], inp)
    assert info.value.code == "path_not_allowed"
    assert realpath_calls == []


def test_it_checks_the_roots_before_resolving_a_path(sw, data_root, tmp_path, realpath_calls):
    outside = tmp_path / "elsewhere" / "x.csv"
    with pytest.raises(sw.JobError) as info:
        sw.resolve_user_path(str(outside), [data_root])
    assert info.value.code == "path_not_allowed" and realpath_calls == []
    inside = data_root / "a.csv"
    inside.write_text("x\n1\n")
    assert sw.resolve_user_path(str(inside), [data_root]) == inside
    assert realpath_calls == [str(inside)]


def test_it_still_refuses_a_symlink_that_leaves_the_root_after_the_text_check(sw, data_root, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("password\nhunter2\n")
    (data_root / "link.csv").symlink_to(secret)
    with pytest.raises(sw.JobError) as info:
        sw.check_input_file(str(data_root / "link.csv"), [data_root], 1024)
    assert info.value.code == "path_not_allowed"


def test_it_accepts_paths_through_an_allowed_folder_named_by_a_symlink(sw, data_root, tmp_path):
    link = tmp_path / "data-link"
    link.symlink_to(data_root)
    (data_root / "a.csv").write_text("x\n1\n")
    paths = sw.Paths(tmp_path / "h")
    s = sw.resolve_settings(sw.parse_args(["--server", "ws://x", "--allow-dir", str(link)]), {}, paths)
    assert s.allowed_roots[0] == data_root and s.root_aliases[0] == link
    got = sw.check_input_file(str(link / "a.csv"), s.allowed_roots, 1024, s.root_aliases)
    assert got == (data_root / "a.csv", "csv")
    saved = sw.settings_to_config(s, {})
    assert saved["allowed_dirs"] == [str(link)]  # the folder as named, resolved again at each start
    again = sw.resolve_settings(sw.parse_args(["--server", "ws://x"]), saved, paths)
    assert again.allowed_roots == s.allowed_roots and again.root_aliases == s.root_aliases


# ----------------------------------------------------------------- 3. long column names


def test_it_caps_long_column_names_in_describe_results(sw, run_job, data_root):
    long_name = "c" * 300_000
    path = data_root / "wide.csv"
    path.write_text(f"{long_name},b\n1,2\n3,4\n")
    data = _ok(run_job(sw.job_describe, {"file_path": str(path)})[0])
    assert all(len(c["name"]) <= 200 for c in data["columns"])
    assert all(len(key) <= 200 for row in data["sample"] for key in row)
    assert data["sample"][0][data["columns"][0]["name"]] == 1
    assert len(json.dumps(data)) < 5000


def test_it_caps_dict_keys_in_the_json_sanitiser(sw):
    cleaned = sw.sanitize_json({"k" * 1000: {"x" * 500: [{"y" * 300: 1}]}, 7: "seven"})
    outer_key = next(iter(cleaned))
    inner = cleaned[outer_key]
    assert len(outer_key) == 200 and outer_key.endswith("\u2026")
    assert all(len(k) <= 200 for k in inner) and all(len(k) <= 200 for k in next(iter(inner.values()))[0])
    assert cleaned["7"] == "seven"


def test_it_caps_column_names_in_train_predict_and_list_results(
    sw, run_job, settings, data_root, diabetes_frame
):
    frame = diabetes_frame.rename(columns={"bmi": "b" * 5000, "target": "t" * 3000})
    path = data_root / "long.csv"
    frame.to_csv(path, index=False)
    trained = _ok(
        run_job(sw.job_train, {"file_path": str(path), "target_column": "t" * 3000, "model_type": "linear"})[
            0
        ]
    )
    assert len(trained["target"]) == 200 and "b" * 199 + "\u2026" in trained["features"]
    assert all(len(f) <= 200 for f in trained["features"])
    assert all(len(i["feature"]) <= 200 for i in trained["feature_importance"])
    meta = json.loads((settings.models_dir / trained["model_id"] / "metadata.json").read_text())
    assert "b" * 5000 in meta["features"] and meta["format"] == "statsbot-model"  # full names on disk
    predicted = _ok(run_job(sw.job_predict, {"file_path": str(path), "model_id": trained["model_id"]})[0])
    assert all(len(c) <= 200 for c in predicted["sample"]["columns"] + predicted["columns"])
    listed = _ok(run_job(sw.job_list_models, {})[0])["models"][0]
    assert len(listed["target"]) == 200 and all(len(f) <= 200 for f in listed["features"])


# ----------------------------------------------------------------- 4. explicit output paths


@pytest.fixture
def trained_model(sw, run_job, data_root, diabetes_frame):
    path = data_root / "d.csv"
    diabetes_frame.to_csv(path, index=False)
    model_id = _ok(
        run_job(sw.job_train, {"file_path": str(path), "target_column": "target", "model_type": "linear"})[0]
    )["model_id"]
    return path, model_id


def test_it_refuses_to_overwrite_an_existing_explicit_output_path(sw, run_job, data_root, trained_model):
    path, model_id = trained_model
    precious = data_root / "precious.csv"
    precious.write_text("do not touch\n")
    result = run_job(
        sw.job_predict, {"file_path": str(path), "model_id": model_id, "output_path": str(precious)}
    )[0]
    assert result["error_code"] == "invalid_params" and "already exists" in result["error"]
    assert precious.read_text() == "do not touch\n"
    assert sorted(p.name for p in data_root.iterdir()) == ["d.csv", "precious.csv"]
    fresh = data_root / "fresh.csv"
    ok = _ok(
        run_job(sw.job_predict, {"file_path": str(path), "model_id": model_id, "output_path": str(fresh)})[0]
    )
    assert ok["output_path"] == str(fresh) and len(pd.read_csv(fresh)) == 442


def test_it_numbers_a_second_default_predictions_file_instead_of_replacing_the_first(
    sw, run_job, data_root, trained_model
):
    path, model_id = trained_model
    first = _ok(run_job(sw.job_predict, {"file_path": str(path), "model_id": model_id})[0])
    second = _ok(run_job(sw.job_predict, {"file_path": str(path), "model_id": model_id})[0])
    assert first["output_path"] == str(data_root / "d_predictions.csv")
    assert second["output_path"] == str(data_root / "d_predictions_2.csv")
    assert not [p for p in data_root.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_it_does_not_overwrite_an_output_created_while_predicting(sw, tmp_path):
    tmp, dest = tmp_path / ".out.part", tmp_path / "out.csv"
    tmp.write_text("new\n")
    dest.write_text("someone else's\n")
    with pytest.raises(sw.JobError) as info:
        sw.publish_new_file(tmp, dest, str(dest))
    assert info.value.code == "invalid_params" and dest.read_text() == "someone else's\n"
    dest.unlink()
    sw.publish_new_file(tmp, dest, str(dest))
    assert dest.read_text() == "new\n" and not tmp.exists()


# ----------------------------------------------------------------- 5. delete_model


def _folder(models, name, metadata=None, raw=None):
    folder = models / name
    folder.mkdir(parents=True)
    (folder / "keep.txt").write_text("keep")
    if metadata is not None:
        (folder / "metadata.json").write_text(json.dumps(metadata))
    if raw is not None:
        (folder / "metadata.json").write_text(raw)
    return folder


def test_it_deletes_only_folders_holding_this_workers_metadata(sw, tmp_path):
    models = tmp_path / "models"
    legacy = {"format_version": 1, "model_type": "linear", "worker_version": "1.0.0"}
    refused = {
        "Documents": None,
        "garbage": "raw:not json",
        "listmeta": "raw:[1, 2]",
        "other-id": {"format": "statsbot-model", "model_id": "someone-else"},
        "other-format": {"format": "something", "model_id": "other-format", **legacy},
        "bare": {"model_id": "bare"},
    }
    for name, meta in refused.items():
        if isinstance(meta, str):
            _folder(models, name, raw=meta[4:])
        else:
            _folder(models, name, meta)
    elsewhere = _folder(tmp_path, "real", {"format": "statsbot-model", "model_id": "linked-meta"})
    _folder(models, "linked-meta")
    (models / "linked-meta" / "metadata.json").symlink_to(elsewhere / "metadata.json")
    for name in [*refused, "linked-meta"]:
        with pytest.raises(sw.JobError) as info:
            sw.delete_model(models, name)
        assert (
            info.value.code == "model_not_found" and "not a model saved by this worker" in info.value.message
        )
        assert (models / name / "keep.txt").exists()
    _folder(models, "new", {"format": "statsbot-model", "model_id": "new"})
    _folder(models, "old", {"model_id": "old", **legacy})
    sw.delete_model(models, "new")
    sw.delete_model(models, "old")
    assert not (models / "new").exists() and not (models / "old").exists()


def test_it_reports_refused_deletions_as_model_not_found(sw, run_job, settings):
    _folder(settings.models_dir, "Documents")
    result = run_job(sw.job_delete_model, {"model_id": "Documents"})[0]
    assert result["error_code"] == "model_not_found" and "not deleted" in result["error"]
    assert (settings.models_dir / "Documents" / "keep.txt").exists()


# ----------------------------------------------------------------- 6. terminal escapes


def test_it_strips_control_characters_from_terminal_output(sw):
    stream = io.StringIO()
    console = sw.Console(stream=stream)
    console.status("job \x1b[2J\x1b]0;owned\x07 done\r\nnext\x9b31m line\x00")
    console.plain("plain \x1b[31mred\x1b[0m\tand\nmore")
    out = stream.getvalue()
    assert not any(ch in out for ch in "\x1b\x07\r\x00\x9b\t")
    assert "job [2J]0;owned done\nnext31m line" in out and "plain [31mred[0mand\nmore" in out
    assert console.lines == ["job [2J]0;owned done\nnext31m line", "plain [31mred[0mand\nmore"]


def test_it_strips_control_characters_from_log_lines(sw, tmp_path):
    log_file = tmp_path / "logs" / "worker.log"
    sw.setup_logging(log_file, verbose=False)
    try:
        sw.log.warning("server said %s", "\x1b[31mhi\x1b]0;title\x07")
        for handler in logging.getLogger("statsbot_worker").handlers:
            handler.flush()
        text = log_file.read_text()
        assert "server said [31mhi]0;title" in text and "\x1b" not in text and "\x07" not in text
    finally:
        for handler in list(logging.getLogger("statsbot_worker").handlers):
            handler.close()
            logging.getLogger("statsbot_worker").removeHandler(handler)


async def test_it_prints_server_strings_without_escape_sequences(sw, make_client, fake_server, data_root):
    client = make_client()
    task = asyncio.create_task(client.run())
    ws = await fake_server.connection()
    await ws.send(
        json.dumps(
            {
                "type": "job",
                "job_id": "esc\x1b[2J",
                "action": "describe",
                "params": {"file_path": str(data_root / "evil\x1b]0;owned\x07.csv")},
            }
        )
    )
    await fake_server.next("result", "esc\x1b[2J")
    await ws.send(json.dumps({"type": "update", "url": "https://evil\x1b[2J.example/worker"}))
    await ws.send(json.dumps({"type": "revoked", "message": "bye \x1b[31mnow\x1b[0m"}))
    await ws.close(4003, "revoked")
    outcome = await asyncio.wait_for(task, 15)
    terminal = client.console.stream.getvalue()
    assert (
        "evil]0;owned.csv" in terminal
        and "Ignoring an update offered from https://evil[2J.example" in terminal
    )
    assert "\x1b" not in terminal and "\x07" not in terminal
    client.console.status(outcome.message)  # what main() prints
    assert "bye [31mnow[0m" in client.console.stream.getvalue()
    assert "\x1b" not in client.console.stream.getvalue()


# ----------------------------------------------------------------- 7. private folders


@POSIX
def test_it_creates_its_folders_readable_by_the_owner_only(sw, tmp_path, monkeypatch):
    old_umask = os.umask(0o002)
    try:
        home = tmp_path / "a" / "b" / ".statsbot"
        paths = sw.Paths(home)
        sw.secure_home(paths)
        for folder in (tmp_path / "a", tmp_path / "a" / "b", home, paths.log_dir):
            assert _mode(folder) == 0o700, folder
        sw.ConfigStore(paths.config).update(machine_id="m")
        out = sw.default_output_path(tmp_path / "ro" / "x.csv", paths.outputs)  # parent missing: not writable
        assert out.parent == paths.outputs and _mode(paths.outputs) == 0o700
        sw.save_model(paths.models, "m1", {"fake": "estimator"}, {"model_id": "m1"})
        assert _mode(paths.models) == 0o700 and _mode(paths.models / "m1") == 0o700
    finally:
        os.umask(old_umask)


@POSIX
def test_it_tightens_folders_an_older_worker_left_open(sw, tmp_path):
    paths = sw.Paths(tmp_path / ".statsbot")
    for folder in (paths.home, paths.models, paths.outputs, paths.log_dir):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o775)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    sw.secure_home(sw.Paths(tmp_path / ".statsbot"))
    assert [_mode(f) for f in (paths.home, paths.models, paths.outputs, paths.log_dir)] == [0o700] * 4
    assert _mode(shared) == 0o775


@POSIX
def test_it_makes_its_home_private_when_run_as_a_script(tmp_path, script_path):
    env = dict(os.environ, STATSBOT_HOME=str(tmp_path / "h"))
    proc = subprocess.run(
        [sys.executable, str(script_path), "--server", "ws://127.0.0.1:9/ws/worker/", "--no-install"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode in (2, 3), proc.stdout + proc.stderr
    assert _mode(tmp_path / "h") == 0o700 and _mode(tmp_path / "h" / "logs") == 0o700


@POSIX
def test_it_refuses_to_load_models_from_a_folder_others_can_write(sw, run_job, settings, trained_model):
    path, model_id = trained_model
    settings.models_dir.chmod(0o777)
    try:
        result = run_job(sw.job_predict, {"file_path": str(path), "model_id": model_id})[0]
        assert result["error_code"] == "model_refused" and "chmod go-w" in result["error"]
        settings.models_dir.chmod(0o775)
        assert run_job(sw.job_predict, {"file_path": str(path), "model_id": model_id})[0]["success"] is False
    finally:
        settings.models_dir.chmod(0o700)
    assert _ok(run_job(sw.job_predict, {"file_path": str(path), "model_id": model_id})[0])["rows"] == 442


# ----------------------------------------------------------------- 8. malformed frames


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("soon", 20),
        (None, 20),
        ([1], 20),
        (True, 20),
        (float("nan"), 20),
        (-5, 20),
        (0.2, 1),
        (1e9, 600),
        ("15", 15),
    ],
)
def test_it_reads_any_heartbeat_interval_without_failing(sw, value, seconds):
    assert sw.heartbeat_interval({"heartbeat_interval": value}) == seconds


def test_it_reads_a_malformed_retry_after_as_no_retry_after(sw, settings):
    client = sw.WorkerClient(
        settings, sw.ConfigStore(settings.paths.config), sw.Console(stream=io.StringIO()), versions={}
    )
    for retry in (10**400, "soon", [5], {"s": 1}):
        client._auth_failure = {"retry_after": retry}
        assert client._decide_close(4029, "") is None
    client.executor.shutdown()


async def test_it_keeps_the_connection_with_a_non_numeric_heartbeat_interval(make_client, fake_server):
    fake_server.heartbeat_interval = "every now and then"
    client = make_client()
    task = asyncio.create_task(client.run())
    ws = await fake_server.connection()
    assert (await _roundtrip(fake_server, ws, "hb"))["success"] is True
    assert len(fake_server.auths) == 1 and client.connections == 1
    await _stop(client, task)


async def test_it_ignores_malformed_frames_and_keeps_the_connection(sw, make_client, fake_server):
    client = make_client()
    task = asyncio.create_task(client.run())
    ws = await fake_server.connection()
    for frame in (
        {"type": "update", "url": "https://127.0.0.1:99999/worker", "latest_version": "9"},
        {"type": "update", "url": {"not": "a url"}, "latest_version": ["9"]},
        {"type": "cancel", "job_id": {"x": 1}},
        {"type": "result_ack", "job_id": None},
        {"type": "error", "code": ["x"], "message": None},
    ):
        await ws.send(json.dumps(frame))
    await ws.send("[" * 100_000)  # not JSON a parser can take: too deep
    assert (await _roundtrip(fake_server, ws, "m1"))["success"] is True
    assert len(fake_server.auths) == 1 and client.connections == 1
    await _stop(client, task)


async def test_it_survives_a_frame_whose_handling_raises(sw, make_client, fake_server):
    client = make_client()

    def explode(msg):
        raise RuntimeError("a bug in handling one frame")

    client._on_error_frame = explode
    task = asyncio.create_task(client.run())
    ws = await fake_server.connection()
    await ws.send(json.dumps({"type": "error", "code": "x", "message": "boom"}))
    assert (await _roundtrip(fake_server, ws, "after-bug"))["success"] is True
    assert len(fake_server.auths) == 1 and client.connections == 1
    await _stop(client, task)
