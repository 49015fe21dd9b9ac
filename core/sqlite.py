"""What every SQLite connection of the process gets, beyond its settings (see statsbot_site.config).

* Text that is not UTF-8 is read with U+FFFD: SQLite stores whatever bytes a TEXT column was
  given (another tool, a damaged file), and Python's driver fails the whole query on such a
  value, so one bad row would break a page or the sender.
* The write-ahead log stays open: when the last connection to a database closes, SQLite
  checkpoints the log into the database and deletes it, which costs several fsyncs. Django
  closes its connection after every request (and under ASGI each request runs in a fresh
  thread), so without an anchor every API request paid that price (~20 ms here, half of a
  notification's time). One idle connection per database file, held for the life of the
  process, keeps the log open; SQLite still checkpoints every 1,000 pages.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

_anchors: dict[str, sqlite3.Connection] = {}
_lock = threading.Lock()


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _is_file(name: str) -> bool:
    return bool(name) and name != ":memory:" and "mode=memory" not in name and not name.startswith("file:memorydb")


def on_connection_created(sender: Any, connection: Any, **kwargs: Any) -> None:
    if connection.vendor != "sqlite":
        return
    connection.connection.text_factory = _text
    name = str(connection.settings_dict["NAME"])
    if name in _anchors or not _is_file(name):
        return
    with _lock:
        if name not in _anchors:
            anchor = sqlite3.connect(name, check_same_thread=False)
            anchor.execute("PRAGMA journal_mode").fetchone()  # opens the log and its shared-memory index
            _anchors[name] = anchor
