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


class LinuxRunner:
    """systemctl without a user bus (or with one), and a crontab kept in memory."""

    def __init__(self, user_bus=False, crontab=None, crontab_works=True):
        self.calls = []
        self.user_bus = user_bus
        self.crontab = crontab  # None: the user has no crontab yet
        self.crontab_works = crontab_works
        self.writes = 0

    def __call__(self, cmd):
        self.calls.append(list(cmd))
        if cmd[0] == "systemctl":
            if self.user_bus:
                return 0, ""
            return 1, "Failed to connect to bus: No medium found"
        if cmd[0] == "crontab":
            if not self.crontab_works:
                return 127, "crontab: command not found"
            if cmd[1:] == ["-l"]:
                return (0, self.crontab) if self.crontab is not None else (1, "no crontab for ann")
            self.crontab = Path(cmd[1]).read_text()
            self.writes += 1
            return 0, ""
        return 0, ""


def test_it_falls_back_to_a_reboot_crontab_line_without_a_systemd_user_bus(sw, tmp_path):
    runner = LinuxRunner(crontab="0 * * * * ~/backup.sh\n")
    env = _env(sw, tmp_path, "Linux", runner)
    started = []
    env.spawn = lambda argv, child_env: started.append((argv, child_env["STATSBOT_HOME"]))
    result = sw.install_autostart(env)
    assert result["enabled"] and result["method"] == "cron"
    assert "@reboot line in your crontab" in result["message"] and "no systemd user session" in result["message"]
    assert "Failed to connect to bus" in result["message"]
    lines = runner.crontab.splitlines()
    assert lines[0] == "0 * * * * ~/backup.sh" and len(lines) == 2
    assert lines[1].startswith("@reboot STATSBOT_HOME=") and lines[1].endswith(sw.CRON_TAG)
    assert "'/opt/py 3/bin/python3'" in lines[1] and "--foreground" in lines[1]
    assert not env.systemd_path().exists()  # nothing left behind that cannot work
    assert started == [([str(env.python), str(env.script), "--foreground"], str(env.statsbot_home))]
    assert not list(env.statsbot_home.glob("crontab.*"))  # the temporary file is gone
    assert sw.install_autostart(env, start_now=False)["enabled"] and runner.writes == 1  # idempotent
    removed = sw.remove_autostart(env)
    assert removed["method"] == "cron" and "removed the @reboot line from your crontab" in removed["message"]
    assert runner.crontab.splitlines() == ["0 * * * * ~/backup.sh"]  # exactly that line went
    assert sw.remove_autostart(env)["message"] == "Autostart was already off."


def test_it_escapes_percent_signs_for_cron(sw, tmp_path):
    env = _env(sw, tmp_path, "Linux", LinuxRunner())
    env.script = Path("/home/ann/100%/statsbot_worker.py")
    assert "100\\%" in sw.cron_line(env)


def test_it_writes_an_xdg_autostart_entry_in_a_desktop_session(sw, tmp_path):
    runner = LinuxRunner(crontab="")
    env = _env(sw, tmp_path, "Linux", runner)
    env.desktop = True
    result = sw.install_autostart(env, start_now=False)
    entry = env.home / ".config" / "autostart" / "statsbot-worker.desktop"
    assert result["enabled"] and result["method"] == "xdg-autostart" and result["path"] == str(entry)
    assert "XDG autostart entry" in result["message"] and "log in to your desktop" in result["message"]
    text = entry.read_text()
    assert text.startswith("[Desktop Entry]\nType=Application\n")
    exec_line = next(line for line in text.splitlines() if line.startswith("Exec="))
    assert exec_line == (f'Exec="env" "STATSBOT_HOME={env.statsbot_home}" "/opt/py 3/bin/python3" '
                         f'"{env.script}" "--foreground"')
    assert runner.writes == 0  # the crontab is not touched
    removed = sw.remove_autostart(env)
    assert removed["method"] == "xdg-autostart" and not entry.exists()
    assert "removed the XDG autostart entry" in removed["message"]


def test_it_quotes_desktop_entry_arguments(sw):
    assert sw._desktop_quote('a "b" $c 5%') == '"a \\\\"b\\\\" \\\\$c 5%%"'


def test_it_gives_manual_steps_when_neither_systemd_nor_crontab_works(sw, tmp_path):
    env = _env(sw, tmp_path, "Linux", LinuxRunner(crontab_works=False))
    result = sw.install_autostart(env)
    assert result["enabled"] is False and "crontab cannot be used" in result["message"]
    assert result["manual_steps"][0].startswith("Add this line with crontab -e: @reboot ")


def test_it_moves_from_a_fallback_to_systemd_once_the_user_bus_is_there(sw, tmp_path):
    runner = LinuxRunner(crontab="")
    env = _env(sw, tmp_path, "Linux", runner)
    env.spawn = lambda argv, child_env: None
    assert sw.install_autostart(env)["method"] == "cron"
    runner.user_bus = True
    result = sw.install_autostart(env)
    assert result["method"] == "systemd" and env.systemd_path().exists()
    assert sw.CRON_TAG not in runner.crontab  # never started twice at boot


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
