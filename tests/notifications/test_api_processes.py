"""Tracked processes over the API: start, heartbeats with progress coalescing, finish."""

from __future__ import annotations

import uuid

import pytest

from core.models import OutboxMessage
from notifications import services
from notifications.models import TrackedProcess
from notifications.services import progress_step
from tests.notifications.conftest import new_uuid, start_body

pytestmark = pytest.mark.django_db


def process_rows(**filters):
    return list(OutboxMessage.objects.filter(kind="process", **filters).order_by("id"))


def events():
    return [m.payload["event"] for m in process_rows()]


def test_it_starts_a_process_and_announces_it(api, account):
    body = start_body(total=1000, metadata={"host": "gpu-box"}, heartbeat_interval=30.5)
    response = api.post("/api/processes/start", body)
    assert response.status_code == 201
    assert response.json() == {"uuid": body["uuid"], "state": "running"}
    process = TrackedProcess.objects.get()
    assert (process.account, process.name, process.tags) == (account, "train.py", ["lr=0.1"])
    assert (process.heartbeat_interval, process.progress_total, process.metadata) == (31, 1000, {"host": "gpu-box"})
    [row] = process_rows()
    assert row.payload == {"uuid": body["uuid"], "event": "started"} and row.edit_key == process.control_edit_key


def test_it_answers_a_repeated_start_with_200_and_no_second_row(api):
    body = start_body()
    assert api.post("/api/processes/start", body).status_code == 201
    again = api.post("/api/processes/start", body)
    assert again.status_code == 200 and again.json()["state"] == "running"
    assert TrackedProcess.objects.count() == 1 and events() == ["started"]


def test_it_refuses_a_uuid_of_another_account(api, make_account):
    from accounts.models import ApiKey
    from tests.notifications.conftest import ApiClient

    body = start_body()
    api.post("/api/processes/start", body)
    other = ApiClient(ApiKey.issue(make_account())[1])
    response = other.post("/api/processes/start", body)
    assert response.status_code == 409
    assert other.post("/api/heartbeat", {"uuid": body["uuid"]}).status_code == 404


def test_it_links_a_child_to_its_parent_of_the_same_account(api):
    parent = start_body(name="sweep")
    api.post("/api/processes/start", parent)
    child = start_body(name="fold 1", parent_uuid=parent["uuid"])
    api.post("/api/processes/start", child)
    orphan = start_body(name="lost", parent_uuid=new_uuid())
    assert api.post("/api/processes/start", orphan).status_code == 201
    assert TrackedProcess.objects.get(uuid=child["uuid"]).parent.name == "sweep"
    assert TrackedProcess.objects.get(uuid=orphan["uuid"]).parent is None


@pytest.mark.parametrize(("body", "message"), [
    ({"name": "x"}, "'uuid' is required"),
    ({"uuid": "nope", "name": "x"}, "'uuid' must be a UUID string"),
    ({"uuid": str(uuid.uuid4())}, "'name' is required"),
    ({"uuid": str(uuid.uuid4()), "name": "x", "tags": "a,b"}, "'tags' must be a list of strings"),
    ({"uuid": str(uuid.uuid4()), "name": "x", "heartbeat_interval": -1}, "'heartbeat_interval' must be at least 0"),
    ({"uuid": str(uuid.uuid4()), "name": "x", "heartbeat_interval": "60"}, "'heartbeat_interval' must be a number"),
    ({"uuid": str(uuid.uuid4()), "name": "x", "total": 1.5}, "'total' must be a whole number"),
    ({"uuid": str(uuid.uuid4()), "name": "x", "total": True}, "'total' must be a whole number"),
])
def test_it_refuses_bad_start_input(api, body, message):
    response = api.post("/api/processes/start", body)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(message)
    assert not TrackedProcess.objects.exists()


def test_it_records_heartbeats_with_metrics_as_a_series(api):
    body = start_body()
    api.post("/api/processes/start", body)
    for step, loss in enumerate([0.9, 0.5, 0.3]):
        response = api.post("/api/heartbeat", {"uuid": body["uuid"], "metrics": {"loss": loss, "nan": None},
                                               "step": step})
        assert response.status_code == 200 and response.json() == {"state": "running", "control": "run", "actions": []}
    process = TrackedProcess.objects.get()
    assert process.metrics == {"loss": 0.3}
    assert [p["step"] for p in process.metric_series] == [0, 1, 2]
    assert events() == ["started"]  # no progress, nothing to show


def test_it_refuses_heartbeats_for_unknown_or_finished_processes(api):
    assert api.post("/api/heartbeat", {"uuid": new_uuid()}).json()["error"]["code"] == "unknown_process"
    body = start_body()
    api.post("/api/processes/start", body)
    api.post("/api/processes/finish", {"uuid": body["uuid"], "status": "succeeded"})
    response = api.post("/api/heartbeat", {"uuid": body["uuid"]})
    assert response.status_code == 409
    assert "finished" in response.json()["error"]["message"]


@pytest.mark.parametrize(("body", "message"), [
    ({"progress": 5}, "'progress' must be an object"),
    ({"progress": {"total": 5}}, "'progress.done' is required"),
    ({"progress": {"done": -1}}, "'progress.done' must be at least 0"),
    ({"metrics": {"loss": "low"}}, "'metrics.loss' must be a number"),
    ({"metrics": [1]}, "'metrics' must be an object"),
    ({"step": "one"}, "'step' must be a number"),
])
def test_it_refuses_bad_heartbeats(api, body, message):
    process = start_body()
    api.post("/api/processes/start", process)
    response = api.post("/api/heartbeat", {"uuid": process["uuid"], **body})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(message)


def test_it_queues_a_progress_edit_only_when_the_shown_percentage_changes(api, issued_key):
    body = start_body(total=1000)
    api.post("/api/processes/start", body)
    api.post("/api/heartbeat", {"uuid": body["uuid"], "progress": {"done": 0, "total": 1000}})
    for done in range(2, 1001, 2):  # 500 more heartbeats, straight to the service (past the rate limit)
        services.heartbeat(issued_key[0], uuid=body["uuid"], done=done, total=1000)
    progress = process_rows(payload__event="progress")
    assert len(progress) == 101  # 0% … 100%, one per whole percent
    assert {m.edit_key for m in progress} == {TrackedProcess.objects.get().progress_edit_key}
    assert progress[0].payload == {"uuid": body["uuid"], "event": "progress"}


def test_it_coalesces_progress_without_a_total_to_two_significant_digits(api, issued_key):
    body = start_body()
    api.post("/api/processes/start", body)
    for done in range(0, 5000, 7):
        services.heartbeat(issued_key[0], uuid=body["uuid"], done=done)
    shown = {progress_step(done, None) for done in range(0, 5000, 7)}
    assert len(process_rows(payload__event="progress")) == len(shown) < 200


def test_it_steps_progress_the_way_it_is_shown():
    assert progress_step(None, 10) is None
    assert progress_step(519, 1000) == progress_step(510, 1000) == ("percent", 51)
    assert progress_step(2000, 1000) == ("percent", 100)
    assert progress_step(42, None) == ("count", 42)
    assert progress_step(1234, 0) == progress_step(1299, None) == ("count", 1200)


def test_it_finishes_a_process_and_edits_its_progress_message_once_more(api):
    body = start_body(total=10)
    api.post("/api/processes/start", body)
    api.post("/api/heartbeat", {"uuid": body["uuid"], "progress": {"done": 10, "total": 10}})
    response = api.post("/api/processes/finish", {"uuid": body["uuid"], "status": "succeeded", "runtime_s": 12.5,
                                                  "peak_memory_mb": 512, "metrics": {"acc": 0.9}})
    assert response.status_code == 200 and response.json() == {"state": "succeeded"}
    process = TrackedProcess.objects.get()
    assert (process.runtime_s, process.peak_memory_mb, process.metrics) == (12.5, 512, {"acc": 0.9})
    rows = process_rows()
    assert [(m.payload["event"], m.edit_key) for m in rows] == [
        ("started", process.control_edit_key), ("progress", process.progress_edit_key), ("progress", process.progress_edit_key),
        ("finished", ""),
    ]


def test_it_finishes_a_process_without_progress_with_one_row(api):
    body = start_body()
    api.post("/api/processes/start", body)
    response = api.post("/api/processes/finish", {
        "uuid": body["uuid"], "status": "failed", "error": "ValueError: bad", "traceback": "Traceback…",
        "exit_reason": None})
    assert response.json() == {"state": "failed"}
    assert events() == ["started", "finished"]
    process = TrackedProcess.objects.get()
    assert (process.error, process.traceback, process.exit_reason) == ("ValueError: bad", "Traceback…", "")


def test_it_treats_a_repeated_finish_as_done_and_a_different_one_as_a_conflict(api):
    body = start_body()
    api.post("/api/processes/start", body)
    finish = {"uuid": body["uuid"], "status": "cancelled", "exit_reason": "KeyboardInterrupt"}
    assert api.post("/api/processes/finish", finish).status_code == 200
    assert api.post("/api/processes/finish", finish).status_code == 200
    assert events() == ["started", "finished"]
    response = api.post("/api/processes/finish", {**finish, "status": "succeeded"})
    assert response.status_code == 409


def test_it_refuses_bad_finish_input(api):
    body = start_body()
    api.post("/api/processes/start", body)
    response = api.post("/api/processes/finish", {"uuid": body["uuid"], "status": "done"})
    assert response.json()["error"]["message"] == "'status' must be one of succeeded, failed, cancelled"
    response = api.post("/api/processes/finish", {"uuid": body["uuid"], "status": "failed", "runtime_s": "1s"})
    assert response.json()["error"]["message"] == "'runtime_s' must be a number"
    assert api.post("/api/processes/finish", {"uuid": new_uuid(), "status": "failed"}).status_code == 404


def test_it_replays_idempotent_process_calls(api):
    body = start_body(total=4)
    start = api.post("/api/processes/start", body, headers={"Idempotency-Key": "s"})
    again = api.post("/api/processes/start", body, headers={"Idempotency-Key": "s"})
    assert start.status_code == again.status_code == 201
    finish = {"uuid": body["uuid"], "status": "succeeded"}
    assert api.post("/api/processes/finish", finish, headers={"Idempotency-Key": "f"}).status_code == 200
    assert api.post("/api/processes/finish", finish, headers={"Idempotency-Key": "f"}).status_code == 200
    assert events() == ["started", "finished"]


def test_it_honours_the_clients_notify_prefs_but_records_the_events(api):
    prefs = {"notify_prefs": {"on_start": False, "on_success": False, "on_error": True}}
    quiet = start_body(metadata=prefs)
    api.post("/api/processes/start", quiet)
    api.post("/api/processes/finish", {"uuid": quiet["uuid"], "status": "succeeded"})
    assert TrackedProcess.objects.get(uuid=quiet["uuid"]).state == "succeeded"
    assert events() == []
    loud_on_error = start_body(metadata=prefs)
    api.post("/api/processes/start", loud_on_error)
    api.post("/api/processes/finish", {"uuid": loud_on_error["uuid"], "status": "failed"})
    assert events() == ["finished"]


def test_it_ignores_extra_fields_the_client_adds(api):
    body = start_body()
    api.post("/api/processes/start", body)
    extra = {"metadata": {"dropped_updates": 3}, "future": [1]}
    assert api.post("/api/heartbeat", {"uuid": body["uuid"], "metrics": {}, "step": None, **extra}).status_code == 200
    finish = {"uuid": body["uuid"], "status": "succeeded", "error": None, "traceback": None, **extra}
    assert api.post("/api/processes/finish", finish).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"total": 10**20},
        {"heartbeat_interval": 10**400},
        {"metadata": {"note": "with a \u0000 NUL"}},
    ],
)
def test_it_answers_out_of_range_or_nul_input_without_a_server_error(api, body):
    response = api.post("/api/processes/start", {"uuid": new_uuid(), "name": "run \u0000 x", **body})
    assert response.status_code in (201, 400), response.content
    if response.status_code == 201:
        from notifications.models import TrackedProcess

        process = TrackedProcess.objects.get()
        assert "\x00" not in process.name and "\x00" not in str(process.metadata)


def test_it_refuses_json_nested_too_deeply(api):
    nested = "[" * 100_000 + "]" * 100_000  # 200 KB: under the size limit, far over any sane depth
    response = api.post("/api/notify", raw='{"text": "x", "metadata": ' + nested + "}")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
