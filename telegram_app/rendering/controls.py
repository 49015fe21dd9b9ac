"""The ⏹ Stop / ⏸ Pause / ▶ Resume / action buttons of a running tracked process, and the line
telling what was asked from the chat. Shown on its "started" message and its progress message."""

from __future__ import annotations

from notifications.models import TrackedProcess
from telegram_app.callbacks import PROCESS_ACTION, PROCESS_PAUSE, PROCESS_RESUME, PROCESS_STOP
from telegram_app.rendering import Buttons

ACTIONS_PER_ROW = 2


def control_buttons(process: TrackedProcess) -> Buttons:
    """None once finished or once a stop was requested (nothing left to ask)."""
    Control = TrackedProcess.Control
    if process.is_finished or process.control == Control.STOP:
        return []
    first = [{"text": "⏹ Stop", "callback_data": f"{PROCESS_STOP}:{process.uuid}"}]
    if process.control == Control.PAUSE:
        first.append({"text": "▶ Resume", "callback_data": f"{PROCESS_RESUME}:{process.uuid}"})
    elif process.pausable:
        first.append({"text": "⏸ Pause", "callback_data": f"{PROCESS_PAUSE}:{process.uuid}"})
    rows = [first]
    names = [str(name) for name in process.actions if isinstance(name, str)]
    for start in range(0, len(names), ACTIONS_PER_ROW):
        rows.append([
            {"text": name, "callback_data": f"{PROCESS_ACTION}:{process.uuid}:{start + offset}"}
            for offset, name in enumerate(names[start:start + ACTIONS_PER_ROW])
        ])
    return rows


def control_line(process: TrackedProcess) -> str:
    """What the chat asked and the run has not yet done; empty when nothing is pending."""
    Control = TrackedProcess.Control
    if process.stopped_from_chat:
        return "⏹ stopped from Telegram"
    if process.is_finished:
        return ""
    if process.control == Control.STOP:
        return "⏹ <i>stop requested from Telegram: it stops at its next step</i>"
    if process.control == Control.PAUSE:
        return "⏸ <i>paused from Telegram</i>"
    return ""
