"""An operator's view of a real session: a worker connected with the printed command, jobs run
through the chat, a notification sent with the key; the admin page's figures and /metrics follow."""

from __future__ import annotations

import json
import re
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from jobs.models import Job
from ops.models import Enrollment


def text_of(message) -> str:
    return message.get("text") or message.get("caption") or ""


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:  # from loopback: allowed
        body = response.read().decode()
    values: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "process"))
            values[(sample.name, labels)] = values.get((sample.name, labels), 0.0) + sample.value
    return values


def test_the_admin_page_and_metrics_follow_a_real_session(running_bot, user, home, connected_worker, staff_client):
    # The worker that the printed command connected was enrolled with its token.
    enrollment = running_bot.call(lambda: Enrollment.objects.select_related("token").get())
    assert enrollment.token is not None and 0 <= enrollment.seconds_to_ready < 120

    # Two jobs through the chat: one lists the (no) models, one is refused a path.
    user.send("/models")
    user.wait_for_message("No models on your machine yet", timeout=30)
    user.send("/train")
    user.wait_for_message("Where is the data?")
    user.tap([b["text"] for row in user.last_bot_message()["reply_markup"]["inline_keyboard"] for b in row][0])
    user.send("/etc/passwd")
    user.wait_for_message(predicate=lambda m: "failed" in text_of(m), timeout=30)

    # A notification with the key /start showed (the API's counter is this process's: compare).
    before = scrape(running_bot.web_url)
    key = next(word for m in user.bot_messages() for word in text_of(m).split() if word.startswith("exp_"))
    request = urllib.request.Request(
        f"{running_bot.web_url}/api/notify", data=json.dumps({"text": "epoch 9 done"}).encode(), method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 202
    user.wait_for_message("epoch 9 done", timeout=30)

    states = running_bot.call(lambda: sorted(Job.objects.values_list("action", "state", "error_code")))
    assert states == [("describe", "failed", "path_not_allowed"), ("list_models", "succeeded", "")]

    page = staff_client.get("/admin/ops/metrics/").content.decode()
    day = page.split("<h2>last 7 days</h2>")[0]
    for metric, value in (("connect_success", "100.0 %"), ("job_success", "50.0 %"), ("adoption", "100.0 %")):
        assert re.search(rf'data-metric="{metric}">\s*<td>[^<]+</td>\s*<td class="value">{re.escape(value)}', day), metric
    assert re.search(r'data-metric="time_to_ready">\s*<td>[^<]+</td>\s*<td class="value">\d+\.\d s', day)
    assert 'data-code="path_not_allowed"><td>path_not_allowed</td><td class="count">1</td>' in day

    metrics = scrape(running_bot.web_url)
    assert metrics[("statsbot_workers_connected", ())] == 1
    assert metrics[("statsbot_connect_attempts_total", (("result", "ready"),))] == 1
    assert metrics[("statsbot_jobs_finished_total", (("action", "list_models"), ("outcome", "succeeded")))] == 1
    assert metrics[("statsbot_jobs_finished_total", (("action", "describe"), ("outcome", "failed")))] == 1
    notify_202 = ("statsbot_api_requests_total", (("endpoint", "notify"), ("status", "202")))
    assert metrics[notify_202] - before.get(notify_202, 0) == 1
    assert metrics[("statsbot_outbox_sent_total", (("kind", "notify"),))] == 1
    assert metrics[("statsbot_outbox_sent_total", (("kind", "worker"),))] == 1  # "Local Worker Connected!"
