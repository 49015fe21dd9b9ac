"""The PRD's success metrics: connects driven through the real worker WebSocket, jobs and notify calls
through their services and API; the admin page and ``manage.py statsreport`` show the same figures."""

from __future__ import annotations

import io
import re
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from accounts.models import Account, ApiKey
from ops.metrics import report
from ops.models import Enrollment
from tests.ops.conftest import connect, finished_job, issued

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def scene(make_account, client):
    """Four accounts: three connected a worker (one of them after an expired token), one only notifies."""
    ann, bob, cat, dan = (make_account() for _ in range(4))
    # Ann: /connect, ran the command 12 s later → ready.
    _, raw = issued(ann, 12)
    assert connect(raw)["success"] is True
    # Bob: a token that expired unused, then a fresh one used 20 s after issue.
    issued(bob, 3600)
    _, raw = issued(bob, 20)
    assert connect(raw)["success"] is True
    # Cat: pressed /connect twice; the first token was replaced, the second used after 40 s.
    issued(cat, 100)
    _, raw = issued(cat, 40)
    assert connect(raw)["success"] is True
    # Someone tries an unknown token: refused, no row.
    assert connect("sbt_not-a-real-token")["success"] is False
    # Dan uses only the notify API (active through his key, no worker).
    Account.objects.filter(pk=dan.pk).update(last_active_at=timezone.now() - timedelta(days=30))
    _, key = ApiKey.issue(dan)
    response = client.post("/api/notify", {"text": "epoch 3 done"}, content_type="application/json",
                           HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 202, response.content
    # Jobs: 24 h → 6 succeeded, 1 failed (file_not_found), 1 lost, 1 cancelled;
    # 3 days ago → 2 more failed (file_not_found, bad_target).
    for _ in range(6):
        finished_job(ann, "succeeded")
    finished_job(bob, "failed", "file_not_found")
    finished_job(cat, "lost")
    finished_job(cat, "cancelled")
    finished_job(ann, "failed", "file_not_found", days_ago=3)
    finished_job(bob, "failed", "bad_target", days_ago=3)
    return {"accounts": (ann, bob, cat, dan)}


def figures(window) -> dict[str, object]:
    return {f.key: f.value for f in window.figures}


def test_it_records_the_first_ready_of_each_token(scene):
    rows = list(Enrollment.objects.order_by("token_issued_at"))
    assert len(rows) == 3
    assert all(row.token_id is not None and row.token_used_at is not None for row in rows)
    # Issued 12, 20 and 40 s before the connect (plus however long the connect itself took under load).
    for seconds, issued_before in zip(sorted(row.seconds_to_ready for row in rows), [12, 20, 40], strict=True):
        assert issued_before <= seconds < issued_before + 10


def test_it_measures_the_four_metrics_per_window(scene):
    day, week = report().windows
    got = figures(day)
    # 3 ready of 4 attempts (Bob's expired token; Cat's replaced one is not an attempt).
    assert got["connect_success"] == pytest.approx(3 / 4)
    assert day.connect_outcomes == {"ready": 3, "used_not_ready": 0, "expired": 1, "superseded": 1, "pending": 0}
    assert 20 <= got["time_to_ready"] < 30  # the median: Bob's 20 s, plus the connect's own time
    assert got["job_success"] == pytest.approx(6 / 8)
    assert got["adoption"] == pytest.approx(3 / 4)
    assert day.error_codes == [("file_not_found", 1), ("lost", 1)]
    assert figures(week)["job_success"] == pytest.approx(6 / 10)
    assert week.error_codes == [("file_not_found", 2), ("bad_target", 1), ("lost", 1)]
    assert [(r.action, r.succeeded, r.failed, r.lost, r.cancelled) for r in day.jobs_by_action] == [
        ("train", 6, 1, 1, 1)]
    verdicts = {f.key: f.met for f in day.figures}
    assert verdicts == {"connect_success": False, "time_to_ready": True, "job_success": False, "adoption": True}


def test_it_shows_the_figures_on_the_admin_page(scene, staff_client):
    index = staff_client.get(reverse("admin:index")).content.decode()
    assert reverse("ops-metrics") in index
    page = staff_client.get(reverse("ops-metrics"))
    assert page.status_code == 200
    body = page.content.decode()
    day = body.split("<h2>last 7 days</h2>")[0]
    assert re.search(r'data-metric="connect_success">\s*<td>[^<]+</td>\s*<td class="value">75.0 %', day)
    assert re.search(r'data-metric="job_success">\s*<td>[^<]+</td>\s*<td class="value">75.0 %', day)
    assert re.search(r'data-metric="adoption">\s*<td>[^<]+</td>\s*<td class="value">75.0 %', day)
    assert re.search(r'data-code="file_not_found"><td>file_not_found</td><td class="count">2</td>', body)
    assert '<tr data-action="train"><td>train</td><td class="rate">75.0 %</td><td>6</td><td>1</td><td>1</td><td>1</td>' in day


def test_it_refuses_the_page_to_anyone_but_staff(client, db):
    response = client.get(reverse("ops-metrics"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_it_prints_the_same_figures_from_statsreport(scene):
    out = io.StringIO()
    call_command("statsreport", stdout=out)
    text = out.getvalue()
    day, week = text.split("== last 7 days")
    assert re.search(r"Worker connection success rate\s+75.0 %\s+target > 95 %\s+MISSED", day)
    assert re.search(r"Job success rate\s+75.0 %\s+target > 90 %\s+MISSED", day)
    assert re.search(r"Active users with a worker\s+75.0 %\s+target > 30 %\s+met", day)
    assert re.search(r"Time from /connect to worker ready \(median\)\s+2\d.\d s\s+target < 30 s\s+met", day)
    assert re.search(r"Job success rate\s+60.0 %", week)
    assert re.search(r"2\s+file_not_found", week)
    assert re.search(r"train\s+75.0 % succeeded\s+\(6 succeeded, 1 failed, 1 lost, 1 cancelled\)", day)


def test_it_says_no_data_on_an_empty_database(db):
    out = io.StringIO()
    call_command("statsreport", stdout=out)
    assert out.getvalue().count("no data") == 8
