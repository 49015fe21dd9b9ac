"""The worker script as served at ``/worker``: this server's URL filled in, its version read once."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings

from core.site import public_url as site_url

SCRIPT_PATH = Path(settings.BASE_DIR) / "worker_script" / "statsbot_worker.py"
SERVER_PLACEHOLDER = "__STATSBOT_SERVER_URL__"
VERSION_RE = re.compile(r'^WORKER_VERSION = "([^"]+)"$', re.MULTILINE)


@dataclass(frozen=True)
class WorkerScript:
    source: str
    version: str


def websocket_url(public_url: str | None = None) -> str:
    """``PUBLIC_URL`` turned into the worker WebSocket URL: https → wss, http → ws."""
    parts = urlsplit(public_url or site_url())
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws/worker/", "", ""))


def download_url(public_url: str | None = None) -> str:
    return f"{(public_url or site_url()).rstrip('/')}/worker"


@lru_cache(maxsize=4)
def _load(mtime_ns: int) -> tuple[str, str]:
    source = SCRIPT_PATH.read_text(encoding="utf-8")
    match = VERSION_RE.search(source)
    if not match:
        raise RuntimeError(f"{SCRIPT_PATH} has no WORKER_VERSION line")
    return source, match.group(1)


def load_script(public_url: str | None = None) -> WorkerScript:
    source, version = _load(SCRIPT_PATH.stat().st_mtime_ns)
    return WorkerScript(source=source.replace(SERVER_PLACEHOLDER, websocket_url(public_url)), version=version)


_version_checked = (0.0, "")  # (monotonic time, version): every auth asks; the file rarely changes


def latest_version() -> str:
    """The served script's version, looked up on disk at most once a second."""
    global _version_checked
    checked_at, version = _version_checked
    if time.monotonic() - checked_at > 1.0:
        version = _load(SCRIPT_PATH.stat().st_mtime_ns)[1]
        _version_checked = (time.monotonic(), version)
    return version


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else 0 for part in re.split(r"[.+-]", version)[:3])


def is_outdated(version: str) -> bool:
    try:
        return _version_key(version) < _version_key(latest_version())
    except (OSError, RuntimeError):
        return False
