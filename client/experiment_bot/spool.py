"""The local spool: messages that could not be sent before the process ended, kept on disk.

Layout: ``$XDG_CACHE_HOME/experiment_bot/`` (default ``~/.cache/experiment_bot/``) holds one
folder per server and key, named by a hash of both (the key itself never appears in a file
name). Each process that spools writes one new file there, atomically (a private temporary
file renamed into place), so concurrent writers never share a file and no lock is needed:

    ~/.cache/experiment_bot/
        3f2a9c…/                          mode 0700, one per server + key
            1718000000000000000-4242-ab12.spool.json          ready to be sent
            1718000000000000000-4242-ab12.spool.json.claimed-gpu-box-4313   being sent

A process that sends (the next script with the same key, or ``python -m experiment_bot
flush``) *claims* a ready file by renaming it (only one claimant can win a rename), sends
its messages, and deletes it once every message is delivered or re-spooled. A claimant that
died (``kill -9``) leaves its claim behind; the claim is taken over when its process is gone
(same host) or after an hour. Every message keeps its ``Idempotency-Key``, so sending a
message twice (a claim taken over after a delivery whose deletion was lost) never doubles it.

Only the standard library; nothing here runs at import time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("experiment_bot")

SPOOL_VERSION = 1
SUFFIX = ".spool.json"
CLAIM = ".claimed-"
#: A claim whose process cannot be checked (another host, Windows) is taken over after this long.
STALE_CLAIM_SECONDS = 3600.0


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/experiment_bot`` (an absolute XDG_CACHE_HOME only), else ``~/.cache/experiment_bot``."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "experiment_bot"


def spool_name(server: str, api_key: str) -> str:
    """The folder name of a server + key: a hash, so the key never shows in a file name."""
    digest = hashlib.sha256(f"experiment_bot spool\n{server}\n{api_key}".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:32]


def _host() -> str:
    name = "".join(ch for ch in socket.gethostname() if ch.isalnum() or ch in "-_") or "host"
    return name[:64]


def _process_alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, as another user
        return True
    return True


def _private_dir(path: Path) -> bool:
    """Create ``path`` (mode 0700) or check that an existing one is ours and private."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError as exc:
        log.warning("experiment_bot: cannot use the spool folder %s: %s", path, exc.strerror or exc)
        return False
    if os.name == "posix":
        if info.st_uid != os.getuid():
            log.warning("experiment_bot: the spool folder %s belongs to another user; not used", path)
            return False
        if info.st_mode & 0o077:
            try:
                os.chmod(path, 0o700)
            except OSError:
                log.warning("experiment_bot: the spool folder %s is open to other users; not used", path)
                return False
    return True


def envelope_to_item(envelope: Any) -> dict[str, Any]:
    """What the spool stores of one message (its body as it would be sent, and its key)."""
    item: dict[str, Any] = {
        "path": envelope.path,
        "kind": envelope.kind,
        "priority": envelope.priority,
        "key": envelope.key,
        "body": envelope.body,
        "coalesce": envelope.coalesce,
        "extra_fields": list(envelope.extra_fields),
    }
    if envelope.file is not None:
        name, content, content_type = envelope.file
        item["file"] = {
            "name": name,
            "content_type": content_type,
            "data": base64.b64encode(content).decode("ascii"),
        }
    return item


def item_to_envelope(item: dict[str, Any]) -> Any:
    """An Envelope again, with the idempotency key it was spooled with. ValueError when malformed."""
    from .sender import Envelope

    if not isinstance(item, dict):
        raise ValueError("not an object")
    path, body, key = item.get("path"), item.get("body"), item.get("key")
    if not isinstance(path, str) or not path.startswith("/api/") or not isinstance(body, dict):
        raise ValueError("no path or body")
    if not isinstance(key, str) or not key:
        raise ValueError("no idempotency key")
    priority = item.get("priority")
    file = None
    if item.get("file"):
        spec = item["file"]
        file = (str(spec["name"]), base64.b64decode(spec["data"]), str(spec["content_type"]))
    envelope = Envelope(
        path,
        body,
        kind=str(item.get("kind") or "message"),
        priority=priority if isinstance(priority, int) else 1,
        file=file,
        coalesce=item.get("coalesce") if isinstance(item.get("coalesce"), str) else None,
    )
    envelope.key = key
    extra = item.get("extra_fields")
    envelope.extra_fields = [str(name) for name in extra] if isinstance(extra, list) else []
    envelope.from_spool = True
    return envelope


class Spool:
    """The spool folder of one server + key."""

    def __init__(self, server: str, api_key: str, root: Path | None = None) -> None:
        self.server = server
        self.key_prefix = api_key[:8]
        self.root = root if root is not None else cache_root()
        self.dir = self.root / spool_name(server, api_key)
        self._claim_suffix = f"{CLAIM}{_host()}-{os.getpid()}"

    def __repr__(self) -> str:
        return f"<Spool {self.dir}>"

    def display(self) -> str:
        """The folder, with the home directory shown as ``~``."""
        text = str(self.dir)
        home = str(Path.home())
        return "~" + text[len(home) :] if home and text.startswith(home + os.sep) else text

    # ------------------------------------------------------------------ writing

    def write(self, items: list[dict[str, Any]]) -> Path | None:
        """Store ``items`` in a new file (mode 0600, renamed into place); None when it failed."""
        if not items or not _private_dir(self.dir):
            return None
        document = {
            "version": SPOOL_VERSION,
            "server": self.server,
            "key_prefix": self.key_prefix,
            "written_at": time.time(),
            "pid": os.getpid(),
            "items": items,
        }
        name = f"{time.time_ns()}-{os.getpid()}-{os.urandom(4).hex()}"
        temporary = self.dir / f".tmp-{name}"
        final = self.dir / f"{name}{SUFFIX}"
        try:
            data = json.dumps(document, allow_nan=False).encode("ascii")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, final)
        except (OSError, ValueError, TypeError) as exc:
            log.warning("experiment_bot: cannot write the spool file in %s: %s", self.dir, exc)
            try:
                temporary.unlink()
            except OSError:
                pass
            return None
        return final

    # ------------------------------------------------------------------ reading

    def _candidates(self) -> list[Path]:
        """Ready files and claims of dead claimants, oldest first."""
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.debug("experiment_bot: cannot list %s: %s", self.dir, exc)
            return []
        found = []
        for name in names:
            if name.endswith(SUFFIX):
                found.append(self.dir / name)
            elif CLAIM in name and self._is_stale(name):
                found.append(self.dir / name)
        return found

    def _is_stale(self, name: str) -> bool:
        owner = name.rsplit(CLAIM, 1)[1]
        host, _, pid = owner.rpartition("-")
        if owner == self._claim_suffix[len(CLAIM) :]:
            return False  # our own claim
        if host == _host() and pid.isdigit() and not _process_alive(int(pid)):
            return True
        try:
            age = time.time() - (self.dir / name).stat().st_mtime
        except OSError:
            return False
        return age > STALE_CLAIM_SECONDS

    def pending_files(self) -> int:
        """How many spool files wait to be sent (claims of live processes not counted)."""
        if not self.dir.is_dir():
            return 0
        return len(self._candidates())

    def claim(self, limit: int | None = None) -> tuple[list[Path], list[dict[str, Any]], bool]:
        """Claim ready files, oldest first, until at least ``limit`` items are held.

        Returns the claimed paths, their items in order, and whether more files are left.
        Files that cannot be parsed are set aside (renamed ``*.bad``) with a warning.
        """
        if not self.dir.is_dir() or not _private_dir(self.dir):
            return [], [], False
        claimed: list[Path] = []
        items: list[dict[str, Any]] = []
        candidates = self._candidates()
        for path in candidates:
            if limit is not None and items and len(items) >= limit:
                return claimed, items, True
            base = path.name.split(CLAIM, 1)[0]
            target = self.dir / f"{base}{self._claim_suffix}"
            try:
                os.rename(path, target)
            except OSError:  # someone else claimed it first
                continue
            try:
                with open(target, "rb") as handle:
                    document = json.loads(handle.read().decode("utf-8"))
                loaded = document["items"]
                if document.get("version") != SPOOL_VERSION or not isinstance(loaded, list):
                    raise ValueError(f"unknown spool version {document.get('version')!r}")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("experiment_bot: spool file %s is unreadable (%s); set aside as .bad", target, exc)
                try:
                    os.replace(target, self.dir / f"{base}.bad")
                except OSError:
                    pass
                continue
            claimed.append(target)
            items.extend(loaded)
        return claimed, items, False

    @staticmethod
    def release(paths: list[Path]) -> None:
        """Delete claimed files whose messages were all delivered or written to a new spool file."""
        for path in paths:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.debug("experiment_bot: cannot delete %s: %s", path, exc)


def other_spools(root: Path, own: Path) -> int:
    """How many spool folders under ``root`` other than ``own`` hold files to send."""
    try:
        folders = [entry for entry in root.iterdir() if entry.is_dir() and entry != own]
    except OSError:
        return 0
    count = 0
    for folder in folders:
        try:
            if any(name.endswith(SUFFIX) or CLAIM in name for name in os.listdir(folder)):
                count += 1
        except OSError:
            continue
    return count
