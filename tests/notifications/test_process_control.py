"""Stop, pause and actions from the chat: the control state machine, taps (owner only, stale and
double taps refused), the heartbeat answer that hands them to the client, and the buttons."""

from __future__ import annotations

import pytest

from core.models import OutboxMessage
from core.state_machine import InvalidTransition
from notifications import services
from notifications.models import TrackedProcess
from notifications.services import ControlRefused, ProcessEnded, UnknownProcess, control_process
from telegram_app.rendering.notify import render_process
from tests.notifications.conftest import new_uuid, start_body

pytestmark = pytest.mark.django_db


@pytest.fixture
def key(issued_key):
    return issued_key[0]


def start(key, **kwargs) -> TrackedProcess:
    process, _ = services.start_process(key, uuid=new_uuid(), name=kwargs.pop("name", "train.py"), **kwargs)
    return process


def rows(process, event):
    return list(OutboxMessage.objects.filter(kind="process", payload__uuid=str(process.uuid),
                                             payload__event=event).order_by("id"))


def buttons(rendered) -> list[str]:
    return [button["text"] for row in rendered.buttons for button in row]


def test_it_offers_stop_and_actions_on_the_start_message_and_pause_with_progress(key):
    plain = start(key, actions=["lr ×0.5", "save"])
    [row] = rows(plain, "started")
    assert row.edit_key == plain.control_edit_key
    rendered = render_process(row)
    assert buttons(rendered) == ["⏹ Stop", "lr ×0.5", "save"]
    assert rendered.buttons[1][0]["callback_data"] == f"pa:{plain.uuid}:0"
    with_total = start(key, total=100)
    assert buttons(render_process(rows(with_total, "started")[0])) == ["⏹ Stop", "⏸ Pause"]
    services.heartbeat(key, uuid=with_total.uuid, done=10)
    assert buttons(render_process(rows(with_total, "progress")[-1])) == ["⏹ Stop", "⏸ Pause"]


def test_it_requests_a_stop_once_and_hands_it_to_every_later_heartbeat(key, account):
    process = start(key, total=100)
    services.heartbeat(key, uuid=process.uuid, done=10)
    _, answer = control_process(account, process.uuid, "stop")
    assert "Stop requested" in answer
    process.refresh_from_db()
    assert process.control == "stop" and process.control_changed_at is not None
    # Both messages showing buttons are edited in the same transaction: no buttons, a note.
    for event in ("started", "progress"):
        rendered = render_process(rows(process, event)[-1])
        assert rendered.buttons == [] and "stop requested from Telegram" in rendered.text
    with pytest.raises(ControlRefused, match="already requested"):
        control_process(account, process.uuid, "stop")
    with pytest.raises(ControlRefused, match="already requested"):
        control_process(account, process.uuid, "resume")
    for _ in range(2):
        assert services.heartbeat_answer(key, uuid=process.uuid)["control"] == "stop"


def test_it_pauses_and_resumes_with_the_state_machine(key, account):
    process = start(key, total=100)
    control_process(account, process.uuid, "pause")
    with pytest.raises(ControlRefused, match="already paused"):
        control_process(account, process.uuid, "pause")
    rendered = render_process(rows(process, "started")[-1])
    assert buttons(rendered) == ["⏹ Stop", "▶ Resume"] and "paused from Telegram" in rendered.text
    assert services.heartbeat_answer(key, uuid=process.uuid)["control"] == "pause"
    control_process(account, process.uuid, "resume")
    with pytest.raises(ControlRefused, match="not paused"):
        control_process(account, process.uuid, "resume")
    assert services.heartbeat_answer(key, uuid=process.uuid)["control"] == "run"
    control_process(account, process.uuid, "stop")
    process.refresh_from_db()
    with pytest.raises(InvalidTransition):
        process.set_control("run")  # a stop is never taken back


def test_it_refuses_pause_for_a_run_without_progress(key, account):
    process = start(key)
    with pytest.raises(ControlRefused, match="no progress steps"):
        control_process(account, process.uuid, "pause")


def test_it_hands_each_action_tap_over_once_oldest_first(key, account):
    process = start(key, actions=["lr ×0.5", "save"])
    control_process(account, process.uuid, "action", 1)
    control_process(account, process.uuid, "action", 0)
    control_process(account, process.uuid, "action", 1)
    assert services.heartbeat_answer(key, uuid=process.uuid) == {
        "state": "running", "control": "run", "actions": ["save", "lr ×0.5", "save"]}
    assert services.heartbeat_answer(key, uuid=process.uuid)["actions"] == []
    with pytest.raises(ControlRefused, match="not offered"):
        control_process(account, process.uuid, "action", 2)


def test_it_caps_the_taps_waiting_for_a_heartbeat(key, account):
    process = start(key, actions=["go"])
    for _ in range(20):
        control_process(account, process.uuid, "action", 0)
    with pytest.raises(ControlRefused, match="Too many taps"):
        control_process(account, process.uuid, "action", 0)


def test_it_lets_only_the_owner_act_and_refuses_finished_or_unknown_runs(key, make_account):
    process = start(key, actions=["go"])
    stranger = make_account()
    for command, index in (("stop", None), ("action", 0)):
        with pytest.raises(ControlRefused, match="Only the chat that started"):
            control_process(stranger, process.uuid, command, index)
    assert TrackedProcess.objects.get(pk=process.pk).control == "run"
    services.finish_process(key, uuid=process.uuid, status="succeeded")
    with pytest.raises(ProcessEnded, match=r"already ended \(succeeded\)"):
        control_process(process.account, process.uuid, "stop")
    with pytest.raises(UnknownProcess):
        control_process(process.account, new_uuid(), "stop")
    with pytest.raises(UnknownProcess):
        control_process(process.account, "not-a-uuid", "stop")


def test_it_answers_heartbeats_with_the_commands_and_replays_them_to_a_retry(api, account):
    body = start_body(actions=["lr ×0.5"])
    api.post("/api/processes/start", body)
    control_process(account, body["uuid"], "action", 0)
    first = api.post("/api/heartbeat", {"uuid": body["uuid"]}, headers={"Idempotency-Key": "hb-1"})
    retry = api.post("/api/heartbeat", {"uuid": body["uuid"]}, headers={"Idempotency-Key": "hb-1"})
    assert first.status_code == retry.status_code == 200
    assert first.json() == retry.json() == {"state": "running", "control": "run", "actions": ["lr ×0.5"]}
    later = api.post("/api/heartbeat", {"uuid": body["uuid"]}, headers={"Idempotency-Key": "hb-2"})
    assert later.json()["actions"] == []


@pytest.mark.parametrize("actions", [
    "lr", [""], ["x" * 33], [1], ["a", "a"], [f"a{i}" for i in range(9)], {"lr": 1},
])
def test_it_refuses_bad_action_names_with_a_400(api, actions):
    response = api.post("/api/processes/start", start_body(actions=actions))
    assert response.status_code == 400
    assert "actions" in response.json()["error"]["message"]
    assert not TrackedProcess.objects.exists()


def test_it_words_the_end_of_a_stopped_run_with_its_last_metrics(key, account):
    process = start(key, total=100)
    services.heartbeat(key, uuid=process.uuid, done=37, metrics={"loss": 0.25}, step=37)
    control_process(account, process.uuid, "stop")
    services.finish_process(key, uuid=process.uuid, status="cancelled", exit_reason="stopped from Telegram",
                            runtime_s=90)
    finished = render_process(rows(process, "finished")[-1]).text
    assert "⏹️" in finished and "stopped from Telegram after 1m 30s" in finished
    assert "📊 loss 0.25" in finished
    progress = render_process(rows(process, "progress")[-1])
    assert "stopped from Telegram after" in progress.text and progress.buttons == []
    start_message = render_process(rows(process, "started")[-1])
    assert "⏹ stopped from Telegram" in start_message.text and start_message.buttons == []


def _sent(row: OutboxMessage, message_id: int) -> None:
    """As the sender leaves a delivered row (claimed, then sent)."""
    OutboxMessage.objects.filter(pk=row.pk).update(state=OutboxMessage.State.SENT, sent_message_id=message_id)


def test_it_takes_the_stop_button_off_a_sent_start_message_when_the_run_finishes(key):
    process = start(key, total=100)
    [started] = rows(process, "started")
    _sent(started, 501)
    services.finish_process(key, uuid=process.uuid, status="succeeded")
    [_, edit] = rows(process, "started")
    assert edit.edit_key == process.control_edit_key and edit.state == OutboxMessage.State.PENDING
    assert render_process(edit).buttons == []


def test_it_adds_no_edit_when_the_start_message_is_still_unsent(key):
    process = start(key)
    services.finish_process(key, uuid=process.uuid, status="failed", error="boom")
    [started] = rows(process, "started")  # renders the final state when it goes out
    assert render_process(started).buttons == []
