from typing import Any

from django.apps import AppConfig
from django.db.backends.signals import connection_created


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def lenient_sqlite_text(sender: Any, connection: Any, **kwargs: Any) -> None:
    """SQLite stores whatever bytes a TEXT column was given (another tool, a damaged file), and
    Python's driver fails the whole query on a value that is not UTF-8. Read such bytes with
    U+FFFD instead, so a page or a sender that reads the row still works."""
    if connection.vendor == "sqlite":
        connection.connection.text_factory = _text


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Outbox"

    def ready(self) -> None:
        connection_created.connect(lenient_sqlite_text, dispatch_uid="core.lenient_sqlite_text")
