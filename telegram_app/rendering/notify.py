"""``notify`` and ``process`` rows (experiment notifications) as Telegram HTML.

Everything user-supplied is escaped. Notification ``format``:

* ``text`` — shown literally;
* ``markdown`` — a small subset becomes HTML: ``**bold**``/``__bold__``, ``*italic*``/``_italic_``
  (not inside words, so ``snake_case`` stays), ``~~strike~~``, ```code```, fenced ```` ``` ````
  blocks (with a language), ``[text](https://…)`` links and ``#`` headings (bold); the rest is
  shown literally;
* ``html`` — Telegram's own tags are kept (b/strong, i/em, u/ins, s/strike/del, code, pre,
  a href=http(s)/tg/mailto, blockquote, tg-spoiler / span.tg-spoiler), ``<br>`` becomes a
  newline, nesting is repaired; any other tag (``<script>``, ``<div>``…) is shown as text.

Texts stay within 4096 characters and captions within 1024 (counted in UTF-16 units on the
HTML, which over-counts, never under-counts). What does not fit is attached as a file.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable
from functools import partial
from html.parser import HTMLParser
from typing import Any

from django.conf import settings

from core.models import OutboxMessage
from notifications.models import TrackedProcess
from telegram_app.callbacks import PROCESS_DISMISS
from telegram_app.charts import metrics_over_time
from telegram_app.formatting import duration, esc, number
from telegram_app.rendering import FilePart, Rendered, renderer
from telegram_app.rendering.controls import control_buttons, control_line
from tg_rules.text import CAPTION_LIMIT, TEXT_LIMIT, utf16_len

logger = logging.getLogger(__name__)

TRACEBACK_LINES = 25
DIAGNOSIS_FRAMES = 4
LEVEL_EMOJI = {"info": "ℹ️", "success": "✅", "warning": "⚠️", "error": "❌"}
FINISH_WORDS = {
    "succeeded": ("✅", "finished in"),
    "failed": ("❌", "failed after"),
    "cancelled": ("⏹️", "cancelled after"),
}
BAR_CELLS = 10


# ---------------------------------------------------------------------------------- basics


def clip(text: str, limit: int, ellipsis: str = "…") -> str:
    """``text`` cut to at most ``limit`` UTF-16 units (before escaping)."""
    if utf16_len(text) <= limit:
        return text
    out: list[str] = []
    used = utf16_len(ellipsis)
    for char in text:
        used += utf16_len(char)
        if used > limit:
            break
        out.append(char)
    return "".join(out) + ellipsis


def clip_escaped(text: str, budget: int, ellipsis: str = "…") -> str:
    """``text`` escaped and cut so the escaped form takes at most ``budget`` UTF-16 units."""
    escaped = esc(text)
    if utf16_len(escaped) <= budget:
        return escaped
    out: list[str] = []
    used = utf16_len(ellipsis)
    for char in text:
        piece = esc(char)
        used += utf16_len(piece)
        if used > budget:
            break
        out.append(piece)
    return "".join(out) + ellipsis


def every(seconds: float) -> str:
    """A heartbeat interval: 60s, 90s, 15m."""
    return f"{int(seconds)}s" if seconds < 600 else duration(seconds)


def memory(mb: float) -> str:
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"


# ---------------------------------------------------------------------------------- HTML input

_ALLOWED_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "code", "pre", "a", "span",
                 "tg-spoiler", "blockquote"}
_LINK_SCHEMES = ("http://", "https://", "tg://", "mailto:")
_CODE_LANGUAGE = re.compile(r"^language-[\w+#.-]{1,32}$")


class _Sanitizer(HTMLParser):
    """Rebuilds HTML keeping only what Telegram accepts; everything else becomes escaped text."""

    def __init__(self, *, drop_stray_end_tags: bool = False) -> None:
        super().__init__(convert_charrefs=True)
        self.drop_stray_end_tags = drop_stray_end_tags
        self.out: list[str] = []
        self.plain: list[str] = []
        self.stack: list[str] = []

    def _text(self, data: str) -> None:
        self.out.append(esc(data))
        self.plain.append(data)

    def _open_tag(self, tag: str, attrs: dict[str, str | None]) -> str | None:
        if self.stack and self.stack[-1] == "code":
            return None
        if self.stack and self.stack[-1] == "pre":
            language = attrs.get("class") or ""
            if tag != "code":
                return None
            return f'<code class="{language}">' if _CODE_LANGUAGE.match(language) else "<code>"
        if tag not in _ALLOWED_TAGS or (tag in ("a", "blockquote") and tag in self.stack):
            return None
        if tag == "a":
            href = (attrs.get("href") or "").strip()
            if not href.lower().startswith(_LINK_SCHEMES):
                return None
            return f'<a href="{html.escape(href, quote=True)}">'
        if tag == "span":
            return '<span class="tg-spoiler">' if attrs.get("class") == "tg-spoiler" else None
        if tag == "blockquote":
            return "<blockquote expandable>" if "expandable" in attrs else "<blockquote>"
        return f"<{tag}>"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self._text("\n")
            return
        opened = self._open_tag(tag, dict(attrs))
        if opened is None:
            self._text(self.get_starttag_text() or f"<{tag}>")
        else:
            self.out.append(opened)
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self._text("\n")
        else:
            self._text(self.get_starttag_text() or f"<{tag}/>")

    def handle_endtag(self, tag: str) -> None:
        if tag == "br":
            return
        if tag not in self.stack:
            if not self.drop_stray_end_tags:
                self._text(f"</{tag}>")
            return
        while self.stack:
            closing = self.stack.pop()
            self.out.append(f"</{closing}>")
            if closing == tag:
                break

    def handle_data(self, data: str) -> None:
        self._text(data)

    def handle_comment(self, data: str) -> None:
        self._text(f"<!--{data}-->")

    def handle_decl(self, decl: str) -> None:
        self._text(f"<!{decl}>")

    def handle_pi(self, data: str) -> None:
        self._text(f"<?{data}>")

    def unknown_decl(self, data: str) -> None:
        self._text(f"<![{data}]>")

    def result(self) -> tuple[str, str]:
        self.close()
        while self.stack:
            self.out.append(f"</{self.stack.pop()}>")
        return "".join(self.out), "".join(self.plain)


def sanitize_html(source: str, *, drop_stray_end_tags: bool = False) -> tuple[str, str]:
    """Telegram-safe HTML from user HTML, and its plain text."""
    parser = _Sanitizer(drop_stray_end_tags=drop_stray_end_tags)
    parser.feed(source)
    return parser.result()


_FENCE = re.compile(r"```([\w+#.-]*)[ \t]*\n?(.*?)```", re.S)
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"\[([^\]\n]+)\]\((https?://[^\s()]+)\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*|(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)")
_ITALIC = re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])|(?<!\w)_(?=[^\s_])(.+?)(?<=[^\s_])_(?!\w)")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_TOKEN = re.compile("\x00(\\d+)\x00")


def markdown_to_html(source: str) -> str:
    """The documented Markdown subset as Telegram HTML; anything else is shown literally."""
    kept: list[str] = []

    def keep(fragment: str) -> str:
        kept.append(fragment)
        return f"\x00{len(kept) - 1}\x00"

    def fence(match: re.Match[str]) -> str:
        language, body = match.group(1), match.group(2)
        code = f'<code class="language-{language}">' if language else "<code>"
        return keep(f"<pre>{code}{esc(body.rstrip(chr(10)))}</code></pre>")

    text = source.replace("\x00", "")
    text = _FENCE.sub(fence, text)
    text = _INLINE_CODE.sub(lambda m: keep(f"<code>{esc(m.group(1))}</code>"), text)
    text = _LINK.sub(lambda m: keep(f'<a href="{html.escape(m.group(2), quote=True)}">{esc(m.group(1))}</a>'),
                     text)
    text = esc(text)
    text = _HEADING.sub(r"<b>\1</b>", text)
    text = _BOLD.sub(lambda m: f"<b>{m.group(1) or m.group(2)}</b>", text)
    text = _ITALIC.sub(lambda m: f"<i>{m.group(1) or m.group(2)}</i>", text)
    text = _STRIKE.sub(r"<s>\1</s>", text)
    for _ in range(3):  # kept fragments may hold kept fragments (code inside a link)
        if "\x00" not in text:
            break
        text = _TOKEN.sub(lambda m: kept[int(m.group(1))], text)
    return sanitize_html(text, drop_stray_end_tags=True)[0]  # repairs crossed markers: **a *b** c*


def format_body(text: str, fmt: str) -> tuple[str, str]:
    """(HTML, plain text) of a notification's text in its declared format."""
    if fmt == "html":
        return sanitize_html(text)
    if fmt == "markdown":
        return markdown_to_html(text), text
    return esc(text), text


# ---------------------------------------------------------------------------------- pieces


def metadata_line(meta: Any) -> str:
    """host · script · git abc1234* · Python · env, escaped; empty when nothing is known."""
    if not isinstance(meta, dict):
        return ""
    parts: list[str] = []

    def add(value: Any, prefix: str = "") -> None:
        if isinstance(value, str | int | float) and not isinstance(value, bool) and str(value).strip():
            parts.append(prefix + clip(str(value).strip(), 40))

    add(meta.get("host") or meta.get("hostname"))
    add(meta.get("script"))
    git = meta.get("git")
    if isinstance(git, dict) and isinstance(git.get("commit"), str):
        add(git["commit"][:7] + ("*" if git.get("dirty") else ""), "git ")
    elif isinstance(git, str):
        add(git[:7], "git ")
    python = meta.get("python")
    if isinstance(python, str) and python[:1].isdigit():
        python = f"Python {python}"
    add(python)
    add(meta.get("env") or meta.get("venv") or meta.get("virtualenv"), "env ")
    dropped = meta.get("dropped_updates")
    if isinstance(dropped, int) and not isinstance(dropped, bool) and dropped > 0:
        parts.append(f"⚠️ {dropped} earlier update{'s' if dropped != 1 else ''} dropped by the client")
    return esc(" · ".join(parts))


def title(process: TrackedProcess) -> str:
    return f"{process.tag_emoji} <b>{esc(clip(process.name, 100))}</b>"


def tags_line(process: TrackedProcess) -> str:
    tags = [t for t in process.tags if isinstance(t, str)]
    if not tags:
        return ""
    shown = " ".join(f"<code>{esc(clip(tag, 40))}</code>" for tag in tags[:12])
    return "🏷 " + shown + (f" +{len(tags) - 12}" if len(tags) > 12 else "")


def parent_line(process: TrackedProcess) -> str:
    parent = process.parent
    return f"↳ child of {title(parent)}" if parent is not None else ""


def rate_text(per_second: float) -> str:
    if per_second >= 100:
        return f"{per_second:.0f} it/s"
    if per_second >= 1:
        return f"{per_second:.1f} it/s"
    return f"{1 / per_second:.1f} s/it"


def progress_text(done: int | None, total: int | None, elapsed_s: float | None, *, finished: bool = False) -> str:
    """▓▓▓▓▓░░░░░ 52% · 520/1000 · 12.3 it/s · ETA 40s"""
    if done is None:
        return ""
    rate = done / elapsed_s if elapsed_s and elapsed_s > 0 and done > 0 else None
    parts: list[str] = []
    if total and total > 0:
        percent = max(0.0, min(100.0, done * 100 / total))
        filled = min(BAR_CELLS, int(percent // (100 / BAR_CELLS)))
        parts.append("▓" * filled + "░" * (BAR_CELLS - filled) + f" {int(percent)}%")
        parts.append(f"{number(done)}/{number(total)}")
    else:
        parts.append(f"{number(done)} done")
    if rate:
        parts.append(rate_text(rate))
        if total and total > done and not finished:
            parts.append(f"ETA {duration((total - done) / rate)}")
    return " · ".join(parts)


def metrics_line(metrics: Any, limit: int = 600) -> str:
    if not isinstance(metrics, dict) or not metrics:
        return ""
    shown = sorted(metrics.items())[:20]  # alphabetical: the same on every database backend
    text = " · ".join(f"{clip(str(name), 32)} {number(value)}" for name, value in shown)
    return "📊 " + clip_escaped(text, limit)


def traceback_block(traceback: str, budget: int) -> tuple[str, bool]:
    """The last lines of ``traceback`` in ``<pre>``, within ``budget``; and whether any was left out."""
    lines = traceback.rstrip().splitlines()
    if not lines or budget < 40:
        return "", bool(lines)
    tail = lines[-TRACEBACK_LINES:]
    cut = any(len(line) > 300 for line in tail)
    tail = [clip(line, 300) for line in tail]
    while True:
        hidden = len(lines) - len(tail)
        head = [f"… {hidden} earlier line{'s' if hidden != 1 else ''}"] if hidden else []
        block = f"<pre>{esc(chr(10).join(head + tail))}</pre>"
        if utf16_len(block) <= budget or len(tail) == 1:
            break
        tail = tail[1:]
    if utf16_len(block) > budget:
        block = f"<pre>{clip_escaped(tail[-1], budget - 11)}</pre>"
        cut = True
    return block, cut or hidden > 0


def diagnosis_lines(diagnosis: Any, *, stopped: bool = False) -> str:
    """The client's one-line hint and the user's own frames (the failing line last, in bold);
    ``stopped``: the run was cancelled (Ctrl+C, SIGTERM), so the last line is where it stopped."""
    if not isinstance(diagnosis, dict):
        return ""
    lines: list[str] = []
    hint = diagnosis.get("hint")
    if isinstance(hint, str) and hint.strip():
        lines.append(f"💡 {clip_escaped(hint.strip(), 600)}")
    frames = [f for f in diagnosis.get("frames") or [] if isinstance(f, dict) and isinstance(f.get("file"), str)]
    frames = frames[-DIAGNOSIS_FRAMES:]
    for index, frame in enumerate(frames):
        line = frame.get("line")
        where = clip(str(frame["file"]), 80) + (f":{line}" if isinstance(line, int) else "")
        function = frame.get("function")
        if isinstance(function, str) and function:
            where += f" in {clip(function, 40)}"
        code = frame.get("code") if isinstance(frame.get("code"), str) else ""
        last = index == len(frames) - 1
        shown = f"<code>{esc(where)}</code>" + (f"  {clip_escaped(code.strip(), 160)}" if code else "")
        mark = "stopped here" if stopped else "failed here"
        lines.append(f"📍 <b>{shown}</b> ← {mark}" if last else f"   ↳ {shown}")
    if len(frames) > 1:
        lines.insert(len(lines) - len(frames), "your code:")
    return "\n".join(lines)


def join_lines(*lines: str) -> str:
    return "\n".join(line for line in lines if line)


def guard(text: str) -> str:
    """Last resort for a text over the limit: drop the markup and cut."""
    if utf16_len(text) <= TEXT_LIMIT:
        return text
    logger.warning("rendered text over %s characters; sending it without formatting", TEXT_LIMIT)
    return clip_escaped(sanitize_html(text)[1], TEXT_LIMIT)


def caption(text: str) -> str:
    return text if utf16_len(text) <= CAPTION_LIMIT else clip_escaped(sanitize_html(text)[1], CAPTION_LIMIT)


# ---------------------------------------------------------------------------------- notify


def _attachments(message: OutboxMessage, fallback_caption: str) -> list[FilePart]:
    return [
        FilePart(kind=f.kind, filename=f.filename, data=bytes(f.data),
                 caption=caption(esc(f.caption) if f.caption else f"📎 {esc(f.filename)}{fallback_caption}"))
        for f in message.files.all()
    ]


@renderer(OutboxMessage.Kind.NOTIFY)
def render_notify(message: OutboxMessage) -> Rendered:
    payload = message.payload or {}
    level = str(payload["level"]) if payload.get("level") in LEVEL_EMOJI else "info"
    fmt = str(payload.get("format") or "text")
    text = payload["text"] if isinstance(payload.get("text"), str) else ""
    process = None
    if payload.get("process_uuid"):
        process = (TrackedProcess.objects.select_related("parent")
                   .filter(uuid=payload["process_uuid"], account_id=message.account_id).first())
    process_line = title(process) if process is not None else ""
    meta = metadata_line(payload.get("metadata"))
    meta_line = f"<i>{meta}</i>" if meta else ""

    files = _attachments(message, f" · {title(process)}" if process is not None else "")
    body_html, plain = format_body(text, fmt)
    budget = TEXT_LIMIT - utf16_len(join_lines(LEVEL_EMOJI[level] + " ", process_line, meta_line)) - 2
    if utf16_len(body_html) > budget:
        note = "\n<i>… the full text is attached.</i>"
        body_html = clip_escaped(plain, budget - utf16_len(note)) + note
        extension = {"markdown": "md", "html": "html"}.get(fmt, "txt")
        files.insert(0, FilePart(kind="document", filename=f"message.{extension}", data=text.encode("utf-8"),
                                 caption="📄 full text"))
    if not text.strip() and files:
        body_html = "📎 file attached"
    rendered = join_lines(f"{LEVEL_EMOJI[level]} {body_html}", process_line, meta_line)
    return Rendered(
        text=guard(rendered),
        files=files,
        mergeable=level == "info" and not files and not message.edit_key,
    )


# ---------------------------------------------------------------------------------- process


def _header(process: TrackedProcess) -> str:
    return join_lines(tags_line(process), parent_line(process))


def _started(process: TrackedProcess, payload: dict[str, Any]) -> Rendered:
    meta = metadata_line(process.metadata)
    details = []
    if process.progress_total:
        details.append(f"{number(process.progress_total)} steps")
    if process.heartbeat_interval:
        details.append(f"heartbeat every {every(process.heartbeat_interval)}")
    return Rendered(text=guard(join_lines(
        f"🚀 {title(process)} started",
        _header(process),
        f"<i>{meta}</i>" if meta else "",
        "⏱ " + " · ".join(details) if details else "",
        control_line(process),
    )), buttons=control_buttons(process))


def _elapsed(process: TrackedProcess) -> float:
    end = process.ended_at or process.last_heartbeat_at
    return max(0.0, (end - process.started_at).total_seconds())


def _progress(process: TrackedProcess, payload: dict[str, Any]) -> Rendered:
    bar = esc(progress_text(process.progress_done, process.progress_total, _elapsed(process),
                            finished=process.is_finished))
    state = ""
    if process.is_finished:
        emoji, words = _finish_words(process)
        state = f"{emoji} {words} {duration(process.runtime_s)}"
    elif process.state == TrackedProcess.State.STALLED:
        state = "⏸️ no heartbeat"
    elif process.state == TrackedProcess.State.LOST:
        state = "🪦 lost (no heartbeat)"
    if not process.is_finished:
        state = join_lines(state, control_line(process))
    return Rendered(text=guard(join_lines(title(process), bar or "⏳ starting…", metrics_line(process.metrics, 300),
                                          state)),
                    buttons=control_buttons(process))


def _finish_words(process: TrackedProcess) -> tuple[str, str]:
    if process.stopped_from_chat:
        return "⏹️", "stopped from Telegram after"
    return FINISH_WORDS.get(process.state, ("🏁", "ended after"))


def _chart(process: TrackedProcess) -> FilePart | None:
    series = [p for p in process.metric_series if isinstance(p, dict) and isinstance(p.get("values"), dict)]
    if len(series) < 2:
        return None
    return FilePart(kind="photo", filename="metrics.png", caption=caption(f"📈 {title(process)}"),
                    draw=partial(metrics_over_time, series, title=clip(process.name, 60)))


def _finished(process: TrackedProcess, payload: dict[str, Any]) -> Rendered:
    emoji, words = _finish_words(process)
    facts = [f"⏱ {duration(process.runtime_s)}"]
    if process.peak_memory_mb is not None:
        facts.append(f"💾 peak {memory(process.peak_memory_mb)}")
    if process.exit_reason:
        facts.append(f"exit: {esc(clip(process.exit_reason, 64))}")
    error_line = f"<b>{clip_escaped(process.error, 600)}</b>" if process.error else ""
    text = join_lines(
        f"{emoji} {title(process)} {words} {duration(process.runtime_s)}",
        _header(process),
        " · ".join(facts),
        metrics_line(process.metrics),
        error_line,
        diagnosis_lines(process.diagnosis, stopped=process.state == TrackedProcess.State.CANCELLED),
    )
    files: list[FilePart] = []
    if process.traceback:
        block, truncated = traceback_block(process.traceback, TEXT_LIMIT - utf16_len(text) - 1)
        text = join_lines(text, block)
        if truncated:
            files.append(FilePart(kind="document", filename="traceback.txt",
                                  data=process.traceback.encode("utf-8"),
                                  caption=caption(f"🧾 full traceback · {title(process)}")))
    chart = _chart(process)
    if chart is not None:
        files.insert(0, chart)
    return Rendered(text=guard(text), files=files)


def _stalled(process: TrackedProcess, payload: dict[str, Any]) -> Rendered:
    silent = payload.get("silent_s")
    if not isinstance(silent, int | float):
        silent = ((process.stalled_at or process.last_heartbeat_at) - process.last_heartbeat_at).total_seconds()
    interval = payload.get("interval_s") or process.heartbeat_interval
    return Rendered(
        text=guard(join_lines(
            f"⏸️ {title(process)}: no heartbeat for {duration(silent)} (expected every {every(interval)}) — "
            "the process may have been killed (OOM, SIGKILL) or the machine is asleep.",
            _header(process),
            f"I'll tell you if it comes back; after {duration(settings.PROCESS_LOST_AFTER)} without a "
            "heartbeat it is marked lost. Dismiss it if you know it is gone.",
        )),
        buttons=[[{"text": "🗑 Dismiss", "callback_data": f"{PROCESS_DISMISS}:{process.uuid}"}]],
    )


def _lost(process: TrackedProcess, payload: dict[str, Any]) -> Rendered:
    silent = payload.get("silent_s")
    since = f" for {duration(silent)}" if isinstance(silent, int | float) else ""
    return Rendered(text=guard(join_lines(
        f"🪦 {title(process)}: no heartbeat{since}, so it is marked lost and no longer shown in /status.",
        _header(process),
        "If it is still running, its next heartbeat brings it back.",
    )))


def _recovered(process: TrackedProcess, payload: dict[str, Any]) -> Rendered:
    silent = payload.get("silent_s")
    after = f" after {duration(silent)} of silence" if isinstance(silent, int | float) else ""
    return Rendered(text=guard(join_lines(f"▶️ {title(process)} is back: heartbeats resumed{after}.",
                                          _header(process))))


# Events about more than one run, rendered from the whole row by modules built on this one
# (they register here: ``telegram_app.rendering.digest`` adds ``digest``).
MESSAGE_EVENTS: dict[str, Callable[[OutboxMessage], Rendered]] = {}

_EVENTS = {
    "started": _started,
    "progress": _progress,
    "finished": _finished,
    "stalled": _stalled,
    "lost": _lost,
    "recovered": _recovered,
}


@renderer(OutboxMessage.Kind.PROCESS)
def render_process(message: OutboxMessage) -> Rendered:
    payload = message.payload or {}
    whole = MESSAGE_EVENTS.get(payload.get("event", ""))
    if whole is not None:
        return whole(message)
    event = _EVENTS.get(payload.get("event", ""))
    process = None
    if event is not None and payload.get("uuid"):
        process = (TrackedProcess.objects.select_related("parent")
                   .filter(uuid=payload["uuid"], account_id=message.account_id).first())
    if event is None or process is None:
        return Rendered(text=f"⚠️ a tracked process ({esc(clip(str(payload.get('uuid')), 40))}) is no longer known.")
    return event(process, payload)


# ---------------------------------------------------------------------------------- /status


def format_process_tree(nodes: list[dict[str, Any]], depth: int = 0) -> str:
    """``notifications.services.process_tree`` as HTML lines for ``/status`` (children indented)."""
    lines: list[str] = []
    for node in nodes:
        parts = [f"{node['tag_emoji']} <b>{esc(clip(node['name'], 60))}</b>"]
        if node["tags"]:
            parts.append(" ".join(f"<code>{esc(clip(tag, 24))}</code>" for tag in node["tags"][:4]))
        progress = node.get("progress")
        if progress:
            parts.append(esc(progress_text(progress["done"], progress["total"], None)))
        parts.append("⏸️ stalled" if node["state"] == TrackedProcess.State.STALLED else "▶️ running")
        parts.append(duration(node["runtime_s"]))
        prefix = "    " * (depth - 1) + "  ↳ " if depth else ""
        lines.append(prefix + " · ".join(parts))
        if node["children"]:
            lines.append(format_process_tree(node["children"], depth + 1))
    return "\n".join(lines)
