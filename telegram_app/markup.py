"""Inline keyboards from the button rows that rendering and handlers produce."""

from __future__ import annotations

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from telegram_app.rendering import Buttons


def keyboard(rows: Buttons) -> InlineKeyboardMarkup | None:
    if not rows:
        return None
    return InlineKeyboardMarkup([[InlineKeyboardButton(**button) for button in row] for row in rows])
