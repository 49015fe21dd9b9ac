"""Inline keyboards from the button rows that rendering and handlers produce."""

from __future__ import annotations

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from telegram_app.rendering import Buttons


def keyboard(rows: Buttons) -> InlineKeyboardMarkup | None:
    if not rows:
        return None
    return InlineKeyboardMarkup([[_button(button) for button in row] for row in rows])


def _button(button: dict[str, str]) -> InlineKeyboardButton:
    """``{"text", "callback_data"}`` or ``{"text", "url"}`` (the two kinds of button StatsBot sends)."""
    return InlineKeyboardButton(button["text"], callback_data=button.get("callback_data"), url=button.get("url"))
