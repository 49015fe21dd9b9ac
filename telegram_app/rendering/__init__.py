"""Turning outbox rows into what Telegram shows.

Domain apps write facts (``OutboxMessage.Kind`` + ``payload``); this package renders each
kind to HTML text, inline buttons and files. The sender (``telegram_app.delivery``) is the
only caller: it renders a row just before sending, so a coalesced progress row always shows
the latest state from the database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from core.models import OutboxMessage
from core.outbox import Buttons

__all__ = ["Buttons", "FilePart", "Rendered", "draw_files", "render", "renderer"]

logger = logging.getLogger(__name__)

@dataclass
class FilePart:
    kind: str  # "photo" | "document"
    filename: str
    data: bytes = b""
    caption: str = ""  # HTML, ≤ 1024 characters after parsing
    # A chart still to draw (``telegram_app.charts``): rendering runs on the thread every
    # database call shares, so it only says what to draw; the sender draws it elsewhere.
    draw: Callable[[], bytes] | None = None


def draw_files(files: list[FilePart]) -> list[FilePart]:
    """``files`` with every chart drawn. A chart that cannot be drawn is left out: it is a
    bonus, and must never cost the user the message it comes with."""
    drawn = []
    for part in files:
        if part.draw is None:
            drawn.append(part)
            continue
        try:
            drawn.append(replace(part, data=part.draw(), draw=None))
        except Exception:
            logger.exception("could not draw %s; it is left out", part.filename)
    return drawn


@dataclass
class Rendered:
    """One outbox row as Telegram calls: a text message (sent, or edited when the row has an
    edit key with an earlier message) followed by files sent as new messages."""

    text: str = ""
    buttons: Buttons = field(default_factory=list)
    files: list[FilePart] = field(default_factory=list)
    parse_mode: str = "HTML"
    mergeable: bool = False  # plain notices a burst may merge into one message
    # For results worth a notification (an edit makes no sound): the message shown so far is
    # edited to this short line, and ``text`` goes out as a new message.
    replace_with: str = ""


Renderer = Callable[[OutboxMessage], Rendered]
_RENDERERS: dict[str, Renderer] = {}


def renderer(kind: OutboxMessage.Kind) -> Callable[[Renderer], Renderer]:
    def register(func: Renderer) -> Renderer:
        _RENDERERS[kind] = func
        return func

    return register


def render(message: OutboxMessage) -> Rendered:
    _load_renderers()
    try:
        func = _RENDERERS[message.kind]
    except KeyError:
        raise LookupError(f"no renderer for outbox kind {message.kind!r}") from None
    return func(message)


def _load_renderers() -> None:
    # Each module registers its kinds on import.
    from telegram_app.rendering import digest, jobs, notify, plain, workers  # noqa: F401
