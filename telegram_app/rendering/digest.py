"""A failure digest (``notifications.digests``): one message listing the runs that failed together.

One line per run, in the order they failed: its colour tag and name, what happened (crashed
after how long, killed by which signal, no heartbeat, lost) and the first line of its error.
The machine is named once when every run was on the same one; a 🔎 button per run (the first
ten) sends that run's own full alert with its traceback. Rendered from the group and
the processes as they are when the row is sent, so each edit shows the whole list so far.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.utils import timezone

from core.models import OutboxMessage
from notifications.digests import DIGEST_EVENT
from notifications.models import FailureDigest, TrackedProcess
from telegram_app.callbacks import PROCESS_ALERT
from telegram_app.formatting import duration, esc
from telegram_app.rendering import Rendered
from telegram_app.rendering.notify import MESSAGE_EVENTS, clip, clip_escaped, guard, title
from tg_rules.text import TEXT_LIMIT, utf16_len

logger = logging.getLogger(__name__)

WHAT_EMOJI = {"crashed": "❌", "killed": "💀", "stalled": "⏸️", "lost": "🪦"}
ERROR_LINE = 120  # characters of the error shown per run
DETAIL_BUTTONS = 10


def _when(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _happened(process: TrackedProcess, what: str) -> str:
    if what == "crashed":
        return f"crashed after {duration(process.runtime_s)}"
    if what == "killed":
        return f"killed ({esc(clip(process.exit_reason, 20))}) after {duration(process.runtime_s)}"
    if process.state == TrackedProcess.State.RUNNING:
        return "no heartbeat for a while, now back"
    if what == "stalled":
        return f"no heartbeat (expected every {process.heartbeat_interval}s)"
    return f"lost (no heartbeat for {duration((timezone.now() - process.last_heartbeat_at).total_seconds())})"


def run_line(process: TrackedProcess, what: str) -> str:
    """🟦 <b>name</b> · ❌ crashed after 12s · <code>RuntimeError: …</code>"""
    parts = [title(process), f"{WHAT_EMOJI.get(what, '⚠️')} {_happened(process, what)}"]
    error = next((line.strip() for line in process.error.splitlines() if line.strip()), "")
    if error and what in ("crashed", "killed") and error != process.exit_reason:
        parts.append(f"<code>{clip_escaped(error, ERROR_LINE)}</code>")
    return " · ".join(parts)


def _heading(count: int, whats: set[str], spread_s: float) -> str:
    if whats <= {"crashed", "killed"}:
        verb = "failed"
    elif whats <= {"stalled", "lost"}:
        verb = "stopped sending heartbeats"
    else:
        verb = "failed or stopped sending heartbeats"
    within = f" within {duration(spread_s)}" if spread_s >= 1 else " at the same time"
    return f"🚨 <b>{count} runs {verb}</b>{within}"


def render_digest(message: OutboxMessage) -> Rendered:
    payload = message.payload or {}
    group_id = payload.get("digest")
    group = (FailureDigest.objects.filter(pk=group_id, account_id=message.account_id).first()
             if isinstance(group_id, int) else None)
    members = [m for m in (group.members if group is not None else []) if isinstance(m, dict)]
    processes = {
        str(p.uuid): p
        for p in TrackedProcess.objects.filter(account_id=message.account_id,
                                               uuid__in=[str(m.get("uuid")) for m in members])
    }
    runs = [(processes[str(m["uuid"])], str(m.get("what", ""))) for m in members if str(m.get("uuid")) in processes]
    if not runs:
        return Rendered(text="⚠️ several runs failed, but they are no longer known.")
    times = [t for t in (_when(m.get("at")) for m in members) if t is not None]
    spread = (max(times) - min(times)).total_seconds() if times else 0.0
    hosts = {p.metadata.get("host") if isinstance(p.metadata, dict) else None for p, _ in runs}
    host = next(iter(hosts)) if len(hosts) == 1 else None
    footer = [f"🖥 all on <code>{esc(clip(host, 60))}</code>" if isinstance(host, str) and host else ""]
    head = _heading(len(runs), {what for _, what in runs}, spread)
    budget = TEXT_LIMIT - utf16_len("\n".join([head, *footer])) - 60
    lines: list[str] = []
    for index, (process, what) in enumerate(runs):
        line = run_line(process, what)
        if utf16_len(line) + 1 > budget:
            lines.append(f"… and {len(runs) - index} more")
            break
        budget -= utf16_len(line) + 1
        lines.append(line)
    return Rendered(text=guard("\n".join([head, *lines, *(f for f in footer if f)])), buttons=_buttons(runs))


def _buttons(runs: list[tuple[TrackedProcess, str]]) -> list[list[dict[str, str]]]:
    """🔎 <run>: that run's own full alert (error, traceback, chart), two per row, the first few runs."""
    buttons = [{"text": f"🔎 {clip(process.name, 24)}", "callback_data": f"{PROCESS_ALERT}:{process.uuid}"}
               for process, _ in runs[:DETAIL_BUTTONS]]
    return [buttons[i:i + 2] for i in range(0, len(buttons), 2)]


MESSAGE_EVENTS[DIGEST_EVENT] = render_digest
