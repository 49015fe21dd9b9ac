#!/usr/bin/env python3
"""StatsBot local worker.

Connects this machine to StatsBot so that models can be trained and used from Telegram on
files that never leave the machine. Start it with the command the bot shows after /connect:

    curl -sL https://HOST/worker | python3 - --token=TOKEN

It speaks the JSON-over-WebSocket protocol described in docs/worker-protocol.md. Only the
standard library is needed at import time; pandas, scikit-learn, LightGBM and websockets are
imported where they are used, and when they are missing the worker offers to install them
into a private environment (~/.statsbot/venv).

Run with --help for the options.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime as _dt
import functools
import hashlib
import json
import logging
import logging.handlers
import math
import os
import platform
import random
import re
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

WORKER_VERSION = "1.1.0"
PROTOCOL_VERSION = 1
DEFAULT_SERVER = "__STATSBOT_SERVER_URL__"
TOKEN_ENV = "STATSBOT_TOKEN"  # the one-time token, for a command line that does not show it in `ps`

# The placeholder is spelled in two halves so that the server's one-shot text replacement
# of DEFAULT_SERVER's value cannot also change this comparison value.
_UNFILLED_SERVER = "__STATSBOT_" + "SERVER_URL__"

log = logging.getLogger("statsbot_worker")

# --------------------------------------------------------------------------- limits

MAX_FRAME_BYTES = 512 * 1024  # every frame we send stays below this (daphne refuses > 1 MiB)
# Training samples a file bigger than memory and predictions stream it in chunks, so this only
# guards against a path to some huge unrelated file; --max-file-size raises it.
DEFAULT_MAX_FILE_MB = 20 * 1024
PREDICT_CHUNK_ROWS = 100_000
DESCRIBE_SAMPLE_ROWS = 50_000
DESCRIBE_MAX_COLUMNS = 200
SAMPLE_STRING_CHARS = 60
MAX_NAME_CHARS = 200  # column names (and dict keys) in results are cut to this many characters
MAX_CATEGORIES = 1000  # categories kept per text feature (most frequent first)
MAX_CLASSES = 200
MIN_TRAIN_ROWS = 10
CONFUSION_MAX_LABELS = 20
PRED_VS_ACTUAL_POINTS = 200
TOP_IMPORTANCES = 20
RF_BIG_DATA_ROWS = 100_000
UNACKED_RESULTS_KEPT = 100
RESULT_REFUSALS = ("unknown_job", "invalid_field", "frame_too_large")  # server error codes: never re-send
DOWNLOAD_MAX_BYTES = 5 * 1024 * 1024
MAX_INT_DIGITS = 40  # longer integers in a server frame are read as +-inf (see _bounded_int)
MAX_PARAMS_BYTES = 64 * 1024  # a job's params as JSON
PROGRESS_MIN_INTERVAL_S = 0.5

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_MISSING_PACKAGES = 3

ALLOWED_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".xlsx": "excel",
    ".xls": "xls",
}

# Distribution names (for importlib.metadata) of what the worker needs, and known-good pins
# for the private environment. Python 3.9 is the oldest supported interpreter, so the pins
# are the newest releases that still ship wheels for 3.9 through 3.13.
REQUIRED_PACKAGES = ("websockets", "pandas", "scikit-learn", "lightgbm")
OPTIONAL_PACKAGES = ("pyarrow", "openpyxl", "xgboost", "joblib", "numpy")
DIST_ALIASES = {"xgboost": ("xgboost", "xgboost-cpu")}  # the same import name, other distributions
MIN_VERSIONS = {"websockets": (11, 0), "scikit-learn": (1, 2), "pandas": (1, 5), "lightgbm": (3, 3)}
PINNED_REQUIREMENTS = (
    "websockets==13.1",
    "pandas==2.2.3",
    "scikit-learn==1.5.2",
    "lightgbm==4.5.0",
    "pyarrow==18.1.0",
    "openpyxl==3.1.5",
)
UNPINNED_REQUIREMENTS = (
    "websockets>=13",
    "pandas>=2.2",
    "scikit-learn>=1.5",
    "lightgbm>=4.5",
    "pyarrow>=18",
    "openpyxl>=3.1",
)

MODEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# A frame that could not be parsed but looks like a job: its job_id, so it gets an error result.
JOB_TYPE_RE = re.compile(r'"type"\s*:\s*"job"')
JOB_ID_RE = re.compile(r'"job_id"\s*:\s*"([^"\\]{1,128})"')
VERSION_LINE_RE = re.compile(r'^WORKER_VERSION = "(.+)"$', re.MULTILINE)
MODEL_FORMAT = "statsbot-model"  # the "format" marker in every metadata.json this worker writes
# C0 and C1 control characters except newline: what could drive a terminal (escape sequences).
CONTROL_CHARS_RE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
# Lone surrogates (JSON "\ud800" escapes, non-UTF-8 file names): they cannot be encoded as UTF-8.
SURROGATE_RE = re.compile("[\ud800-\udfff]")
# Two leading separators: a UNC or device path (\\server\share, \\?\, \\.\, //server/share).
NETWORK_PATH_RE = re.compile(r"^[\\/]{2}")

ERROR_CODES = frozenset(
    {
        "invalid_params",
        "path_not_allowed",
        "file_not_found",
        "not_a_file",
        "bad_extension",
        "file_too_large",
        "empty_file",
        "unreadable",
        "missing_packages",
        "missing_columns",
        "bad_target",
        "not_enough_data",
        "model_not_found",
        "model_refused",
        "invalid_model_id",
        "cancelled",
        "unsupported",
        "internal",
    }
)


class JobError(Exception):
    """A job failed for a reason the user can act on; carries a protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code if code in ERROR_CODES else "internal"
        self.message = message


class JobCancelled(Exception):
    """Raised at a checkpoint once the server asked to cancel the job."""


class UsageError(Exception):
    """A problem with the command line or the saved configuration."""


# --------------------------------------------------------------------------- small helpers


def statsbot_home() -> Path:
    """The worker's own folder: $STATSBOT_HOME or ~/.statsbot."""
    env = os.environ.get("STATSBOT_HOME")
    if env:
        return Path(env).expanduser().absolute()
    return Path.home() / ".statsbot"


@dataclass(frozen=True)
class Paths:
    """Where the worker keeps its files."""

    home: Path

    @property
    def config(self) -> Path:
        return self.home / "config.json"

    @property
    def script(self) -> Path:
        return self.home / "statsbot_worker.py"

    @property
    def previous_script(self) -> Path:
        """The copy an update replaced: what a failed update rolls back to."""
        return self.home / "statsbot_worker.previous.py"

    @property
    def failed_script(self) -> Path:
        """An update that was rolled back, kept for a look."""
        return self.home / "statsbot_worker.failed.py"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def log_file(self) -> Path:
        return self.log_dir / "worker.log"

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def outputs(self) -> Path:
        return self.home / "outputs"

    @property
    def venv(self) -> Path:
        return self.home / "venv"


def fmt_int(n: int) -> str:
    return f"{n:,}"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def valid_text(text: str) -> str:
    """text with every lone surrogate replaced by U+FFFD, so it always encodes as UTF-8."""
    return SURROGATE_RE.sub("\ufffd", text)


def short_text(text: object, limit: int = 300) -> str:
    text = " ".join(valid_text(str(text)).split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def short_name(name: Any) -> str:
    """A column name as it appears in results: text, at most MAX_NAME_CHARS characters."""
    text = valid_text(str(name))
    return text if len(text) <= MAX_NAME_CHARS else text[: MAX_NAME_CHARS - 1] + "\u2026"


def strip_controls(text: str) -> str:
    """text without control characters (terminal escape sequences) or lone surrogates, newlines kept."""
    return valid_text(CONTROL_CHARS_RE.sub("", text))


def utc_now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def parse_version(text: str | None) -> tuple[int, ...]:
    """Leading numeric parts of a version string: '2.2.3rc1' -> (2, 2, 3)."""
    if not text:
        return ()
    parts = []
    for piece in text.split("."):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group(0)))
    return tuple(parts)


def is_missing_value(value: Any) -> bool:
    """NaN, NaT, None and pandas.NA, without importing pandas."""
    if value is None:
        return True
    if type(value).__name__ in ("NAType", "NaTType"):
        return True
    try:
        return bool(value != value)
    except (TypeError, ValueError):
        return False


def json_safe(value: Any, max_chars: int = SAMPLE_STRING_CHARS) -> Any:
    """A JSON-serialisable version of one cell value (strings cut to max_chars)."""
    if isinstance(value, bool) or value is None:
        return value
    if is_missing_value(value):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        value = valid_text(value)
        return value if len(value) <= max_chars else value[: max_chars - 1] + "\u2026"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if hasattr(value, "isoformat"):
        return json_safe(value.isoformat(), max_chars)
    if hasattr(value, "item"):  # numpy scalar
        try:
            return json_safe(value.item(), max_chars)
        except (TypeError, ValueError):
            pass
    if isinstance(value, (list, tuple)):
        return [json_safe(v, max_chars) for v in value]
    return json_safe(str(value), max_chars)


def round_float(value: Any, digits: int = 6) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return round(f, digits) if math.isfinite(f) else None


def round_significant(value: Any, digits: int = 4) -> float | None:
    """A statistic as people quote it: ``digits`` significant digits. The min and max of an
    overfitted model's predictions are the file's own values; rounded, they stay statistics
    (the data budget: no number of the file leaves the machine outside the sample)."""
    f = round_float(value, 12)
    return None if f is None else float(f"{f:.{digits}g}")


def json_size(obj: Any) -> int:
    return len(valid_text(json.dumps(obj, ensure_ascii=False, allow_nan=False)).encode("utf-8"))


def _largest_list(obj: Any, best: tuple[int, Any]) -> tuple[int, Any]:
    """The list (with more than zero items) whose JSON is longest, anywhere in obj."""
    if isinstance(obj, list):
        if obj:
            size = json_size(obj)
            if size > best[0]:
                best = (size, obj)
        for item in obj:
            best = _largest_list(item, best)
    elif isinstance(obj, dict):
        for item in obj.values():
            best = _largest_list(item, best)
    return best


def cap_result_size(message: dict, limit: int = MAX_FRAME_BYTES) -> dict:
    """Shrink the biggest lists in a result until its JSON is below limit bytes.

    Samples, scatter points and column lists are cut in half repeatedly; the result gets
    ``"truncated": true`` in its data. If it still does not fit (e.g. one huge string), the
    result is replaced by an error. The returned message always serialises below limit.
    """
    if json_size(message) < limit:
        return message
    data = message.get("data")
    if isinstance(data, dict):
        data["truncated"] = True
        while json_size(message) >= limit:
            size, biggest = _largest_list(data, (0, None))
            if biggest is None:
                break
            del biggest[len(biggest) // 2 :]
    if json_size(message) < limit:
        return message
    return {
        "type": "result",
        "job_id": message.get("job_id"),
        "success": False,
        "error": "The result was too large to send; see the worker's log on your machine.",
        "error_code": "internal",
    }


def safe_print(text: str, stream: Any = None) -> None:
    """print() that never fails on consoles that cannot show some characters."""
    stream = stream or sys.stdout
    if stream is None:  # pythonw.exe (Windows autostart) has no console
        return
    try:
        stream.write(text + "\n")
    except UnicodeEncodeError:
        encoding = getattr(stream, "encoding", None) or "ascii"
        stream.write(text.encode(encoding, errors="replace").decode(encoding) + "\n")
    except (OSError, ValueError):
        return
    try:
        stream.flush()
    except (OSError, ValueError):
        pass


class Console:
    """User-facing status lines on the terminal (also written to the log file)."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def status(self, text: str) -> None:
        text = strip_controls(str(text))  # server-provided text must not drive the terminal
        line = f"[{time.strftime('%H:%M:%S')}] {text}"
        with self._lock:
            self.lines.append(text)
            safe_print(line, self.stream)
        log.info("%s", text)

    def plain(self, text: str) -> None:
        text = strip_controls(str(text))
        with self._lock:
            self.lines.append(text)
            safe_print(text, self.stream)


class _CleanFormatter(logging.Formatter):
    """Log lines without control characters (they may quote what the server sent)."""

    def format(self, record: logging.LogRecord) -> str:
        return strip_controls(super().format(record))


def setup_logging(log_file: Path, verbose: bool) -> None:
    """Rotating log file in ~/.statsbot/logs; with --verbose also debug lines on stderr."""
    root = logging.getLogger("statsbot_worker")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
    fmt = _CleanFormatter("%(asctime)s %(levelname)s %(threadName)s %(message)s")
    try:
        private_dir(log_file.parent)
        fh = logging.handlers.RotatingFileHandler(
            str(log_file), maxBytes=2 * 1024 * 1024, backupCount=3, encoding="utf-8"
        )
        fh.setFormatter(fmt)
        root.addHandler(fh)
    except OSError as exc:
        safe_print(f"Warning: cannot write the log file {log_file}: {exc}", sys.stderr)
    if verbose:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        root.addHandler(sh)


# --------------------------------------------------------------------------- packages


def package_versions(names: tuple[str, ...] = REQUIRED_PACKAGES + OPTIONAL_PACKAGES) -> dict[str, str | None]:
    """Installed versions by distribution name, read from metadata (nothing is imported)."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in names:
        versions[name] = None
        for dist in DIST_ALIASES.get(name, (name,)):
            try:
                versions[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
            except Exception:  # a broken installation must not stop the worker from explaining
                log.debug("cannot read the version of %s", dist, exc_info=True)
    return versions


def missing_required(versions: dict[str, str | None]) -> list[str]:
    """Required packages that are absent or older than the worker can use."""
    missing = []
    for name in REQUIRED_PACKAGES:
        version = versions.get(name)
        minimum = MIN_VERSIONS.get(name)
        if version is None or (minimum and parse_version(version)[:2] < minimum):
            missing.append(name)
    return missing


def available_models(versions: dict[str, str | None]) -> list[str]:
    models = []
    if versions.get("lightgbm"):
        models.append("lightgbm")
    if versions.get("scikit-learn"):
        models.extend(["random_forest", "linear"])
    if versions.get("xgboost"):
        models.append("xgboost")
    if versions.get("lightgbm") and versions.get("scikit-learn"):
        models.insert(0, "auto")  # issue 14: the search (LightGBM, plus XGBoost when installed)
    return models


def requirements_for(version_info: tuple[int, ...] = tuple(sys.version_info[:2])) -> list[str]:
    """Pinned, known-good requirements for the private environment on this Python."""
    if tuple(version_info[:2]) <= (3, 13):
        return list(PINNED_REQUIREMENTS)
    return list(UNPINNED_REQUIREMENTS)


def venv_python(venv_dir: Path) -> Path:
    if os.name == "nt":
        return venv_dir / "Scripts" / "python.exe"
    return venv_dir / "bin" / "python"


def running_in_venv(venv_dir: Path) -> bool:
    try:
        return Path(sys.prefix).resolve() == venv_dir.resolve()
    except OSError:
        return False


def pip_command(requirements: list[str], python: str | None = None) -> str:
    exe = python or (Path(sys.executable).name if sys.executable else "python3")
    return f"{exe} -m pip install " + " ".join(f'"{r}"' for r in requirements)


# --------------------------------------------------------------------------- CLI and config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see --help)."""
    parser = argparse.ArgumentParser(
        prog="statsbot_worker.py",
        description="StatsBot local worker: train and predict on this machine from Telegram.",
    )
    parser.add_argument(
        "--token",
        help=f"one-time token from /connect in the bot (or set {TOKEN_ENV}, which the process list does not show)",
    )
    parser.add_argument(
        "--server",
        help="server URL (wss://HOST/ws/worker/ or https://HOST); default: the server this "
        "script came from, then the one saved in config.json",
    )
    parser.add_argument(
        "--yes",
        "-y",
        action="store_true",
        help="install missing packages (and, with --update, the update) without asking",
    )
    parser.add_argument(
        "--no-install", action="store_true", help="never install packages; print the pip command instead"
    )
    parser.add_argument(
        "--autostart",
        nargs="?",
        const="on",
        choices=["on", "off"],
        help="start the worker automatically at login (--autostart off removes it)",
    )
    parser.add_argument(
        "--allow-dir",
        action="append",
        metavar="DIR",
        help="folder the worker may read, but not the hidden files and folders in it (repeatable; default: "
        "the folders of the last run, else your home)",
    )
    parser.add_argument(
        "--models-dir", metavar="DIR", help="where models are saved (default ~/.statsbot/models)"
    )
    parser.add_argument(
        "--max-file-size",
        type=float,
        metavar="MB",
        help=f"largest input file in MB (default {DEFAULT_MAX_FILE_MB})",
    )
    parser.add_argument(
        "--foreground",
        action="store_true",
        help="keep running in this terminal (with --autostart: enable it for the next login only)",
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="download the newest worker from the server's /worker, show its SHA-256, check it and install it",
    )
    parser.add_argument(
        "--auto-update",
        action="store_true",
        help="install updates the server offers without asking (remembered; --no-update turns it off)",
    )
    parser.add_argument(
        "--no-update",
        action="store_true",
        help="never update automatically (the default; also turns off a remembered --auto-update)",
    )
    parser.add_argument(
        "--self-check",
        action="store_true",
        help="check that this copy can start here (Python, packages, settings) without connecting, then exit",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging on stderr")
    parser.add_argument("--version", action="store_true", help="print the worker version and exit")
    args = parser.parse_args(argv)
    if args.max_file_size is not None and not (args.max_file_size > 0):
        parser.error("--max-file-size must be a positive number of MB")
    if args.yes and args.no_install:
        parser.error("--yes and --no-install contradict each other")
    if args.auto_update and args.no_update:
        parser.error("--auto-update and --no-update contradict each other")
    return args


def normalize_server_url(url: str) -> str:
    """ws(s)://HOST/ws/worker/ from a ws(s) or http(s) URL (http(s) paths are mapped)."""
    url = (url or "").strip()
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.lower()
    if scheme not in ("ws", "wss", "http", "https") or not parsed.netloc:
        raise UsageError(
            f"Server URL {url!r} is not valid: use wss://HOST/ws/worker/ or https://HOST "
            "(ws:// and http:// for a local test server)."
        )
    if scheme in ("ws", "wss"):
        path = parsed.path or "/"
        if path == "/":
            path = "/ws/worker/"
        return urllib.parse.urlunsplit((scheme, parsed.netloc, path, parsed.query, ""))
    path = parsed.path.rstrip("/")
    for suffix in ("/ws/worker", "/worker"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    ws_scheme = "wss" if scheme == "https" else "ws"
    return urllib.parse.urlunsplit((ws_scheme, parsed.netloc, path + "/ws/worker/", "", ""))


def download_url_for(server_url: str) -> str:
    """The http(s) URL the server serves this script at, from its WebSocket URL."""
    parsed = urllib.parse.urlsplit(server_url)
    scheme = "https" if parsed.scheme == "wss" else "http"
    path = parsed.path.rstrip("/")
    if path.endswith("/ws/worker"):
        path = path[: -len("/ws/worker")]
    return urllib.parse.urlunsplit((scheme, parsed.netloc, path + "/worker", "", ""))


def is_update_url(server_url: str, url: Any) -> bool:
    """True only for the exact /worker URL of the server this worker uses (download_url_for).

    Same scheme (https for wss), host, port and path; no user:password@, query or fragment.
    ``/worker_evil``, ``/worker/x`` or another host are not it. Malformed URLs are simply not it.
    """
    if not isinstance(url, str) or not isinstance(server_url, str):
        return False
    try:
        expected = urllib.parse.urlsplit(download_url_for(server_url))
        other = urllib.parse.urlsplit(url.strip())
        return (
            other.scheme.lower() == expected.scheme
            and other.username is None
            and other.password is None
            and bool(expected.hostname)
            and (other.hostname or "").lower() == (expected.hostname or "").lower()
            and _port(other) == _port(expected)
            and other.path == expected.path
            and not other.query
            and not other.fragment
        )
    except ValueError:  # e.g. a port that is not a number or out of range
        return False


def _port(parts: urllib.parse.SplitResult) -> int:
    if parts.port:
        return parts.port
    return 443 if parts.scheme in ("https", "wss") else 80


class ConfigStore:
    """~/.statsbot/config.json, always written with mode 0600."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def load(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable config %s: %s", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def save(self, data: dict) -> None:
        with self._lock:
            write_private_file(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def update(self, **changes: Any) -> dict:
        data = self.load()
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        self.save(data)
        return data


def private_dir(path: Path) -> Path:
    """Create a folder (and its missing parents) with mode 0700; best effort on Windows.

    (``mkdir(parents=True)`` would give the parents the default umask, e.g. 0755.)
    """
    path = Path(path)
    missing: list[Path] = []
    current = path
    while not os.path.lexists(current) and current.parent != current:
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:  # created meanwhile by someone else: checked below
            continue
        try:
            os.chmod(folder, 0o700)
        except OSError:  # Windows: best effort
            pass
    if not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder")
    return path


def secure_home(paths: Paths) -> None:
    """~/.statsbot and its logs, models and outputs folders: create or tighten them to 0700.

    Folders left by an older worker (created with the default umask) are tightened; symlinks
    (a folder the user placed elsewhere on purpose) and folders of other users are left alone.
    """
    private_dir(paths.home)
    private_dir(paths.log_dir)
    for folder in (paths.home, paths.log_dir, paths.models, paths.outputs):
        try:
            if folder.is_symlink() or not folder.is_dir():
                continue
            st = folder.stat()
            if os.name != "nt" and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077:
                os.chmod(folder, 0o700)
        except OSError as exc:
            log.debug("cannot tighten %s: %s", folder, exc)


def write_private_file(path: Path, text: str) -> None:
    """Atomically write text to path, readable by the owner only (0600)."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.chmod(tmp, 0o600)
        except OSError:  # Windows: best effort
            pass
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_file_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@dataclass
class Settings:
    """Everything a running worker needs, resolved from the CLI and config.json."""

    paths: Paths
    server: str
    machine_id: str
    allowed_roots: list[Path]
    models_dir: Path
    max_file_bytes: int
    token: str | None = None
    credential: str | None = None
    auto_update: bool = False  # install offered updates without asking (opt-in, see --auto-update)
    # The allowed folders as named (absolute, symlinks not resolved), parallel to allowed_roots:
    # paths are checked against these before anything on disk is resolved.
    root_aliases: list[Path] = field(default_factory=list)

    @property
    def outputs_dir(self) -> Path:
        return self.paths.outputs


def resolve_dir(raw: str, what: str) -> Path:
    if "\x00" in raw:
        raise UsageError(f"{what} {raw!r} contains a NUL byte.")
    path = Path(os.path.realpath(os.path.expanduser(raw)))
    if not path.is_dir():
        raise UsageError(f"{what} {raw}: no such folder.")
    return path


def lexical_path(raw: str) -> Path:
    """raw made absolute and normalised as text only: nothing on disk is touched."""
    return Path(os.path.abspath(os.path.normpath(os.path.expanduser(raw))))


def resolve_settings(args: argparse.Namespace, saved: dict, paths: Paths) -> Settings:
    """Merge command line, the script's built-in server and config.json (in that order)."""
    if args.server:
        server = normalize_server_url(args.server)
    elif DEFAULT_SERVER != _UNFILLED_SERVER:
        server = normalize_server_url(DEFAULT_SERVER)
    elif saved.get("server"):
        server = normalize_server_url(str(saved["server"]))
    else:
        raise UsageError(
            "No server URL: this copy of the script was not downloaded from a StatsBot server. "
            "Pass --server wss://HOST/ws/worker/."
        )
    credential = saved.get("credential") if saved.get("server") == server else None
    if args.allow_dir:
        named = list(args.allow_dir)
        roots = [resolve_dir(d, "--allow-dir") for d in named]
    elif saved.get("allowed_dirs"):
        named = [str(d) for d in saved["allowed_dirs"]]
        roots = [Path(os.path.realpath(os.path.expanduser(d))) for d in named]
    else:
        named = [str(Path.home())]
        roots = [Path(os.path.realpath(named[0]))]
    # The worker's own outputs (predictions written when the input's folder was read-only) stay
    # readable, although ~/.statsbot is hidden.
    named.append(str(paths.outputs))
    roots.append(Path(os.path.realpath(str(paths.outputs))))
    if args.models_dir:
        models_dir = Path(os.path.realpath(os.path.expanduser(args.models_dir)))
    elif saved.get("models_dir"):
        models_dir = Path(str(saved["models_dir"]))
    else:
        models_dir = paths.models
    if args.max_file_size is not None:
        max_mb = float(args.max_file_size)
    else:
        max_mb = float(saved.get("max_file_size_mb") or DEFAULT_MAX_FILE_MB)
    machine_id = saved.get("machine_id") or secrets.token_hex(16)
    return Settings(
        paths=paths,
        server=server,
        machine_id=str(machine_id),
        allowed_roots=roots,
        models_dir=models_dir,
        max_file_bytes=int(max_mb * 1024 * 1024),
        token=args.token or os.environ.get(TOKEN_ENV) or None,
        credential=credential,
        auto_update=bool(args.auto_update or (saved.get("auto_update") is True and not args.no_update)),
        root_aliases=[lexical_path(d) for d in named],
    )


def settings_to_config(settings: Settings, saved: dict) -> dict:
    data = dict(saved)
    data.update(
        {
            "server": settings.server,
            "machine_id": settings.machine_id,
            "allowed_dirs": [
                str(p)
                for p in (
                    settings.root_aliases
                    if len(settings.root_aliases) == len(settings.allowed_roots)
                    else settings.allowed_roots
                )
                if p not in (settings.paths.outputs, Path(os.path.realpath(str(settings.paths.outputs))))
            ],
            "models_dir": str(settings.models_dir),
            "max_file_size_mb": round(settings.max_file_bytes / (1024 * 1024), 3),
            "worker_version": WORKER_VERSION,
            "auto_update": settings.auto_update,
        }
    )
    if settings.credential:
        data["credential"] = settings.credential
    elif saved.get("server") != settings.server:
        data.pop("credential", None)
    return data


def strip_args(argv: list[str], names: tuple[str, ...], with_value: tuple[str, ...] = ()) -> list[str]:
    """argv without the given flags (``--x v``, ``--x=v`` and bare ``--x``)."""
    out: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in names:
            if "=" not in arg and name in with_value:
                skip = True
            elif (
                "=" not in arg
                and name == "--autostart"
                and i + 1 < len(argv)
                and argv[i + 1] in ("on", "off")
            ):
                skip = True
            continue
        out.append(arg)
    return out


# --------------------------------------------------------------------------- path safety


def is_within(path: Path, root: Path) -> bool:
    """True when the resolved path is root itself or inside it (no string-prefix tricks)."""
    p = os.path.normcase(str(path))
    r = os.path.normcase(str(root))
    try:
        return os.path.commonpath([p, r]) == r
    except ValueError:  # different drives on Windows
        return False


def _roots_text(roots: list[Path]) -> str:
    return ", ".join(str(r) for r in roots) or "none"


# Folders of the operating system: never offered as an --allow-dir suggestion.
SYSTEM_DIRS_POSIX = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run", "/sbin",
    "/sys", "/usr", "/var", "/System", "/Library", "/Applications", "/private/etc", "/private/var",
    "/cores",
)  # fmt: skip
SYSTEM_DIRS_WINDOWS = ("windows", "program files", "program files (x86)", "programdata")
USER_DIRS_IN_SYSTEM_DIRS = ("/var/tmp", "/var/folders", "/private/var/tmp", "/private/var/folders")  # temp


def is_system_location(folder: Path) -> bool:
    """True for a file system root or a folder of the operating system (/etc, C:\\Windows, ...)."""
    text = os.path.normpath(str(folder))
    if os.name == "nt":
        drive, rest = os.path.splitdrive(text)
        parts = [p for p in re.split(r"[\\/]+", rest) if p]
        return not parts or parts[0].lower() in SYSTEM_DIRS_WINDOWS
    if any(is_within(Path(text), Path(d)) for d in USER_DIRS_IN_SYSTEM_DIRS):
        return False
    return text == "/" or any(is_within(Path(text), Path(d)) for d in SYSTEM_DIRS_POSIX)


def _allow_dir_hint(folder: Path) -> str:
    """How to allow a folder, or why the worker will not offer it (system folders)."""
    if is_system_location(folder):
        return f"{folder} is a system folder, so the worker does not offer to read it."
    return f"Start the worker with --allow-dir {folder} to allow it."


def _outside(raw: str, path: Path, allowed_roots: list[Path]) -> JobError:
    # Paths name files: suggest the folder that holds it (never the file, never a system folder).
    return JobError(
        "path_not_allowed",
        f"{short_text(raw, 300)} is outside the folders this worker may read ({_roots_text(allowed_roots)}). "
        + _allow_dir_hint(path.parent),
    )


def hidden_part(path: Path, root: Path) -> str | None:
    """The first name below root that starts with '.' (a hidden file or folder), or None."""
    try:
        rel = os.path.relpath(str(path), str(root))
    except ValueError:  # another drive on Windows
        return None
    for part in re.split(r"[\\/]+", rel):
        if part.startswith(".") and part not in (".", ".."):
            return part
    return None


def _check_not_hidden(raw: str, path: Path, roots: list[Path]) -> None:
    """Refuse a path that is hidden below every allowed folder holding it (~/.ssh/x.csv, ~/.env.csv).

    Secrets live in hidden files and folders of the home folder (the default allowed folder), so
    nothing hidden is read below an allowed folder; a hidden folder is read only when it is (or
    holds) an allowed folder named explicitly (--allow-dir ~/.config/data).
    """
    holders = [root for root in roots if is_within(path, root)]
    hidden = [hidden_part(path, root) for root in holders]
    if not holders or not all(hidden):
        return
    name = hidden[0]
    if name == path.name:
        raise JobError(
            "path_not_allowed",
            f"{short_text(raw, 300)} is a hidden file (its name starts with '.'); the worker does not read "
            "hidden files, which often hold passwords and keys. Rename it (without the leading '.') to use it.",
        )
    raise JobError(
        "path_not_allowed",
        f"{short_text(raw, 300)} is inside the hidden folder {short_name(name)}; the worker does not read "
        f"hidden folders unless you allow one by name (they often hold passwords and keys). "
        + _allow_dir_hint(path.parent),
    )


def resolve_user_path(
    raw: Any, allowed_roots: list[Path], what: str = "file_path", aliases: Any = ()
) -> Path:
    """Expand ~, reject NUL, '..' and network paths, then require a place inside a root.

    The check runs twice: on the path as text (against the roots and their ``aliases``, the
    folders as named) before anything on disk is touched - on Windows, resolving a path opens
    it, and opening ``//host/share/x`` (a UNC path) would send the user's credentials to that host - and
    again on the path with symlinks resolved (against the roots only).
    """
    if not isinstance(raw, str) or not raw.strip():
        raise JobError("invalid_params", f"{what} must be a non-empty path.")
    raw = raw.strip()
    if "\x00" in raw:
        raise JobError("path_not_allowed", f"{what} contains a NUL byte.")
    try:
        os.fsencode(raw)
    except UnicodeEncodeError:  # a lone surrogate no file name on this system can hold
        raise JobError(
            "invalid_params", f"{short_text(raw, 300)} is not a valid file name on this machine."
        ) from None
    network = JobError(
        "path_not_allowed",
        f"{short_text(raw, 300)} is a network or device path; this worker reads local files only "
        "(copy the file to a local folder).",
    )
    if NETWORK_PATH_RE.match(raw):
        raise network
    expanded = os.path.expanduser(raw)
    parts = re.split(r"[\\/]+", expanded)
    if ".." in parts:
        raise JobError(
            "path_not_allowed", f"{short_text(raw, 300)} contains '..'; give the full path to the file."
        )
    if not os.path.isabs(expanded):
        expanded = os.path.join(str(Path.home()), expanded)
    lexical = lexical_path(expanded)
    if NETWORK_PATH_RE.match(str(lexical)):
        raise network
    if not any(is_within(lexical, root) for root in [*allowed_roots, *aliases]):
        raise _outside(raw, lexical, allowed_roots)
    _check_not_hidden(raw, lexical, [*allowed_roots, *aliases])
    resolved = Path(os.path.realpath(str(lexical)))
    if not any(is_within(resolved, root) for root in allowed_roots):
        raise _outside(raw, resolved, allowed_roots)
    _check_not_hidden(raw, resolved, allowed_roots)
    return resolved


def check_input_file(
    raw: Any, allowed_roots: list[Path], max_bytes: int, aliases: Any = ()
) -> tuple[Path, str]:
    """Validate an input path from the server; returns the resolved path and its format."""
    path = resolve_user_path(raw, allowed_roots, aliases=aliases)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise JobError("file_not_found", f"{raw}: no such file.") from None
    except PermissionError:
        raise JobError("unreadable", f"{raw}: permission denied.") from None
    except OSError as exc:
        raise JobError("unreadable", f"{raw}: {exc.strerror or exc}.") from None
    if stat.S_ISDIR(st.st_mode):
        raise JobError("not_a_file", f"{raw} is a folder, not a file.")
    if not stat.S_ISREG(st.st_mode):
        raise JobError("not_a_file", f"{raw} is not a regular file (device, pipe or socket).")
    fmt = ALLOWED_EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        allowed = ", ".join(sorted(ALLOWED_EXTENSIONS))
        raise JobError("bad_extension", f"{path.name}: unsupported file type; use one of {allowed}.")
    if not os.access(path, os.R_OK):
        raise JobError("unreadable", f"{raw}: this worker has no permission to read it.")
    if st.st_size == 0:
        raise JobError("empty_file", f"{raw} is empty.")
    if st.st_size > max_bytes:
        raise JobError(
            "file_too_large",
            f"{path.name} is {fmt_bytes(st.st_size)}, over this worker's limit of {fmt_bytes(max_bytes)}. "
            "Start the worker with --max-file-size MB to raise it.",
        )
    return path, fmt


def check_output_path(raw: Any, allowed_roots: list[Path], input_path: Path, aliases: Any = ()) -> Path:
    """An output CSV path from the server: inside a root, .csv, new, in an existing writable folder."""
    path = resolve_user_path(raw, allowed_roots, what="output_path", aliases=aliases)
    if path.suffix.lower() != ".csv":
        raise JobError("bad_extension", "output_path must end in .csv.")
    if path == input_path:
        raise JobError("invalid_params", "output_path must not be the input file.")
    if os.path.lexists(path):
        raise JobError(
            "invalid_params",
            f"{short_text(raw, 300)} already exists; the worker never overwrites a file it was given. "
            "Choose a new file name, or leave output_path empty for <name>_predictions.csv.",
        )
    if not path.parent.is_dir():
        raise JobError("file_not_found", f"Folder {path.parent} does not exist.")
    if not os.access(path.parent, os.W_OK):
        raise JobError("unreadable", f"Folder {path.parent} is not writable.")
    return path


def validate_model_id(model_id: Any) -> str:
    if not isinstance(model_id, str) or not MODEL_ID_RE.match(model_id) or ".." in model_id:
        raise JobError(
            "invalid_model_id",
            "model_id must be a model name (letters, digits, '_', '-', '.'), not a path.",
        )
    return model_id


def model_dir_for(models_dir: Path, model_id: str) -> Path:
    """The folder of a model, guaranteed to be directly inside models_dir."""
    validate_model_id(model_id)
    root = Path(os.path.realpath(str(models_dir)))
    candidate = root / model_id
    resolved = Path(os.path.realpath(str(candidate)))
    if resolved == root or resolved.parent != root or not is_within(resolved, root):
        raise JobError("invalid_model_id", f"{model_id} is not a model in {root}.")
    return resolved


# --------------------------------------------------------------------------- jobs: context


class JobContext:
    """What a job function gets: its params, settings, progress reporting and cancellation."""

    def __init__(
        self,
        job_id: str,
        params: dict,
        settings: Settings,
        emit: Callable[[dict], None] | None = None,
        cancel_event: threading.Event | None = None,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.job_id = job_id
        self.params = params
        self.settings = settings
        self.cancel_event = cancel_event or threading.Event()
        self.stop_event = stop_event or threading.Event()  # stop_early: finish with the best so far
        self._emit = emit
        self._last_sent = 0.0
        self._last_status = ""

    def checkpoint(self) -> None:
        if self.cancel_event.is_set():
            raise JobCancelled()

    def progress(
        self, percent: float, status: str, message: str, force: bool = False, search: dict | None = None
    ) -> None:
        """Send a progress update (rate limited unless the status changes), then check for cancel.

        ``search`` (auto training) is sent along as the frame's ``search`` object.
        """
        self.checkpoint()
        now = time.monotonic()
        changed = status != self._last_status
        if self._emit and (
            force or changed or percent >= 100 or now - self._last_sent >= PROGRESS_MIN_INTERVAL_S
        ):
            self._last_sent = now
            self._last_status = status
            frame = {
                "type": "progress",
                "job_id": self.job_id,
                "status": status,
                "progress": int(max(0, min(100, percent))),
                "message": short_text(message, 300),
            }
            if search is not None:
                frame["search"] = search
            self._emit(frame)
        log.debug("job %s %s %d%% %s", self.job_id, status, int(percent), message)


def _require(module: str, purpose: str) -> Any:
    """Import a package lazily; a missing one becomes a clear missing_packages error."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        dist = {"sklearn": "scikit-learn"}.get(module.split(".")[0], module.split(".")[0])
        raise JobError(
            "missing_packages",
            f"{purpose} needs the '{dist}' package, which is not installed here: {pip_command([dist])}",
        ) from exc


def _pandas() -> Any:
    return _require("pandas", "Reading data")


# --------------------------------------------------------------------------- jobs: reading data


def sniff_delimiter(path: Path) -> str:
    """The delimiter of a .csv file (',', ';', tab or '|'), guessed from its first 64 KB."""
    import csv

    with open(path, "rb") as fh:
        head = fh.read(65536)
    text = head.decode("utf-8", errors="replace")
    lines = text.splitlines()
    if len(lines) > 1 and not head.endswith((b"\n", b"\r")) and len(head) == 65536:
        lines = lines[:-1]  # drop a line cut by the 64 KB window
    sample = "\n".join(lines[:50])
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _csv_kwargs(path: Path, fmt: str) -> dict:
    sep = "\t" if fmt == "tsv" else sniff_delimiter(path)
    return {"sep": sep, "encoding": "utf-8-sig", "encoding_errors": "replace"}


def _str_columns(df: Any) -> Any:
    df.columns = [str(c) for c in df.columns]
    return df


def read_columns(path: Path, fmt: str) -> list[str]:
    """Column names only (header / schema), without reading the data."""
    if fmt in ("csv", "tsv"):
        pd = _pandas()
        return [str(c) for c in pd.read_csv(path, nrows=0, **_csv_kwargs(path, fmt)).columns]
    if fmt == "parquet":
        pq = _require("pyarrow.parquet", "Reading Parquet files")
        return [str(n) for n in pq.read_schema(str(path)).names]
    if fmt == "excel":
        openpyxl = _require("openpyxl", "Reading Excel files")
        wb = openpyxl.load_workbook(str(path), read_only=True, data_only=True)
        try:
            ws = wb.worksheets[0]
            for row in ws.iter_rows(min_row=1, max_row=1, values_only=True):
                return _header_names(row)
            return []
        finally:
            wb.close()
    _require("xlrd", "Reading .xls files")
    pd = _pandas()
    return [str(c) for c in pd.read_excel(path, nrows=0).columns]


def _header_names(row: tuple) -> list[str]:
    names = []
    for i, value in enumerate(row):
        names.append(str(value) if value is not None else f"Unnamed: {i}")
    while names and names[-1].startswith("Unnamed: ") and row[len(names) - 1] is None:
        names.pop()
    return names


def read_table(path: Path, fmt: str, columns: list[str] | None = None, nrows: int | None = None) -> Any:
    """A whole table (or its first nrows) as a DataFrame with string column names."""
    pd = _pandas()
    if fmt in ("csv", "tsv"):
        df = pd.read_csv(path, usecols=columns, nrows=nrows, **_csv_kwargs(path, fmt))
    elif fmt == "parquet":
        pq = _require("pyarrow.parquet", "Reading Parquet files")
        if nrows is None:
            df = pq.read_table(str(path), columns=columns).to_pandas()
        else:
            pf = pq.ParquetFile(str(path))
            batches = pf.iter_batches(batch_size=nrows, columns=columns)
            batch = next(iter(batches), None)
            df = batch.to_pandas() if batch is not None else pf.schema_arrow.empty_table().to_pandas()
    elif fmt == "excel":
        _require("openpyxl", "Reading Excel files")
        df = pd.read_excel(path, sheet_name=0, usecols=columns, nrows=nrows, engine="openpyxl")
    else:
        _require("xlrd", "Reading .xls files")
        df = pd.read_excel(path, sheet_name=0, usecols=columns, nrows=nrows)
    return _str_columns(df)


def iter_chunks(path: Path, fmt: str, chunk_rows: int) -> Iterator[Any]:
    """The table in DataFrames of at most chunk_rows rows; memory stays flat for CSV/Parquet/xlsx."""
    pd = _pandas()
    if fmt in ("csv", "tsv"):
        with pd.read_csv(path, chunksize=chunk_rows, **_csv_kwargs(path, fmt)) as reader:
            for chunk in reader:
                yield _str_columns(chunk)
    elif fmt == "parquet":
        pq = _require("pyarrow.parquet", "Reading Parquet files")
        pf = pq.ParquetFile(str(path))
        for batch in pf.iter_batches(batch_size=chunk_rows):
            yield _str_columns(batch.to_pandas())
    elif fmt == "excel":
        yield from _iter_xlsx_chunks(path, chunk_rows)
    else:
        df = read_table(path, fmt)
        for start in range(0, len(df), chunk_rows):
            yield df.iloc[start : start + chunk_rows]


def _iter_xlsx_chunks(path: Path, chunk_rows: int) -> Iterator[Any]:
    pd = _pandas()
    openpyxl = _require("openpyxl", "Reading Excel files")
    wb = openpyxl.load_workbook(str(path), read_only=True, data_only=True)
    try:
        rows = wb.worksheets[0].iter_rows(values_only=True)
        header_row = next(rows, None)
        if header_row is None:
            return
        header = _header_names(header_row)
        width = len(header)
        buffer: list[tuple] = []
        for row in rows:
            values = tuple(row[:width]) + (None,) * max(0, width - len(row))
            if all(v is None for v in values):
                continue
            buffer.append(values)
            if len(buffer) >= chunk_rows:
                yield pd.DataFrame.from_records(buffer, columns=header)
                buffer = []
        if buffer:
            yield pd.DataFrame.from_records(buffer, columns=header)
    finally:
        wb.close()


def count_csv_rows(path: Path) -> tuple[int, bool]:
    """Data rows of a CSV counted from newlines in 1 MB binary blocks (header excluded).

    The count is exact unless the file has quoted fields (which may hold newlines) or blank
    lines (which readers skip); the second value says which.
    """
    newlines = 0
    exact = True
    last = b""
    with open(path, "rb") as fh:
        while True:
            block = fh.read(1024 * 1024)
            if not block:
                break
            newlines += block.count(b"\n")
            if exact and (b'"' in block or b"\n\n" in block or b"\n\r\n" in block):
                exact = False
            last = block[-1:]
    lines = newlines + (1 if last and last != b"\n" else 0)
    return max(0, lines - 1), exact


def count_rows(path: Path, fmt: str) -> tuple[int | None, bool]:
    """(data rows, exact?) without loading the table."""
    if fmt in ("csv", "tsv"):
        return count_csv_rows(path)
    if fmt == "parquet":
        pq = _require("pyarrow.parquet", "Reading Parquet files")
        return int(pq.ParquetFile(str(path)).metadata.num_rows), True
    if fmt == "excel":
        openpyxl = _require("openpyxl", "Reading Excel files")
        wb = openpyxl.load_workbook(str(path), read_only=True, data_only=True)
        try:
            ws = wb.worksheets[0]
            max_row = ws.max_row
            return (max(0, int(max_row) - 1), False) if max_row else (None, False)
        finally:
            wb.close()
    return None, False


# --------------------------------------------------------------------------- jobs: column logic


def column_kind(series: Any) -> str:
    """'numeric', 'datetime' or 'categorical' for a feature column."""
    pd = _pandas()
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        return "numeric"
    if pd.api.types.is_datetime64_any_dtype(series):
        return "datetime"
    return "categorical"


def _integral(values: Any) -> bool:
    np = _require("numpy", "Training")
    arr = np.asarray(values, dtype="float64")
    arr = arr[np.isfinite(arr)]
    return bool(arr.size) and bool(np.all(np.floor(arr) == arr))


def detect_task(series: Any) -> str:
    """classification for text/bool targets or integers with at most 20 distinct values."""
    pd = _pandas()
    values = series.dropna()
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return "classification"
    if values.nunique() <= 20 and _integral(values):
        return "classification"
    return "regression"


def suggest_task(series: Any) -> str | None:
    """What a column could be predicted as, or None for constant/empty/identifier columns."""
    pd = _pandas()
    values = series.dropna()
    n_unique = int(values.nunique())
    if n_unique < 2:
        return None
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if not numeric and n_unique > MAX_CLASSES:
        return None  # free text or identifiers
    if pd.api.types.is_datetime64_any_dtype(values):
        return None
    return detect_task(values)


def build_feature_schema(df: Any, features: list[str]) -> tuple[list[dict], list[str]]:
    """Per-feature kind and, for text columns, the categories kept (most frequent first)."""
    schema: list[dict] = []
    warnings: list[str] = []
    n = len(df)
    for name in features:
        kind = column_kind(df[name])
        entry: dict = {"name": name, "kind": kind}
        if kind == "categorical":
            values = df[name].dropna().astype(str)
            counts = values.value_counts()
            if len(counts) > MAX_CATEGORIES:
                warnings.append(
                    f"Column '{short_name(name)}' has {fmt_int(len(counts))} distinct values; kept the "
                    f"{fmt_int(MAX_CATEGORIES)} most frequent, the others count as missing."
                )
            if n and len(counts) >= 0.9 * n and n > 50:
                warnings.append(
                    f"Column '{short_name(name)}' looks like an identifier (almost every value is unique)."
                )
            entry["categories"] = sorted(str(c) for c in counts.index[:MAX_CATEGORIES])
        schema.append(entry)
    return schema, warnings


def prepare_features(df: Any, schema: list[dict]) -> Any:
    """Features in a fixed layout: float64 numbers, and categories with the training lists.

    Text values never seen in training become missing, so prediction maps every value
    exactly as training did, whatever dtypes the reader produced for this chunk.
    """
    pd = _pandas()
    out = {}
    for entry in schema:
        name = entry["name"]
        col = df[name]
        if entry["kind"] == "numeric":
            out[name] = _to_float(col)
        elif entry["kind"] == "datetime":
            ts = pd.to_datetime(col, errors="coerce", utc=True)
            out[name] = (ts - pd.Timestamp(0, tz="UTC")).dt.total_seconds().astype("float64")
        else:
            text = col.astype(str)  # the same text str() gives, vectorised
            text = text.where(col.notna() & text.isin(entry["categories"]))
            out[name] = pd.Series(
                pd.Categorical(text, categories=entry["categories"]), index=df.index, name=name
            )
    return pd.DataFrame(out, index=df.index)


def _to_float(col: Any) -> Any:
    """float64 values of a column; text that is not a number (or true/false) becomes NaN."""
    pd = _pandas()
    if pd.api.types.is_float_dtype(col.dtype) and str(col.dtype) == "float64":
        return col
    if pd.api.types.is_bool_dtype(col.dtype) or pd.api.types.is_numeric_dtype(col.dtype):
        return col.astype("float64")
    lowered = col.astype(str).str.strip().str.lower()
    flags = lowered.map({"true": 1.0, "false": 0.0})
    return pd.to_numeric(col.where(flags.isna()), errors="coerce").astype("float64").fillna(flags)


def design_matrix(model_type: str, features: Any, schema: list[dict]) -> Any:
    """What each model family is fitted on, derived from prepare_features' output."""
    if model_type in ("lightgbm", "xgboost"):
        return features
    pd = _pandas()
    np = _require("numpy", "Training")
    out = {}
    for entry in schema:
        col = features[entry["name"]]
        if entry["kind"] != "categorical":
            out[entry["name"]] = col
        elif model_type == "random_forest":
            codes = col.cat.codes.astype("float64")
            out[entry["name"]] = codes.where(codes >= 0, np.nan)
        else:
            out[entry["name"]] = col.astype(object).where(col.notna(), "__missing__").astype(object)
    return pd.DataFrame(out, index=features.index)


# --------------------------------------------------------------------------- jobs: models

MODEL_ALIASES = {
    "lightgbm": "lightgbm",
    "lgbm": "lightgbm",
    "lgb": "lightgbm",
    "random_forest": "random_forest",
    "randomforest": "random_forest",
    "rf": "random_forest",
    "forest": "random_forest",
    "linear": "linear",
    "linear_regression": "linear",
    "logistic": "linear",
    "logistic_regression": "linear",
    "xgboost": "xgboost",
    "xgb": "xgboost",
    "auto": "auto",
    "automl": "auto",
    "best": "auto",
}
MODEL_LABELS = {
    "lightgbm": "LightGBM",
    "random_forest": "Random Forest",
    "linear": "linear model",
    "xgboost": "XGBoost",
    "auto": "the best of a search",
}


def normalize_model_type(raw: Any) -> str:
    if raw is None or raw == "":
        return "lightgbm"
    key = str(raw).strip().lower().replace("-", "_").replace(" ", "_")
    if key not in MODEL_ALIASES:
        raise JobError(
            "invalid_params", f"Unknown model_type {raw!r}; use auto, lightgbm, random_forest, linear or xgboost."
        )
    return MODEL_ALIASES[key]


def random_forest_settings(n_rows: int, task: str = "classification") -> tuple[dict, list[str]]:
    """Forest parameters with limits that keep big data affordable, and what they cost."""
    params: dict = {"n_estimators": 100, "n_jobs": -1, "random_state": 42}
    warnings: list[str] = []
    if n_rows > RF_BIG_DATA_ROWS:
        params.update({"max_depth": 16, "max_samples": 0.3, "min_samples_leaf": 5})
        if task == "regression":
            params["max_features"] = 0.5
        warnings.append(
            f"Random forest on {fmt_int(n_rows)} rows is slow, so it was limited to 100 trees of depth 16, "
            "each on 30% of the rows. Even so it takes about 3-15 times as long as LightGBM, "
            "which is usually at least as accurate on data this size."
        )
    return params, warnings


def make_estimator(model_type: str, task: str, n_rows: int, schema: list[dict]) -> tuple[Any, list[str]]:
    """An unfitted estimator for the model family and task, plus warnings about its cost."""
    classification = task == "classification"
    if model_type == "lightgbm":
        lgb = _require("lightgbm", "LightGBM")
        cls = lgb.LGBMClassifier if classification else lgb.LGBMRegressor
        threads = search_threads(n_rows, len(schema))  # one thread on small data: see search_threads
        return cls(
            n_estimators=200, learning_rate=0.05, num_leaves=31, random_state=42, verbose=-1, n_jobs=threads
        ), []
    if model_type == "xgboost":
        xgb = _require("xgboost", "XGBoost")
        cls = xgb.XGBClassifier if classification else xgb.XGBRegressor
        return cls(
            n_jobs=search_threads(n_rows, len(schema)),
            n_estimators=200,
            learning_rate=0.1,
            tree_method="hist",
            enable_categorical=True,
            max_cat_to_onehot=1,
            random_state=42,
        ), []
    ensemble = _require("sklearn.ensemble", "Random forest")
    impute = _require("sklearn.impute", "Training")
    pipeline = _require("sklearn.pipeline", "Training")
    if model_type == "random_forest":
        params, warnings = random_forest_settings(n_rows, task)
        cls = ensemble.RandomForestClassifier if classification else ensemble.RandomForestRegressor
        return pipeline.Pipeline(
            [
                ("impute", impute.SimpleImputer(strategy="median", keep_empty_features=True)),
                ("model", cls(**params)),
            ]
        ), warnings
    linear = _require("sklearn.linear_model", "Linear models")
    compose = _require("sklearn.compose", "Linear models")
    prep = _require("sklearn.preprocessing", "Linear models")
    numeric = [e["name"] for e in schema if e["kind"] != "categorical"]
    categorical = [e["name"] for e in schema if e["kind"] == "categorical"]
    transformers = []
    if numeric:
        transformers.append(
            (
                "num",
                pipeline.Pipeline(
                    [
                        ("impute", impute.SimpleImputer(strategy="median", keep_empty_features=True)),
                        ("scale", prep.StandardScaler()),
                    ]
                ),
                numeric,
            )
        )
    if categorical:
        transformers.append(("cat", prep.OneHotEncoder(handle_unknown="ignore"), categorical))
    model = linear.LogisticRegression(max_iter=1000) if classification else linear.LinearRegression()
    return pipeline.Pipeline([("prep", compose.ColumnTransformer(transformers)), ("model", model)]), []


def fit_with_progress(estimator: Any, model_type: str, X: Any, y: Any, ctx: JobContext, n_train: int) -> None:
    """Fit, reporting progress (and honouring cancel) inside the fit where the library allows."""
    label = MODEL_LABELS[model_type]
    message = f"Training {label} on {fmt_int(n_train)} rows\u2026"
    ctx.progress(40, "training", message, force=True)
    if model_type == "lightgbm":
        total = int(estimator.get_params()["n_estimators"])

        def callback(env: Any) -> None:
            done = env.iteration + 1
            if done % 10 == 0 or done == total:
                ctx.progress(40 + 40 * done / total, "training", f"{message} {done}/{total} trees")

        estimator.fit(X, y, callbacks=[callback])
    elif model_type == "random_forest":
        imputer, forest = estimator.steps[0][1], estimator.steps[-1][1]
        Xi = imputer.fit_transform(X)
        total = int(forest.get_params()["n_estimators"])
        forest.set_params(warm_start=True)
        grown = 0
        while grown < total:
            grown = min(total, grown + 10)
            forest.set_params(n_estimators=grown)
            forest.fit(Xi, y)
            ctx.progress(40 + 40 * grown / total, "training", f"{message} {grown}/{total} trees")
        forest.set_params(warm_start=False)
    else:
        estimator.fit(X, y)
    ctx.checkpoint()


def regression_metrics(y_true: Any, y_pred: Any) -> dict:
    metrics = _require("sklearn.metrics", "Evaluation")
    return {
        "r2": round_float(metrics.r2_score(y_true, y_pred)) if len(y_true) > 1 else None,
        "rmse": round_float(math.sqrt(metrics.mean_squared_error(y_true, y_pred))),
        "mae": round_float(metrics.mean_absolute_error(y_true, y_pred)),
    }


def classification_metrics(y_true: Any, y_pred: Any, proba: Any, n_classes: int) -> dict:
    """accuracy, f1 (binary for two classes, else weighted) and roc_auc for binary tasks."""
    metrics = _require("sklearn.metrics", "Evaluation")
    out = {"accuracy": round_float(metrics.accuracy_score(y_true, y_pred))}
    if n_classes == 2:
        out["f1"] = round_float(
            metrics.f1_score(y_true, y_pred, average="binary", pos_label=1, zero_division=0)
        )
        if proba is not None and len(set(int(v) for v in y_true)) == 2:
            out["roc_auc"] = round_float(metrics.roc_auc_score(y_true, proba[:, 1]))
        else:
            out["roc_auc"] = None
    else:
        out["f1"] = round_float(metrics.f1_score(y_true, y_pred, average="weighted", zero_division=0))
    return out


def main_metric(task: str, metrics: dict) -> dict:
    if task == "regression":
        return {"name": "r2", "value": metrics.get("r2")}
    if metrics.get("roc_auc") is not None:
        return {"name": "roc_auc", "value": metrics["roc_auc"]}
    return {"name": "accuracy", "value": metrics.get("accuracy")}


def raw_importances(estimator: Any, model_type: str, schema: list[dict]) -> list[float]:
    """One non-negative importance per feature, in schema order."""
    np = _require("numpy", "Training")
    names = [e["name"] for e in schema]
    if model_type == "lightgbm":
        values = estimator.booster_.feature_importance(importance_type="gain")
    elif model_type == "xgboost":
        values = estimator.feature_importances_
    elif model_type == "random_forest":
        values = estimator.steps[-1][1].feature_importances_
    else:
        values = _linear_importances(estimator, schema)
    values = np.abs(np.asarray(values, dtype="float64"))
    return [float(v) for v in values[: len(names)]]


def _linear_importances(pipeline: Any, schema: list[dict]) -> list[float]:
    """|coefficients| summed back onto each original feature (one-hot columns per category)."""
    np = _require("numpy", "Training")
    model = pipeline.steps[-1][1]
    coefs = np.abs(np.atleast_2d(np.asarray(model.coef_, dtype="float64"))).mean(axis=0)
    prep = pipeline.steps[0][1]
    numeric = [e["name"] for e in schema if e["kind"] != "categorical"]
    categorical = [e["name"] for e in schema if e["kind"] == "categorical"]
    per_feature: dict[str, float] = {}
    pos = 0
    for name in numeric:
        per_feature[name] = float(coefs[pos])
        pos += 1
    if categorical:
        encoder = prep.named_transformers_["cat"]
        for name, cats in zip(categorical, encoder.categories_):  # noqa: B905 (no strict= on 3.9)
            width = len(cats)
            per_feature[name] = float(coefs[pos : pos + width].sum())
            pos += width
    return [per_feature.get(e["name"], 0.0) for e in schema]


def top_importances(names: list[str], values: list[float], top: int = TOP_IMPORTANCES) -> list[dict]:
    """Importances as shares of the total (all features), the largest `top` of them."""
    total = sum(v for v in values if math.isfinite(v))
    if total <= 0:
        return [{"feature": n, "importance": 0.0} for n in names[:top]]
    pairs = sorted(zip(names, values), key=lambda p: -p[1])[:top]  # noqa: B905 (no strict= on 3.9)
    return [{"feature": n, "importance": round(v / total, 6)} for n, v in pairs]


def make_model_id(model_type: str, target: str, models_dir: Path, now: _dt.datetime | None = None) -> str:
    """Readable, unique, path-safe id like lightgbm_price_20251130_123456."""
    now = now or _dt.datetime.now()
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", target).strip("._-")[:40] or "target"
    clean = re.sub(r"\.{2,}", ".", clean)
    base = f"{model_type}_{clean}_{now.strftime('%Y%m%d_%H%M%S')}"
    candidate = base
    n = 2
    while (models_dir / candidate).exists():
        candidate = f"{base}_{n}"
        n += 1
    return validate_model_id(candidate)


def save_model(models_dir: Path, model_id: str, estimator: Any, metadata: dict) -> Path:
    """model.joblib + metadata.json (with the model file's SHA-256) under models_dir/model_id.

    Both files are private (0600) and metadata.json is written last.
    """
    joblib = _require("joblib", "Saving models")
    private_dir(models_dir)
    directory = models_dir / model_id
    directory.mkdir(mode=0o700)
    model_file = directory / str(metadata.get("model_file") or "model.joblib")
    fd = os.open(str(model_file), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        joblib.dump(estimator, fh)
    metadata = {**metadata, "model_sha256": file_sha256(model_file)}
    write_file_atomic(directory / "metadata.json", json.dumps(metadata, indent=2).encode("utf-8"), 0o600)
    return directory


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def trust_anchor(models_dir: Path, home: Path | None) -> Path:
    """Where the ownership checks start: ~/.statsbot when the models live in it, else the models folder."""
    real = Path(os.path.realpath(str(models_dir)))
    if home is not None:
        real_home = Path(os.path.realpath(str(home)))
        if is_within(real, real_home):
            return real_home
    return real


def ownership_problem(path: Path, anchor: Path) -> str | None:
    """Why path cannot be trusted to hold only what this worker wrote, or None.

    Every folder from anchor (~/.statsbot) down to path, and path itself, must belong to the
    worker's user and must not be writable by group or others: whoever else could write there
    could plant a model, and loading a model runs its pickled code. (Not checked on Windows.)
    """
    if os.name == "nt":
        return None
    try:
        real = Path(os.path.realpath(str(path)))
    except (OSError, ValueError) as exc:  # e.g. a NUL byte in a file name from metadata.json
        return f"{short_text(str(path), 200)} cannot be checked ({exc})"
    if not is_within(real, anchor):
        return f"{path} is outside {anchor}"
    uid = os.getuid()
    chain = [real, *[p for p in real.parents if is_within(p, anchor)]]
    for item in reversed(chain):  # from the anchor down, so the message names the top-most problem
        try:
            st = os.lstat(item)
        except (OSError, ValueError) as exc:
            return f"{item} cannot be checked ({getattr(exc, 'strerror', None) or exc})"
        if st.st_uid != uid:
            return (
                f"{item} belongs to another user (uid {st.st_uid}), who could have planted a model there. "
                "Train the model again, or keep models in a folder of your own (--models-dir)"
            )
        if stat.S_IMODE(st.st_mode) & 0o022:
            return (
                f"other users can write to {item} (mode {stat.S_IMODE(st.st_mode):o}), so a model there could "
                f"have been replaced. Run 'chmod go-w {item}' and try again"
            )
    return None


_DIGEST_CACHE: dict[tuple, str] = {}  # (path, device, inode, size, mtime) -> SHA-256, for list_models


def _cached_sha256(path: Path) -> str:
    st = os.stat(path)
    key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _DIGEST_CACHE:
        if len(_DIGEST_CACHE) > 1000:
            _DIGEST_CACHE.clear()
        _DIGEST_CACHE[key] = file_sha256(path)
    return _DIGEST_CACHE[key]


def model_problem(directory: Path, metadata: dict, anchor: Path, digest: str | None = None) -> str | None:
    """Why a saved model must not be loaded (ownership, permissions, checksum), or None.

    digest: the SHA-256 of the model file as it will be loaded (computed here when None).
    """
    model_file = directory / str(metadata.get("model_file") or "model.joblib")
    for item in (model_file, directory / "metadata.json"):
        problem = ownership_problem(item, anchor)
        if problem:
            return problem
    recorded = metadata.get("model_sha256")
    if not isinstance(recorded, str) or not recorded:
        return (
            "it was saved without a checksum (by an older worker), so it cannot be verified. Train it again"
        )
    try:
        actual = digest or _cached_sha256(model_file)
    except OSError as exc:
        return f"its model file cannot be read ({exc.strerror or exc})"
    if actual != recorded.strip().lower():  # a checksum, not a secret: a plain comparison is right
        return "its model file changed after it was saved (the SHA-256 does not match metadata.json). Train it again"
    return None


def check_models_dir_private(models_dir: Path, home: Path | None = None) -> None:
    """Refuse a models folder that others own or can write to: loading a model runs its pickled code."""
    if not os.path.isdir(models_dir):
        return  # no folder yet: it is created private
    problem = ownership_problem(models_dir, trust_anchor(models_dir, home))
    if problem:
        raise JobError("model_refused", f"Refusing to load models from {models_dir}: {problem}.")


def load_model(models_dir: Path, model_id: Any, home: Path | None = None) -> tuple[dict, Any]:
    """metadata and the estimator of a model this worker saved, after the ownership and checksum checks."""
    directory = model_dir_for(models_dir, validate_model_id(model_id))
    check_models_dir_private(models_dir, home)
    meta_file = directory / "metadata.json"
    if not meta_file.is_file():
        raise JobError("model_not_found", f"No model {model_id} on this machine (see /models in the bot).")
    try:
        metadata = json.loads(meta_file.read_text(encoding="utf-8"))
        if not isinstance(metadata, dict):
            raise ValueError("metadata.json is not an object")
    except (OSError, ValueError) as exc:
        raise JobError("model_not_found", f"Model {model_id} is damaged: {exc}") from None
    joblib = _require("joblib", "Loading models")
    model_file = directory / str(metadata.get("model_file") or "model.joblib")
    if not model_file.is_file() or not is_within(model_file.resolve(), directory):
        raise JobError("model_not_found", f"Model {model_id} has no model file.")
    with open(model_file, "rb") as fh:  # hashed and loaded through one handle: what was checked is loaded
        digest = hashlib.sha256()
        for block in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(block)
        problem = model_problem(directory, metadata, trust_anchor(models_dir, home), digest.hexdigest())
        if problem:
            raise JobError("model_refused", f"Refusing to load model {model_id}: {problem}.")
        fh.seek(0)
        return metadata, joblib.load(fh)


# --------------------------------------------------------------------------- jobs: describe


def job_describe(ctx: JobContext) -> dict:
    """Columns, dtypes, row count and a few rows of a local file."""
    s = ctx.settings
    path, fmt = check_input_file(
        ctx.params.get("file_path"), s.allowed_roots, s.max_file_bytes, s.root_aliases
    )
    ctx.progress(10, "reading", f"Reading {path.name}\u2026")
    sample = read_table(path, fmt, nrows=DESCRIBE_SAMPLE_ROWS + 1)
    ctx.checkpoint()
    rows: int | None
    if len(sample) <= DESCRIBE_SAMPLE_ROWS:
        rows, exact = len(sample), True
    else:
        sample = sample.iloc[:DESCRIBE_SAMPLE_ROWS]
        rows, exact = count_rows(path, fmt)
    ctx.progress(70, "analysing", f"Analysing {len(sample.columns)} columns\u2026")
    columns = []
    for name in list(sample.columns)[:DESCRIBE_MAX_COLUMNS]:
        col = sample[name]
        columns.append(
            {
                "name": short_name(name),
                "dtype": str(col.dtype),
                "missing": int(col.isna().sum()),
                "unique": int(col.nunique(dropna=True)),
                "suggested_task": suggest_task(col),
            }
        )
    head = sample.head(5)
    shown = list(sample.columns)[:DESCRIBE_MAX_COLUMNS]
    rows_out = [
        {short_name(c): json_safe(rec[i]) for i, c in enumerate(shown)}
        for rec in head[shown].itertuples(index=False)
    ]
    return {
        "file_path": str(path),
        "format": fmt if fmt != "xls" else "excel",
        "size_bytes": path.stat().st_size,
        "rows": rows,
        "rows_exact": exact,
        "n_columns": len(sample.columns),
        "sample_rows": len(sample),
        "columns": columns,
        "sample": rows_out,
    }


# --------------------------------------------------------------------------- jobs: check (issue 14)


def _is_row_number(values: Any) -> bool:
    """Whole numbers that, sorted, count up by one: row numbers, whatever their order in the file."""
    np = _require("numpy", "Checking")
    arr = np.sort(np.asarray(values, dtype="float64"))
    return arr.size >= 10 and bool(np.all(np.floor(arr) == arr)) and bool(np.all(np.diff(arr) == 1))


def id_like_columns(df: Any, columns: list[str]) -> list[str]:
    """Columns that number or name the rows: ID names with unique values, row numbers, unique text keys."""
    pd = _pandas()
    out: list[str] = []
    n = len(df)
    if n < 10:
        return out
    for name in columns:
        col = df[name].dropna()
        if len(col) < 0.9 * n:
            continue
        unique_share = col.nunique() / len(col)
        lowered = str(name).strip().lower()
        numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
        named_id = (
            lowered in ID_NAMES or lowered.startswith("unnamed:") or bool(re.search(r"(^|[_\s-])id$", lowered))
        )
        if named_id and unique_share >= 0.95:
            out.append(name)
        elif numeric and unique_share == 1 and _is_row_number(col):
            out.append(name)
        elif not numeric and not pd.api.types.is_datetime64_any_dtype(col) and unique_share >= 0.99 and n >= 20:
            out.append(name)
    return out


def drop_id_like(df: Any, features: list[str], keep: list[str], warnings: list[str]) -> tuple[list[str], list[str]]:
    """Features without the ID-like columns the user did not keep (all of them when nothing else is left)."""
    dropped = [c for c in id_like_columns(df, features) if c not in set(keep)]
    if not dropped or len(dropped) == len(features):
        return features, []
    warnings.append(
        f"Left out ID-like column(s) {_list_some(dropped)}: they number or name the rows, so a model learns "
        "nothing from them that holds for new rows. Keep them with keep_columns."
    )
    return [c for c in features if c not in set(dropped)], dropped


def leak_columns(df: Any, target: str, task: str, features: list[str]) -> list[str]:
    """Features that alone predict the target almost perfectly (3-fold cross-validated one-feature tree)."""
    np = _require("numpy", "Checking")
    ms = _require("sklearn.model_selection", "Checking")
    tree = _require("sklearn.tree", "Checking")
    data = df[df[target].notna()]
    if len(data) > LEAK_SAMPLE_ROWS:
        data = data.sample(LEAK_SAMPLE_ROWS, random_state=0)
    if len(data) < 30:
        return []
    if task == "classification":
        y = _pandas().factorize(data[target].astype(str))[0]
        if np.bincount(y).min() < 3:
            return []
        folds = ms.StratifiedKFold(3, shuffle=True, random_state=0)
        model = tree.DecisionTreeClassifier(max_leaf_nodes=64, random_state=0)
        scoring = ["accuracy", "balanced_accuracy"]
    else:
        y = data[target].astype("float64").to_numpy()
        folds = ms.KFold(3, shuffle=True, random_state=0)
        model = tree.DecisionTreeRegressor(max_leaf_nodes=64, random_state=0)
        scoring = ["r2"]
    leaks = []
    for name in features[:DESCRIBE_MAX_COLUMNS]:
        kind = column_kind(data[name])
        if kind == "categorical":
            codes = _pandas().Categorical(data[name].astype(str).where(data[name].notna())).codes
            x = np.asarray(codes, dtype="float64")
            x[x < 0] = -1
        else:
            x = prepare_features(data[[name]], [{"name": name, "kind": kind}])[name].to_numpy()
            finite = x[np.isfinite(x)]
            if not finite.size:
                continue
            x = np.where(np.isfinite(x), x, finite.min() - 1)
        try:
            scores = ms.cross_validate(model, x.reshape(-1, 1), y, cv=folds, scoring=scoring)
        except ValueError:
            continue
        if task == "classification":
            leak = scores["test_accuracy"].mean() >= 0.99 and scores["test_balanced_accuracy"].mean() >= 0.98
        else:
            leak = scores["test_r2"].mean() >= 0.98
        if leak:
            leaks.append(name)
    return leaks


def target_tasks(series: Any) -> list[str]:
    """Possible tasks for a target, the recommended first; never regression for a non-numeric one."""
    pd = _pandas()
    values = series.dropna()
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    n_unique = int(values.nunique())
    if not numeric:
        return ["classification"] if n_unique <= MAX_CLASSES else []
    if detect_task(values) == "classification":
        return ["classification", "regression"]
    if n_unique <= MAX_CLASSES and _integral(values):
        return ["regression", "classification"]
    return ["regression"]


def close_column_names(target: str, header: list[str]) -> list[str]:
    """Up to 3 column names close to target: the same ignoring case first, then small typos."""
    import difflib

    lowered = {h.lower(): h for h in reversed(header)}
    exact = [h for h in header if h.lower() == target.lower()]
    close = difflib.get_close_matches(target.lower(), list(lowered), n=3, cutoff=0.75)
    out = list(dict.fromkeys(exact + [lowered[c] for c in close]))
    return out[:3]


def _refusal(code: str, message: str) -> dict:
    return {"code": code, "message": message}


def job_check(ctx: JobContext) -> dict:
    """The target step's checks: tasks offered, refusals, ID-like columns, leaks, imbalance."""
    s = ctx.settings
    raw_path = ctx.params.get("path", ctx.params.get("file_path"))
    target = ctx.params.get("target", ctx.params.get("target_column"))
    if not isinstance(target, str) or not target:
        raise JobError("invalid_params", "target is required.")
    path, fmt = check_input_file(raw_path, s.allowed_roots, s.max_file_bytes, s.root_aliases)
    ctx.progress(10, "reading", f"Reading {path.name}\u2026", force=True)
    df = read_table(path, fmt, nrows=DESCRIBE_SAMPLE_ROWS + 1)
    if len(df) <= DESCRIBE_SAMPLE_ROWS:
        rows = len(df)
    else:
        df = df.iloc[:DESCRIBE_SAMPLE_ROWS]
        rows = count_rows(path, fmt)[0] or DESCRIBE_SAMPLE_ROWS
    header = [str(c) for c in df.columns]
    out: dict = {
        "rows": int(rows),
        "target": short_name(target),
        "tasks": [],
        "refused": None,
        "id_like": [],
        "leaks": [],
        "imbalance": None,
        "suggestions": [],
    }
    ctx.progress(40, "analysing", f"Checking {len(header)} columns\u2026")
    if len(header) < 2:
        out["refused"] = _refusal(
            "single_column", "The file has a single column, so there is nothing to predict it from."
        )
        return out
    if target not in header:
        out["suggestions"] = [short_name(c) for c in close_column_names(target, header)]
        hint = f" Did you mean {', '.join(out['suggestions'])}?" if out["suggestions"] else ""
        out["refused"] = _refusal("no_such_column", f"There is no column '{short_name(target)}'.{hint}")
        return out
    if rows == 0:
        out["refused"] = _refusal("empty_file", f"{path.name} has no rows, only a header.")
        return out
    y = df[target]
    values = y.dropna()
    features = [c for c in header if c != target]
    if values.empty:
        out["refused"] = _refusal("no_target_values", f"Every '{short_name(target)}' cell is empty.")
        return out
    if values.nunique() < 2:
        out["refused"] = _refusal(
            "constant_target", f"'{short_name(target)}' has the same value in every row: nothing to learn."
        )
        return out
    if target in id_like_columns(df, [target]) or (
        values.nunique() == len(values) and len(values) >= 20 and not _pandas().api.types.is_numeric_dtype(values)
    ):
        out["refused"] = _refusal(
            "id_target",
            f"'{short_name(target)}' is different in every row, like an ID: no model can predict it for new rows.",
        )
        return out
    tasks = target_tasks(y)
    if not tasks:
        out["refused"] = _refusal(
            "too_many_classes",
            f"'{short_name(target)}' is text with {fmt_int(int(values.nunique()))} different values, "
            f"more than the {MAX_CLASSES} classes a model can learn here.",
        )
        return out
    out["tasks"] = tasks
    id_like = id_like_columns(df, features)
    out["id_like"] = [short_name(c) for c in id_like]
    ctx.progress(60, "analysing", "Looking for columns that give the answer away\u2026")
    out["leaks"] = [
        short_name(c) for c in leak_columns(df, target, tasks[0], [c for c in features if c not in set(id_like)])
    ]
    if tasks[0] == "classification":
        counts = values.astype(str).value_counts()
        share = float(counts.min() / counts.sum())
        if share < IMBALANCE_SHARE:
            out["imbalance"] = {
                "minority_share": round_float(share, 4),
                "metric": "ROC AUC" if len(counts) == 2 else "log loss",
            }
    ctx.progress(100, "done", "Checked", force=True)
    return out


# --------------------------------------------------------------------------- jobs: training files larger than memory (issue 14)

TRAIN_MEMORY_BYTES = 400 * 1024 * 1024  # the training table in memory; bigger files are sampled into it
TRAIN_SAMPLE_CHUNK_ROWS = 100_000
TRAIN_SAMPLE_MIN_CLASS_ROWS = 500  # rows kept of every class (all of a rarer one) when sampling


def _iter_columns(path: Path, fmt: str, columns: list[str], chunk_rows: int) -> Iterator[Any]:
    """Only these columns, chunk by chunk (CSV/TSV and Parquet)."""
    pd = _pandas()
    if fmt in ("csv", "tsv"):
        with pd.read_csv(path, usecols=columns, chunksize=chunk_rows, **_csv_kwargs(path, fmt)) as reader:
            for chunk in reader:
                yield _str_columns(chunk)
    else:
        pq = _require("pyarrow.parquet", "Reading Parquet files")
        for batch in pq.ParquetFile(str(path)).iter_batches(batch_size=chunk_rows, columns=columns):
            yield _str_columns(batch.to_pandas())


def _table_bytes_estimate(path: Path, fmt: str, columns: list[str]) -> float:
    """About how much memory the table (these columns) takes once read.

    Parquet counts 4x its size on disk. A CSV that could matter is measured: its first 10,000
    rows are read, and their bytes in memory per byte of file scale the whole file (text columns
    take several times their size on disk as Python strings).
    """
    size = path.stat().st_size
    if fmt == "parquet":
        return 4.0 * size
    if size <= TRAIN_MEMORY_BYTES / 8:
        return float(size)
    pd = _pandas()
    lines = 10_000
    with open(path, "rb") as fh:
        head = b"".join(fh.readline() for _ in range(lines + 1))
    import io

    sample = pd.read_csv(io.BytesIO(head), usecols=columns, **_csv_kwargs(path, fmt))
    if not len(sample) or not head:
        return float(size)
    return size * float(sample.memory_usage(deep=True).sum()) / len(head)


def _sampling_task(counts: Any, numeric: bool, integral: bool, task: str | None) -> str:
    if task:
        return task
    if not numeric or (len(counts) <= 20 and integral):
        return "classification"
    return "regression"


def read_training_table(
    path: Path, fmt: str, columns: list[str], target: str, task: str | None, ctx: JobContext, warnings: list[str]
) -> tuple[Any, dict | None]:
    """The training rows: the whole table, or, when it would not fit in TRAIN_MEMORY_BYTES, a
    random sample of rows that does (each class sampled at the same rate, every class keeping
    at least TRAIN_SAMPLE_MIN_CLASS_ROWS rows). Returns (table, None | {rows_used, rows_total})."""
    pd = _pandas()
    np = _require("numpy", "Training")
    size = path.stat().st_size
    if fmt not in ("csv", "tsv", "parquet") or _table_bytes_estimate(path, fmt, columns) <= TRAIN_MEMORY_BYTES:
        return read_table(path, fmt, columns=columns), None
    ctx.progress(6, "reading", f"{path.name} is {fmt_bytes(size)}: counting rows to sample it\u2026", force=True)
    counts: Any = None
    total = 0
    numeric, integral = True, True
    for chunk in _iter_columns(path, fmt, [target], TRAIN_SAMPLE_CHUNK_ROWS):
        ctx.checkpoint()
        col = chunk[target]
        total += len(col)
        values = col.dropna()
        if numeric and not (pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)):
            numeric = False
        if numeric and integral and len(values):
            integral = _integral(values)
        part = values.astype(str).value_counts()
        counts = part if counts is None else counts.add(part, fill_value=0)
        if counts is not None and len(counts) > 10 * MAX_CLASSES:
            counts = counts.iloc[:0]  # a continuous target: class counts are of no use
    first = next(iter(_iter_columns(path, fmt, columns, 10_000)), None)
    per_row = max(1.0, float(first.memory_usage(deep=True).sum()) / max(1, len(first))) if first is not None else 100.0
    rate = min(1.0, TRAIN_MEMORY_BYTES / (per_row * max(1, total)))
    if rate >= 1.0:
        return read_table(path, fmt, columns=columns), None
    kind = _sampling_task(counts if counts is not None else [], numeric, integral, task)
    rates: dict[str, float] = {}
    if kind == "classification" and counts is not None and len(counts):
        for label, n in counts.items():
            rates[str(label)] = min(1.0, max(rate, TRAIN_SAMPLE_MIN_CLASS_ROWS / max(1.0, float(n))))
    rng = np.random.default_rng(42)
    kept = []
    done = 0
    for chunk in _iter_columns(path, fmt, columns, TRAIN_SAMPLE_CHUNK_ROWS):
        done += len(chunk)
        ctx.progress(6 + 12 * done / max(1, total), "reading", f"Sampling rows: {fmt_int(done)} of {fmt_int(total)} read")
        draw = rng.random(len(chunk))
        if rates:
            row_rate = chunk[target].astype(str).map(rates).fillna(rate).to_numpy(dtype="float64")
        else:
            row_rate = np.full(len(chunk), rate)
        kept.append(chunk[draw < row_rate])
    df = pd.concat(kept, ignore_index=True) if kept else read_table(path, fmt, columns=columns, nrows=0)
    sampled = {"rows_used": int(len(df)), "rows_total": int(total)}
    warnings.append(
        f"{path.name} has {fmt_int(total)} rows, more than fit in this worker's memory budget "
        f"({fmt_bytes(TRAIN_MEMORY_BYTES)}), so training used a random sample of {fmt_int(len(df))} rows"
        + (" (every class sampled at the same rate; rare classes kept whole)." if rates else ".")
    )
    return df, sampled


# --------------------------------------------------------------------------- jobs: train


def _list_some(names: list[str], limit: int = 15) -> str:
    shown = ", ".join(short_name(n) for n in names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def _train_params(params: dict) -> dict:
    target = params.get("target_column")
    if not isinstance(target, str) or not target:
        raise JobError("invalid_params", "target_column is required.")
    features = params.get("feature_columns")
    if features is not None and (
        not isinstance(features, list) or not all(isinstance(f, str) for f in features) or not features
    ):
        raise JobError("invalid_params", "feature_columns must be null or a non-empty list of column names.")
    task = params.get("task_type")
    if task not in (None, "", "auto", "classification", "regression"):
        raise JobError("invalid_params", "task_type must be classification, regression or null.")
    test_size = params.get("test_size", 0.2)
    try:
        test_size = float(0.2 if test_size is None else test_size)
    except (TypeError, ValueError):
        raise JobError("invalid_params", "test_size must be a number between 0.05 and 0.5.") from None
    if not 0.05 <= test_size <= 0.5:
        raise JobError("invalid_params", "test_size must be between 0.05 and 0.5.")
    budget = params.get("time_budget_s", AUTO_DEFAULT_BUDGET_S)
    if budget is None:
        budget = AUTO_DEFAULT_BUDGET_S
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget):
        raise JobError("invalid_params", "time_budget_s must be a number of seconds.")
    if not AUTO_MIN_BUDGET_S <= budget <= AUTO_MAX_BUDGET_S:
        raise JobError(
            "invalid_params", f"time_budget_s must be between {AUTO_MIN_BUDGET_S} and {AUTO_MAX_BUDGET_S} seconds."
        )
    keep = params.get("keep_columns") or []
    if not isinstance(keep, list) or not all(isinstance(c, str) for c in keep):
        raise JobError("invalid_params", "keep_columns must be a list of column names.")
    return {
        "target": target,
        "features": features,
        "task": task if task in ("classification", "regression") else None,
        "model_type": normalize_model_type(params.get("model_type")),
        "test_size": test_size,
        "time_budget_s": int(budget),
        "keep_columns": keep,
    }


def _choose_columns(header: list[str], target: str, features: list[str] | None) -> list[str]:
    if target not in header:
        raise JobError(
            "bad_target",
            f"Column '{short_name(target)}' is not in the file. Available columns: {_list_some(header)}.",
        )
    if features is None:
        chosen = [c for c in header if c != target]
    else:
        missing = [c for c in features if c not in header]
        if missing:
            raise JobError(
                "missing_columns", f"Not in the file: {_list_some(missing)}. Available: {_list_some(header)}."
            )
        chosen = [c for c in dict.fromkeys(features) if c != target]
    if not chosen:
        raise JobError("invalid_params", "There are no feature columns besides the target.")
    return chosen


def _encode_target(y: Any, task: str, target: str) -> tuple[Any, list | None]:
    """Numbers for regression; class indices (and the class list) for classification."""
    pd = _pandas()
    np = _require("numpy", "Training")
    if task == "regression":
        if pd.api.types.is_bool_dtype(y) or not pd.api.types.is_numeric_dtype(y):
            raise JobError(
                "bad_target",
                f"Target '{short_name(target)}' is not numeric, so it cannot be a regression target.",
            )
        return y.astype("float64").to_numpy(), None
    classes_raw = sorted(y.unique().tolist(), key=lambda v: (str(type(v)), v))
    if len(classes_raw) < 2:
        raise JobError(
            "bad_target",
            f"Target '{short_name(target)}' has only one value ({short_text(repr(classes_raw[0]), 100)}); nothing to learn.",
        )
    if len(classes_raw) > MAX_CLASSES:
        raise JobError(
            "bad_target",
            f"Target '{short_name(target)}' has {fmt_int(len(classes_raw))} different values - too many classes "
            "(use task_type regression for numbers).",
        )
    index = {v: i for i, v in enumerate(classes_raw)}
    encoded = np.asarray([index[v] for v in y.tolist()], dtype="int64")
    return encoded, [json_safe(c, 200) for c in classes_raw]


def _split(X: Any, y: Any, task: str, test_size: float, warnings: list[str]) -> tuple:
    ms = _require("sklearn.model_selection", "Training")
    np = _require("numpy", "Training")
    stratify = None
    if task == "classification":
        counts = np.bincount(y)
        n_test = math.ceil(len(y) * test_size)
        if counts[counts > 0].min() >= 2 and n_test >= len(counts):
            stratify = y
        else:
            warnings.append("Some classes have fewer than 2 rows, so the hold-out split is not stratified.")
    return ms.train_test_split(X, y, test_size=test_size, random_state=42, stratify=stratify)


def job_train(ctx: JobContext) -> dict:
    """Train a model on a local file, evaluate it on a hold-out split and save it."""
    started = time.monotonic()
    s = ctx.settings
    p = _train_params(ctx.params)
    model_type, target = p["model_type"], p["target"]
    if model_type == "xgboost":
        _require("xgboost", "XGBoost")
    path, fmt = check_input_file(
        ctx.params.get("file_path"), s.allowed_roots, s.max_file_bytes, s.root_aliases
    )
    ctx.progress(5, "reading", f"Reading {path.name}\u2026", force=True)
    header = read_columns(path, fmt)
    features = _choose_columns(header, target, p["features"])
    wanted = [c for c in header if c in set(features) | {target}]
    warnings: list[str] = []
    df, sampled = read_training_table(path, fmt, wanted, target, p["task"], ctx, warnings)
    ctx.progress(20, "reading", f"Read {fmt_int(len(df))} rows \u00d7 {len(df.columns)} columns")
    if df[target].isna().all():
        raise JobError("bad_target", f"Target '{short_name(target)}' has no values (every row is empty).")
    n_missing = int(df[target].isna().sum())
    if n_missing:
        df = df[df[target].notna()]
        warnings.append(f"Dropped {fmt_int(n_missing)} rows where '{short_name(target)}' is empty.")
    if len(df) < MIN_TRAIN_ROWS:
        raise JobError(
            "not_enough_data",
            f"Only {len(df)} rows with a target value; at least {MIN_TRAIN_ROWS} are needed.",
        )
    task = p["task"] or detect_task(df[target])
    y, classes = _encode_target(df[target], task, target)
    dropped: list[str] = []
    if p["features"] is None:
        features, dropped = drop_id_like(df, features, p["keep_columns"], warnings)
    ctx.progress(30, "preparing", f"Preparing {len(features)} features ({task})\u2026")
    schema, schema_warnings = build_feature_schema(df, features)
    warnings.extend(schema_warnings)
    X = design_matrix(model_type if model_type != "auto" else "lightgbm", prepare_features(df, schema), schema)
    del df
    names = [e["name"] for e in schema]
    auto_fields: dict = {}
    if model_type == "auto":
        estimator, auto_fields, metrics = train_auto(ctx, X, y, task, classes, schema, p, warnings)
        result_extra = {k: auto_fields.pop(k) for k in ("confusion_matrix", "predicted_vs_actual") if k in auto_fields}
        n_train, n_test = auto_fields.pop("n_train"), auto_fields.pop("n_test")
        importance = top_importances(names, ensemble_importances(estimator["members"], schema))
    else:
        X_train, X_test, y_train, y_test = _split(X, y, task, p["test_size"], warnings)
        estimator, cost_warnings = make_estimator(model_type, task, len(X_train), schema)
        warnings.extend(cost_warnings)
        fit_with_progress(estimator, model_type, X_train, y_train, ctx, len(X_train))
        ctx.progress(82, "evaluating", f"Evaluating on {fmt_int(len(X_test))} held-out rows\u2026", force=True)
        result_extra, metrics = _evaluate(estimator, X_test, y_test, task, classes)
        importance = top_importances(names, raw_importances(estimator, model_type, schema))
        n_train, n_test = len(X_train), len(X_test)
    ctx.progress(92, "saving", "Saving the model\u2026", force=True)
    model_id = make_model_id(model_type, target, s.models_dir)
    mm = main_metric(task, metrics)
    metadata = {
        "format": MODEL_FORMAT,
        "format_version": 1,
        "model_id": model_id,
        "model_type": model_type,
        "task_type": task,
        "target": target,
        "features": names,
        "feature_schema": schema,
        "classes": classes,
        "metrics": metrics,
        "main_metric": mm,
        "feature_importance": importance,
        "n_rows": int(len(X)),
        "n_train": int(n_train),
        "n_test": int(n_test),
        "training_file": str(path),
        "sampled": sampled,
        "created_at": utc_now_iso(),
        "worker_version": WORKER_VERSION,
        "packages": {k: v for k, v in package_versions().items() if v},
        "model_file": "model.joblib",
    }
    if model_type == "auto":  # what list_models and a later look at the model can show
        metadata.update({k: auto_fields[k] for k in ("evaluation", "comparison", "search") if k in auto_fields})
    ctx.checkpoint()
    directory = save_model(s.models_dir, model_id, estimator, metadata)
    data = {
        "model_id": model_id,
        "model_type": model_type,
        "task_type": task,
        "target": short_name(target),
        "features": [short_name(n) for n in names],
        "n_rows": int(len(X)),
        "n_train": int(n_train),
        "n_test": int(n_test),
        "metrics": metrics,
        "main_metric": mm,
        "feature_importance": [
            {"feature": short_name(i["feature"]), "importance": i["importance"]} for i in importance
        ],
        "duration_s": round(time.monotonic() - started, 2),
        "warnings": warnings,
        "model_dir": str(directory),
    }
    if classes is not None:
        data["classes"] = classes
    data.update(result_extra)
    if model_type == "auto" or sampled:
        data.update(auto_fields)
        data["sampled"] = sampled
    if dropped:
        data["dropped_id_like"] = [short_name(c) for c in dropped]
    ctx.progress(100, "done", f"Saved {model_id}", force=True)
    return data


def _evaluate(estimator: Any, X_test: Any, y_test: Any, task: str, classes: list | None) -> tuple[dict, dict]:
    np = _require("numpy", "Evaluation")
    pred = estimator.predict(X_test)
    if task == "regression":
        pred = np.asarray(pred, dtype="float64")
        metrics = regression_metrics(y_test, pred)
        rng = np.random.default_rng(0)
        idx = np.arange(len(y_test))
        if len(idx) > PRED_VS_ACTUAL_POINTS:
            idx = np.sort(rng.choice(idx, PRED_VS_ACTUAL_POINTS, replace=False))
        points = [[round_float(pred[i]), round_float(y_test[i])] for i in idx]
        return {"predicted_vs_actual": points}, metrics
    pred = np.asarray(pred).astype("int64")
    proba = estimator.predict_proba(X_test) if hasattr(estimator, "predict_proba") else None
    metrics = classification_metrics(y_test, pred, proba, len(classes or []))
    extra: dict = {}
    if classes is not None and len(classes) <= CONFUSION_MAX_LABELS:
        sk = _require("sklearn.metrics", "Evaluation")
        matrix = sk.confusion_matrix(y_test, pred, labels=list(range(len(classes))))
        extra["confusion_matrix"] = {"labels": [str(c) for c in classes], "matrix": matrix.tolist()}
    return extra, metrics


# --------------------------------------------------------------------------- jobs: auto search (issue 14)
#
# model_type "auto": a time-boxed search over a fixed, ordered list of configurations (LightGBM
# with early stopping, XGBoost when installed, extra trees / random forest on smaller files, then
# seeded random LightGBM settings), a greedy weighted ensemble of the trials chosen on inner
# validation rows, scored on rows the search never saw, and refit on all rows.

AUTO_DEFAULT_BUDGET_S = 120
AUTO_MIN_BUDGET_S = 10
AUTO_MAX_BUDGET_S = 3600
AUTO_CV_MAX_ROWS = 2500  # below this many rows the whole search is evaluated by cross-validation...
AUTO_CV_MAX_CELLS = 300_000  # ...when rows x features (x classes) stay below this (else a hold-out split)
AUTO_HARD_LIMIT = 3.0  # even the first trial is cut short past this many times the budget
AUTO_CV_FOLDS = 5
AUTO_INNER_VALID = 0.2  # inner validation share (early stopping and ensemble weights)
AUTO_MAX_TREES = 5000
AUTO_EARLY_STOP_ROUNDS = 50
AUTO_REFIT_TREES = 1.1  # refit on all rows with this many times the early-stopped number of trees
AUTO_FOREST_MAX_ROWS = 50_000
AUTO_RF_MAX_ROWS = 20_000
AUTO_MAX_RANDOM_TRIALS = 60
AUTO_ENSEMBLE_ROUNDS = 25
AUTO_MAX_MEMBERS = 6
AUTO_ONE_THREAD_CELLS = 2_000_000  # rows x features below which every fit uses one thread
ID_NAMES = frozenset({"id", "rownames", "rowname", "index", "row", "row_id", "rowid", "unnamed: 0", "key", "uuid"})
LEAK_SAMPLE_ROWS = 5000
IMBALANCE_SHARE = 0.10
SEARCH_METRICS = {"regression": "R\u00b2", "binary": "ROC AUC", "multiclass": "log loss"}
FAMILY_LABELS = {
    "lightgbm": "LightGBM",
    "xgboost": "XGBoost",
    "extra_trees": "Extra trees",
    "random_forest": "Random forest",
}

# Ordered: a near-default first, then settings known to do well on tabular benchmarks
# (AutoGluon's LightGBM/XGBoost presets and TabRepo's zero-shot portfolio), cheap ones early.
LGBM_PORTFOLIO: tuple[dict, ...] = (
    {"learning_rate": 0.1, "num_leaves": 31},  # LightGBM's defaults, early-stopped: fast and rarely bad
    {"learning_rate": 0.05, "num_leaves": 31},
    {"learning_rate": 0.03, "num_leaves": 128, "min_child_samples": 3, "colsample_bytree": 0.9},
    {"learning_rate": 0.05, "num_leaves": 31, "extra_trees": True},
    {
        "learning_rate": 0.03, "num_leaves": 15, "min_child_samples": 10, "colsample_bytree": 0.7,
        "subsample": 0.8, "subsample_freq": 1, "reg_lambda": 1.0,
    },
    {
        "learning_rate": 0.02, "num_leaves": 63, "min_child_samples": 20, "colsample_bytree": 0.5,
        "subsample": 0.7, "subsample_freq": 1, "reg_alpha": 0.1, "reg_lambda": 5.0, "cat_smooth": 20,
    },
    {"learning_rate": 0.05, "num_leaves": 7, "min_child_samples": 30, "colsample_bytree": 0.8, "reg_lambda": 2.0},
)
XGB_PORTFOLIO: tuple[dict, ...] = (
    {"max_depth": 6, "learning_rate": 0.05, "subsample": 0.8, "colsample_bytree": 0.8},
    {"max_depth": 8, "learning_rate": 0.03, "colsample_bytree": 0.6, "min_child_weight": 3, "reg_lambda": 2.0},
)


def search_kind(task: str, n_classes: int) -> str:
    return "regression" if task == "regression" else ("binary" if n_classes == 2 else "multiclass")


def search_score(kind: str, y: Any, pred: Any, n_classes: int = 0) -> float:
    """The search metric (R², ROC AUC or log loss) of predictions; nan when undefined."""
    sk = _require("sklearn.metrics", "Evaluation")
    np = _require("numpy", "Evaluation")
    try:
        if kind == "regression":
            return float(sk.r2_score(y, pred))
        if kind == "binary":
            return float(sk.roc_auc_score(y, pred)) if len(np.unique(y)) == 2 else math.nan
        proba = np.clip(np.asarray(pred, dtype="float64"), 1e-15, 1)
        proba = proba / proba.sum(axis=1, keepdims=True)
        return float(sk.log_loss(y, proba, labels=list(range(n_classes))))
    except ValueError:
        return math.nan


def search_loss(kind: str, y: Any, pred: Any, n_classes: int = 0) -> float:
    """Lower is better, for every kind."""
    score = search_score(kind, y, pred, n_classes)
    if math.isnan(score):
        return math.inf
    return score if kind == "multiclass" else -score


def auto_time_budget(requested: int, n_rows: int, n_features: int) -> int:
    """The requested budget, scaled down for small files: 20 s plus 1 s per 1,000 cells."""
    scaled = 20 + n_rows * max(1, n_features) / 1000
    return int(max(AUTO_MIN_BUDGET_S, min(requested, math.ceil(scaled))))


def search_configs(n_rows: int, seed: int = 0) -> list[dict]:
    """The ordered trial list: fixed portfolio first, then seeded random LightGBM settings.

    It depends only on the row count, never on the data, so cross-validation folds can replay
    exactly the trials the final search ran.
    """
    import importlib.util
    import random

    has_xgb = importlib.util.find_spec("xgboost") is not None
    lgb = [{"family": "lightgbm", "params": dict(p)} for p in LGBM_PORTFOLIO]
    xgb = [{"family": "xgboost", "params": dict(p)} for p in XGB_PORTFOLIO] if has_xgb else []
    configs = [lgb[0], lgb[2]]
    configs += xgb[:1]
    configs += [lgb[3], lgb[1]]
    if n_rows <= AUTO_FOREST_MAX_ROWS:
        configs.append({"family": "extra_trees", "params": {"n_estimators": 300}})
    configs += [lgb[4], lgb[5]] + xgb[1:] + [lgb[6]]
    if n_rows <= AUTO_RF_MAX_ROWS:
        configs.append({"family": "random_forest", "params": {"n_estimators": 300}})
    rng = random.Random(seed)
    for _ in range(AUTO_MAX_RANDOM_TRIALS):
        params = {
            "learning_rate": round(math.exp(rng.uniform(math.log(0.01), math.log(0.1))), 4),
            "num_leaves": rng.choice([7, 15, 31, 63, 127, 255]),
            "min_child_samples": rng.choice([2, 5, 10, 20, 40, 80]),
            "colsample_bytree": round(rng.uniform(0.4, 1.0), 2),
            "subsample": round(rng.uniform(0.5, 1.0), 2),
            "subsample_freq": 1,
            "reg_lambda": round(math.exp(rng.uniform(math.log(1e-3), math.log(10))), 4),
            "reg_alpha": rng.choice([0.0, 0.01, 0.1, 1.0]),
            "extra_trees": rng.random() < 0.25,
        }
        configs.append({"family": "lightgbm", "params": params})
    return configs


class SearchClock:
    """The search deadline, stop_early and cancel, checked inside fits and between trials."""

    def __init__(
        self, ctx: JobContext, deadline: float, honour_stop: bool = True, hard_deadline: float = math.inf
    ) -> None:
        self.ctx = ctx
        self.deadline = deadline
        self.honour_stop = honour_stop
        self.hard_deadline = hard_deadline  # what cuts even the first trial short

    def expired(self) -> bool:
        self.ctx.checkpoint()  # cancel discards the job
        if self.honour_stop and self.ctx.stop_event.is_set():
            return True
        return time.monotonic() >= self.deadline

    def stop_requested(self) -> bool:
        """Cancel (raises), stop_early or the hard deadline: what may cut the first trial short."""
        self.ctx.checkpoint()
        return (self.honour_stop and self.ctx.stop_event.is_set()) or time.monotonic() >= self.hard_deadline

    def seconds_left(self) -> int:
        return max(0, int(self.deadline - time.monotonic()))


def _member_input(family: str, X: Any, schema: list[dict]) -> Any:
    return design_matrix("random_forest", X, schema) if family in ("extra_trees", "random_forest") else X


def search_threads(n_rows: int, n_features: int) -> int:
    """1 thread for small data: OpenMP threads on a busy machine cost far more than they give."""
    return 1 if n_rows * max(1, n_features) < AUTO_ONE_THREAD_CELLS else (os.cpu_count() or 1)


def _lgbm_model(task: str, params: dict, n_estimators: int, threads: int = 1) -> Any:
    lgb = _require("lightgbm", "LightGBM")
    cls = lgb.LGBMClassifier if task == "classification" else lgb.LGBMRegressor
    return cls(n_estimators=n_estimators, random_state=42, verbose=-1, n_jobs=threads, **params)


def _xgb_model(task: str, params: dict, n_estimators: int, early_stop: bool, threads: int = 1) -> Any:
    xgb = _require("xgboost", "XGBoost")
    cls = xgb.XGBClassifier if task == "classification" else xgb.XGBRegressor
    return cls(
        n_jobs=threads,
        n_estimators=n_estimators,
        tree_method="hist",
        enable_categorical=True,
        max_cat_to_onehot=1,
        random_state=42,
        early_stopping_rounds=AUTO_EARLY_STOP_ROUNDS if early_stop else None,
        **params,
    )


def _forest_model(family: str, task: str, params: dict, n_rows: int) -> Any:
    ensemble = _require("sklearn.ensemble", "Training")
    impute = _require("sklearn.impute", "Training")
    pipeline = _require("sklearn.pipeline", "Training")
    classification = task == "classification"
    if family == "extra_trees":
        cls = ensemble.ExtraTreesClassifier if classification else ensemble.ExtraTreesRegressor
    else:
        cls = ensemble.RandomForestClassifier if classification else ensemble.RandomForestRegressor
    extra = {"max_features": "sqrt" if classification else 1.0}
    if n_rows > 10_000:
        extra["min_samples_leaf"] = 2
    model = cls(n_jobs=search_threads(n_rows, 10), random_state=42, **extra, **params)
    return pipeline.Pipeline(
        [("impute", impute.SimpleImputer(strategy="median", keep_empty_features=True)), ("model", model)]
    )


def fit_member(
    config: dict,
    task: str,
    X_tr: Any,
    y_tr: Any,
    X_va: Any,
    y_va: Any,
    schema: list[dict],
    clock: SearchClock,
    may_truncate: bool = True,
) -> tuple[Any, int | None]:
    """One trial: (fitted model, trees kept by early stopping or None).

    The deadline cuts a boosting fit short only when ``may_truncate`` (never the first trial,
    whose model must be complete); stop_early and cancel always do.
    """
    family, params = config["family"], config["params"]

    def out_of_time() -> bool:
        return clock.expired() if may_truncate else clock.stop_requested()

    if family == "lightgbm":
        lgb = _require("lightgbm", "LightGBM")
        model = _lgbm_model(task, params, AUTO_MAX_TREES, search_threads(*X_tr.shape))

        def stop_at_deadline(env: Any) -> None:
            if env.iteration % 10 == 0 and out_of_time():
                raise lgb.callback.EarlyStopException(env.iteration, env.evaluation_result_list)

        import warnings

        with warnings.catch_warnings():  # lightgbm 4.6+ renames eval_set; the pinned 4.5 has only eval_set
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*eval_set.*")
            model.fit(
                X_tr,
                y_tr,
                eval_set=[(X_va, y_va)],
                callbacks=[lgb.early_stopping(AUTO_EARLY_STOP_ROUNDS, verbose=False), stop_at_deadline],
            )
        best = int(getattr(model, "best_iteration_", 0) or model.n_estimators_)
        return model, max(1, best)
    if family == "xgboost":
        xgb = _require("xgboost", "XGBoost")

        class StopAtDeadline(xgb.callback.TrainingCallback):  # type: ignore[name-defined]
            def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
                return epoch % 10 == 0 and out_of_time()

        model = _xgb_model(task, params, AUTO_MAX_TREES, early_stop=True, threads=search_threads(*X_tr.shape))
        model.set_params(callbacks=[StopAtDeadline()])
        model.fit(X_tr, y_tr, eval_set=[(X_va, y_va)], verbose=False)
        model.set_params(callbacks=None)  # a model that pickles without our callback class
        best_round = getattr(model, "best_iteration", None)
        return model, max(1, int(best_round) + 1) if best_round is not None else int(model.n_estimators)
    model = _forest_model(family, task, params, len(X_tr))
    model.fit(_member_input(family, X_tr, schema), y_tr)
    return model, None


def member_predict(member: dict, X: Any, schema: list[dict], kind: str, n_classes: int) -> Any:
    """Predictions in search form: numbers (regression), P(class 1) (binary), (n, k) probabilities."""
    np = _require("numpy", "Prediction")
    model = member["model"]
    data = _member_input(member["family"], X, schema)
    if kind == "regression":
        return np.asarray(model.predict(data), dtype="float64")
    proba = np.asarray(model.predict_proba(data), dtype="float64")
    fitted = [int(c) for c in getattr(model, "classes_", range(proba.shape[1]))]
    full = np.zeros((len(X), n_classes), dtype="float64")
    full[:, fitted] = proba
    return full[:, 1] if kind == "binary" else full


def ensemble_predict(ensemble: dict, X: Any, schema: list[dict]) -> Any:
    """The weighted mean of the members' predictions (search form)."""
    total = None
    for member in ensemble["members"]:
        pred = member["weight"] * member_predict(member, X, schema, ensemble["kind"], ensemble["n_classes"])
        total = pred if total is None else total + pred
    return total


def greedy_ensemble(kind: str, y: Any, preds: list[Any], n_classes: int) -> list[float]:
    """Caruana's ensemble selection with replacement: a weight per trial (summing to 1)."""
    losses = [search_loss(kind, y, p, n_classes) for p in preds]
    counts = [0] * len(preds)
    best = min(range(len(preds)), key=lambda i: losses[i])
    counts[best] = 1
    current = preds[best]
    candidates = sorted(range(len(preds)), key=lambda i: losses[i])[:12]  # the rest rarely helps
    best_loss = losses[best]
    for step in range(1, AUTO_ENSEMBLE_ROUNDS):
        scored = [(search_loss(kind, y, (current * step + preds[i]) / (step + 1), n_classes), i) for i in candidates]
        loss, pick = min(scored)
        counts[pick] += 1
        current = (current * step + preds[pick]) / (step + 1)
        best_loss = min(best_loss, loss)
    weights = [c / sum(counts) for c in counts]
    kept = sorted(range(len(weights)), key=lambda i: -weights[i])[:AUTO_MAX_MEMBERS]
    total = sum(weights[i] for i in kept)
    return [weights[i] / total if i in kept else 0.0 for i in range(len(weights))]


def _inner_split(X: Any, y: Any, task: str) -> tuple:
    ms = _require("sklearn.model_selection", "Training")
    np = _require("numpy", "Training")
    stratify = None
    if task == "classification":
        counts = np.bincount(y)
        if counts[counts > 0].min() >= 2 and math.ceil(len(y) * AUTO_INNER_VALID) >= (counts > 0).sum():
            stratify = y
    return ms.train_test_split(X, y, test_size=AUTO_INNER_VALID, random_state=7, stratify=stratify)


def small_for_cv(n_rows: int, n_features: int, n_classes: int) -> bool:
    """Whether a table is small enough for k-fold trials and a cross-validated evaluation."""
    cells = n_rows * max(1, n_features) * (n_classes if n_classes > 2 else 1)
    return n_rows < AUTO_CV_MAX_ROWS and cells <= AUTO_CV_MAX_CELLS


def _inner_parts(X: Any, y: Any, task: str, k_fold: bool) -> list[tuple]:
    """(X_tr, X_va, y_tr, y_va) parts the trials are scored on: one split, or k folds on small data.

    Small data gets AUTO_CV_FOLDS folds (out-of-fold predictions choose the ensemble far more
    reliably than a fifth of a few hundred rows).
    """
    if not k_fold:
        return [tuple(_inner_split(X, y, task))]
    ms = _require("sklearn.model_selection", "Training")
    np = _require("numpy", "Training")
    if task == "classification" and np.bincount(y)[np.bincount(y) > 0].min() >= AUTO_CV_FOLDS:
        folds = ms.StratifiedKFold(AUTO_CV_FOLDS, shuffle=True, random_state=7).split(X, y)
    else:
        folds = ms.KFold(AUTO_CV_FOLDS, shuffle=True, random_state=7).split(X)
    return [(X.iloc[tr], X.iloc[va], y[tr], y[va]) for tr, va in folds]


def run_search(
    X: Any,
    y: Any,
    task: str,
    kind: str,
    n_classes: int,
    schema: list[dict],
    configs: list[dict],
    clock: SearchClock,
    report: Callable[[int, float, str, int], None] | None = None,
) -> dict:
    """Trials in order until the clock runs out (at least one); returns the chosen spec.

    The spec: members (config, trees, weight, the model fitted on the (last) inner training part)
    and the trials run, so a refit or a cross-validation fold can repeat it.
    """
    np = _require("numpy", "Training")
    parts = _inner_parts(X, y, task, small_for_cv(len(X), len(schema), n_classes))
    y_va = np.concatenate([p[3] for p in parts]) if len(parts) > 1 else parts[0][3]
    trials: list[dict] = []
    preds: list[Any] = []
    best_loss, best_label = math.inf, ""
    configs_run = 0
    for number, config in enumerate(configs, start=1):
        if trials and clock.expired():
            break
        configs_run = number
        try:
            fold_preds: list[Any] = []
            fold_trees: list[int] = []  # trees kept per fold (boosting families only)
            for X_tr, X_va, y_tr, _y in parts:
                model, trees = fit_member(config, task, X_tr, y_tr, X_va, _y, schema, clock, bool(trials))
                member = {"family": config["family"], "model": model}
                fold_preds.append(member_predict(member, X_va, schema, kind, n_classes))
                if trees is not None:
                    fold_trees.append(trees)
            pred = np.concatenate(fold_preds) if len(parts) > 1 else fold_preds[0]
            trees = int(round(sum(fold_trees) / len(fold_trees))) if fold_trees else None
        except JobCancelled:
            raise
        except Exception as exc:  # one failing configuration never ends the search
            log.info("trial %d (%s) failed: %s", number, config["family"], exc)
            continue
        loss = search_loss(kind, y_va, pred, n_classes)
        trials.append({"config": config, "trees": trees, "model": model, "loss": loss})
        preds.append(pred)
        if loss < best_loss:
            best_loss, best_label = loss, FAMILY_LABELS[config["family"]]
        if report:
            report(number, best_loss, best_label, clock.seconds_left())
    if not trials:
        raise JobError("internal", "No model could be trained on this data.")
    weights = greedy_ensemble(kind, y_va, preds, n_classes)
    members = [
        {**{k: trials[i][k] for k in ("config", "trees", "model")}, "family": trials[i]["config"]["family"], "weight": w}
        for i, w in enumerate(weights)
        if w > 0
    ]
    return {"members": members, "trials": len(trials), "configs_run": configs_run, "families": sorted({t["config"]["family"] for t in trials})}


def refit_spec(spec: dict, task: str, X: Any, y: Any, schema: list[dict], ctx: JobContext) -> list[dict]:
    """The chosen members fitted again on all the given rows (trees from early stopping × 1.1)."""
    members = []
    for m in spec["members"]:
        ctx.checkpoint()
        family, params = m["family"], m["config"]["params"]
        if family in ("lightgbm", "xgboost"):
            trees = max(1, int(round(m["trees"] * AUTO_REFIT_TREES)))
            threads = search_threads(*X.shape)
            model = (
                _lgbm_model(task, params, trees, threads)
                if family == "lightgbm"
                else _xgb_model(task, params, trees, False, threads)
            )
            model.fit(X, y)
        else:
            model = _forest_model(family, task, params, len(X))
            model.fit(_member_input(family, X, schema), y)
        members.append({"family": family, "weight": m["weight"], "model": model, "params": params})
    return members


def describe_choice(members: list[dict]) -> str:
    if len(members) == 1:
        return FAMILY_LABELS[members[0]["family"]]
    counts: dict[str, int] = {}
    for m in members:
        label = FAMILY_LABELS[m["family"]]
        counts[label] = counts.get(label, 0) + 1
    parts = [f"{label} \u00d7{n}" if n > 1 else label for label, n in counts.items()]
    return f"ensemble of {len(members)} ({', '.join(parts)})"


def _default_lgbm_pred(task: str, kind: str, n_classes: int, X_tr: Any, y_tr: Any, X_te: Any) -> Any:
    lgb = _require("lightgbm", "LightGBM")
    cls = lgb.LGBMClassifier if task == "classification" else lgb.LGBMRegressor
    model = cls(verbose=-1, random_state=42, n_jobs=search_threads(*X_tr.shape))
    model.fit(X_tr, y_tr)
    return member_predict({"family": "lightgbm", "model": model}, X_te, [], kind, n_classes)


def _baseline_pred(kind: str, n_classes: int, y_tr: Any, n: int) -> Any:
    np = _require("numpy", "Evaluation")
    if kind == "regression":
        return np.full(n, float(np.mean(y_tr)))
    prior = np.bincount(y_tr, minlength=n_classes).astype("float64")
    prior = (prior + 1e-3) / (prior + 1e-3).sum()
    if kind == "binary":
        # the majority class ranks no row above another: ROC AUC 0.5 (one constant for every fold)
        return np.full(n, 0.5)
    return np.tile(prior, (n, 1))


def ensemble_importances(members: list[dict], schema: list[dict]) -> list[float]:
    """Gain importance shares, weighted over the members."""
    total = [0.0] * len(schema)
    for m in members:
        family = m["family"]
        model = m["model"]
        try:
            if family == "lightgbm":
                raw = raw_importances(model, "lightgbm", schema)
            elif family == "xgboost":
                raw = raw_importances(model, "xgboost", schema)
            else:
                raw = raw_importances(model, "random_forest", schema)
        except Exception:  # noqa: BLE001 - importance is a nicety
            continue
        s = sum(v for v in raw if math.isfinite(v))
        if s > 0:
            for i, v in enumerate(raw):
                total[i] += m["weight"] * v / s
    return total


def _search_reporter(ctx: JobContext, kind: str, low: float, high: float, budget_s: float) -> Callable:
    metric = SEARCH_METRICS[kind]

    def report(trial: int, best_loss: float, best_label: str, seconds_left: int) -> None:
        score = best_loss if kind == "multiclass" else -best_loss
        shown = round_float(score, 4)
        done = 1 - seconds_left / budget_s if budget_s else 1
        ctx.progress(
            low + (high - low) * max(0.0, min(1.0, done)),
            "training",
            f"Trial {trial} \u00b7 best {metric} {shown} ({best_label}) \u00b7 {seconds_left} s left",
            search={
                "trial": trial,
                "best_score": shown,
                "metric": metric,
                "best_model": best_label,
                "seconds_left": seconds_left,
            },
        )

    return report


def train_auto(
    ctx: JobContext, X: Any, y: Any, task: str, classes: list | None, schema: list[dict], p: dict, warnings: list[str]
) -> tuple[dict, dict, dict]:
    """Search, evaluate honestly, refit on all rows.

    Returns (the model to save, the result fields, metrics on held-out/out-of-fold rows).
    """
    np = _require("numpy", "Training")
    ms = _require("sklearn.model_selection", "Training")
    n_classes = len(classes or [])
    kind = search_kind(task, n_classes)
    metric = SEARCH_METRICS[kind]
    n = len(X)
    budget = auto_time_budget(p["time_budget_s"], n, len(schema))
    if budget < p["time_budget_s"]:
        warnings.append(
            f"The search got {budget} s instead of {p['time_budget_s']} s: {fmt_int(n)} rows do not need more."
        )
    configs = search_configs(n)
    start = time.monotonic()
    stopped = False
    hard = start + AUTO_HARD_LIMIT * budget
    if not small_for_cv(n, len(schema), n_classes):
        method = "holdout"
        X_tr, X_te, y_tr, y_te = _split(X, y, task, p["test_size"], warnings)
        clock = SearchClock(ctx, start + 0.6 * budget, hard_deadline=hard)
        report = _search_reporter(ctx, kind, 35, 75, clock.deadline - start)
        spec = run_search(X_tr, y_tr, task, kind, n_classes, schema, configs, clock, report)
        stopped = ctx.stop_event.is_set()
        ctx.progress(78, "evaluating", f"Evaluating on {fmt_int(len(X_te))} held-out rows\u2026", force=True)
        ensemble = {"kind": kind, "n_classes": n_classes, "members": spec["members"]}
        pred = ensemble_predict(ensemble, X_te, schema)
        default_pred = _default_lgbm_pred(task, kind, n_classes, X_tr, y_tr, X_te)
        base_pred = _baseline_pred(kind, n_classes, y_tr, len(y_te))
        y_eval = y_te
        n_train, n_test = len(X_tr), len(X_te)
    else:
        method = "cv"
        clock = SearchClock(ctx, start + 0.45 * budget, hard_deadline=hard)
        report = _search_reporter(ctx, kind, 35, 60, clock.deadline - start)
        spec = run_search(X, y, task, kind, n_classes, schema, configs, clock, report)
        stopped = ctx.stop_event.is_set()
        replay = configs[: spec["configs_run"]]  # the same trials, in the same order, in every fold
        fold_budget = max(1.0, (start + 0.9 * budget - time.monotonic()) / AUTO_CV_FOLDS)
        if task == "classification" and np.bincount(y)[np.bincount(y) > 0].min() >= AUTO_CV_FOLDS:
            folds = ms.StratifiedKFold(AUTO_CV_FOLDS, shuffle=True, random_state=42).split(X, y)
        else:
            folds = ms.KFold(AUTO_CV_FOLDS, shuffle=True, random_state=42).split(X)
        shape = (n,) if kind != "multiclass" else (n, n_classes)
        pred, default_pred, base_pred = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        for k, (tr, te) in enumerate(folds, start=1):
            ctx.progress(60 + 4 * k, "evaluating", f"Cross-validating the search: fold {k} of {AUTO_CV_FOLDS}\u2026", force=True)
            X_tr, X_te, y_tr = X.iloc[tr], X.iloc[te], y[tr]
            # a fold that runs out of time keeps fewer trials: the estimate can only be pessimistic
            fold_clock = SearchClock(ctx, time.monotonic() + fold_budget, honour_stop=False, hard_deadline=hard)
            fold_spec = run_search(X_tr, y_tr, task, kind, n_classes, schema, replay, fold_clock)
            fold_members = refit_spec(fold_spec, task, X_tr, y_tr, schema, ctx)
            pred[te] = ensemble_predict({"kind": kind, "n_classes": n_classes, "members": fold_members}, X_te, schema)
            default_pred[te] = _default_lgbm_pred(task, kind, n_classes, X_tr, y_tr, X_te)
            base_pred[te] = _baseline_pred(kind, n_classes, y_tr, len(te))
        y_eval = y
        n_train, n_test = n, n
    score = search_score(kind, y_eval, pred, n_classes)
    comparison = {
        "default_lightgbm": round_float(search_score(kind, y_eval, default_pred, n_classes)),
        "baseline": round_float(search_score(kind, y_eval, base_pred, n_classes)),
        "baseline_name": "mean" if kind == "regression" else "majority class",
    }
    ctx.progress(86, "training", f"Refitting the chosen model on all {fmt_int(n)} rows\u2026", force=True)
    members = refit_spec(spec, task, X, y, schema, ctx)
    model = {"format": "statsbot-ensemble", "kind": kind, "n_classes": n_classes, "members": members}
    metrics, extra = _auto_metrics(kind, task, y_eval, pred, classes)
    fields = {
        "n_train": n_train,
        "n_test": n_test,
        "evaluation": {
            "method": method,
            "rows": int(len(y_eval)),
            "metric": metric,
            "score": round_float(score),
            "higher_is_better": kind != "multiclass",
        },
        "comparison": comparison,
        "search": {
            "trials": spec["trials"],
            "families": [FAMILY_LABELS[f] for f in spec["families"]],
            "chosen": describe_choice(members),
            "ensemble": len(members) > 1,
            "stopped_early": stopped,
            "time_budget_s": budget,
            "seconds": round(time.monotonic() - start, 1),
        },
        "refit_on_all_rows": True,
        **extra,
    }
    return model, fields, metrics


def _auto_metrics(kind: str, task: str, y: Any, pred: Any, classes: list | None) -> tuple[dict, dict]:
    """The usual metrics (and chart data) from search-form predictions."""
    np = _require("numpy", "Evaluation")
    if kind == "regression":
        metrics = regression_metrics(y, pred)
        rng = np.random.default_rng(0)
        idx = np.arange(len(y))
        if len(idx) > PRED_VS_ACTUAL_POINTS:
            idx = np.sort(rng.choice(idx, PRED_VS_ACTUAL_POINTS, replace=False))
        return metrics, {"predicted_vs_actual": [[round_float(pred[i]), round_float(y[i])] for i in idx]}
    n_classes = len(classes or [])
    proba = np.column_stack([1 - pred, pred]) if kind == "binary" else pred
    labels = proba.argmax(axis=1)
    metrics = classification_metrics(y, labels, proba, n_classes)
    metrics["log_loss"] = round_float(search_score("multiclass", y, proba, n_classes))
    extra: dict = {}
    if classes is not None and n_classes <= CONFUSION_MAX_LABELS:
        sk = _require("sklearn.metrics", "Evaluation")
        matrix = sk.confusion_matrix(y, labels, labels=list(range(n_classes)))
        extra["confusion_matrix"] = {"labels": [str(c) for c in classes], "matrix": matrix.tolist()}
    return metrics, extra


# --------------------------------------------------------------------------- jobs: predict


class RunningStats:
    """Count, mean, std, min and max of a stream of numbers, merged chunk by chunk."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, values: Any) -> None:
        np = _require("numpy", "Prediction")
        arr = np.asarray(values, dtype="float64")
        arr = arr[np.isfinite(arr)]
        if not arr.size:
            return
        n_b = int(arr.size)
        mean_b = float(arr.mean())
        m2_b = float(((arr - mean_b) ** 2).sum())
        total = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / total
        self.m2 += m2_b + delta * delta * self.n * n_b / total
        self.n = total
        self.min = min(self.min, float(arr.min()))
        self.max = max(self.max, float(arr.max()))

    def summary(self) -> dict:
        if not self.n:
            return {"count": 0, "mean": None, "std": None, "min": None, "max": None}
        std = math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0
        return {
            "count": self.n,
            "mean": round_significant(self.mean),
            "std": round_significant(std),
            "min": round_significant(self.min),
            "max": round_significant(self.max),
        }


def default_output_path(input_path: Path, outputs_dir: Path) -> Path:
    """<stem>_predictions.csv next to the input, or in ~/.statsbot/outputs when not writable."""
    name = f"{input_path.stem}_predictions.csv"
    if os.access(input_path.parent, os.W_OK):
        return input_path.parent / name
    private_dir(outputs_dir)
    return outputs_dir / f"{input_path.stem}_predictions_{time.strftime('%Y%m%d_%H%M%S')}.csv"


def link_new_file(tmp: Path, dest: Path) -> bool:
    """Move tmp to dest unless dest exists (atomically where the system allows); False if it exists."""
    if os.name == "nt":
        try:
            os.rename(tmp, dest)  # Windows: rename never replaces an existing file
        except FileExistsError:
            return False
        return True
    try:
        os.link(tmp, dest)  # fails if dest exists, whatever appeared there since any check
    except FileExistsError:
        return False
    except OSError:  # no hard links on this file system: claim the name, then rename onto our claim
        try:
            os.close(os.open(str(dest), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            return False
        os.replace(tmp, dest)
        return True
    os.unlink(tmp)
    return True


def publish_new_file(tmp: Path, dest: Path, label: str) -> None:
    """Move tmp to dest only if dest does not exist: a file the worker was given is never replaced."""
    if not link_new_file(tmp, dest):
        raise JobError(
            "invalid_params",
            f"{short_text(label, 300)} was created while predicting; the worker never overwrites a file "
            "it was given. Choose a new file name.",
        )


def publish_numbered(tmp: Path, dest: Path, attempts: int = 1000) -> Path:
    """Move tmp to dest, or to <stem>_2<suffix>, _3, ... when that name is taken; returns the name used.

    The default prediction file never replaces an existing file, whoever wrote it.
    """
    for n in range(1, attempts + 1):
        candidate = dest if n == 1 else dest.with_name(f"{dest.stem}_{n}{dest.suffix}")
        if link_new_file(tmp, candidate):
            return candidate
    raise JobError(
        "invalid_params",
        f"{dest.parent} already holds {dest.name} and {attempts - 1} numbered versions of it; "
        "give output_path or remove some of them.",
    )


class CsvSink:
    """Appends DataFrames to one CSV file; uses pyarrow's (much faster) writer when it can."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh  # opened in binary mode
        self.rows = 0
        self._arrow: bool | None = None  # unknown until the first chunk

    def write(self, frame: Any) -> None:
        header = self.rows == 0
        data = self._arrow_bytes(frame, header) if self._arrow is not False else None
        if data is not None:
            self.fh.write(data)
        else:
            frame.to_csv(self.fh, header=header, index=False, lineterminator="\n", encoding="utf-8")
        self.rows += len(frame)

    def _arrow_bytes(self, frame: Any, header: bool) -> bytes | None:
        import io

        try:
            import pyarrow as pa
            import pyarrow.csv as pcsv
        except ImportError:
            self._arrow = False
            return None
        try:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            buffer = io.BytesIO()
            pcsv.write_csv(table, buffer, pcsv.WriteOptions(include_header=header))
        except (pa.ArrowException, TypeError, ValueError) as exc:
            if self._arrow is None:  # this data does not suit arrow: use pandas throughout
                log.debug("writing CSV with pandas: %s", exc)
                self._arrow = False
            return None
        self._arrow = True
        return buffer.getvalue()


def _unique_name(name: str, taken: set) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate = f"{name}_{n}"
        n += 1
    return candidate


def predict_frame(estimator: Any, metadata: dict, chunk: Any) -> tuple[Any, Any]:
    """(predictions, probabilities or None) for one chunk, decoded to the original labels."""
    np = _require("numpy", "Prediction")
    schema = metadata["feature_schema"]
    if metadata["model_type"] == "auto":
        pred = ensemble_predict(estimator, prepare_features(chunk, schema), schema)
        if metadata["task_type"] == "regression":
            return np.asarray(pred, dtype="float64"), None
        full = np.column_stack([1 - pred, pred]) if estimator["kind"] == "binary" else pred
        labels = np.asarray(metadata["classes"], dtype=object)[full.argmax(axis=1)]
        return labels, full
    X = design_matrix(metadata["model_type"], prepare_features(chunk, schema), schema)
    if metadata["task_type"] == "regression":
        return np.asarray(estimator.predict(X), dtype="float64"), None
    classes = metadata["classes"]
    proba = estimator.predict_proba(X)
    fitted = [int(c) for c in getattr(estimator, "classes_", range(proba.shape[1]))]
    full = np.zeros((len(X), len(classes)), dtype="float64")
    full[:, fitted] = proba
    labels = np.asarray(classes, dtype=object)[full.argmax(axis=1)]
    return labels, full


WHY_COLUMNS = 3


def _booster_contrib(family: str, model: Any, X: Any, n_features: int) -> Any:
    """Per-row, per-class feature contributions (n, k, features) of a LightGBM/XGBoost model."""
    np = _require("numpy", "Explaining predictions")
    if family == "lightgbm":
        raw = np.asarray(model.predict(X, pred_contrib=True), dtype="float64")
    else:
        xgb = _require("xgboost", "Explaining predictions")
        raw = np.asarray(
            model.get_booster().predict(xgb.DMatrix(X, enable_categorical=True), pred_contribs=True),
            dtype="float64",
        )
    raw = raw.reshape(len(X), -1, n_features + 1)  # (n, classes or 1, features + bias)
    return raw[:, :, :n_features]


def prediction_contributions(
    estimator: Any, metadata: dict, features: Any, class_index: Any
) -> tuple[Any | None, str | None]:
    """(n, features) contributions of each feature to each row's prediction, or (None, why not).

    Regression: in the target's units. Classification: log-odds of the predicted class
    (``class_index``, indices into the model's classes). An auto ensemble adds its boosting
    members' contributions by their weights.
    """
    np = _require("numpy", "Explaining predictions")
    schema = metadata["feature_schema"]
    n_features = len(schema)
    model_type = metadata["model_type"]
    if model_type == "auto":
        members = [(m["family"], m["model"], m["weight"]) for m in estimator["members"]]
    else:
        members = [(model_type, estimator, 1.0)]
    members = [m for m in members if m[0] in ("lightgbm", "xgboost")]
    if not members:
        return None, "this model has no contribution output (only LightGBM and XGBoost models do)"
    n_classes = len(metadata.get("classes") or [])
    rows = np.arange(len(features))
    total = np.zeros((len(features), n_features), dtype="float64")
    weight_sum = sum(w for _, _, w in members)
    for family, model, weight in members:
        contrib = _booster_contrib(family, model, features, n_features)
        if contrib.shape[1] == 1:  # regression, or binary (towards class 1)
            values = contrib[:, 0, :]
            if n_classes == 2:
                values = np.where((np.asarray(class_index) == 1)[:, None], values, -values)
        elif contrib.shape[1] == n_classes:
            values = contrib[rows, np.asarray(class_index, dtype="int64"), :]
        else:  # a member fitted without every class: its columns do not line up
            continue
        total += values * (weight / weight_sum)
    return total, None


def why_texts(contrib: Any, names: list[str], top: int = WHY_COLUMNS) -> list[list[str]]:
    """The top contributions of each row as 'feature: +0.123' texts, largest first: top lists of n."""
    np = _require("numpy", "Explaining predictions")
    order = np.argsort(-np.abs(contrib), axis=1)[:, :top]
    columns = []
    for k in range(min(top, contrib.shape[1])):
        idx = order[:, k]
        vals = contrib[np.arange(len(contrib)), idx]
        columns.append([f"{names[i]}: {v:+.4g}" for i, v in zip(idx.tolist(), vals.tolist())])  # noqa: B905
    while len(columns) < top:
        columns.append([""] * len(contrib))
    return columns


def job_predict(ctx: JobContext, chunk_rows: int = PREDICT_CHUNK_ROWS) -> dict:
    """Predict a local file in chunks, writing every row to a CSV; returns a small summary."""
    started = time.monotonic()
    s = ctx.settings
    model_id = validate_model_id(ctx.params.get("model_id"))
    path, fmt = check_input_file(
        ctx.params.get("file_path"), s.allowed_roots, s.max_file_bytes, s.root_aliases
    )
    explain = ctx.params.get("explain", False)
    if not isinstance(explain, bool):
        raise JobError("invalid_params", "explain must be true or false.")
    metadata, estimator = load_model(s.models_dir, model_id, s.paths.home)
    header = read_columns(path, fmt)
    missing = [f for f in metadata["features"] if f not in header]
    if missing:
        raise JobError(
            "missing_columns",
            f"{path.name} is missing {len(missing)} column(s) the model needs: {_list_some(missing)}.",
        )
    raw_out = ctx.params.get("output_path")
    output = (
        check_output_path(raw_out, s.allowed_roots, path, s.root_aliases)
        if raw_out
        else default_output_path(path, s.outputs_dir)
    )
    total, _ = count_rows(path, fmt)
    classification = metadata["task_type"] == "classification"
    classes = [str(c) for c in metadata.get("classes") or []]
    pred_col = _unique_name("prediction", set(header))
    proba_cols = [_unique_name(f"proba_{c}", set(header)) for c in classes] if classification else []
    out_columns = [pred_col] + proba_cols
    warnings: list[str] = []
    why_cols: list[str] = []
    if explain and metadata["model_type"] not in ("lightgbm", "xgboost", "auto"):
        explain = False
        warnings.append(
            f"No why_ columns: a {MODEL_LABELS.get(metadata['model_type'], 'model')} has no contribution output "
            "(LightGBM, XGBoost and auto models do)."
        )
    if explain:
        taken = set(header) | set(out_columns)
        for i in range(1, WHY_COLUMNS + 1):
            why_cols.append(_unique_name(f"why_{i}", taken))
            taken.add(why_cols[-1])
    sample_inputs = header[:8]
    sample_rows: list[list] = []
    stats = RunningStats()
    counts: dict[str, int] = {}
    done = 0
    ctx.progress(5, "predicting", f"Predicting {path.name} with {model_id}\u2026", force=True)
    tmp = output.with_name(f".{output.name}.{secrets.token_hex(4)}.part")
    try:
        with open(tmp, "wb") as fh:
            sink = CsvSink(fh)
            for chunk in iter_chunks(path, fmt, chunk_rows):
                ctx.checkpoint()
                labels, proba = predict_frame(estimator, metadata, chunk)
                added = {pred_col: labels, **{col: proba[:, i].round(6) for i, col in enumerate(proba_cols)}}
                if why_cols:
                    added.update(_why_columns(estimator, metadata, chunk, proba, why_cols, warnings))
                out = _pandas().concat([chunk, _pandas().DataFrame(added, index=chunk.index)], axis=1)
                sink.write(out)
                if classification:
                    for label, n in _pandas().Series(labels).astype(str).value_counts().items():
                        counts[label] = counts.get(label, 0) + int(n)
                else:
                    stats.add(labels)
                if len(sample_rows) < 10:
                    head = out[sample_inputs + out_columns].head(10 - len(sample_rows))
                    sample_rows.extend([json_safe(v) for v in rec] for rec in head.itertuples(index=False))
                done += len(chunk)
                pct = 5 + 90 * done / total if total else 50
                ctx.progress(
                    min(pct, 95),
                    "predicting",
                    f"Predicted {fmt_int(done)}" + (f" of ~{fmt_int(total)}" if total else "") + " rows",
                )
        ctx.checkpoint()
        if raw_out:
            publish_new_file(tmp, output, raw_out)
        else:
            output = publish_numbered(tmp, output)  # never replaces a file, not even an earlier run's
    finally:
        if tmp.exists():
            tmp.unlink()
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:LABELS_MAX]
    summary = {"counts": dict(top)} if classification else stats.summary()
    shown = list(range(len(out_columns)))
    if len(classes) > LABELS_MAX:  # name only the classes the counts name (the data budget's labels)
        predicted = {label for label, _ in top}
        shown = [0] + [i + 1 for i, c in enumerate(classes) if c in predicted]
    shown_columns = [out_columns[i] for i in shown]
    keep = list(range(len(sample_inputs))) + [len(sample_inputs) + i for i in shown]
    ctx.progress(100, "done", f"Wrote {fmt_int(done)} predictions to {output.name}", force=True)
    return {
        "model_id": model_id,
        "rows": done,
        "output_path": str(output),
        "columns": [short_name(c) for c in shown_columns],
        "n_columns": len(header) + len(out_columns) + len(why_cols),
        "sample": {
            "columns": [short_name(c) for c in sample_inputs + shown_columns],
            "rows": [[row[i] for i in keep] for row in sample_rows],
        },
        "summary": summary,
        "duration_s": round(time.monotonic() - started, 2),
        **({"why_columns": [short_name(c) for c in why_cols]} if why_cols else {}),
        **({"warnings": list(dict.fromkeys(warnings))} if warnings else {}),
    }


def _why_columns(
    estimator: Any, metadata: dict, chunk: Any, proba: Any, why_cols: list[str], warnings: list[str]
) -> dict:
    """why_1..why_3 texts for one chunk (empty when the model gives no contributions)."""
    schema = metadata["feature_schema"]
    features = prepare_features(chunk, schema)
    class_index = proba.argmax(axis=1) if proba is not None else [0] * len(chunk)
    contrib, problem = prediction_contributions(estimator, metadata, features, class_index)
    if contrib is None:
        warnings.append(f"No why_ columns: {problem}.")
        return {col: [""] * len(chunk) for col in why_cols}
    texts = why_texts(contrib, [e["name"] for e in schema], len(why_cols))
    return {col: texts[i] for i, col in enumerate(why_cols)}


# --------------------------------------------------------------------------- jobs: models on disk


def list_models(models_dir: Path, home: Path | None = None) -> tuple[list[dict], list[str]]:
    """Saved models, newest first, and warnings for folders that could not be read.

    A model that would be refused when loading (see model_problem) is listed with the reason in
    ``refused`` (None for a usable model).
    """
    models: list[dict] = []
    warnings: list[str] = []
    if not models_dir.is_dir():
        return models, warnings
    anchor = trust_anchor(models_dir, home)
    for entry in sorted(models_dir.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        try:
            meta = json.loads((entry / "metadata.json").read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("metadata is not an object")
            models.append(
                {
                    "model_id": entry.name,
                    "model_type": meta.get("model_type"),
                    "task_type": meta.get("task_type"),
                    "target": short_name(meta["target"]) if meta.get("target") is not None else None,
                    "created_at": meta.get("created_at"),
                    "n_features": len(meta.get("features") or []),
                    "features": [short_name(f) for f in list(meta.get("features") or [])[:30]],
                    "main_metric": meta.get("main_metric"),
                    "metrics": meta.get("metrics"),
                    "refused": model_problem(entry, meta, anchor),
                    **model_details(entry, meta),
                }
            )
        except (OSError, ValueError) as exc:
            log.warning("skipping model folder %s: %s", entry, exc)
            warnings.append(f"Skipped {entry.name}: no readable metadata.json.")
    models.sort(key=lambda m: str(m.get("created_at") or ""), reverse=True)
    return models, warnings


MODEL_NAME_MAX = 60


def model_details(directory: Path, meta: dict) -> dict:
    """What tells models apart in a list: the name the user gave, the training file's name (not its
    folder) and the bytes the model's folder takes on disk."""
    name = meta.get("name")
    training_file = meta.get("training_file")
    size = 0
    for item in directory.iterdir():
        try:
            info = os.lstat(item)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            size += info.st_size
    return {
        "name": short_text(name, MODEL_NAME_MAX) if isinstance(name, str) and name else None,
        "source_file": short_name(re.split(r"[\\/]", training_file)[-1]) if isinstance(training_file, str) else None,
        "size_bytes": size,
    }


def clean_model_name(raw: Any) -> str:
    """A display name: one line of at most MODEL_NAME_MAX printable characters."""
    if not isinstance(raw, str):
        raise JobError("invalid_params", "name must be text.")
    name = " ".join(raw.split())
    if not name:
        raise JobError("invalid_params", "The new name is empty.")
    if len(name) > MODEL_NAME_MAX or not name.isprintable():
        raise JobError("invalid_params", f"A model name is one line of at most {MODEL_NAME_MAX} characters.")
    return name


def rename_model(models_dir: Path, model_id: Any, raw_name: Any) -> str:
    """Give a model a display name, kept in its metadata.json. Its model_id (the folder) stays, so
    buttons and scripts that use the id keep working; only a folder this worker saved is changed."""
    name = clean_model_name(raw_name)
    directory = model_dir_for(models_dir, validate_model_id(model_id))
    if os.path.islink(models_dir / model_id) or not directory.is_dir() or not is_worker_model(directory, model_id):
        raise JobError("model_not_found", f"No model {model_id} saved by this worker on this machine.")
    meta = json.loads((directory / "metadata.json").read_text(encoding="utf-8"))
    meta["name"] = name
    write_file_atomic(directory / "metadata.json", json.dumps(meta, indent=2).encode("utf-8"), 0o600)
    return name


def job_rename_model(ctx: JobContext) -> dict:
    model_id = ctx.params.get("model_id")
    name = rename_model(ctx.settings.models_dir, model_id, ctx.params.get("name"))
    return {"model_id": model_id, "name": name}


def job_list_models(ctx: JobContext) -> dict:
    models, warnings = list_models(ctx.settings.models_dir, ctx.settings.paths.home)
    return {"models": models[:200], "warnings": warnings[:20]}


def is_worker_model(directory: Path, model_id: str) -> bool:
    """True when directory holds a metadata.json written by this worker for model_id.

    The marker is ``"format": "statsbot-model"``; models saved before it existed are recognised
    by ``format_version`` 1 with their own model_id, model_type and worker_version.
    """
    meta_file = directory / "metadata.json"
    try:
        if not stat.S_ISREG(os.lstat(meta_file).st_mode):
            return False
        if os.path.getsize(meta_file) > 10 * 1024 * 1024:
            return False
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("model_id") != model_id:
        return False
    if meta.get("format") == MODEL_FORMAT:
        return True
    return (
        "format" not in meta
        and meta.get("format_version") == 1
        and isinstance(meta.get("model_type"), str)
        and isinstance(meta.get("worker_version"), str)
    )


def delete_model(models_dir: Path, model_id: Any) -> Path:
    """Remove one model folder: a plain name inside models_dir holding this worker's metadata."""
    directory = model_dir_for(models_dir, validate_model_id(model_id))
    if os.path.islink(models_dir / model_id) or not directory.is_dir():
        raise JobError("model_not_found", f"No model {model_id} on this machine.")
    if not is_worker_model(directory, model_id):
        raise JobError(
            "model_not_found",
            f"{model_id} in {models_dir} is not a model saved by this worker (no valid metadata.json), "
            "so it was not deleted.",
        )
    shutil.rmtree(directory)
    return directory


def job_delete_model(ctx: JobContext) -> dict:
    model_id = ctx.params.get("model_id")
    delete_model(ctx.settings.models_dir, model_id)
    return {"model_id": model_id, "deleted": True}


def job_autostart(ctx: JobContext) -> dict:
    enable = ctx.params.get("enable", True)
    if not isinstance(enable, bool):
        raise JobError("invalid_params", "enable must be true or false.")
    env = AutostartEnv.current(ctx.settings.paths)
    if enable:
        if not env.script.is_file():
            raise JobError(
                "unsupported", "This worker has no saved copy of itself yet, so it cannot autostart."
            )
        return install_autostart(env, start_now=False)
    return remove_autostart(env)


JOB_ACTIONS: dict[str, Callable[[JobContext], dict]] = {
    "describe": job_describe,
    "train": job_train,
    "check": job_check,
    "predict": job_predict,
    "list_models": job_list_models,
    "delete_model": job_delete_model,
    "rename_model": job_rename_model,
    "autostart": job_autostart,
}


# --------------------------------------------------------------------------- autostart

SYSTEMD_UNIT = "statsbot-worker.service"
XDG_ENTRY = "statsbot-worker.desktop"
# Ends the one crontab line autostart adds (sh reads it as a comment); --autostart off removes
# the lines that carry it, and only those.
CRON_TAG = "# statsbot-worker autostart"
LAUNCHD_LABEL = "com.statsbot.worker"
WINDOWS_TASK = "StatsBotWorker"

Runner = Callable[[list], "tuple[int, str]"]


def run_command(cmd: list) -> tuple[int, str]:
    """Run a system command, returning (exit code, output); never raises."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return 127, f"{cmd[0]}: command not found"
    except (OSError, subprocess.SubprocessError) as exc:
        return 1, str(exc)
    return proc.returncode, (proc.stdout or "") + (proc.stderr or "")


@dataclass
class AutostartEnv:
    """Where and how autostart is installed; injectable so tests never touch the system."""

    system: str
    home: Path
    python: Path
    script: Path
    statsbot_home: Path
    runner: Runner = run_command
    user: str = ""
    appdata: Path | None = None
    desktop: bool = False  # a graphical session (XDG autostart entries run at its login)
    config_home: Path | None = None  # $XDG_CONFIG_HOME
    spawn: Callable[[list[str], dict[str, str]], None] | None = None  # start the worker now, detached

    @classmethod
    def current(cls, paths: Paths) -> AutostartEnv:
        appdata = os.environ.get("APPDATA")
        config_home = os.environ.get("XDG_CONFIG_HOME")
        return cls(
            system=platform.system(),
            home=Path.home(),
            python=Path(sys.executable),
            script=paths.script,
            statsbot_home=paths.home,
            user=os.environ.get("USER") or os.environ.get("USERNAME") or "",
            appdata=Path(appdata) if appdata else None,
            desktop=any(os.environ.get(v) for v in ("XDG_CURRENT_DESKTOP", "WAYLAND_DISPLAY", "DISPLAY")),
            config_home=Path(config_home) if config_home and os.path.isabs(config_home) else None,
        )

    @property
    def log_dir(self) -> Path:
        return self.statsbot_home / "logs"

    def systemd_path(self) -> Path:
        return self.home / ".config" / "systemd" / "user" / SYSTEMD_UNIT

    def launchd_path(self) -> Path:
        return self.home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"

    def xdg_path(self) -> Path:
        return (self.config_home or self.home / ".config") / "autostart" / XDG_ENTRY

    def launcher_path(self) -> Path:
        return self.statsbot_home / "statsbot-worker.cmd"

    def startup_path(self) -> Path:
        base = self.appdata or (self.home / "AppData" / "Roaming")
        return base / "Microsoft" / "Windows" / "Start Menu" / "Programs" / "Startup" / "statsbot-worker.cmd"


def _systemd_quote(arg: str) -> str:
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def systemd_unit_text(python: Path, script: Path, statsbot_home: Path) -> str:
    """A systemd user unit running the saved script in the foreground."""
    exec_start = " ".join(_systemd_quote(str(a)) for a in (python, script)) + " --foreground"
    return (
        "[Unit]\n"
        "Description=StatsBot local worker\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={exec_start}\n"
        f"Environment={_systemd_quote('STATSBOT_HOME=' + str(statsbot_home))}\n"
        "Environment=PYTHONUNBUFFERED=1\n"
        "Restart=always\n"
        "RestartSec=10\n"
        "# The worker exits 0 only when it must not run again (credential revoked, replaced by a\n"
        "# newer worker, stopped on purpose), 2 for a usage error and 3 for missing packages.\n"
        "RestartPreventExitStatus=0 2 3\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


def launchd_plist_text(python: Path, script: Path, statsbot_home: Path) -> str:
    """A launchd agent (RunAtLoad, kept alive after crashes) running the saved script."""
    import plistlib

    log_dir = statsbot_home / "logs"
    plist = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": [str(python), str(script), "--foreground"],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 10,
        "ProcessType": "Background",
        "EnvironmentVariables": {"STATSBOT_HOME": str(statsbot_home), "PYTHONUNBUFFERED": "1"},
        "StandardOutPath": str(log_dir / "launchd.out.log"),
        "StandardErrorPath": str(log_dir / "launchd.err.log"),
    }
    return plistlib.dumps(plist).decode("utf-8")


def windows_pythonw(python: Path) -> Path:
    candidate = python.with_name("pythonw.exe")
    return candidate if python.name.lower() == "python.exe" and candidate.exists() else python


def windows_launcher_text(python: Path, script: Path, statsbot_home: Path) -> str:
    """A .cmd that starts the saved script without a console window."""
    return (
        "@echo off\r\n"
        f'set "STATSBOT_HOME={statsbot_home}"\r\n'
        f'start "" "{windows_pythonw(python)}" "{script}" --foreground\r\n'
    )


def schtasks_create_command(launcher: Path) -> list[str]:
    return [
        "schtasks",
        "/Create",
        "/F",
        "/SC",
        "ONLOGON",
        "/TN",
        WINDOWS_TASK,
        "/RL",
        "LIMITED",
        "/TR",
        f'"{launcher}"',
    ]


def _write_if_changed(path: Path, text: str) -> bool:
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except OSError:
        pass
    write_file_atomic(path, text.encode("utf-8"))
    return True


def _autostart_result(
    enabled: bool, method: str, path: Path, message: str, manual: list[str] | None = None
) -> dict:
    return {
        "enabled": enabled,
        "method": method,
        "path": str(path),
        "message": message,
        "manual_steps": manual or [],
    }


def install_autostart(env: AutostartEnv, start_now: bool = True) -> dict:
    """Install (idempotently) the login service for this OS; manual_steps when a command fails."""
    private_dir(env.log_dir)
    if env.system == "Linux":
        return _install_linux(env, start_now)
    if env.system == "Darwin":
        return _install_launchd(env, start_now)
    if env.system == "Windows":
        return _install_windows(env, start_now)
    raise JobError("unsupported", f"Autostart is not supported on {env.system}.")


def _install_systemd(env: AutostartEnv, start_now: bool) -> dict:
    path = env.systemd_path()
    _write_if_changed(path, systemd_unit_text(env.python, env.script, env.statsbot_home))
    enable = ["systemctl", "--user", "enable"] + (["--now"] if start_now else []) + [SYSTEMD_UNIT]
    steps = [["systemctl", "--user", "daemon-reload"], enable]
    for cmd in steps:
        code, output = env.runner(cmd)
        if code != 0:
            return _autostart_result(
                False,
                "systemd",
                path,
                f"Wrote {path}, but '{' '.join(cmd)}' failed: {short_text(output, 200)}",
                [" ".join(c) for c in steps],
            )
    message = f"Autostart on: systemd user service {SYSTEMD_UNIT}" + (" (started now)." if start_now else ".")
    manual: list[str] = []
    code, output = env.runner(["loginctl", "show-user", env.user or "$USER", "--property=Linger"])
    if code == 0 and "Linger=no" in output:
        message += " It runs while you are logged in; to keep it running after logout, run the step below."
        manual.append(f"loginctl enable-linger {env.user or '$USER'}")
    return _autostart_result(True, "systemd", path, message, manual)


def _install_linux(env: AutostartEnv, start_now: bool) -> dict:
    """systemd user service where there is a user bus; otherwise an XDG autostart entry (a desktop
    session) or an @reboot crontab line. The result's message says which, and why."""
    code, output = env.runner(["systemctl", "--user", "show-environment"])
    if code == 0:
        result = _install_systemd(env, start_now)
        if result["enabled"]:
            _remove_linux_fallbacks(env)  # one way to start, never two
            return result
        env.systemd_path().unlink(missing_ok=True)
        why = result["message"].split(", but ", 1)[-1]
    else:
        why = "no systemd user session here: " + short_text(output.strip() or f"exit code {code}", 120)
    return _install_linux_fallback(env, start_now, why)


def worker_command(env: AutostartEnv) -> list[str]:
    return [str(env.python), str(env.script), "--foreground"]


def _desktop_quote(arg: str) -> str:
    """One argument of a desktop entry's Exec key (freedesktop.org Desktop Entry spec)."""
    quoted = '"' + "".join("\\" + ch if ch in '"`$\\' else ch for ch in arg) + '"'
    # The string-level escape applies before the quoting rule: every backslash is doubled again.
    return quoted.replace("\\", "\\\\").replace("%", "%%")


def xdg_entry_text(env: AutostartEnv) -> str:
    """An XDG autostart entry: the desktop starts the worker at login."""
    command = ["env", f"STATSBOT_HOME={env.statsbot_home}", *worker_command(env)]
    return (
        "[Desktop Entry]\n"
        "Type=Application\n"
        "Name=StatsBot worker\n"
        "Comment=Connects this machine to StatsBot (statsbot_worker.py --autostart off removes it)\n"
        f"Exec={' '.join(_desktop_quote(a) for a in command)}\n"
        "Terminal=false\n"
        "NoDisplay=true\n"
        "X-GNOME-Autostart-enabled=true\n"
    )


def cron_line(env: AutostartEnv) -> str:
    """The @reboot crontab line (cron reads % as a newline, so it is escaped)."""
    import shlex

    log_file = env.log_dir / "worker.out.log"
    command = " ".join(shlex.quote(a) for a in worker_command(env))
    line = (
        f"@reboot STATSBOT_HOME={shlex.quote(str(env.statsbot_home))} PYTHONUNBUFFERED=1 {command} "
        f">>{shlex.quote(str(log_file))} 2>&1"
    )
    return line.replace("%", "\\%") + f" {CRON_TAG}"


def _read_crontab(env: AutostartEnv) -> tuple[list[str] | None, str]:
    """The user's crontab lines ([] when there is none yet), or None and why crontab cannot be used."""
    code, output = env.runner(["crontab", "-l"])
    if code == 0:
        return output.splitlines(), ""
    if code == 1 and "no crontab" in output.lower():
        return [], ""
    return None, short_text(output.strip() or f"exit code {code}", 120)


def _write_crontab(env: AutostartEnv, lines: list[str]) -> tuple[int, str]:
    """Replace the user's crontab with lines (through a private temporary file)."""
    private_dir(env.statsbot_home)
    temp = env.statsbot_home / f"crontab.{os.getpid()}.tmp"
    write_file_atomic(temp, ("\n".join(lines) + "\n").encode("utf-8"), 0o600)
    try:
        return env.runner(["crontab", str(temp)])
    finally:
        temp.unlink(missing_ok=True)


def _start_detached(env: AutostartEnv) -> None:
    """Start the worker now, in the background (a fallback starts it only at the next boot/login)."""
    child_env = {**os.environ, "STATSBOT_HOME": str(env.statsbot_home), "PYTHONUNBUFFERED": "1"}
    child_env.pop(TOKEN_ENV, None)
    if env.spawn is not None:
        env.spawn(worker_command(env), child_env)
        return
    subprocess.Popen(
        worker_command(env),
        env=child_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _install_linux_fallback(env: AutostartEnv, start_now: bool, why: str) -> dict:
    started = " (started now)" if start_now else ""
    if env.desktop:
        path = env.xdg_path()
        _write_if_changed(path, xdg_entry_text(env))
        if start_now:
            _start_detached(env)
        return _autostart_result(
            True,
            "xdg-autostart",
            path,
            f"Autostart on: XDG autostart entry {path}, started when you log in to your desktop{started} "
            f"(instead of a systemd user service: {why}).",
        )
    crontab_path = Path("crontab")
    lines, problem = _read_crontab(env)
    line = cron_line(env)
    if lines is None:
        return _autostart_result(
            False,
            "none",
            crontab_path,
            f"Could not set up autostart: {why}, and crontab cannot be used ({problem}).",
            [f"Add this line with crontab -e: {line}"],
        )
    others = [x for x in lines if CRON_TAG not in x]
    if lines != [*others, line]:  # already there as the last line: nothing to change
        code, output = _write_crontab(env, [*others, line])
        if code != 0:
            return _autostart_result(
                False,
                "cron",
                crontab_path,
                f"Could not add the @reboot line to your crontab ({short_text(output, 150)}); {why}.",
                [f"Add this line with crontab -e: {line}"],
            )
    if start_now:
        _start_detached(env)
    return _autostart_result(
        True,
        "cron",
        crontab_path,
        f"Autostart on: an @reboot line in your crontab starts the worker at boot{started} "
        f"(instead of a systemd user service: {why}).",
    )


def _remove_linux_fallbacks(env: AutostartEnv) -> list[str]:
    """Remove the XDG entry and this worker's crontab line, if there; returns what was removed."""
    removed = []
    path = env.xdg_path()
    if path.exists():
        path.unlink()
        removed.append(f"the XDG autostart entry {path}")
    lines, _ = _read_crontab(env)
    if lines and any(CRON_TAG in x for x in lines):
        code, output = _write_crontab(env, [x for x in lines if CRON_TAG not in x])
        if code == 0:
            removed.append("the @reboot line from your crontab")
        else:
            log.warning("could not remove the @reboot line from the crontab: %s", short_text(output, 200))
    return removed


def _install_launchd(env: AutostartEnv, start_now: bool) -> dict:
    path = env.launchd_path()
    _write_if_changed(path, launchd_plist_text(env.python, env.script, env.statsbot_home))
    message = f"Autostart on: launch agent {LAUNCHD_LABEL}"
    if not start_now:
        return _autostart_result(True, "launchd", path, message + " (starts at your next login).")
    env.runner(["launchctl", "unload", str(path)])
    code, output = env.runner(["launchctl", "load", "-w", str(path)])
    if code != 0:
        return _autostart_result(
            True,
            "launchd",
            path,
            f"Wrote {path}; it starts at your next login ('launchctl load' said: {short_text(output, 200)}).",
            [f"launchctl load -w {path}"],
        )
    return _autostart_result(True, "launchd", path, message + " (started now).")


def _install_windows(env: AutostartEnv, start_now: bool) -> dict:
    launcher = env.launcher_path()
    text = windows_launcher_text(env.python, env.script, env.statsbot_home)
    _write_if_changed(launcher, text)
    code, output = env.runner(schtasks_create_command(launcher))
    if code == 0:
        if start_now:
            env.runner(["schtasks", "/Run", "/TN", WINDOWS_TASK])
        return _autostart_result(
            True, "schtasks", launcher, f"Autostart on: scheduled task {WINDOWS_TASK} at logon."
        )
    startup = env.startup_path()
    try:
        _write_if_changed(startup, text)
    except OSError as exc:
        return _autostart_result(
            False,
            "startup-folder",
            startup,
            f"Could not create the scheduled task ({short_text(output, 150)}) nor the Startup entry ({exc}).",
            [f"Copy {launcher} into your Startup folder (Win+R, shell:startup)."],
        )
    if start_now:
        env.runner(["cmd", "/c", str(launcher)])
    return _autostart_result(
        True,
        "startup-folder",
        startup,
        f"Autostart on: Startup folder entry (the scheduled task was refused: {short_text(output, 150)}).",
    )


def remove_autostart(env: AutostartEnv) -> dict:
    """Remove the login service for this OS (nothing to do is fine)."""
    if env.system == "Linux":
        path = env.systemd_path()
        removed: list[str] | bool
        removed, method = [], "systemd"
        if path.exists():
            env.runner(["systemctl", "--user", "disable", "--now", SYSTEMD_UNIT])
            path.unlink()
            env.runner(["systemctl", "--user", "daemon-reload"])
            removed.append("the systemd user service")
        fallbacks = _remove_linux_fallbacks(env)
        if fallbacks and not removed:
            method = "xdg-autostart" if "XDG" in fallbacks[0] else "cron"
            path = env.xdg_path() if method == "xdg-autostart" else Path("crontab")
        removed += fallbacks
        if removed:
            return _autostart_result(
                False, method, path, "Autostart off: removed " + " and ".join(removed) + "."
            )
        return _autostart_result(False, method, path, "Autostart was already off.")
    if env.system == "Darwin":
        path = env.launchd_path()
        if path.exists():
            env.runner(["launchctl", "unload", "-w", str(path)])
            path.unlink()
            return _autostart_result(False, "launchd", path, "Autostart off: removed the launch agent.")
        return _autostart_result(False, "launchd", path, "Autostart was already off.")
    if env.system == "Windows":
        code, _ = env.runner(["schtasks", "/Delete", "/F", "/TN", WINDOWS_TASK])
        removed = code == 0
        for path in (env.startup_path(), env.launcher_path()):
            if path.exists():
                path.unlink()
                removed = True
        method = "schtasks" if code == 0 else "startup-folder"
        message = "Autostart off." if removed else "Autostart was already off."
        return _autostart_result(False, method, env.launcher_path(), message)
    raise JobError("unsupported", f"Autostart is not supported on {env.system}.")


# --------------------------------------------------------------------------- the data budget

SAMPLE_ROWS_MAX = 10  # rows of the user's file in one result
LABELS_MAX = 50  # different category labels (classes, predicted values) in one result
LABEL_CHARS = 200  # each label is cut to this many characters
CHART_BINS_MAX = 20  # predicted-vs-actual: at most this many bins...
CHART_BIN_MIN_ROWS = 5  # ...of at least this many held-out rows each


class ResultBudget:
    """The labels one result may name: at most LABELS_MAX, each cut to LABEL_CHARS characters."""

    def __init__(self) -> None:
        self._labels: dict[str, Any] = {}

    def admit(self, value: Any) -> tuple[bool, Any]:
        """(True, the label as sent) when it fits in the budget (or is already in it), else (False, None)."""
        label = json_safe(value, LABEL_CHARS)
        if isinstance(label, (list, dict)):
            label = json_safe(str(label), LABEL_CHARS)
        key = json.dumps(label, ensure_ascii=False)
        if key in self._labels:
            return True, label
        if len(self._labels) >= LABELS_MAX:
            return False, None
        self._labels[key] = label
        return True, label

    def labels(self, values: list) -> list:
        """The values that fit, in order."""
        kept = []
        for value in values:
            ok, label = self.admit(value)
            if ok:
                kept.append(label)
        return kept


def binned_predicted_vs_actual(points: Any) -> list[list]:
    """Held-out [predicted, actual] pairs as bins: [mean predicted, mean actual, rows], sorted by actual.

    Rows are sorted by their actual value and cut into at most CHART_BINS_MAX bins of nearly equal
    size, each of at least CHART_BIN_MIN_ROWS rows, so no single row's value is sent. Entries that
    are already bins (three numbers, enough rows) are kept as they are.
    """
    if not isinstance(points, list):
        return []
    raw: list[tuple[float, float]] = []
    bins: list[list] = []
    for item in points:
        if not isinstance(item, (list, tuple)) or not all(_finite(v) for v in item):
            continue
        if len(item) == 2:
            raw.append((float(item[0]), float(item[1])))
        elif len(item) == 3 and int(item[2]) >= CHART_BIN_MIN_ROWS:
            bins.append([round_float(item[0]), round_float(item[1]), int(item[2])])
    if raw:
        raw.sort(key=lambda pa: pa[1])
        n = len(raw)
        k = min(CHART_BINS_MAX, n // CHART_BIN_MIN_ROWS)
        for i in range(k):
            part = raw[i * n // k : (i + 1) * n // k]
            bins.append(
                [
                    round_float(sum(p for p, _ in part) / len(part)),
                    round_float(sum(a for _, a in part) / len(part)),
                    len(part),
                ]
            )
    return sorted(bins, key=lambda b: b[1])[:CHART_BINS_MAX]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bounded_rows(rows: Any) -> list:
    """At most SAMPLE_ROWS_MAX rows (lists or objects), every cell JSON-safe and cut to 60 characters."""
    out: list[dict[str, Any] | list[Any]] = []
    for row in list(rows)[:SAMPLE_ROWS_MAX] if isinstance(rows, list) else []:
        if isinstance(row, dict):
            out.append({short_name(k): json_safe(v) for k, v in row.items()})
        elif isinstance(row, (list, tuple)):
            out.append([json_safe(v) for v in row])
    return out


def bounded_result(data: dict) -> dict:
    """The data budget: every successful result passes through here before it leaves the machine.

    Values from the user's files may travel only in these fields, each held to its limit:

    - ``sample``: at most SAMPLE_ROWS_MAX rows (describe: a list of row objects; predict:
      ``{"columns", "rows"}``), strings cut to 60 characters;
    - ``classes`` (train): at most LABELS_MAX labels, ``n_classes`` gives the full count;
      ``confusion_matrix``: counts, kept only when all its labels fit in the budget;
    - ``summary.counts`` (predict): the LABELS_MAX most frequent predicted labels;
    - ``predicted_vs_actual`` (train): bins of at least CHART_BIN_MIN_ROWS rows, never single rows.

    One result names at most LABELS_MAX different labels in all, each cut to LABEL_CHARS
    characters. Every other field carries names, counts and statistics only: a new field that
    carries values from the file gets its rule here (tests/worker_script/test_worker_budget.py
    checks every job type against the budget).
    """
    if not isinstance(data, dict):
        return data
    budget = ResultBudget()
    if isinstance(data.get("classes"), list):
        data["n_classes"] = len(data["classes"])
        data["classes"] = budget.labels(data["classes"])
    matrix = data.get("confusion_matrix")
    if matrix is not None:
        labels = matrix.get("labels") if isinstance(matrix, dict) else None
        kept = budget.labels(labels) if isinstance(labels, list) else []
        if not isinstance(labels, list) or len(kept) != len(labels):
            del data["confusion_matrix"]  # a confusion matrix without all its labels means nothing
        else:
            matrix["labels"] = kept
    summary = data.get("summary")
    if isinstance(summary, dict) and isinstance(summary.get("counts"), dict):
        counts = {}
        for label, n in sorted(summary["counts"].items(), key=lambda kv: -kv[1] if _finite(kv[1]) else 0):
            ok, text = budget.admit(str(label))
            if ok:
                counts[text] = n
        summary["counts"] = counts
    if "predicted_vs_actual" in data:
        bins = binned_predicted_vs_actual(data["predicted_vs_actual"])
        if bins:
            data["predicted_vs_actual"] = bins
        else:
            del data["predicted_vs_actual"]
    sample = data.get("sample")
    if isinstance(sample, list):
        data["sample"] = _bounded_rows(sample)
    elif isinstance(sample, dict):
        sample["rows"] = _bounded_rows(sample.get("rows"))
    return data


# --------------------------------------------------------------------------- running one job


def sanitize_json(obj: Any) -> Any:
    """Plain JSON types all the way down (numpy scalars, NaN and the like converted)."""
    if isinstance(obj, dict):
        return {short_name(k): sanitize_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize_json(v) for v in obj]
    return json_safe(obj, max_chars=20_000)


def error_result(job_id: str, code: str, message: str) -> dict:
    return {
        "type": "result",
        "job_id": job_id,
        "success": False,
        "error": short_text(message, 1000),
        "error_code": code if code in ERROR_CODES else "internal",
    }


def execute_job(fn: Callable[[JobContext], dict], ctx: JobContext) -> dict:
    """Run a job function; every outcome, including any exception, becomes a result message."""
    try:
        data = bounded_result(fn(ctx))
        message = {"type": "result", "job_id": ctx.job_id, "success": True, "data": sanitize_json(data)}
    except JobCancelled:
        message = error_result(ctx.job_id, "cancelled", "Cancelled.")
    except JobError as exc:
        message = error_result(ctx.job_id, exc.code, exc.message)
    except MemoryError:
        log.exception("job %s ran out of memory", ctx.job_id)
        message = error_result(ctx.job_id, "internal", "The machine ran out of memory for this job.")
    except Exception as exc:
        log.exception("job %s failed", ctx.job_id)
        reason = short_text(str(exc), 240) or "no details"
        message = error_result(ctx.job_id, "internal", f"Unexpected error ({type(exc).__name__}): {reason}")
    return cap_result_size(message)


# --------------------------------------------------------------------------- self copy and update


def validate_script(text: str) -> str:
    """Check a downloaded worker script: it compiles and has a WORKER_VERSION line; returns it."""
    match = VERSION_LINE_RE.search(text)
    if not match:
        raise ValueError("it has no WORKER_VERSION line")
    try:
        compile(text, "statsbot_worker.py", "exec")
    except (SyntaxError, ValueError) as exc:
        raise ValueError(f"it does not compile: {exc}") from None
    return match.group(1)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse every 3xx: the script is only ever taken from the exact URL that was checked."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        fp.close()
        raise ValueError(f"{req.full_url} redirects ({code}) to {newurl}; refusing to follow it")


def fetch_text(url: str, timeout: float = 30.0) -> str:
    """GET an http(s) URL as text (at most DOWNLOAD_MAX_BYTES), never following a redirect."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"refusing to download from {url}")
    request = urllib.request.Request(url, headers={"User-Agent": f"statsbot-worker/{WORKER_VERSION}"})
    opener = urllib.request.build_opener(_NoRedirect())
    with opener.open(request, timeout=timeout) as response:
        if response.geturl() != url:
            raise ValueError(f"the download of {url} came from {response.geturl()}; refusing it")
        data = response.read(DOWNLOAD_MAX_BYTES + 1)
    if len(data) > DOWNLOAD_MAX_BYTES:
        raise ValueError("the download is too large to be the worker script")
    return data.decode("utf-8")


def ensure_saved_copy(
    paths: Paths, server: str, own_file: str | None, fetch: Callable[[str], str] = fetch_text
) -> tuple[bool, str]:
    """Keep ~/.statsbot/statsbot_worker.py (what autostart and updates run) up to date.

    From a real file the bytes are copied; when run from a pipe (no file) the script is
    downloaded again from the server's /worker URL and checked before it is saved. A copy that
    is replaced is kept as statsbot_worker.previous.py.
    """
    target = paths.script
    if own_file and os.path.isfile(own_file):
        source = Path(own_file).resolve()
        if target.exists() and source == target.resolve():
            return True, ""
        data = source.read_bytes()
        if target.exists() and target.read_bytes() == data:
            return True, ""
        keep_previous(paths)
        write_file_atomic(target, data)
        return True, f"Saved a copy of this script to {target}"
    url = download_url_for(server)
    try:
        version = validate_script(text := fetch(url))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        if target.exists():
            return True, f"Could not refresh {target} from {url} ({exc}); keeping the copy already there."
        return False, f"Could not save a copy of this script: downloading {url} failed ({exc})."
    data = text.encode("utf-8")
    if target.exists() and target.read_bytes() == data:
        return True, ""
    keep_previous(paths)
    write_file_atomic(target, data)
    return True, f"Saved a copy of worker {version} from {url} to {target} (SHA-256 {sha256_hex(data)})"


def version_is_newer(candidate: str, current: str = WORKER_VERSION) -> bool:
    """True when candidate is strictly newer than current ('1.0.10' > '1.0.9'; '1.0' == '1.0.0')."""
    new, old = parse_version(candidate), parse_version(current)
    if not new:
        return False
    width = max(len(new), len(old))
    return new + (0,) * (width - len(new)) > old + (0,) * (width - len(old))


SELF_CHECK_TIMEOUT_S = 120.0
CONNECTED = threading.Event()  # set once this process has authenticated (ends an update's probation)


class UpdateError(Exception):
    """An update that was not installed; the message says why (the running version stays)."""


class UpToDate(UpdateError):
    """The server offers no newer version."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def keep_previous(paths: Paths) -> None:
    """Copy the saved script to statsbot_worker.previous.py before it is replaced."""
    if paths.script.is_file():
        write_file_atomic(paths.previous_script, paths.script.read_bytes())


def runtime_python(paths: Paths, versions: dict[str, str | None]) -> str:
    """The Python the worker runs with here: this one if it has the packages, else the private env's."""
    if not missing_required(versions):
        return sys.executable
    python = venv_python(paths.venv)
    return str(python) if python.exists() else sys.executable


def run_self_check(
    python: str, script: Path, args: list[str], home: Path, timeout: float = SELF_CHECK_TIMEOUT_S
) -> None:
    """Run ``python script --self-check args`` (a new file's first run); UpdateError unless it exits 0."""
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    env["STATSBOT_HOME"] = str(home)
    try:
        proc = subprocess.run(
            [python, str(script), "--self-check", *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise UpdateError(f"the new version's self-check did not finish within {timeout:.0f} s") from None
    except OSError as exc:
        raise UpdateError(f"the new version's self-check could not run ({exc})") from None
    if proc.returncode != 0:
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
        raise UpdateError(
            f"the new version failed its self-check (exit code {proc.returncode}): "
            + short_text(lines[-1] if lines else "no output", 200)
        )


def install_update(
    url: str,
    paths: Paths,
    *,
    fetch: Callable[[str], str] = fetch_text,
    current: str = WORKER_VERSION,
    announce: Callable[[str, str], None] | None = None,
    check: Callable[[Path], None] | None = None,
) -> tuple[str, str]:
    """Download, check and install a newer worker script; returns (version, SHA-256).

    In this order, and nothing is installed unless every step passes: download (no redirects);
    compile it and read its WORKER_VERSION, which must be strictly newer than ``current``;
    ``announce(version, sha256)`` (shown before the new code ever runs); ``check(file)``, its
    self-check (its first run, raising UpdateError); then the running copy is kept as
    statsbot_worker.previous.py and the new one replaces it atomically.
    """
    try:
        text = fetch(url)
        version = validate_script(text)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UpdateError(f"downloading {url} failed: {short_text(str(exc), 200)}") from None
    if not version_is_newer(version, current):
        raise UpToDate(f"the server offers version {short_text(version, 40)}, not newer than {current}")
    data = text.encode("utf-8")
    digest = sha256_hex(data)
    if announce is not None:
        announce(version, digest)
    candidate = paths.home / "statsbot_worker.new.py"
    write_file_atomic(candidate, data, 0o600)
    try:
        if check is not None:
            check(candidate)
        keep_previous(paths)
        os.replace(candidate, paths.script)
    finally:
        if candidate.exists():
            candidate.unlink()
    # Its first runs are on probation until one connects (see main and roll_back_update).
    ConfigStore(paths.config).update(update_probation={"version": version, "from": current})
    return version, digest


def on_probation(paths: Paths) -> dict | None:
    """The update this run is the first run of (config.json's update_probation for this version)."""
    probation = ConfigStore(paths.config).load().get("update_probation")
    if isinstance(probation, dict) and probation.get("version") == WORKER_VERSION:
        return probation
    return None


def roll_back_update(paths: Paths, info: dict, code: int, console: Console) -> bool:
    """Put statsbot_worker.previous.py back after a new version failed to start; True if it was."""
    previous = paths.previous_script
    before = short_text(str(info.get("from") or "the previous version"), 40)
    if not previous.is_file():
        console.status(
            f"Worker {WORKER_VERSION} exited with code {code} before it connected, and there is no "
            f"previous copy to roll back to ({previous} is missing)."
        )
        return False
    try:
        if paths.script.is_file():
            os.replace(paths.script, paths.failed_script)
        write_file_atomic(paths.script, previous.read_bytes())
        ConfigStore(paths.config).update(update_failed_version=WORKER_VERSION, update_probation=None)
    except OSError as exc:
        console.status(f"Rolling back the update failed: {exc}")
        return False
    console.status(
        f"Worker {WORKER_VERSION} exited with code {code} before it connected, so the update was rolled "
        f"back to {before} (the failed copy is kept as {paths.failed_script}). It will not be installed "
        "automatically again; --update tries it again."
    )
    return True


def reexec(argv: list[str]) -> None:
    """Replace this process with argv (on Windows: run it and exit with its code)."""
    log.info("re-executing: %s", " ".join(argv[:2]))
    for handler in logging.getLogger("statsbot_worker").handlers:
        handler.flush()
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    if os.name == "nt":
        sys.exit(subprocess.call(argv))
    os.execv(argv[0], argv)


# --------------------------------------------------------------------------- private environment


def create_private_env(
    venv_dir: Path,
    requirements: list[str],
    console: Console,
    runner: Callable[[list], int] = subprocess.call,
    builder: Callable[[Path], None] | None = None,
    quiet: bool = False,
) -> Path:
    """Create ~/.statsbot/venv (if needed) and pip-install the requirements; returns its python.

    quiet: the caller has already said what happens in one line (a repair), so no status lines.
    """
    python = venv_python(venv_dir)
    if not python.exists():
        if not quiet:
            console.status(f"Creating a private Python environment in {venv_dir}\u2026")
        try:
            (builder or _build_venv)(venv_dir)
        except (subprocess.CalledProcessError, OSError) as exc:
            shutil.rmtree(venv_dir, ignore_errors=True)
            raise RuntimeError(
                f"Could not create {venv_dir} ({exc}). On Debian/Ubuntu install the venv module first "
                "(sudo apt install python3-venv), or install the packages yourself and use --no-install."
            ) from None
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *requirements]
    if not quiet:
        console.status("Installing " + ", ".join(requirements) + " (this can take a few minutes)\u2026")
    code = runner(cmd)
    if code != 0:
        raise RuntimeError(
            f"pip failed (exit code {code}); see the messages above. To retry: {' '.join(cmd)}"
        )
    return python


def _build_venv(venv_dir: Path) -> None:
    import venv

    venv.EnvBuilder(with_pip=True, clear=False, symlinks=os.name != "nt").create(str(venv_dir))


REPAIRED_ENV = "STATSBOT_ENV_REPAIRED"  # set across the re-exec after a repair, so it is tried once

# Run by the private environment's python: the package versions it sees, as JSON (nothing imported).
_PROBE_CODE = (
    "import importlib.util, json, sys\n"
    "spec = importlib.util.spec_from_file_location('statsbot_worker_probe', sys.argv[1])\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "sys.modules[spec.name] = module\n"
    "spec.loader.exec_module(module)\n"
    "print(json.dumps(module.package_versions()))\n"
)


def probe_env(python: Path, script: Path, timeout: float = 60.0) -> dict[str, str | None] | None:
    """The package versions the private environment's python sees; None when it does not run."""
    try:
        proc = subprocess.run(
            [str(python), "-c", _PROBE_CODE, str(script)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return None
    try:
        data = json.loads(lines[-1])
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    return {str(k): (v if isinstance(v, str) else None) for k, v in data.items()}


def requirements_named(names: list[str], requirements: list[str]) -> list[str]:
    """The requirement lines (of requirements) for these distribution names."""
    wanted = {name.lower() for name in names}
    return [r for r in requirements if re.split(r"[=<>!~ ;\[]", r, maxsplit=1)[0].lower() in wanted]


def _missing_text(missing: list[str], versions: dict[str, str | None]) -> str:
    parts = [
        f"{name} {versions[name]} is too old" if versions.get(name) else f"{name} is missing"
        for name in missing
    ]
    return ", ".join(parts)


def terminal_ask(prompt: str, stdin_isatty: bool | None = None) -> str | None:
    """Ask the user on their terminal, even when standard input is the script (`curl ... | python3 -`).

    Standard input when it is a terminal, else the terminal itself (/dev/tty on POSIX, the console
    CONIN$/CONOUT$ on Windows); None when there is no terminal at all (a service, CI, ssh without -t).
    """
    if _stdin_isatty() if stdin_isatty is None else stdin_isatty:
        try:
            return input(prompt)
        except EOFError:
            return ""
    names = ("CONIN$", "CONOUT$") if os.name == "nt" else ("/dev/tty", "/dev/tty")
    try:
        tty_in = open(names[0], encoding="utf-8", errors="replace")  # noqa: SIM115
    except OSError:
        return None
    try:
        with tty_in, open(names[1], "w", encoding="utf-8", errors="replace") as tty_out:
            tty_out.write(prompt)
            tty_out.flush()
            return tty_in.readline().rstrip("\r\n")
    except OSError:
        return None


def ensure_packages(
    args: argparse.Namespace,
    paths: Paths,
    console: Console,
    versions: dict[str, str | None],
    *,
    stdin_isatty: bool,
    have_copy: bool,
    ask_fn: Callable[[str], str | None] | None = None,
    create_env: Callable[..., Path] = create_private_env,
    exec_fn: Callable[[list[str]], None] = reexec,
    probe: Callable[[Path, Path], dict[str, str | None] | None] = probe_env,
) -> int | None:
    """None when everything needed is importable; otherwise install and re-exec, or an exit code.

    In order: this *is* the private environment and it lacks packages -> repair it in place
    (once) and restart; a private environment exists -> restart inside it without asking when
    it is complete, repair it first (one line) when it is broken or outdated; none yet -> ask
    on the terminal (even when stdin is the piped script), or install by default when there is
    no terminal at all (the command came from the user's own chat). --no-install refuses all.
    """
    missing = missing_required(versions)
    if not missing:
        return None
    repaired = os.environ.pop(REPAIRED_ENV, None)
    reqs = requirements_for()
    argv_again = sys.argv[1:]
    if running_in_venv(paths.venv):
        here = Path(sys.executable)
        if repaired or args.no_install or not have_copy:
            console.plain(
                f"The worker's private environment ({paths.venv}) lacks: {_missing_text(missing, versions)}. "
                f"Repair it with:\n  {pip_command(requirements_named(missing, reqs), str(here))}\n"
                f"or delete {paths.venv} and run the worker again."
            )
            return EXIT_MISSING_PACKAGES
        return _repair_env(paths, console, missing, versions, reqs, create_env, exec_fn, argv_again)
    python = venv_python(paths.venv)
    if have_copy and (python.exists() or python.is_symlink()):
        env_versions = probe(python, paths.script)
        env_missing = list(REQUIRED_PACKAGES) if env_versions is None else missing_required(env_versions)
        if not env_missing:
            console.status(f"Running in the worker's private environment ({paths.venv})")
            exec_fn([str(python), str(paths.script)] + argv_again)
            return EXIT_OK
        if not args.no_install:
            if env_versions is None:  # its python does not start (e.g. the base Python was removed)
                shutil.rmtree(paths.venv, ignore_errors=True)
                if paths.venv.exists() or python.is_symlink():
                    console.plain(f"The private environment {paths.venv} is broken; delete it and run again.")
                    return EXIT_ERROR
            return _repair_env(
                paths, console, env_missing, env_versions or {}, reqs, create_env, exec_fn, argv_again
            )
    console.plain(
        "The StatsBot worker needs these Python packages, missing or too old here: "
        + ", ".join(missing)
        + "."
    )
    if args.no_install:
        console.plain(f"Install them yourself, then run the worker again:\n  {pip_command(reqs)}")
        return EXIT_MISSING_PACKAGES
    if not args.yes:
        console.plain(
            f"The worker can create a private environment in {paths.venv} and install: {' '.join(reqs)}."
        )
        ask = ask_fn or (lambda prompt: terminal_ask(prompt, stdin_isatty))
        answer = ask("Create it and install them now? [Y/n] ")
        if answer is None:
            console.plain(
                f"There is no terminal to ask you in, so the worker installs them into {paths.venv} now "
                "(the command came from your own chat; run it with --no-install to refuse)."
            )
        elif answer.strip().lower() not in ("", "y", "yes"):
            console.plain(f"Nothing installed. To install them yourself:\n  {pip_command(reqs)}")
            return EXIT_MISSING_PACKAGES
    if not have_copy:
        console.plain(
            "Cannot continue: there is no saved copy of the worker to restart. Download it with "
            f"curl -o statsbot_worker.py {download_url_for('wss://HOST/ws/worker/')} and run it with python3."
        )
        return EXIT_ERROR
    try:
        python = create_env(paths.venv, reqs, console)
    except RuntimeError as exc:
        console.plain(str(exc))
        return EXIT_ERROR
    console.status("Restarting the worker in its private environment\u2026")
    exec_fn([str(python), str(paths.script)] + argv_again)
    return EXIT_OK


def _repair_env(
    paths: Paths,
    console: Console,
    missing: list[str],
    versions: dict[str, str | None],
    reqs: list[str],
    create_env: Callable[..., Path],
    exec_fn: Callable[[list[str]], None],
    argv: list[str],
) -> int:
    """Install what the private environment lacks (one line says what and why), then restart in it."""
    fresh = not venv_python(paths.venv).exists()
    wanted = reqs if fresh else requirements_named(missing, reqs)
    why = "it no longer runs" if fresh else _missing_text(missing, versions)
    console.status(
        f"Repairing the worker's private environment in {paths.venv} ({why}): installing {' '.join(wanted)}"
    )
    try:
        python = create_env(paths.venv, wanted, console, quiet=True)
    except RuntimeError as exc:
        console.plain(str(exc))
        return EXIT_ERROR
    os.environ[REPAIRED_ENV] = "1"
    exec_fn([str(python), str(paths.script)] + argv)
    return EXIT_OK


# --------------------------------------------------------------------------- connection


class Backoff:
    """Capped exponential backoff with full jitter: uniform(0, min(cap, base * 2**n))."""

    def __init__(
        self, base: float = 1.0, cap: float = 60.0, rand: Callable[[], float] = random.random
    ) -> None:
        self.base = base
        self.cap = cap
        self.rand = rand
        self.attempt = 0

    def ceiling(self) -> float:
        return min(self.cap, self.base * (2 ** min(self.attempt, 30)))

    def next_delay(self) -> float:
        delay = self.rand() * self.ceiling()
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class Outcome:
    """Why the client stopped: stopped, fatal, authenticated (exchange only) or reexec."""

    kind: str
    message: str = ""
    exit_code: int = EXIT_OK
    argv: list[str] | None = None


@dataclass
class JobState:
    job_id: str
    action: str
    cancel: threading.Event = field(default_factory=threading.Event)
    stop_early: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)


def machine_info(machine_id: str, versions: dict[str, str | None]) -> dict:
    """What the server shows about this machine (sent in auth)."""
    keys = ("pandas", "scikit-learn", "lightgbm", "xgboost", "pyarrow", "openpyxl", "websockets", "numpy")
    return {
        "machine_id": machine_id,
        "hostname": socket.gethostname(),
        "platform": platform.system(),
        "os_release": platform.release(),
        "python": platform.python_version(),
        "worker_version": WORKER_VERSION,
        "packages": {k: versions.get(k) for k in keys},
        "models": available_models(versions),
    }


def websocket_connect() -> Callable[..., Any]:
    """websockets' asyncio client (websockets >= 13), or the legacy one on older releases."""
    try:
        from websockets.asyncio.client import connect
    except ImportError:
        from websockets import connect  # websockets 11-12: the legacy client
    return connect


def close_info(exc: BaseException) -> tuple[int, str]:
    rcvd = getattr(exc, "rcvd", None)
    if rcvd is not None:
        return int(rcvd.code), str(rcvd.reason or "")
    return 1006, "connection lost"


def update_command(paths: Paths) -> str:
    """The command that installs an update on this machine."""
    return f"{'python' if os.name == 'nt' else 'python3'} {paths.script} --update"


def _job_label(action: str, params: dict) -> str:
    for key in ("file_path", "model_id"):
        value = params.get(key)
        if isinstance(value, str) and value:
            return f"{action} {os.path.basename(value) or value}"
    return action


class WorkerClient:
    """The WebSocket side: auth, heartbeat, jobs in threads, results until acknowledged, reconnect."""

    def __init__(
        self,
        settings: Settings,
        store: ConfigStore,
        console: Console,
        *,
        versions: dict[str, str | None] | None = None,
        actions: dict[str, Callable[[JobContext], dict]] | None = None,
        backoff: Backoff | None = None,
        stable_after: float = 30.0,
        auth_timeout: float = 15.0,
        max_workers: int = 4,
        reexec_argv: list[str] | None = None,
        fetch: Callable[[str], str] = fetch_text,
        ping_interval: float = 20.0,
    ) -> None:
        self.settings = settings
        self.store = store
        self.console = console
        self.versions = versions if versions is not None else package_versions()
        self.actions = dict(JOB_ACTIONS if actions is None else actions)
        self.backoff = backoff or Backoff()
        self.stable_after = stable_after
        self.auth_timeout = auth_timeout
        self.reexec_argv = reexec_argv or [sys.executable, str(settings.paths.script)]
        self.fetch = fetch
        self.ping_interval = ping_interval
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="job"
        )
        self.running: dict[str, JobState] = {}
        self.unacked: OrderedDict[str, dict] = OrderedDict()
        self._acked: OrderedDict[str, None] = OrderedDict()
        self._ws: Any = None
        self._loop: asyncio.AbstractEventLoop  # the three are made by run(), on its loop
        self._stop_event: asyncio.Event | None = None
        self._send_lock: asyncio.Lock
        self._stopping = False
        self._outcome: Outcome | None = None
        self._auth_failure: dict | None = None
        self._notice = ""
        self._pending_update: dict | None = None
        self._offers_shown: set[str] = set()
        self._saved_mark: tuple | None = None  # (mtime, size) of the saved copy, to notice --update
        self._tasks: set = set()
        self._last_rx = time.monotonic()
        self._connected_at: float | None = None
        self._reason = "connection lost"
        self.connections = 0

    # ---- lifecycle

    async def run(self, stop_after_auth: bool = False, handle_signals: bool = False) -> Outcome:
        """Connect and serve until stopped; reconnects forever on network trouble."""
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._send_lock = asyncio.Lock()
        try:
            st = os.stat(self.settings.paths.script)
            self._saved_mark = (st.st_mtime_ns, st.st_size)
        except OSError:
            self._saved_mark = None
        if handle_signals:
            self._install_signal_handlers()
        try:
            while True:
                result = await self._session(stop_after_auth)
                if isinstance(result, Outcome):
                    return result
                if self._stopping:
                    return Outcome("stopped", "Stopped.")
                if (
                    self._connected_at is not None
                    and time.monotonic() - self._connected_at >= self.stable_after
                ):
                    self.backoff.reset()
                delay = result if result is not None else self.backoff.next_delay()
                self.console.status(f"Disconnected ({self._reason}) - retrying in {delay:.1f}s")
                try:
                    await asyncio.wait_for(self._stop_event.wait(), timeout=delay)
                    return Outcome("stopped", "Stopped.")
                except asyncio.TimeoutError:
                    pass
        finally:
            self._shutdown_jobs()

    def request_stop(self) -> None:
        """Stop cleanly (Ctrl-C, SIGTERM): cancel jobs, close the socket, leave run()."""
        if self._stopping:
            return
        self._stopping = True
        self.console.status("Stopping\u2026")
        for state in self.running.values():
            state.cancel.set()
        if self._stop_event is not None:
            self._stop_event.set()
        if self._ws is not None:
            self._spawn(self._ws.close(1000, "worker stopping"))

    def _install_signal_handlers(self) -> None:
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._loop.add_signal_handler(sig, self._on_signal)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # Windows: Ctrl-C arrives as KeyboardInterrupt, handled in main()

    def _on_signal(self) -> None:
        if self._stopping:  # a second Ctrl-C: do not wait for anything
            self.console.status("Stopped.")
            os._exit(EXIT_OK)
        self.request_stop()

    def _shutdown_jobs(self) -> None:
        for state in self.running.values():
            state.cancel.set()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- one connection

    def _auth_message(self) -> dict:
        msg: dict = {
            "type": "auth",
            "protocol": PROTOCOL_VERSION,
            "machine": machine_info(self.settings.machine_id, self.versions),
            "running_jobs": list(self.running),
        }
        if self.settings.token:
            msg["token"] = self.settings.token
        else:
            msg["credential"] = self.settings.credential
        return msg

    async def _session(self, stop_after_auth: bool) -> Outcome | float | None:
        """One connection; an Outcome to stop, or a delay (None: backoff) before reconnecting."""
        if not self.settings.token and not self.settings.credential:
            return Outcome(
                "fatal",
                "No connect token and no saved credential: send /connect to the bot "
                "and run the command it shows.",
                EXIT_USAGE,
            )
        import websockets.exceptions as wse

        self._auth_failure = None
        self._connected_at = None
        self._reason = "connection lost"
        host = urllib.parse.urlsplit(self.settings.server).netloc
        if self.backoff.attempt == 0:
            self.console.status(f"Connecting to {host}\u2026")
        connect = websocket_connect()
        try:
            async with connect(
                self.settings.server,
                open_timeout=15,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_interval,
                close_timeout=5,
                max_size=2**20,
            ) as ws:
                self._ws = ws
                try:
                    return await self._serve(ws, stop_after_auth)
                finally:
                    self._ws = None
        except wse.ConnectionClosed as exc:
            return self._decide_close(*close_info(exc))
        except wse.InvalidURI as exc:
            return Outcome("fatal", f"Invalid server URL: {exc}", EXIT_USAGE)
        except wse.InvalidHandshake as exc:
            self._reason = f"the server refused the WebSocket: {short_text(str(exc), 120)}"
        except (OSError, asyncio.TimeoutError, TimeoutError) as exc:
            self._reason = f"cannot reach {host}: " + short_text(str(exc) or type(exc).__name__, 120)
        except wse.WebSocketException as exc:
            self._reason = f"WebSocket error: {short_text(str(exc), 120)}"
        except Exception as exc:  # never let one bad connection end the worker
            log.exception("unexpected error in the connection")
            self._reason = f"unexpected error: {type(exc).__name__}"
        return None

    async def _serve(self, ws: Any, stop_after_auth: bool) -> Outcome | float | None:
        import websockets.exceptions as wse

        try:
            await self._send(self._auth_message())
            try:
                first = await asyncio.wait_for(ws.recv(), timeout=self.auth_timeout)
            except asyncio.TimeoutError:
                self._reason = "no answer to auth"
                await ws.close(1000, "no auth_response")
                return None
            reply = _parse(first)
            if reply.get("type") != "auth_response" or not reply.get("success"):
                return await self._auth_refused(ws, reply)
            self._on_authenticated(reply, announce=not stop_after_auth)
            if stop_after_auth:
                await ws.close(1000, "credential saved")
                return Outcome("authenticated", "Credential saved.")
            heartbeat = asyncio.ensure_future(self._heartbeat(ws, heartbeat_interval(reply)))
            try:
                await self._resend_unacked()
                while True:
                    raw = await ws.recv()
                    self._last_rx = time.monotonic()
                    try:
                        msg, problem = parse_frame(raw)
                        if msg is None:
                            self._on_unreadable_frame(raw, problem)
                            continue
                        outcome = await self._dispatch(msg)
                    except wse.ConnectionClosed:
                        raise
                    except Exception:  # one bad frame must not cost the connection
                        log.exception("ignoring a frame that could not be handled")
                        continue
                    if outcome is not None:
                        await ws.close(1000, "worker restarting")
                        return outcome
            finally:
                heartbeat.cancel()
        except wse.ConnectionClosed as exc:
            return self._decide_close(*close_info(exc))

    async def _auth_refused(self, ws: Any, reply: dict) -> Outcome | float | None:
        """Wait (briefly) for the server's close code, which says what to do next."""
        import websockets.exceptions as wse

        self._auth_failure = reply
        try:
            while True:
                await asyncio.wait_for(ws.recv(), timeout=5)
        except wse.ConnectionClosed as exc:
            return self._decide_close(*close_info(exc))
        except asyncio.TimeoutError:
            await ws.close(1000, "auth refused")
            self._reason = "authentication refused: " + short_text(str(reply.get("message") or reply), 120)
            return None

    def _on_authenticated(self, reply: dict, announce: bool = True) -> None:
        credential = reply.get("credential")
        if not CONNECTED.is_set():
            CONNECTED.set()
            if self.store.load().get("update_probation"):
                self.store.update(update_probation=None)  # this version started fine
        if self.settings.token:
            self.settings.token = None  # a token works once
            os.environ.pop(TOKEN_ENV, None)  # and a restarted worker must not try it again
            if isinstance(credential, str) and credential:
                self.settings.credential = credential
                self.store.update(credential=credential, server=self.settings.server)
            else:
                log.warning("auth with a token succeeded but no credential was returned")
        self._connected_at = time.monotonic()
        self._last_rx = self._connected_at
        self.connections += 1
        worker_id = reply.get("worker_id")
        worker = f" (worker #{short_text(worker_id, 40)})" if worker_id is not None else ""
        if not announce:
            self.console.status(
                f"Connected as {socket.gethostname()}{worker}; this machine's credential is saved."
            )
            return
        self.console.status(
            f"Connected as {socket.gethostname()}{worker}. Waiting for jobs from Telegram - press Ctrl-C to stop."
        )
        if reply.get("update_required"):
            self.console.status(
                f"The server asks for worker version {short_text(reply.get('latest_version'), 40)}."
            )

    def _decide_close(self, code: int, reason: str) -> Outcome | float | None:
        """Map a close code to stop (Outcome), a fixed delay, or None (backoff)."""
        if self._outcome is not None:
            return self._outcome
        if self._stopping:
            return Outcome("stopped", "Stopped.")
        detail = str((self._auth_failure or {}).get("message") or self._notice or reason or "").strip()
        self._reason = f"code {code}" + (f": {short_text(detail, 120)}" if detail else "")
        if code == 4000:
            return Outcome("fatal", f"The server refused this worker's first message: {detail}", EXIT_USAGE)
        if code == 4001:
            return Outcome(
                "fatal",
                "The connect token was not accepted (unknown, expired or already used). "
                "Send /connect to the bot for a new command.",
                EXIT_USAGE,
            )
        if code == 4003:
            self.settings.credential = None
            self.store.update(credential=None)
            return Outcome(
                "fatal",
                "This worker's access was revoked"
                + (f" ({detail})" if detail else "")
                + ". Send /connect to the bot to connect again.",
            )
        if code == 4009:
            return Outcome(
                "fatal", "A newer worker connected to your account and replaced this one; stopping."
            )
        if code == 4029:
            retry = (self._auth_failure or {}).get("retry_after")
            if retry is None:
                m = re.search(r"\d+", reason or "")
                retry = int(m.group(0)) if m else None
            try:
                return max(1.0, min(3600.0, float(retry))) if retry is not None else None
            except (TypeError, ValueError, OverflowError):
                return None
        return None

    async def _heartbeat(self, ws: Any, interval: float) -> None:
        interval = max(1.0, interval)
        while True:
            await asyncio.sleep(interval)
            if time.monotonic() - self._last_rx > 3 * interval:
                log.warning("no message from the server for %.0fs; reconnecting", 3 * interval)
                await ws.close(1001, "heartbeat timeout")
                return
            await self._send({"type": "ping"})
            outcome = self._saved_copy_update()
            if outcome is not None:
                self._outcome = outcome
                await ws.close(1000, "worker restarting")
                return

    async def _send(self, msg: dict) -> bool:
        ws = self._ws
        if ws is None:
            return False
        try:
            # Lone surrogates can only sit inside JSON strings: replacing them keeps the JSON valid.
            text = valid_text(json.dumps(msg, ensure_ascii=False, allow_nan=False))
        except (TypeError, ValueError) as exc:  # a value JSON cannot carry: a bug, never a crash
            log.error("refusing to send a %s frame that is not JSON-safe: %s", msg.get("type"), exc)
            return False
        if len(text.encode("utf-8")) >= MAX_FRAME_BYTES:
            log.error("refusing to send a %d-byte %s frame", len(text), msg.get("type"))
            return False
        try:
            async with self._send_lock:
                await ws.send(text)
            return True
        except Exception as exc:  # a closed socket; the result stays unacked and is re-sent
            log.debug("send failed: %s", exc)
            return False

    async def _resend_unacked(self) -> None:
        for message in list(self.unacked.values()):
            await self._send(message)

    # ---- messages from the server

    async def _dispatch(self, msg: dict) -> Outcome | None:
        kind = msg.get("type")
        if kind == "job":
            self._start_job(msg)
        elif kind == "cancel":
            state = self.running.get(str(msg.get("job_id")))
            if state is not None:
                state.cancel.set()
                self.console.status(f"Job {state.job_id[:8]}: cancel requested")
        elif kind == "stop_early":
            state = self.running.get(str(msg.get("job_id")))
            if state is not None:
                state.stop_early.set()
                self.console.status(f"Job {state.job_id[:8]}: stop and keep the best model requested")
        elif kind == "result_ack":
            job_id = str(msg.get("job_id"))
            if self.unacked.pop(job_id, None) is not None:
                self._remember_acked(job_id)
            return await self._maybe_pending_update()
        elif kind == "update":
            return await self._handle_update(msg)
        elif kind in ("revoked", "replaced"):
            self._notice = str(msg.get("message") or "")
        elif kind == "error":
            self._on_error_frame(msg)
        elif kind not in ("pong", "auth_response"):
            log.debug("ignoring message of type %r", kind)
        return None

    def _on_error_frame(self, msg: dict) -> None:
        """The server refused a frame; a result it can never accept is not kept for re-sending."""
        code, job_id = msg.get("code"), str(msg.get("job_id"))
        log.warning("server refused a frame: %s %s (job %s)", code, msg.get("message"), job_id)
        if code in RESULT_REFUSALS and self.unacked.pop(job_id, None) is not None:
            self._remember_acked(job_id)

    def _on_unreadable_frame(self, raw: Any, problem: str) -> None:
        """Log a frame that is not a JSON object; a job among them gets an error result."""
        log.warning("ignoring a frame from the server: %s", problem)
        job_id = unreadable_job_id(raw)
        if job_id is None or job_id in self.running or job_id in self._acked or job_id in self.unacked:
            return
        self._finish(
            job_id,
            error_result(job_id, "invalid_params", f"The job could not be read: {problem}. Nothing was run."),
        )

    def _remember_acked(self, job_id: str) -> None:
        self._acked[job_id] = None
        while len(self._acked) > 1000:
            self._acked.popitem(last=False)

    def _start_job(self, msg: dict) -> None:
        job_id = msg.get("job_id")
        if not isinstance(job_id, str) or not job_id or len(job_id) > 128:
            log.warning("ignoring a job without a valid job_id")
            return
        if job_id in self.running or job_id in self._acked:
            log.info("ignoring duplicate job %s", job_id)
            return
        if job_id in self.unacked:
            log.info("duplicate job %s: re-sending its result", job_id)
            self._spawn(self._send(self.unacked[job_id]))
            return
        action = msg.get("action")
        params = msg.get("params") if msg.get("params") is not None else {}
        fn = self.actions.get(action) if isinstance(action, str) else None
        problem = params_problem(params)
        if problem:
            self._finish(job_id, error_result(job_id, "invalid_params", problem))
            return
        if fn is None or not isinstance(action, str) or not isinstance(params, dict):
            self._finish(job_id, error_result(job_id, "unsupported", f"This worker cannot do {action!r}."))
            return
        state = JobState(job_id, action)
        self.running[job_id] = state
        self.console.status(f"Job {job_id[:8]}: {_job_label(action, params)} started")
        ctx = JobContext(
            job_id,
            params,
            self.settings,
            emit=self._emit_threadsafe,
            cancel_event=state.cancel,
            stop_event=state.stop_early,
        )
        future = self._loop.run_in_executor(self.executor, execute_job, fn, ctx)
        future.add_done_callback(functools.partial(self._job_done, state))

    def _emit_threadsafe(self, msg: dict) -> None:
        """Called from job threads: hand a progress message to the event loop."""
        try:
            self._loop.call_soon_threadsafe(self._spawn, self._send(msg))
        except RuntimeError:  # the loop is closed: we are shutting down
            pass

    def _job_done(self, state: JobState, future: Any) -> None:
        self.running.pop(state.job_id, None)
        if future.cancelled():
            return
        result = future.result()
        took = time.monotonic() - state.started
        if result.get("success"):
            self.console.status(f"Job {state.job_id[:8]}: {state.action} finished in {took:.1f}s")
        else:
            self.console.status(f"Job {state.job_id[:8]}: {state.action} failed - {result.get('error')}")
        self._finish(state.job_id, result)

    def _finish(self, job_id: str, result: dict) -> None:
        """Keep the result until the server acknowledges it, and send it now if connected."""
        self.unacked[job_id] = result
        while len(self.unacked) > UNACKED_RESULTS_KEPT:
            old, _ = self.unacked.popitem(last=False)
            log.warning("dropping unacknowledged result of job %s (too many kept)", old)
        self._spawn(self._send(result))

    # ---- updates

    async def _handle_update(self, msg: dict) -> Outcome | None:
        """An update offer: announced only, unless the user opted in with --auto-update.

        Only the exact /worker URL of this worker's server is accepted, only a newer version,
        and an automatic update is installed only when no job runs (see install_update).
        """
        raw_latest = msg.get("latest_version")
        latest = short_text(raw_latest, 40) if isinstance(raw_latest, (str, int, float)) else ""
        url = download_url_for(self.settings.server)
        raw_url = msg.get("url")
        if raw_url not in (None, "") and not is_update_url(self.settings.server, raw_url):
            shown = short_text(raw_url, 120) if isinstance(raw_url, str) else f"a {type(raw_url).__name__}"
            self.console.status(f"Ignoring an update offered from {shown}: updates come only from {url}.")
            return None
        if latest and not version_is_newer(latest):
            self.console.status(
                f"Ignoring an update to version {latest}: this worker already runs {WORKER_VERSION}."
            )
            return None
        failed = self.store.load().get("update_failed_version")
        if not self.settings.auto_update or (latest and latest == failed):
            if latest not in self._offers_shown:
                self._offers_shown.add(latest)
                why = (
                    " (it failed to start here before and was rolled back)"
                    if latest and latest == failed
                    else "; to install updates automatically, start the worker with --auto-update"
                )
                self.console.status(
                    f"Update available {WORKER_VERSION} \u2192 {latest or 'a newer version'}. To install it, run "
                    f"{update_command(self.settings.paths)} (or the connect command again){why}."
                )
            return None
        if self.running or self.unacked:
            self._pending_update = msg
            self.console.status(
                f"Worker {latest or 'update'} is available; updating once the current jobs are done."
            )
            return None
        self._pending_update = None

        def announce(version: str, digest: str) -> None:
            self.console.status(
                f"Updating worker {WORKER_VERSION} \u2192 {short_text(version, 40)} from {url} (SHA-256 {digest})"
            )

        def check(candidate: Path) -> None:
            run_self_check(
                self.reexec_argv[0], candidate, list(self.reexec_argv[2:]), self.settings.paths.home
            )

        try:
            version, _ = await self._loop.run_in_executor(
                None,
                functools.partial(
                    install_update, url, self.settings.paths, fetch=self.fetch, announce=announce, check=check
                ),
            )
        except Exception as exc:
            log.warning("update failed", exc_info=True)
            self.console.status(
                f"Update failed ({short_text(str(exc), 200)}); keeping version {WORKER_VERSION}."
            )
            return None
        return Outcome(
            "reexec", f"Updated to version {version}; restarting.", EXIT_OK, list(self.reexec_argv)
        )

    def _saved_copy_update(self) -> Outcome | None:
        """Restart with the saved copy once it holds a newer version (installed by --update), when idle."""
        try:
            st = os.stat(self.settings.paths.script)
        except OSError:
            return None
        mark = (st.st_mtime_ns, st.st_size)
        if mark == self._saved_mark or self.running or self.unacked:
            return None
        self._saved_mark = mark
        try:
            match = VERSION_LINE_RE.search(self.settings.paths.script.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not match or not version_is_newer(match.group(1)):
            return None
        return Outcome(
            "reexec",
            f"Worker {short_text(match.group(1), 40)} was installed in {self.settings.paths.script}; restarting with it.",
            EXIT_OK,
            list(self.reexec_argv),
        )

    async def _maybe_pending_update(self) -> Outcome | None:
        if self._pending_update is not None and not self.running and not self.unacked:
            return await self._handle_update(self._pending_update)
        return None


def _bounded_int(text: str) -> int | float:
    """A JSON integer; one longer than MAX_INT_DIGITS digits becomes +-inf instead.

    No real field needs such a number, int() of a long digit string costs quadratic time on
    older Pythons, and Python 3.11+ refuses more than 4,300 digits: an infinity is refused by
    every range check downstream with the field's own clear message.
    """
    if len(text) - text.startswith("-") > MAX_INT_DIGITS:
        return float("-inf") if text.startswith("-") else float("inf")
    return int(text)


def parse_frame(raw: Any) -> tuple[dict | None, str]:
    """(the frame as a JSON object, "") or (None, why it cannot be read); never raises."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    try:
        msg = json.loads(raw, parse_int=_bounded_int)
    except RecursionError:
        return None, "it is nested too deeply"
    except (TypeError, ValueError) as exc:
        return None, f"it is not valid JSON ({short_text(str(exc), 80)})"
    if not isinstance(msg, dict):
        return None, "it is not a JSON object"
    return msg, ""


def _parse(raw: Any) -> dict:
    msg, problem = parse_frame(raw)
    if msg is None:
        log.warning("ignoring a frame from the server: %s", problem)
        return {}
    return msg


def unreadable_job_id(raw: Any) -> str | None:
    """The job_id of a frame that looks like a job but could not be parsed, so it can be answered."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    if not isinstance(raw, str) or not JOB_TYPE_RE.search(raw):
        return None
    match = JOB_ID_RE.search(raw)
    return match.group(1) if match else None


def params_problem(params: Any) -> str:
    """Why a job's params cannot be used ("" when they can): not an object, or too big."""
    if not isinstance(params, dict):
        return "params must be an object."
    try:
        size = len(json.dumps(params, ensure_ascii=False).encode("utf-8", errors="replace"))
    except (RecursionError, ValueError, TypeError):
        return "params are nested too deeply."
    if size > MAX_PARAMS_BYTES:
        return f"params are {fmt_bytes(size)}, over this worker's limit of {fmt_bytes(MAX_PARAMS_BYTES)}."
    return ""


def heartbeat_interval(reply: dict, default: float = 20.0) -> float:
    """auth_response's heartbeat_interval in seconds (1 to 600); the default when malformed."""
    value = reply.get("heartbeat_interval")
    if isinstance(value, bool):
        return default
    try:
        seconds = float(value) if value is not None else default
    except (TypeError, ValueError, OverflowError):
        log.warning("ignoring heartbeat_interval %r from the server", short_text(repr(value), 60))
        return default
    if not math.isfinite(seconds) or seconds <= 0:
        return default
    return max(1.0, min(600.0, seconds))


# --------------------------------------------------------------------------- main


def _print_autostart(console: Console, result: dict) -> None:
    console.status(result["message"])
    for step in result.get("manual_steps") or []:
        console.plain(f"  {step}")


def _stdin_isatty() -> bool:
    try:
        return bool(sys.stdin) and sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code.

    The first runs of a just-installed update are on probation: if one ends with an error before
    it ever connected, the previous copy is put back and run instead (see roll_back_update).
    """
    probation = on_probation(Paths(statsbot_home()))
    one_shot = {"--version", "--self-check", "--update", "--help", "-h"} & set(
        sys.argv[1:] if argv is None else argv
    )
    if probation is None or one_shot:
        return _main(argv)
    try:
        code = _main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_ERROR)
    except Exception:
        log.exception("the updated worker failed")
        code = EXIT_ERROR
    if code != EXIT_OK and not CONNECTED.is_set():
        paths = Paths(statsbot_home())
        if roll_back_update(paths, probation, code, Console()):
            reexec([sys.executable, str(paths.script)] + (sys.argv[1:] if argv is None else list(argv)))
    return code


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    if args.version:
        safe_print(f"statsbot-worker {WORKER_VERSION} (protocol {PROTOCOL_VERSION})")
        return EXIT_OK
    if args.self_check:
        return self_check(args)
    paths = Paths(statsbot_home())
    try:
        secure_home(paths)
    except OSError as exc:
        safe_print(f"Warning: cannot create {paths.home}: {exc}", sys.stderr)
    setup_logging(paths.log_file, args.verbose)
    console = Console()
    console.plain(
        f"StatsBot worker {WORKER_VERSION} - Python {platform.python_version()} on {platform.system()}"
    )
    store = ConfigStore(paths.config)
    saved = store.load()
    try:
        settings = resolve_settings(args, saved, paths)
    except UsageError as exc:
        console.plain(f"Error: {exc}")
        return EXIT_USAGE
    if args.update:
        return update_now(args, paths, settings, store, console, sys.argv[1:] if argv is None else list(argv))
    have_copy, copy_message = ensure_saved_copy(paths, settings.server, globals().get("__file__"))
    if copy_message:
        console.status(copy_message)
    versions = package_versions()
    code = ensure_packages(args, paths, console, versions, stdin_isatty=_stdin_isatty(), have_copy=have_copy)
    if code is not None:
        return code
    store.save(settings_to_config(settings, saved))
    if args.autostart == "off":
        try:
            _print_autostart(console, remove_autostart(AutostartEnv.current(paths)))
        except (JobError, OSError) as exc:
            console.plain(f"Could not remove autostart: {getattr(exc, 'message', exc)}")
            return EXIT_ERROR
        return EXIT_OK
    if not settings.token and not settings.credential:
        console.plain(
            f"This machine is not connected to {urllib.parse.urlsplit(settings.server).netloc} yet. "
            "In Telegram, send /connect to the bot and run the command it shows."
        )
        return EXIT_USAGE
    console.plain(
        "Folders this worker may read: "
        + _roots_text(settings.allowed_roots)
        + " (not the hidden files and folders in them)"
    )
    console.plain(f"Models are saved in: {settings.models_dir}")
    try:
        check_models_dir_private(settings.models_dir, paths.home)
    except JobError as exc:
        console.plain(f"Warning: {exc.message}")
    console.plain(f"Log file: {paths.log_file}")
    argv_again = [sys.executable, str(paths.script)] + strip_args(
        sys.argv[1:] if argv is None else list(argv), ("--token", "--autostart"), with_value=("--token",)
    )
    try:
        if args.autostart == "on":
            result = _autostart_on(args, settings, store, console, versions, have_copy)
            if result is not None:
                return result
        client = WorkerClient(settings, store, console, versions=versions, reexec_argv=argv_again)
        outcome = asyncio.run(client.run(handle_signals=True))
    except KeyboardInterrupt:
        console.status("Stopped.")
        return _exit(EXIT_OK)
    if outcome.message:
        console.status(outcome.message)
    if outcome.kind == "reexec" and outcome.argv:
        reexec(outcome.argv)
    return _exit(outcome.exit_code)


def self_check(args: argparse.Namespace) -> int:
    """--self-check: can this copy start here (settings, packages, imports)? Changes nothing."""
    paths = Paths(statsbot_home())
    try:
        settings = resolve_settings(args, ConfigStore(paths.config).load(), paths)
    except UsageError as exc:
        safe_print(f"Self-check failed: {exc}")
        return EXIT_USAGE
    missing = missing_required(package_versions())
    if missing:
        safe_print(f"Self-check failed: these packages are missing or too old: {', '.join(missing)}.")
        return EXIT_MISSING_PACKAGES
    import importlib

    for module in ("websockets", "pandas", "sklearn", "lightgbm"):
        try:
            importlib.import_module(module)
        except Exception as exc:  # a broken installation, not only a missing one
            safe_print(f"Self-check failed: importing {module}: {short_text(str(exc), 200)}")
            return EXIT_MISSING_PACKAGES
    websocket_connect()
    safe_print(
        f"Self-check passed: statsbot-worker {WORKER_VERSION} on Python {platform.python_version()}, "
        f"server {settings.server}."
    )
    return EXIT_OK


def update_now(
    args: argparse.Namespace,
    paths: Paths,
    settings: Settings,
    store: ConfigStore,
    console: Console,
    argv: list[str],
) -> int:
    """--update: install the newest worker from this worker's server, after showing its SHA-256."""
    url = download_url_for(settings.server)
    console.status(f"Checking {url} for a newer worker\u2026")

    def announce(version: str, digest: str) -> None:
        console.status(f"Update {WORKER_VERSION} \u2192 {short_text(version, 40)} from {url}")
        console.plain(f"  SHA-256 {digest}")
        if _stdin_isatty() and not args.yes:
            try:
                answer = input("Install it? [Y/n] ")
            except EOFError:
                answer = "n"
            if answer.strip().lower() not in ("", "y", "yes"):
                raise UpdateError("not installed: you said no")

    python = runtime_python(paths, package_versions())
    check_args = strip_args(
        argv, ("--update", "--token", "--autostart", "--yes", "-y"), with_value=("--token",)
    )
    try:
        version, _ = install_update(
            url,
            paths,
            announce=announce,
            check=lambda candidate: run_self_check(python, candidate, check_args, paths.home),
        )
    except UpToDate as exc:
        console.status(f"This worker is up to date ({exc}).")
        return EXIT_OK
    except (UpdateError, OSError) as exc:
        console.status(f"Update failed: {exc}. Keeping version {WORKER_VERSION}.")
        return EXIT_ERROR
    store.update(update_failed_version=None)
    console.status(
        f"Installed worker {version} as {paths.script} (the previous copy is kept as {paths.previous_script})."
    )
    console.plain(
        "A worker running now switches to it within a minute, once it has no job to finish; otherwise "
        f"start it with: {'python' if os.name == 'nt' else 'python3'} {paths.script}"
    )
    return EXIT_OK


def _autostart_on(
    args: argparse.Namespace,
    settings: Settings,
    store: ConfigStore,
    console: Console,
    versions: dict[str, str | None],
    have_copy: bool,
) -> int | None:
    """--autostart: get a credential if needed, install the service; None to keep running here."""
    if not have_copy:
        console.plain("Autostart needs a saved copy of the worker, which could not be made (see above).")
        return EXIT_ERROR
    if not settings.credential:
        client = WorkerClient(settings, store, console, versions=versions)
        outcome = asyncio.run(client.run(stop_after_auth=True, handle_signals=True))
        if outcome.kind != "authenticated":
            console.status(outcome.message)
            return outcome.exit_code or EXIT_ERROR
    try:
        result = install_autostart(AutostartEnv.current(settings.paths), start_now=not args.foreground)
    except (JobError, OSError) as exc:
        console.plain(f"Could not set up autostart: {getattr(exc, 'message', exc)}")
        return EXIT_ERROR
    _print_autostart(console, result)
    if not result["enabled"]:
        console.status("Autostart is not set up (see above); the worker keeps running in this terminal.")
    if result["enabled"] and not args.foreground:
        console.status(f"The worker now runs in the background. Logs: {settings.paths.log_file}")
        return EXIT_OK
    return None


def _exit(code: int) -> int:
    """Exit code, ending at once if job threads are still busy (they cannot be interrupted)."""
    busy = [t for t in threading.enumerate() if t.name.startswith("job") and t.is_alive()]
    if busy:
        logging.shutdown()
        if sys.stdout is not None:
            sys.stdout.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
