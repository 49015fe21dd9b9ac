"""/worker autostart on Linux without a systemd user bus: the real worker falls back to an @reboot
crontab line, says so in the chat, and /worker autostart off removes exactly that line.

``systemctl`` and ``crontab`` are the boundary: small stand-ins on PATH behave like a machine
with no user bus (``Failed to connect to bus``) and keep the crontab in a file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SYSTEMCTL = """#!/bin/sh
echo "Failed to connect to bus: No medium found" >&2
exit 1
"""
CRONTAB = """#!/bin/sh
f="$HOME/.fake-crontab"
if [ "$1" = "-l" ]; then
  if [ -f "$f" ]; then cat "$f"; exit 0; fi
  echo "no crontab for $USER" >&2
  exit 1
fi
cat "$1" > "$f"
"""


@pytest.fixture
def no_systemd(monkeypatch, home, tmp_path) -> Path:
    """A headless Linux box without a systemd user bus; returns its crontab file."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    for name, text in (("systemctl", SYSTEMCTL), ("crontab", CRONTAB)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "XDG_CURRENT_DESKTOP", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    crontab = home / ".fake-crontab"
    crontab.write_text("0 3 * * * ~/backup.sh\n")
    return crontab


def test_it_falls_back_to_cron_and_removes_exactly_that(no_systemd, running_bot, user, home, connected_worker):
    user.send("/worker autostart")
    on = user.wait_for_message(predicate=lambda m: "Autostart is" in (m.get("text") or ""), timeout=60)
    assert "Autostart is on (cron)" in on["text"]
    assert "@reboot line in your crontab" in on["text"] and "no systemd user session" in on["text"]
    lines = no_systemd.read_text().splitlines()
    assert lines[0] == "0 3 * * * ~/backup.sh" and len(lines) == 2
    assert lines[1].startswith("@reboot ") and str(home / ".statsbot" / "statsbot_worker.py") in lines[1]
    assert not (home / ".config" / "systemd" / "user" / "statsbot-worker.service").exists()

    user.send("/worker autostart off")
    off = user.wait_for_message(predicate=lambda m: "Autostart is" in (m.get("text") or ""), timeout=60)
    assert "Autostart is off (cron)" in off["text"] and "removed the @reboot line" in off["text"]
    assert no_systemd.read_text().splitlines() == ["0 3 * * * ~/backup.sh"]
