"""Command line, configuration, package checks, self-copy and backoff of the worker script."""

from __future__ import annotations

import json
import os
import stat
import sys

import pytest


def test_it_parses_the_documented_flags(sw):
    args = sw.parse_args(
        [
            "--token",
            "T",
            "--server",
            "https://bot.example",
            "--yes",
            "--autostart",
            "--allow-dir",
            "/a",
            "--allow-dir",
            "/b",
            "--models-dir",
            "/m",
            "--max-file-size",
            "100",
            "--foreground",
            "--verbose",
        ]
    )
    assert args.token == "T"
    assert args.yes and args.foreground and args.verbose
    assert args.autostart == "on"
    assert args.allow_dir == ["/a", "/b"]
    assert args.max_file_size == 100


def test_it_reads_autostart_off_and_defaults(sw):
    assert sw.parse_args(["--autostart", "off"]).autostart == "off"
    args = sw.parse_args([])
    assert args.autostart is None and args.token is None and args.allow_dir is None


def test_it_rejects_contradictory_or_bad_flags(sw, capsys):
    with pytest.raises(SystemExit):
        sw.parse_args(["--yes", "--no-install"])
    with pytest.raises(SystemExit):
        sw.parse_args(["--max-file-size", "-1"])


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://bot.example", "wss://bot.example/ws/worker/"),
        ("https://bot.example/worker", "wss://bot.example/ws/worker/"),
        ("http://127.0.0.1:8000/", "ws://127.0.0.1:8000/ws/worker/"),
        ("https://bot.example/prefix/", "wss://bot.example/prefix/ws/worker/"),
        ("wss://bot.example/ws/worker/", "wss://bot.example/ws/worker/"),
        ("ws://127.0.0.1:9", "ws://127.0.0.1:9/ws/worker/"),
    ],
)
def test_it_maps_server_urls_to_the_worker_websocket(sw, given, expected):
    assert sw.normalize_server_url(given) == expected


def test_it_refuses_urls_without_a_known_scheme(sw):
    with pytest.raises(sw.UsageError):
        sw.normalize_server_url("bot.example")
    with pytest.raises(sw.UsageError):
        sw.normalize_server_url("ftp://bot.example")


def test_it_derives_the_download_url_from_the_websocket_url(sw):
    assert sw.download_url_for("wss://bot.example/ws/worker/") == "https://bot.example/worker"
    assert sw.download_url_for("ws://127.0.0.1:81/ws/worker/") == "http://127.0.0.1:81/worker"


def test_it_accepts_updates_only_from_the_servers_own_worker_url(sw):
    server = "wss://bot.example/ws/worker/"
    assert sw.is_update_url(server, "https://bot.example/worker")
    assert not sw.is_update_url(server, "http://bot.example/worker")
    assert not sw.is_update_url(server, "https://evil.example/worker")
    assert not sw.is_update_url(server, "https://bot.example:444/worker")
    assert not sw.is_update_url(server, "https://bot.example/worker_evil")


def test_it_keeps_the_server_placeholder_on_one_exact_line(sw, script_path):
    text = script_path.read_text(encoding="utf-8")
    assert text.count("__STATSBOT_SERVER_URL__") == 1
    assert sw.VERSION_LINE_RE.findall(text) == [sw.WORKER_VERSION]
    assert 'DEFAULT_SERVER = "__STATSBOT_SERVER_URL__"' in text


def test_it_writes_the_config_file_with_mode_0600(sw, tmp_path):
    store = sw.ConfigStore(tmp_path / "home" / "config.json")
    store.update(credential="secret", server="wss://x/ws/worker/")
    assert json.loads(store.path.read_text())["credential"] == "secret"
    if os.name != "nt":
        assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    store.update(credential=None)
    assert "credential" not in store.load()
    assert [p.name for p in store.path.parent.iterdir()] == ["config.json"]


def test_it_uses_the_saved_credential_only_for_the_same_server(sw, tmp_path):
    paths = sw.Paths(tmp_path)
    saved = {"server": "wss://a.example/ws/worker/", "credential": "c1", "machine_id": "m1"}
    same = sw.resolve_settings(sw.parse_args(["--server", "https://a.example"]), saved, paths)
    other = sw.resolve_settings(sw.parse_args(["--server", "https://b.example"]), saved, paths)
    assert same.credential == "c1" and same.machine_id == "m1"
    assert other.credential is None
    assert "credential" not in sw.settings_to_config(other, saved)


def test_it_defaults_to_home_and_validates_allowed_dirs(sw, tmp_path):
    paths = sw.Paths(tmp_path / "h")
    s = sw.resolve_settings(sw.parse_args(["--server", "ws://x"]), {}, paths)
    home, outputs = sw.Path(os.path.realpath(sw.Path.home())), sw.Path(os.path.realpath(paths.outputs))
    assert s.allowed_roots == [home, outputs]  # the worker's own outputs stay readable
    assert sw.settings_to_config(s, {})["allowed_dirs"] == [str(sw.Path.home())]
    assert s.max_file_bytes == 20 * 1024**3  # files bigger than memory are sampled (train) or streamed (predict)
    assert len(s.machine_id) == 32
    with pytest.raises(sw.UsageError):
        sw.resolve_settings(
            sw.parse_args(["--server", "ws://x", "--allow-dir", str(tmp_path / "nope")]), {}, paths
        )


def test_it_needs_a_server_when_the_script_was_not_served(sw, tmp_path):
    with pytest.raises(sw.UsageError, match="--server"):
        sw.resolve_settings(sw.parse_args([]), {}, sw.Paths(tmp_path))


def test_it_strips_the_token_and_autostart_when_restarting(sw):
    argv = ["--token", "T", "--server", "s", "--autostart", "off", "--verbose", "--token=U", "--autostart"]
    assert sw.strip_args(argv, ("--token", "--autostart"), with_value=("--token",)) == [
        "--server",
        "s",
        "--verbose",
    ]


def test_it_grows_backoff_exponentially_with_full_jitter_and_a_cap(sw):
    rolls = iter([1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    backoff = sw.Backoff(base=1, cap=60, rand=lambda: next(rolls))
    delays = [backoff.next_delay() for _ in range(9)]
    assert delays == [1, 2, 4, 4, 16, 32, 60, 60, 0]
    backoff.reset()
    assert backoff.next_delay() == 1


def test_it_lists_missing_and_too_old_packages(sw):
    versions = {"websockets": "10.4", "pandas": "2.2.3", "scikit-learn": None, "lightgbm": "4.5.0"}
    assert sw.missing_required(versions) == ["websockets", "scikit-learn"]
    assert sw.available_models({"lightgbm": "4", "scikit-learn": "1.5", "xgboost": None}) == [
        "auto",
        "lightgbm",
        "random_forest",
        "linear",
    ]
    assert "xgboost" in sw.available_models({"xgboost": "2.1"})


def test_it_pins_known_good_versions_for_supported_pythons(sw):
    pins = sw.requirements_for((3, 9))
    assert all("==" in r for r in pins)
    assert {r.split("==")[0] for r in pins} >= {"websockets", "pandas", "scikit-learn", "lightgbm"}
    assert all(">=" in r for r in sw.requirements_for((3, 14)))


def _missing_all():
    return {"websockets": None, "pandas": None, "scikit-learn": None, "lightgbm": None}


def _ensure(sw, tmp_path, argv, **kwargs):
    console = sw.Console(stream=open(os.devnull, "w"))  # noqa: SIM115
    calls = {}
    code = sw.ensure_packages(
        sw.parse_args(argv),
        sw.Paths(tmp_path),
        console,
        kwargs.pop("versions", _missing_all()),
        stdin_isatty=kwargs.pop("tty", False),
        have_copy=True,
        create_env=lambda venv, reqs, c, **kw: (
            calls.setdefault("env", (venv, reqs)) and venv / "bin" / "python"
        ),
        exec_fn=lambda argv: calls.setdefault("exec", argv),
        **kwargs,
    )
    return code, calls, "\n".join(console.lines)


def test_it_installs_by_default_and_says_so_when_there_is_no_terminal(sw, tmp_path):
    code, calls, text = _ensure(sw, tmp_path, [], ask_fn=lambda prompt: None)
    assert code == sw.EXIT_OK and calls["env"][0] == tmp_path / "venv" and "exec" in calls
    assert "no terminal to ask you in" in text and "--no-install" in text


def test_it_prints_the_pip_command_with_no_install(sw, tmp_path):
    code, calls, text = _ensure(sw, tmp_path, ["--no-install"])
    assert code == sw.EXIT_MISSING_PACKAGES and not calls
    assert "pip install" in text and "scikit-learn==" in text


def test_it_installs_into_the_private_env_and_restarts_with_yes(sw, tmp_path):
    code, calls, _ = _ensure(sw, tmp_path, ["--yes", "--token", "T"])
    assert code == sw.EXIT_OK
    assert calls["env"][0] == tmp_path / "venv"
    assert calls["exec"][1] == str(tmp_path / "statsbot_worker.py")


def test_it_asks_on_a_terminal_and_respects_no(sw, tmp_path):
    code, calls, _ = _ensure(sw, tmp_path, [], tty=True, ask_fn=lambda prompt: "n")
    assert code == sw.EXIT_MISSING_PACKAGES and not calls
    code, calls, _ = _ensure(sw, tmp_path, [], tty=True, ask_fn=lambda prompt: "y")
    assert code == sw.EXIT_OK and "exec" in calls
    code, calls, _ = _ensure(sw, tmp_path, [], tty=True, ask_fn=lambda prompt: "")  # Enter means yes
    assert code == sw.EXIT_OK and "exec" in calls


def test_it_does_not_loop_when_the_private_env_still_lacks_packages(sw, tmp_path, monkeypatch):
    monkeypatch.setattr(sw, "running_in_venv", lambda venv: True)
    monkeypatch.setenv(sw.REPAIRED_ENV, "1")  # this run follows a repair
    code, calls, text = _ensure(sw, tmp_path, ["--yes"])
    assert code == sw.EXIT_MISSING_PACKAGES and not calls
    assert "Repair it with" in text


def test_it_does_nothing_when_packages_are_present(sw, tmp_path):
    versions = {"websockets": "16.0", "pandas": "3.0", "scikit-learn": "1.9", "lightgbm": "4.7"}
    assert _ensure(sw, tmp_path, [], versions=versions)[0] is None


def test_it_builds_the_private_env_and_runs_pip_there(sw, tmp_path):
    commands = []

    def builder(venv):
        python = sw.venv_python(venv)
        python.parent.mkdir(parents=True)
        python.write_text("")

    console = sw.Console(stream=open(os.devnull, "w"))  # noqa: SIM115
    python = sw.create_private_env(
        tmp_path / "venv", ["a==1"], console, runner=lambda c: commands.append(c) or 0, builder=builder
    )
    assert commands[0][:4] == [str(python), "-m", "pip", "install"] and commands[0][-1] == "a==1"


def test_it_reports_a_failing_pip(sw, tmp_path):
    python = sw.venv_python(tmp_path / "venv")
    python.parent.mkdir(parents=True)
    python.write_text("")
    console = sw.Console(stream=open(os.devnull, "w"))  # noqa: SIM115
    with pytest.raises(RuntimeError, match="pip failed"):
        sw.create_private_env(tmp_path / "venv", ["a==1"], console, runner=lambda cmd: 1)


def test_it_copies_itself_when_run_from_a_file(sw, tmp_path, script_path):
    SCRIPT = script_path
    paths = sw.Paths(tmp_path)
    ok, message = sw.ensure_saved_copy(paths, "ws://x/ws/worker/", str(SCRIPT))
    assert ok and "Saved a copy" in message
    assert paths.script.read_bytes() == SCRIPT.read_bytes()
    assert sw.ensure_saved_copy(paths, "ws://x/ws/worker/", str(SCRIPT)) == (True, "")


def test_it_downloads_itself_when_run_from_a_pipe(sw, tmp_path):
    paths = sw.Paths(tmp_path)
    served = 'WORKER_VERSION = "9.9.9"\nprint("hi")\n'
    urls = []
    ok, message = sw.ensure_saved_copy(
        paths, "wss://bot.example/ws/worker/", "<stdin>", fetch=lambda url: urls.append(url) or served
    )
    assert ok and "9.9.9" in message
    assert urls == ["https://bot.example/worker"]
    assert paths.script.read_text() == served


def test_it_refuses_a_downloaded_script_that_does_not_compile(sw, tmp_path):
    paths = sw.Paths(tmp_path)
    ok, message = sw.ensure_saved_copy(
        paths, "wss://b/ws/worker/", None, fetch=lambda url: 'WORKER_VERSION = "2"\ndef (:\n'
    )
    assert not ok and "compile" in message and not paths.script.exists()
    with pytest.raises(ValueError, match="WORKER_VERSION"):
        sw.validate_script("print(1)\n")


def test_it_offers_a_runnable_pip_command(sw):
    command = sw.pip_command(["pandas==2.2.3"], python=sys.executable)
    assert command.startswith(sys.executable) and '"pandas==2.2.3"' in command
