"""Django's SQLite backend with what an embedded production database needs (``ENGINE =
"core.sqlite_backend"``, set for every SQLite configuration by ``statsbot_site.config``).

* **The write-ahead log stays open.** When the last connection to a database closes, SQLite
  checkpoints the log into the database and deletes it, which costs several fsyncs. Django
  closes its connection after every request (and under ASGI each request runs in a fresh
  thread), so every API request paid that price (~12 ms here, half a notification's time). One
  idle connection per database file, held for the life of the process, keeps the log open;
  SQLite still checkpoints every 1,000 pages.
* **Text that is not UTF-8 is read with U+FFFD.** SQLite stores whatever bytes a TEXT column was
  given (another tool, a damaged file) and Python's driver fails the whole query on such a
  value, so one bad row would break a page or the sender.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from django.db.backends.sqlite3 import base, creation

_anchors: dict[str, sqlite3.Connection] = {}
_registry = threading.Lock()


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _is_file(name: str) -> bool:
    return bool(name) and name != ":memory:" and "mode=memory" not in name and not name.startswith("file:memorydb")


def _anchor(name: str) -> None:
    with _registry:
        if name not in _anchors:
            anchor = sqlite3.connect(name, check_same_thread=False)
            anchor.execute("PRAGMA journal_mode").fetchone()  # opens the log and its shared-memory index
            _anchors[name] = anchor


def release(name: str) -> None:
    """Close the process's hold on ``name`` (before the file is deleted)."""
    with _registry:
        anchor = _anchors.pop(name, None)
    if anchor is not None:
        anchor.close()


class DatabaseCreation(creation.DatabaseCreation):
    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> None:
        release(str(test_database_name))
        super()._destroy_test_db(test_database_name, verbosity)  # type: ignore[misc]
        for leftover in (Path(f"{test_database_name}-wal"), Path(f"{test_database_name}-shm")):
            leftover.unlink(missing_ok=True)


class DatabaseWrapper(base.DatabaseWrapper):
    creation_class = DatabaseCreation

    def get_new_connection(self, conn_params: dict[str, Any]) -> sqlite3.Connection:
        conn = super().get_new_connection(conn_params)
        conn.text_factory = _text
        name = str(self.settings_dict["NAME"])
        if _is_file(name) and name not in _anchors:
            _anchor(name)
        return conn
