"""``text`` rows: written ready to send by whoever queued them."""

from __future__ import annotations

from core.models import OutboxMessage
from telegram_app.rendering import FilePart, Rendered, renderer


@renderer(OutboxMessage.Kind.TEXT)
def render_text(message: OutboxMessage) -> Rendered:
    files = [FilePart(kind=f.kind, filename=f.filename, data=bytes(f.data), caption=f.caption)
             for f in message.files.all()]
    return Rendered(
        text=message.text,
        buttons=message.buttons,
        files=files,
        parse_mode=message.parse_mode,
        mergeable=not message.buttons and not files and not message.edit_key,
    )
