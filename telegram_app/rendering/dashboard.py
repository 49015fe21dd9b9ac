"""The ``/dashboard`` message: every running process of an account in one text, as Telegram HTML.

Pure functions of the processes and the time, so the sweep can tell whether the text changed
before it queues an edit. Times that tick are coarse (heartbeat ages in whole minutes) so a
dashboard whose processes report nothing new is not edited for the clock alone. The text stays
within Telegram's 4096 characters: processes that do not fit are counted, not shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from django.conf import settings

from notifications.models import TrackedProcess
from telegram_app.formatting import duration, esc, number
from telegram_app.rendering.notify import FINISH_WORDS, clip, clip_escaped, join_lines, progress_text
from tg_rules.text import TEXT_LIMIT, utf16_len

MAX_METRICS = 3
MAX_RECENT = 5
TITLE = "📋 <b>Dashboard</b>"
MORE_RESERVE = 80  # room kept for the "… and N more" line


def age(seconds: float) -> str:
    """A heartbeat age in whole minutes: "<1m", "3m", "1h 5m" (it must not change every second); not escaped."""
    if seconds < 60:
        return "<1m"
    return duration(int(seconds // 60) * 60)


def machine(process: TrackedProcess) -> str:
    meta = process.metadata if isinstance(process.metadata, dict) else {}
    host = meta.get("host") or meta.get("hostname")
    return clip(host.strip(), 40) if isinstance(host, str) and host.strip() else ""


def last_metrics(process: TrackedProcess) -> str:
    """The newest values of a few metrics: those of the last logged step first, each group alphabetical."""
    metrics = process.metrics if isinstance(process.metrics, dict) else {}
    if not metrics:
        return ""
    latest: list[str] = []
    series = process.metric_series if isinstance(process.metric_series, list) else []
    if series and isinstance(series[-1], dict) and isinstance(series[-1].get("values"), dict):
        latest = sorted(name for name in series[-1]["values"] if name in metrics)  # (JSONB keeps no order)
    names = [*latest, *sorted(name for name in metrics if name not in latest)][:MAX_METRICS]
    text = " · ".join(f"{clip(str(name), 24)} {_value(metrics[name])}" for name in names)
    more = len(metrics) - len(names)
    return "📊 " + clip_escaped(text, 300) + (f" +{more}" if more > 0 else "")


def _value(value: object) -> str:
    """A metric value as text, not yet escaped (the whole line is escaped once)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return number(value)
    return clip(str(value), 24)


def process_block(process: TrackedProcess, now: datetime) -> str:
    """One process: colour tag and name (and tags), progress with ETA, last metrics, machine and
    heartbeat age."""
    head = f"{process.tag_emoji} <b>{esc(clip(process.name, 80))}</b>"
    if process.parent_id:
        head = "↳ " + head
    tags = [t for t in process.tags if isinstance(t, str)][:4] if isinstance(process.tags, list) else []
    if tags:
        head += " " + " ".join(f"<code>{esc(clip(tag, 24))}</code>" for tag in tags)
    elapsed = max(0.0, (process.last_heartbeat_at - process.started_at).total_seconds())
    bar = esc(progress_text(process.progress_done, process.progress_total, elapsed))
    silent = max(0.0, (now - process.last_heartbeat_at).total_seconds())
    running_for = max(0.0, (now - process.started_at).total_seconds())
    facts = [f"⏱ {esc(age(running_for))}"]
    host = machine(process)
    if host:
        facts.append(f"🖥 {esc(host)}")
    if process.state == TrackedProcess.State.STALLED:
        facts.append(f"⏸️ no heartbeat for {esc(age(silent))}")
    else:
        facts.append(f"💓 {esc(age(silent))} ago")
    return join_lines(head, bar, last_metrics(process), " · ".join(facts))


def recent_line(process: TrackedProcess) -> str:
    emoji, words = FINISH_WORDS.get(process.state, ("🏁", "ended after"))
    return f"{emoji} {process.tag_emoji} {esc(clip(process.name, 60))} — {words} {duration(process.runtime_s)}"


def footer() -> str:
    every = duration(settings.DASHBOARD_REFRESH)
    idle = duration(settings.DASHBOARD_IDLE_AFTER)
    return (f"<i>Kept up to date (every {every} at most) until nothing has run for {idle}. "
            "Pin it to keep it at hand · /dashboard stop</i>")


def dashboard_text(active: Sequence[TrackedProcess], ended: Sequence[TrackedProcess], now: datetime) -> str:
    """The live dashboard: running and stalled processes (oldest first), then the few that ended
    recently; never over Telegram's text limit."""
    running = sum(1 for p in active if p.state == TrackedProcess.State.RUNNING)
    stalled = len(active) - running
    counts = [f"{running} running"] + ([f"{stalled} stalled"] if stalled else [])
    head = f"{TITLE} · {' · '.join(counts)}" if active else f"{TITLE}\n💤 Nothing is running right now."
    tail = footer()
    recent = ""
    if ended:
        recent = "<b>Recently ended</b>\n" + "\n".join(recent_line(p) for p in ended[:MAX_RECENT])
    budget = TEXT_LIMIT - utf16_len(join_lines(head, recent, tail)) - 6 - MORE_RESERVE
    blocks: list[str] = []
    for process in active:
        block = process_block(process, now)
        cost = utf16_len(block) + 2
        if cost > budget:
            break
        blocks.append(block)
        budget -= cost
    if len(blocks) < len(active):
        blocks.append(f"… and {len(active) - len(blocks)} more (/status lists them all)")
    return "\n\n".join(part for part in (head, *blocks, recent, tail) if part)


def stopped_text(reason: str) -> str:
    """The final edit of a dashboard that no longer updates."""
    return f"{TITLE}\n⏹ {reason}\nSend /dashboard to start it again."


def idle_reason() -> str:
    return f"Stopped updating: nothing has run for {duration(settings.DASHBOARD_IDLE_AFTER)}."


REPLACED = f"{TITLE}\n↪️ Replaced by a newer dashboard below; this one no longer updates."
STOPPED_BY_USER = "Stopped (/dashboard stop)."
