"""Small helpers for Telegram HTML: escaping, code, progress bars, durations, tables."""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import datetime

from django.utils import timezone


def esc(value: object) -> str:
    return html.escape(str(value), quote=False)


def code(value: object) -> str:
    return f"<code>{esc(value)}</code>"


def bold(value: object) -> str:
    return f"<b>{esc(value)}</b>"


def progress_bar(percent: float, width: int = 10) -> str:
    filled = max(0, min(width, round(percent / 100 * width)))
    return "▓" * filled + "░" * (width - filled)


def duration(seconds: float | None) -> str:
    """12.3s, 45s, 3m, 3m 12s, 1h 5m, 2d 3h; "?" when unknown."""
    if seconds is None:
        return "?"
    seconds = max(0.0, float(seconds))
    if seconds < 10 and seconds != int(seconds):
        return f"{seconds:.1f}s"
    total = int(round(seconds))
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m" + (f" {secs}s" if secs else "")
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h" + (f" {minutes}m" if minutes else "")
    days, hours = divmod(hours, 24)
    return f"{days}d" + (f" {hours}h" if hours else "")


def ago(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    return duration((timezone.now() - moment).total_seconds()) + " ago"


def number(value: object) -> str:
    """Metrics and counts the way a person reads them (HTML-safe: anything else is escaped)."""
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 1 or magnitude == 0:
            return f"{value:.3f}".rstrip("0").rstrip(".")
        return f"{value:.4g}"
    return esc(value)


def table(columns: Sequence[str], rows: Sequence[Sequence[object]], width: int = 14, max_chars: int = 2800) -> str:
    """A monospace table in a <pre> block, cells cut to ``width`` and the whole cut to ``max_chars``."""

    def cell(value: object) -> str:
        text = number(value) if isinstance(value, (int, float)) else str(value)
        return text if len(text) <= width else text[: width - 1] + "…"

    grid = [[cell(c) for c in columns]] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in grid) for i in range(len(columns))]
    lines = ["  ".join(value.ljust(widths[i]) for i, value in enumerate(r)).rstrip() for r in grid]
    lines.insert(1, "  ".join("-" * w for w in widths))
    text = "\n".join(lines)
    if len(text) > max_chars:
        text = text[:max_chars].rsplit("\n", 1)[0] + "\n…"
    return f"<pre>{esc(text)}</pre>"


def since(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    return f"{timezone.localtime(moment):%Y-%m-%d %H:%M} UTC ({ago(moment)})"

