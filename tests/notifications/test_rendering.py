"""notify and process rows as Telegram HTML: escaping, formats, progress, crashes, charts."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from core.models import OutboxMessage
from core.outbox import FileToSend
from notifications import services
from notifications.models import TrackedProcess
from telegram_app.rendering import _RENDERERS, draw_files
from telegram_app.rendering.notify import (
    duration,
    format_process_tree,
    markdown_to_html,
    progress_text,
    render_notify,
    render_process,
    sanitize_html,
)
from tests.notifications.conftest import new_uuid
from tg_rules.text import TEXT_LIMIT, utf16_len

pytestmark = pytest.mark.django_db

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


@pytest.fixture
def key(issued_key):
    return issued_key[0]


def notify(key, text, **kwargs):
    return render_notify(services.notify(key, text, **kwargs))


def rows(process, event):
    return list(OutboxMessage.objects.filter(kind="process", payload__uuid=str(process.uuid),
                                             payload__event=event).order_by("id"))


def start(key, name="train.py", **fields):
    return services.start_process(key, uuid=new_uuid(), name=name, **fields)[0]


def test_it_registers_both_kinds():
    assert _RENDERERS["notify"] is render_notify and _RENDERERS["process"] is render_process


def test_it_escapes_plain_text(key):
    rendered = notify(key, "<script>alert(1)</script> & <b>not bold</b>")
    assert rendered.text.startswith("ℹ️ &lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;not bold")
    assert "<script>" not in rendered.text and "<b>" not in rendered.text
    assert rendered.parse_mode == "HTML"


@pytest.mark.parametrize(("level", "emoji"), [("info", "ℹ️"), ("success", "✅"), ("warning", "⚠️"),
                                              ("error", "❌")])
def test_it_marks_the_level(key, level, emoji):
    assert notify(key, "x", level=level).text.startswith(f"{emoji} x")


def test_it_merges_only_plain_info_notices(key):
    assert notify(key, "x").mergeable
    assert not notify(key, "x", level="warning").mergeable
    assert not notify(key, "x", file=FileToSend("document", "a.log", b"log")).mergeable


def test_it_keeps_telegram_tags_and_escapes_the_rest_in_html(key):
    rendered = notify(key, '<b>bold</b> <script>x()</script> <a href="https://e.com/?a=1&b=2">ok</a> '
                           '<a href="javascript:alert(1)">bad</a> <i>open', fmt="html")
    text = rendered.text
    assert "<b>bold</b>" in text and "&lt;script&gt;x()&lt;/script&gt;" in text
    assert '<a href="https://e.com/?a=1&amp;b=2">ok</a>' in text
    assert '&lt;a href="javascript:alert(1)"&gt;bad' in text
    assert "<i>open</i>" in text  # closed for Telegram


def test_it_repairs_nesting_and_keeps_code_verbatim():
    html, plain = sanitize_html("<b>a <i>b</b> c</i> <pre><code class='language-py'>x <b>y</b></code></pre><br>z")
    assert html.startswith("<b>a <i>b</i></b> c&lt;/i&gt;")
    assert '<pre><code class="language-py">x &lt;b&gt;y&lt;/b&gt;</code></pre>\nz' in html
    assert plain.endswith("\nz")


def test_it_converts_a_markdown_subset_to_safe_html():
    html = markdown_to_html("# Result\n**loss** is *low* & snake_case_name stays, `x<y>` "
                            "[docs](https://e.com/a_b) ~~old~~\n```python\nprint('<hi>')\n```")
    assert html.startswith("<b>Result</b>\n<b>loss</b> is <i>low</i> &amp; snake_case_name stays")
    assert "<code>x&lt;y&gt;</code>" in html
    assert '<a href="https://e.com/a_b">docs</a>' in html and "<s>old</s>" in html
    assert "<pre><code class=\"language-python\">print('&lt;hi&gt;')</code></pre>" in html
    assert "<script" not in markdown_to_html("<script>alert(1)</script>")


def test_it_shows_metadata_compactly(key):
    text = notify(key, "x", metadata={"host": "gpu<1>", "script": "train.py", "python": "3.11.7",
                                      "git": {"commit": "abcdef123456", "dirty": True}, "env": "venv",
                                      "packages": {"torch": "2.3"}, "dropped_updates": 2}).text
    assert "<i>gpu&lt;1&gt; · train.py · git abcdef1* · Python 3.11.7 · env venv · " \
           "⚠️ 2 earlier updates dropped by the client</i>" in text


def test_it_attaches_a_text_too_long_for_one_message(key):
    long_text = "line & more\n" * 800
    rendered = notify(key, long_text, fmt="markdown")
    assert utf16_len(rendered.text) <= TEXT_LIMIT
    assert "the full text is attached" in rendered.text
    [document] = rendered.files
    assert (document.kind, document.filename, document.data) == ("document", "message.md", long_text.encode())
    assert not rendered.mergeable


def test_it_sends_uploaded_files_with_a_caption(key):
    process = start(key)
    rendered = notify(key, "curve", process_uuid=process.uuid,
                      file=services.attachment_for("loss.png", PNG))
    [photo] = rendered.files
    assert (photo.kind, photo.filename, photo.data) == ("photo", "loss.png", PNG)
    assert photo.caption.startswith("📎 loss.png") and process.tag_emoji in photo.caption
    assert f"{process.tag_emoji} <b>train.py</b>" in rendered.text


def test_it_renders_a_start_with_tags_parent_and_metadata(key):
    parent = start(key, "sweep <all>")
    child = start(key, "fold", tags=["lr=0.1", "<x>"], parent_uuid=parent.uuid, metadata={"host": "box"},
                  total=100)
    text = render_process(rows(child, "started")[0]).text
    assert text.startswith(f"🚀 {child.tag_emoji} <b>fold</b> started")
    assert "<code>lr=0.1</code> <code>&lt;x&gt;</code>" in text
    assert f"↳ child of {parent.tag_emoji} <b>sweep &lt;all&gt;</b>" in text
    assert "<i>box</i>" in text and "100 steps" in text and "heartbeat every 60s" in text


def test_it_renders_progress_as_a_bar_with_rate_and_eta(key):
    process = start(key, total=1000)
    TrackedProcess.objects.filter(pk=process.pk).update(started_at=timezone.now() - timedelta(seconds=42.3))
    services.heartbeat(key, uuid=process.uuid, done=520)
    text = render_process(rows(process, "progress")[-1]).text
    assert "▓▓▓▓▓░░░░░ 52% · 520/1,000 · 12.3 it/s · ETA 39s" in text


def test_it_shows_the_final_state_in_the_progress_message(key):
    process = start(key, total=10)
    services.heartbeat(key, uuid=process.uuid, done=10)
    services.finish_process(key, uuid=process.uuid, status="succeeded", runtime_s=75)
    final = rows(process, "progress")[-1]
    assert final.edit_key == process.progress_edit_key
    text = render_process(final).text
    assert "▓▓▓▓▓▓▓▓▓▓ 100% · 10/10" in text and "✅ finished in 1m 15s" in text and "ETA" not in text


def test_it_shows_the_last_metrics_in_the_progress_message(key):
    process = start(key, total=10)
    services.heartbeat(key, uuid=process.uuid, done=3, metrics={"loss": 0.25, "val_acc": 0.875}, step=3)
    text = render_process(rows(process, "progress")[-1]).text
    assert "30% · 3/10" in text and "📊 loss 0.25 · val_acc 0.875" in text


def test_it_formats_progress_pieces():
    assert progress_text(5, None, 10.0) == "5 done · 2.0 s/it"
    assert progress_text(0, 100, 0) == "░░░░░░░░░░ 0% · 0/100"
    assert duration(59) == "59s" and duration(3600) == "1h" and duration(90061) == "1d 1h"


def test_it_renders_a_success_with_runtime_memory_metrics_and_a_chart(key):
    process = start(key)
    for step, loss in enumerate([0.9, 0.5, 0.25]):
        services.heartbeat(key, uuid=process.uuid, metrics={"loss": loss}, step=step)
    services.finish_process(key, uuid=process.uuid, status="succeeded", runtime_s=3725, peak_memory_mb=2048,
                            metrics={"acc": 0.9512})
    rendered = render_process(rows(process, "finished")[0])
    assert rendered.text.startswith(f"✅ {process.tag_emoji} <b>train.py</b> finished in 1h 2m")
    assert "💾 peak 2.0 GB" in rendered.text and "📊 acc 0.9512 · loss 0.25" in rendered.text
    [chart] = draw_files(rendered.files)
    assert chart.kind == "photo" and chart.filename == "metrics.png" and chart.data.startswith(b"\x89PNG")
    assert utf16_len(chart.caption) <= 1024


def test_it_sends_no_chart_for_a_single_point(key):
    process = start(key)
    services.heartbeat(key, uuid=process.uuid, metrics={"loss": 0.3}, step=1)
    services.finish_process(key, uuid=process.uuid, status="succeeded")
    assert render_process(rows(process, "finished")[0]).files == []


def test_it_renders_a_short_crash_whole(key):
    process = start(key)
    trace = 'Traceback (most recent call last):\n  File "t.py", line 1\nValueError: x < y & z'
    services.finish_process(key, uuid=process.uuid, status="failed", error="ValueError: x < y & z",
                            traceback=trace, runtime_s=5)
    rendered = render_process(rows(process, "finished")[0])
    assert rendered.text.startswith(f"❌ {process.tag_emoji} <b>train.py</b> failed after 5s")
    assert "<b>ValueError: x &lt; y &amp; z</b>" in rendered.text
    assert '<pre>Traceback (most recent call last):\n  File "t.py", line 1\nValueError: x &lt; y &amp; z</pre>' \
        in rendered.text
    assert rendered.files == []


def test_it_truncates_a_long_traceback_and_attaches_it_whole(key):
    process = start(key)
    lines = [f'  File "/srv/<app>/module_{i}.py", line {i}, in f{i}\n    call_{i}(x & y)' for i in range(200)]
    trace = "Traceback (most recent call last):\n" + "\n".join(lines) + "\nRuntimeError: <boom>"
    services.finish_process(key, uuid=process.uuid, status="failed", error="RuntimeError: <boom>",
                            traceback=trace)
    rendered = render_process(rows(process, "finished")[0])
    assert utf16_len(rendered.text) <= TEXT_LIMIT
    block = rendered.text[rendered.text.index("<pre>"):]
    assert block.endswith("RuntimeError: &lt;boom&gt;</pre>")
    assert "earlier lines" in block and "module_199.py" in block and "module_150.py" not in block
    assert len(block.splitlines()) <= 26
    [document] = rendered.files
    assert (document.kind, document.filename, document.data) == ("document", "traceback.txt", trace.encode())


def test_it_keeps_a_crash_with_huge_lines_within_the_limit(key):
    process = start(key, "x" * 200)
    trace = "\n".join(["&" * 5000] * 30)
    services.finish_process(key, uuid=process.uuid, status="failed", error="<" * 5000, traceback=trace,
                            metrics={f"m{i}": i * 1.5 for i in range(100)})
    rendered = render_process(rows(process, "finished")[0])
    assert utf16_len(rendered.text) <= TEXT_LIMIT
    assert rendered.files[-1].filename == "traceback.txt"


def test_it_renders_a_cancellation(key):
    process = start(key)
    services.finish_process(key, uuid=process.uuid, status="cancelled", exit_reason="KeyboardInterrupt",
                            runtime_s=30)
    text = render_process(rows(process, "finished")[0]).text
    assert text.startswith(f"⏹️ {process.tag_emoji} <b>train.py</b> cancelled after 30s")
    assert "exit: KeyboardInterrupt" in text


def test_it_renders_stalled_and_recovered(key, api):
    process = start(key)
    TrackedProcess.objects.filter(pk=process.pk).update(last_heartbeat_at=timezone.now() - timedelta(minutes=3))
    services.mark_stalled_processes(grace=60)
    text = render_process(rows(process, "stalled")[0]).text
    assert text.startswith(f"⏸️ {process.tag_emoji} <b>train.py</b>: no heartbeat for 3m (expected every 60s)")
    assert "killed (OOM, SIGKILL) or the machine is asleep" in text
    services.heartbeat(key, uuid=process.uuid)
    text = render_process(rows(process, "recovered")[0]).text
    assert "▶️" in text and "heartbeats resumed after 3m" in text


def test_it_survives_a_row_whose_process_is_gone(key):
    process = start(key)
    row = rows(process, "started")[0]
    process.delete()
    assert "no longer known" in render_process(row).text


def test_it_formats_the_process_tree_for_status(key):
    parent = start(key, "sweep", tags=["grid"])
    child = start(key, "fold <1>", parent_uuid=parent.uuid, total=4)
    services.heartbeat(key, uuid=child.uuid, done=1)
    text = format_process_tree(services.process_tree(key.account))
    first, second = text.splitlines()
    assert first.startswith(f"{parent.tag_emoji} <b>sweep</b> · <code>grid</code> · ▶️ running")
    assert second.startswith(f"  ↳ {child.tag_emoji} <b>fold &lt;1&gt;</b> · ▓▓░░░░░░░░ 25% · 1/4")
