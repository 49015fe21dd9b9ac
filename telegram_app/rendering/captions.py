"""A notification's file (or photo) and its text as ONE Telegram message: the text is the caption.

Rendering yields a text and files sent after it; for experiment notifications (``notify`` and
``process`` rows) that are new messages, the sender calls ``one_message`` once the charts are
drawn, and the text moves into the first file's caption when both fit Telegram's caption limit
(1,024 characters; counted in UTF-16 units on the HTML, which over-counts, never under-counts).
Longer texts, messages with buttons, and edits of an earlier message keep the text and the
files apart.
"""

from __future__ import annotations

from dataclasses import replace

from core.models import OutboxMessage
from telegram_app.rendering import Rendered
from tg_rules.text import CAPTION_LIMIT, utf16_len

CAPTIONED_KINDS = frozenset({OutboxMessage.Kind.NOTIFY, OutboxMessage.Kind.PROCESS})


def one_message(message: OutboxMessage, rendered: Rendered, edit_target: int | None) -> Rendered:
    """``rendered`` with its text as the first file's caption, when that makes one message of it."""
    if (
        message.kind not in CAPTIONED_KINDS
        or edit_target is not None
        or message.sent_message_id is not None  # a retry after the text went out: the files follow it
        or message.files_sent
        or not rendered.text
        or not rendered.files
        or rendered.buttons
        or rendered.replace_with
        or rendered.parse_mode != "HTML"  # captions are sent as HTML
    ):
        return rendered
    first, *rest = rendered.files
    if first.draw is not None:  # a chart not drawn: it may yet be left out, and the text with it
        return rendered
    # The default caption ("📎 name") says nothing the text does not already say when it names the file.
    own = "" if first.caption.startswith("📎") and first.filename in rendered.text else first.caption
    combined = "\n".join(part for part in (rendered.text, own) if part)
    if utf16_len(combined) > CAPTION_LIMIT:
        return rendered
    return replace(rendered, text="", files=[replace(first, caption=combined), *rest], mergeable=False)
