"""Autostart units/plists/commands and their idempotent install/remove, with a fake runner."""

from __future__ import annotations

import plistlib
from pathlib import Path

import pytest


class FakeRunner:
    def __init__(self, fail=(), outputs=None):
        self.calls = []
        self.fail = set(fail)
        self.outputs = outputs or {}

    def __call__(self, cmd):
        self.calls.append(list(cmd))
        key = " ".join(cmd[:3])
        for prefix in self.fail:
            if " ".join(cmd).startswith(prefix):
                return 1, "Access is denied."
        return 0, self.outputs.get(key, "")


def _env(sw, tmp_path, system, runner):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return sw.AutostartEnv(
        system=system,
        home=home,
        python=Path("/opt/py 3/bin/python3"),
        script=home / ".statsbot" / "statsbot_worker.py",
        statsbot_home=home / ".statsbot",
        runner=runner,
        user="ann",
        appdata=home / "AppData" / "Roaming",
    )


def test_it_writes_a_systemd_unit_that_runs_the_saved_copy(sw):
    text = sw.systemd_unit_text(
        Path("/opt/py 3/bin/python3"),
        Path("/home/ann/.statsbot/statsbot_worker.py"),
        Path("/home/ann/.statsbot"),
    )
    assert 'ExecStart="/opt/py 3/bin/python3" "/home/ann/.statsbot/statsbot_worker.py" --foreground' in text
    assert "Restart=always" in text and "WantedBy=default.target" in text
    assert "--token" not in text and "credential" not in text.lower().split("#")[0]


def test_it_escapes_percent_signs_for_systemd(sw):
    assert sw._systemd_quote("/a%b") == '"/a%%b"'


def test_it_writes_a_launchd_plist(sw):
    text = sw.launchd_plist_text(
        Path("/usr/bin/python3"),
        Path("/Users/ann/.statsbot/statsbot_worker.py"),
        Path("/Users/ann/.statsbot"),
    )
    plist = plistlib.loads(text.encode())
    assert plist["Label"] == "com.statsbot.worker"
    assert plist["ProgramArguments"] == [
        "/usr/bin/python3",
        "/Users/ann/.statsbot/statsbot_worker.py",
        "--foreground",
    ]
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["StandardOutPath"].startswith("/Users/ann/.statsbot/logs/")


def test_it_builds_the_windows_task_command_and_launcher(sw):
    launcher = Path("C:/Users/ann/.statsbot/statsbot-worker.cmd")
    cmd = sw.schtasks_create_command(launcher)
    assert cmd[:6] == ["schtasks", "/Create", "/F", "/SC", "ONLOGON", "/TN"] and cmd[6] == "StatsBotWorker"
    assert cmd[-1] == f'"{launcher}"'
    text = sw.windows_launcher_text(
        Path("C:/Py/python.exe"),
        Path("C:/Users/ann/.statsbot/statsbot_worker.py"),
        Path("C:/Users/ann/.statsbot"),
    )
    assert "--foreground" in text and "STATSBOT_HOME" in text and text.endswith("\r\n")


def test_it_installs_and_removes_systemd_idempotently(sw, tmp_path):
    runner = FakeRunner(outputs={"loginctl show-user ann": "Linger=no\n"})
    env = _env(sw, tmp_path, "Linux", runner)
    first = sw.install_autostart(env)
    unit = env.systemd_path()
    assert first["enabled"] and first["method"] == "systemd" and first["path"] == str(unit)
    assert ["systemctl", "--user", "daemon-reload"] in runner.calls
    assert ["systemctl", "--user", "enable", "--now", "statsbot-worker.service"] in runner.calls
    assert first["manual_steps"] == ["loginctl enable-linger ann"]
    before = unit.stat().st_mtime_ns
    again = sw.install_autostart(env)
    assert again["enabled"] and unit.stat().st_mtime_ns == before
    removed = sw.remove_autostart(env)
    assert removed["enabled"] is False and not unit.exists()
    assert ["systemctl", "--user", "disable", "--now", "statsbot-worker.service"] in runner.calls
    assert sw.remove_autostart(env)["message"] == "Autostart was already off."


def test_it_enables_without_starting_when_asked(sw, tmp_path):
    runner = FakeRunner()
    sw.install_autostart(_env(sw, tmp_path, "Linux", runner), start_now=False)
    assert ["systemctl", "--user", "enable", "statsbot-worker.service"] in runner.calls


def test_it_returns_manual_steps_when_systemctl_fails(sw, tmp_path):
    env = _env(sw, tmp_path, "Linux", FakeRunner(fail=["systemctl"]))
    result = sw.install_autostart(env)
    assert result["enabled"] is False and env.systemd_path().exists()
    assert "systemctl --user daemon-reload" in result["manual_steps"]


def test_it_installs_and_removes_launchd(sw, tmp_path):
    runner = FakeRunner()
    env = _env(sw, tmp_path, "Darwin", runner)
    result = sw.install_autostart(env)
    plist = env.launchd_path()
    assert result["enabled"] and result["method"] == "launchd" and plist.exists()
    assert ["launchctl", "load", "-w", str(plist)] in runner.calls
    assert sw.install_autostart(env)["enabled"]
    assert sw.remove_autostart(env)["enabled"] is False and not plist.exists()
    assert sw.remove_autostart(env)["message"] == "Autostart was already off."


def test_it_uses_task_scheduler_on_windows(sw, tmp_path):
    runner = FakeRunner()
    env = _env(sw, tmp_path, "Windows", runner)
    result = sw.install_autostart(env)
    assert result["method"] == "schtasks" and env.launcher_path().exists()
    assert runner.calls[0][:2] == ["schtasks", "/Create"]
    assert sw.remove_autostart(env)["enabled"] is False and not env.launcher_path().exists()


def test_it_falls_back_to_the_startup_folder_when_schtasks_is_refused(sw, tmp_path):
    env = _env(sw, tmp_path, "Windows", FakeRunner(fail=["schtasks"]))
    result = sw.install_autostart(env, start_now=False)
    assert result["enabled"] and result["method"] == "startup-folder"
    assert env.startup_path().exists() and "Startup" in str(env.startup_path())
    sw.remove_autostart(env)
    assert not env.startup_path().exists()


def test_it_refuses_unknown_systems(sw, tmp_path):
    with pytest.raises(sw.JobError):
        sw.install_autostart(_env(sw, tmp_path, "Plan9", FakeRunner()))
