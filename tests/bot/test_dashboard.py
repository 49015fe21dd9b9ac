"""``/dashboard``: the message's text, and the sweep that keeps it edited through the outbox."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import ApiKey
from core.models import OutboxMessage
from notifications import services
from notifications.models import TrackedProcess
from telegram_app import dashboards, sweeps
from telegram_app.models import Dashboard
from telegram_app.rendering import dashboard as view
from tg_rules.text import TEXT_LIMIT, utf16_len
from tg_sandbox import format_text

pytestmark = pytest.mark.django_db


@pytest.fixture
def key(account) -> ApiKey:
    return ApiKey.issue(account)[0]


def start(key: ApiKey, name: str, **kwargs) -> TrackedProcess:
    kwargs.setdefault("metadata", {"host": "gpu-box-1", "script": "train.py"})
    return services.start_process(key, uuid=str(uuid.uuid4()), name=name, **kwargs)[0]


def dashboard_rows(account) -> list[OutboxMessage]:
    return list(OutboxMessage.objects.filter(account=account, edit_key__startswith="dash:").order_by("id"))


def later(seconds: float):
    return timezone.now() + timedelta(seconds=seconds)


def test_it_lists_every_running_process_with_progress_eta_metric_machine_and_heartbeat(account, key):
    resnet = start(key, "resnet <big>", tags=["lr=0.1"], total=200)
    TrackedProcess.objects.filter(pk=resnet.pk).update(started_at=timezone.now() - timedelta(seconds=100))
    services.heartbeat(key, uuid=resnet.uuid, done=100, total=200, metrics={"loss": 0.25, "acc": 0.9}, step=100)
    start(key, "data prep", metadata={"host": "laptop"})
    finished = start(key, "old run")
    services.finish_process(key, uuid=finished.uuid, status="succeeded", runtime_s=65)

    dashboard = dashboards.open_dashboard(account)

    [row] = dashboard_rows(account)
    assert dashboard.state == Dashboard.State.LIVE and row.edit_key == dashboard.edit_key
    assert row.text == dashboard.text
    text = row.text
    assert "2 running" in text
    resnet.refresh_from_db()
    assert f"{resnet.tag_emoji} <b>resnet &lt;big&gt;</b> <code>lr=0.1</code>" in text
    assert "50%" in text and "100/200" in text and "ETA " in text
    assert "📊 acc 0.9 · loss 0.25" in text
    assert "🖥 gpu-box-1" in text and "🖥 laptop" in text and "💓 &lt;1m ago" in text
    assert "Recently ended" in text and "old run — finished in 1m 5s" in text
    assert dashboard.idle_since is None


def test_it_escapes_whatever_the_client_sent(account, key):
    run = start(key, "<script>x</script>", tags=["<i>", 7], metadata={"host": "<b>box</b>", "python": "3.11"})
    services.heartbeat(key, uuid=run.uuid, metrics={"<loss>": 1.5, "a&b": 2})
    text = dashboards.open_dashboard(account).text
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "<code>&lt;i&gt;</code>" in text and "🖥 &lt;b&gt;box&lt;/b&gt;" in text
    assert "&lt;loss&gt; 1.5" in text and "a&amp;b 2" in text
    assert "<b>box" not in text and "<i>\n" not in text and "<code><i>" not in text
    plain, _ = format_text(text, "HTML")  # raises like Telegram on bad markup
    assert "<script>x</script>" in plain and "🖥 <b>box</b>" in plain


def test_it_shows_the_last_logged_metrics_first(account, key):
    run = start(key, "sweep")
    services.heartbeat(key, uuid=run.uuid, metrics={"aaa": 1, "bbb": 2, "ccc": 3, "ddd": 4}, step=1)
    services.heartbeat(key, uuid=run.uuid, metrics={"zeta": 5}, step=2)
    assert "📊 zeta 5 · aaa 1 · bbb 2 +2" in dashboards.open_dashboard(account).text


def test_it_shows_a_stalled_process_and_how_long_it_has_been_silent(account, key):
    run = start(key, "killed run")
    TrackedProcess.objects.filter(pk=run.pk).update(state=TrackedProcess.State.STALLED,
                                                    last_heartbeat_at=timezone.now() - timedelta(minutes=7))
    text = dashboards.open_dashboard(account).text
    assert "0 running · 1 stalled" in text and "⏸️ no heartbeat for 7m" in text


def test_it_edits_the_message_only_when_due_and_changed(account, key, settings):
    settings.DASHBOARD_REFRESH = 10
    run = start(key, "training", total=100)
    dashboard = dashboards.open_dashboard(account)

    services.heartbeat(key, uuid=run.uuid, done=10, total=100)
    assert dashboards.refresh_dashboards(later(5)) == 0, "edited at most every DASHBOARD_REFRESH seconds"
    assert dashboards.refresh_dashboards(later(11)) == 1
    rows = dashboard_rows(account)
    assert [r.edit_key for r in rows] == [dashboard.edit_key] * 2, "the same message, edited"
    assert "10%" in rows[-1].text

    assert dashboards.refresh_dashboards(later(22)) == 0, "nothing changed: no edit"
    services.heartbeat(key, uuid=run.uuid, done=20, total=100, metrics={"loss": 0.5})
    assert dashboards.refresh_dashboards(later(25)) == 0, "changed, but looked at less than 10 s ago"
    assert dashboards.refresh_dashboards(later(33)) == 1
    assert "20%" in dashboard_rows(account)[-1].text and "loss 0.5" in dashboard_rows(account)[-1].text
    assert len(dashboard_rows(account)) == 3


def test_it_stops_editing_after_an_hour_with_nothing_running(account, key, settings):
    settings.DASHBOARD_REFRESH = 10
    settings.DASHBOARD_IDLE_AFTER = 3600
    run = start(key, "short run")
    dashboard = dashboards.open_dashboard(account)
    services.finish_process(key, uuid=run.uuid, status="failed", error="boom")

    assert dashboards.refresh_dashboards(later(11)) == 1
    dashboard.refresh_from_db()
    assert "Nothing is running" in dashboard.text and "short run — failed after" in dashboard.text
    assert dashboard.idle_since is not None
    assert dashboards.refresh_dashboards(later(1800)) == 0, "idle for half an hour: still live, nothing to edit"
    assert Dashboard.objects.get().state == Dashboard.State.LIVE

    assert dashboards.refresh_dashboards(later(11 + 3600)) == 1
    dashboard.refresh_from_db()
    final = dashboard_rows(account)[-1]
    assert dashboard.state == Dashboard.State.STOPPED and dashboard.stopped_at is not None
    assert final.edit_key == dashboard.edit_key
    assert "Stopped updating: nothing has run for 1h" in final.text and "/dashboard" in final.text
    count = len(dashboard_rows(account))
    start(key, "new run")
    assert dashboards.refresh_dashboards(later(5000)) == 0, "a stopped dashboard is not edited again"
    assert len(dashboard_rows(account)) == count


def test_it_keeps_a_dashboard_live_while_a_run_comes_and_goes(account, key, settings):
    settings.DASHBOARD_IDLE_AFTER = 3600
    dashboard = dashboards.open_dashboard(account)  # nothing runs yet: idle from now
    assert dashboard.idle_since is not None
    start(key, "late run")
    dashboards.refresh_dashboards(later(3000))
    dashboard.refresh_from_db()
    assert dashboard.idle_since is None, "something runs: no longer idle"
    dashboards.refresh_dashboards(later(3700))
    assert Dashboard.objects.get().state == Dashboard.State.LIVE


def test_it_replaces_the_old_dashboard_with_a_new_message(account, key):
    first = dashboards.open_dashboard(account)
    second = dashboards.open_dashboard(account)
    assert first.edit_key != second.edit_key
    assert Dashboard.objects.filter(account=account).count() == 1
    rows = dashboard_rows(account)
    assert [r.edit_key for r in rows] == [first.edit_key, first.edit_key, second.edit_key]
    assert "Replaced by a newer dashboard" in rows[1].text
    assert Dashboard.objects.get().edit_key == second.edit_key


def test_it_stops_on_request(account, key):
    assert dashboards.stop_dashboard(account) is False, "no dashboard yet"
    dashboard = dashboards.open_dashboard(account)
    assert dashboards.stop_dashboard(account) is True
    final = dashboard_rows(account)[-1]
    assert final.edit_key == dashboard.edit_key and "Stopped (/dashboard stop)" in final.text
    assert Dashboard.objects.get().state == Dashboard.State.STOPPED
    assert dashboards.stop_dashboard(account) is False
    assert dashboards.refresh_dashboards(later(100)) == 0
    reopened = dashboards.open_dashboard(account)
    assert reopened.state == Dashboard.State.LIVE and reopened.edit_key != dashboard.edit_key
    assert "Replaced" not in dashboard_rows(account)[-2].text, "a stopped dashboard is not edited again"


def test_it_shows_only_the_accounts_own_processes(account, key, make_account):
    other_key = ApiKey.issue(make_account())[0]
    start(other_key, "someone else's run")
    start(key, "my run")
    text = dashboards.open_dashboard(account).text
    assert "my run" in text and "someone else" not in text


def test_it_stays_within_telegrams_text_limit_with_many_processes(account, key):
    for index in range(120):
        start(key, f"run {index} " + "x" * 150, tags=["t" * 40] * 6,
              metadata={"host": "h" * 100})
    text = dashboards.open_dashboard(account).text
    assert utf16_len(text) <= TEXT_LIMIT
    format_text(text, "HTML")  # well-formed: Telegram would take it
    assert "120 running" in text and "more (/status lists them all)" in text


def test_it_looks_at_every_dashboard_in_turn_when_a_sweep_cannot_take_them_all(account, key, make_account,
                                                                               monkeypatch):
    monkeypatch.setattr(dashboards, "SWEEP_BATCH", 1)
    other = make_account()
    first, second = dashboards.open_dashboard(account), dashboards.open_dashboard(other)
    assert dashboards.refresh_dashboards(later(11)) == 0  # the first (oldest): nothing changed, checked only
    assert Dashboard.objects.get(pk=first.pk).checked_at > Dashboard.objects.get(pk=second.pk).checked_at
    start(ApiKey.issue(other)[0], "other run")
    assert dashboards.refresh_dashboards(later(12)) == 1, "the second dashboard gets its turn"
    assert "other run" in Dashboard.objects.get(pk=second.pk).text


def test_it_stops_a_dashboard_whose_chat_blocked_the_bot(account, key):
    dashboard = dashboards.open_dashboard(account)
    account.mark_blocked()
    start(key, "unseen run")
    assert dashboards.refresh_dashboards(later(11)) == 0
    dashboard.refresh_from_db()
    assert dashboard.state == Dashboard.State.STOPPED and len(dashboard_rows(account)) == 1


def test_it_formats_heartbeat_ages_in_whole_minutes():
    assert [view.age(s) for s in (0, 59, 60, 61, 179, 3600 + 65)] == ["<1m", "<1m", "1m", "1m", "2m", "1h 1m"]


def test_it_runs_as_a_sweep():
    assert ("live dashboards", dashboards.refresh_dashboards) in sweeps.SWEEPS
