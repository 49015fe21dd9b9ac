"""How Telegram measures text: UTF-16 code units, against fixed limits."""

from __future__ import annotations

TEXT_LIMIT = 4096  # a message's text, after entities are parsed
CAPTION_LIMIT = 1024  # a photo's or document's caption


def utf16_len(text: str) -> int:
    """Length of ``text`` in UTF-16 code units (how Telegram counts offsets and limits)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)
