"""The connect command's first run and a saved worker's restart, as the real script in a process.

The worker's packages are hidden from the interpreter that starts it (``python -S -I``: no
site-packages), as on a machine that has only Python. PyPI is the boundary: pip installs from a
local folder of small wheels that carry only the metadata of the pinned versions, so every
step (terminal prompt, private environment, pip, the restart inside it) is real and offline.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import select
import subprocess
import sys
import termios
import time
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SCRIPT = Path(__file__).resolve().parents[2] / "worker_script" / "statsbot_worker.py"


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _metadata_wheel(folder: Path, name: str, version: str) -> None:
    """A wheel holding only NAME-VERSION.dist-info: what the worker reads (metadata versions)."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    with zipfile.ZipFile(folder / f"{dist}-{version}-py3-none-any.whl", "w") as whl:
        for path, data in files.items():
            whl.writestr(path, data)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory, sw):
    """Metadata-only wheels of every pinned requirement (the private environment's PyPI)."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    for pin in sw.requirements_for():
        name, version = pin.split("==")
        _metadata_wheel(folder, name, version)
    return folder


def _env(home: Path, wheelhouse: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "STATSBOT_", "VIRTUAL_ENV"))}
    env["STATSBOT_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    if wheelhouse is not None:
        env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheelhouse), PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _served_script() -> bytes:
    """The script as /worker serves it: this test's unreachable server filled in."""
    return SCRIPT.read_bytes().replace(
        b'DEFAULT_SERVER = "__STATSBOT_SERVER_URL__"', b'DEFAULT_SERVER = "ws://127.0.0.1:9/ws/worker/"'
    )


def _saved_worker(home: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    saved = home / "statsbot_worker.py"
    saved.write_bytes(_served_script())
    return saved


def _run_without_terminal(args: list[str], env: dict, stdin: bytes | None = None) -> tuple[int, str]:
    """python -S -I ARGS in a new session (no controlling terminal, so /dev/tty cannot be opened)."""
    proc = subprocess.run(
        [sys.executable, "-S", "-I", *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        timeout=240,
    )
    return proc.returncode, proc.stdout.decode(errors="replace")


def test_it_asks_on_the_terminal_when_the_script_is_piped_in(tmp_path):
    """`curl ... | python3 -` in a terminal: stdin is the script, the question goes to /dev/tty."""
    master, slave = os.openpty()

    def take_terminal() -> None:  # the new session's controlling terminal is the pty
        fcntl.ioctl(1, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [sys.executable, "-S", "-I", "-", "--token=tok"],
        stdin=subprocess.PIPE,
        stdout=slave,
        stderr=slave,
        env=_env(tmp_path / "home"),
        start_new_session=True,
        preexec_fn=take_terminal,
    )
    os.close(slave)
    try:
        proc.stdin.write(_served_script())
        proc.stdin.close()
        seen = _read_until(master, b"[Y/n]")
        assert b"--yes" not in seen and b"not a terminal" not in seen
        os.write(master, b"n\n")
        seen += _read_until(master, None)
        assert proc.wait(timeout=60) == 3, seen.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert b"Create it and install them now?" in seen and b"Nothing installed" in seen
    assert not (tmp_path / "home" / "venv").exists()


def _read_until(fd: int, marker: bytes | None, within: float = 120) -> bytes:
    """Read the pty until marker appears (or, for None, until the other side closes)."""
    out = b""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        if not chunk:
            if marker is None:
                return out
            break
        out += chunk
        if marker is not None and marker in out:
            return out
    pytest.fail(f"the terminal never showed {marker!r}:\n{out.decode(errors='replace')}")


def test_it_installs_into_its_private_env_by_default_without_a_terminal(tmp_path, wheelhouse):
    home = tmp_path / "home"
    _saved_worker(home)
    code, out = _run_without_terminal(
        ["-", "--server", "ws://127.0.0.1:9"], _env(home, wheelhouse), _served_script()
    )
    # Installed, restarted inside the environment, and there it asks for a connection (no token).
    assert code == 2, out
    assert "no terminal to ask you in, so the worker installs them into" in out
    assert "--no-install" in out and "Restarting the worker in its private environment" in out
    assert "/connect" in out and "Traceback" not in out
    assert (home / "venv" / "pyvenv.cfg").is_file()


def test_it_restarts_a_saved_worker_in_its_complete_env_without_asking(tmp_path):
    home = tmp_path / "home"
    saved = _saved_worker(home)
    # A complete private environment: the interpreter's own packages are visible in it.
    venv.EnvBuilder(system_site_packages=True, with_pip=False, symlinks=True).create(home / "venv")
    code, out = _run_without_terminal([str(saved)], _env(home))
    assert code == 2, out
    assert f"Running in the worker's private environment ({home / 'venv'})" in out
    assert "[Y/n]" not in out and "[y/N]" not in out and "Nothing installed" not in out
    assert "needs these Python packages" not in out
    assert "/connect" in out


def _site_packages(env_dir: Path) -> Path:
    return next((env_dir / "lib").glob("python3.*/site-packages"))


def test_it_repairs_an_outdated_private_env_with_one_line(tmp_path, wheelhouse):
    home = tmp_path / "home"
    saved = _saved_worker(home)
    env_dir = home / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False, symlinks=True).create(env_dir)
    # An old lightgbm installed in the environment itself shadows the interpreter's one.
    old = tmp_path / "old"
    old.mkdir()
    _metadata_wheel(old, "lightgbm", "3.0.0")
    with zipfile.ZipFile(next(old.glob("*.whl"))) as whl:
        whl.extractall(_site_packages(env_dir))
    code, out = _run_without_terminal([str(saved)], _env(home, wheelhouse))
    assert code == 2, out
    repair = [line for line in out.splitlines() if "Repairing" in line]
    assert len(repair) == 1, out
    assert "lightgbm 3.0.0 is too old" in repair[0] and "lightgbm==4.5.0" in repair[0]
    assert "[Y/n]" not in out and "/connect" in out
    assert (_site_packages(env_dir) / "lightgbm-4.5.0.dist-info").is_dir()
    assert not (_site_packages(env_dir) / "lightgbm-3.0.0.dist-info").exists()


def test_it_recreates_a_private_env_whose_python_no_longer_runs(tmp_path, wheelhouse):
    home = tmp_path / "home"
    saved = _saved_worker(home)
    python = home / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.symlink_to(tmp_path / "removed-python")  # its base interpreter was uninstalled
    code, out = _run_without_terminal([str(saved)], _env(home, wheelhouse))
    assert code == 2, out
    assert sum("Repairing" in line for line in out.splitlines()) == 1, out
    assert "it no longer runs" in out and "/connect" in out
    assert (home / "venv" / "pyvenv.cfg").is_file()
