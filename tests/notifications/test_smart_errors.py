"""Smart errors on the server: the finish's ``diagnosis`` (hint + user frames) and notify ``group``
(one edited message), each field treated as hostile; and how the crash message shows them."""

from __future__ import annotations

import pytest

from accounts.models import ApiKey
from core.models import OutboxMessage
from notifications import services
from notifications.models import TrackedProcess
from telegram_app.rendering.notify import render_notify, render_process
from tests.notifications.conftest import ApiClient, start_body
from tg_rules.text import TEXT_LIMIT, utf16_len

pytestmark = pytest.mark.django_db

FRAMES = [
    {"file": "train.py", "line": 40, "function": "main", "code": "fit(model, df)"},
    {"file": "train.py", "line": 12, "function": "fit", "code": "y = df['lable'] & mask"},
]


def started(api) -> str:
    body = start_body()
    assert api.post("/api/processes/start", body).status_code == 201
    return body["uuid"]


def finish(api, uuid: str, **fields):
    return api.post("/api/processes/finish", {"uuid": uuid, "status": "failed", "error": "KeyError: 'lable'",
                                              "traceback": "Traceback…\nKeyError: 'lable'", **fields})


def finished_row(uuid: str) -> OutboxMessage:
    return OutboxMessage.objects.get(kind="process", payload__uuid=uuid, payload__event="finished")


def test_it_stores_and_shows_the_hint_and_the_users_frames_with_the_failing_line(api):
    uuid = started(api)
    hint = "No column 'lable' in DataFrame df; nearest: 'label', 'labels'"
    response = finish(api, uuid, diagnosis={"hint": hint, "frames": FRAMES, "extra": "ignored"})
    assert response.status_code == 200
    assert TrackedProcess.objects.get().diagnosis == {"hint": hint, "frames": FRAMES}
    text = render_process(finished_row(uuid)).text
    assert "💡 No column 'lable' in DataFrame df; nearest: 'label', 'labels'" in text
    assert "your code:\n   ↳ <code>train.py:40 in main</code>  fit(model, df)\n" in text
    assert ("📍 <b><code>train.py:12 in fit</code>  y = df['lable'] &amp; mask</b> ← failed here" in text)
    assert text.index("💡") < text.index("📍") < text.index("<pre>")


def test_it_renders_a_crash_without_diagnosis_as_before(api):
    uuid = started(api)
    assert finish(api, uuid).status_code == 200
    text = render_process(finished_row(uuid)).text
    assert "💡" not in text and "📍" not in text and "<pre>" in text


@pytest.mark.parametrize("diagnosis, message", [
    ("a hint", "'diagnosis' must be an object"),
    ({"hint": 3}, "'diagnosis.hint' must be a string"),
    ({"hint": "x" * 501}, "'diagnosis.hint' must be at most 500 characters"),
    ({"frames": "train.py:1"}, "'diagnosis.frames' must be a list"),
    ({"frames": [FRAMES[0]] * 11}, "'diagnosis.frames' may hold at most 10 frames"),
    ({"frames": [["train.py", 1]]}, "'diagnosis.frames[0]' must be an object"),
    ({"frames": [{"line": 1}]}, "'diagnosis.frames[0].file' is required"),
    ({"frames": [{"file": "a.py", "line": -1}]}, "'diagnosis.frames[0].line' must be between 0 and"),
    ({"frames": [{"file": "a.py", "line": "1"}]}, "'diagnosis.frames[0].line' must be a whole number"),
    ({"frames": [{"file": "a.py", "code": "x" * 501}]}, "'diagnosis.frames[0].code' must be at most 500"),
])
def test_it_refuses_a_malformed_diagnosis_with_a_400_naming_the_field(api, diagnosis, message):
    uuid = started(api)
    response = finish(api, uuid, diagnosis=diagnosis)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]
    assert TrackedProcess.objects.get().state == TrackedProcess.State.RUNNING


def test_it_keeps_a_hostile_diagnosis_escaped_and_within_the_limit(api):
    uuid = started(api)
    frames = [{"file": "<b>" * 100, "line": 10**9, "function": "&" * 200, "code": "<script>" * 62}] * 10
    assert finish(api, uuid, diagnosis={"hint": "<i>" * 166, "frames": frames},
                  traceback="&\n" * 20_000, error="<" * 4000).status_code == 200
    text = render_process(finished_row(uuid)).text
    assert utf16_len(text) <= TEXT_LIMIT
    assert "<script>" not in text and "<i><i>" not in text


def test_it_edits_one_message_for_a_notify_group_of_the_same_account(api, account, make_account):
    body = {"text": "🔁 `KeyError` **once**", "level": "error", "format": "markdown", "group": "catch-abc123"}
    assert api.post("/api/notify", body).status_code == 202
    assert api.post("/api/notify", {**body, "text": "🔁 `KeyError` **2 times**"}).status_code == 202
    other = ApiClient(ApiKey.issue(make_account())[1])
    assert other.post("/api/notify", body).status_code == 202
    rows = list(OutboxMessage.objects.filter(kind="notify").order_by("id"))
    assert rows[0].edit_key == rows[1].edit_key == services.group_edit_key(account.pk, "catch-abc123")
    assert rows[2].edit_key not in ("", rows[0].edit_key)  # another account: another message
    assert "<b>2 times</b>" in render_notify(rows[1]).text
    plain = api.post("/api/notify", {"text": "no group"})
    assert plain.status_code == 202 and OutboxMessage.objects.get(pk=plain.json()["message_id"]).edit_key == ""


def test_it_edits_one_message_for_a_group_sent_in_a_batch(api, account):
    item = {"text": "🔁 once", "level": "error", "group": "catch-1"}
    response = api.post("/api/notify/batch", {"messages": [item, {**item, "text": "🔁 2 times"}]})
    assert response.status_code == 200 and response.json()["queued"] == 2
    keys = set(OutboxMessage.objects.filter(kind="notify").values_list("edit_key", flat=True))
    assert keys == {services.group_edit_key(account.pk, "catch-1")}


@pytest.mark.parametrize("group, message", [
    (5, "'group' must be a string"),
    ("x" * 65, "'group' must be at most 64 characters"),
    ("../../progress", "'group' may hold only letters, digits and _ . : -"),
])
def test_it_refuses_a_malformed_group(api, group, message):
    response = api.post("/api/notify", {"text": "hi", "group": group})
    assert response.status_code == 400 and message in response.json()["error"]["message"]


def test_it_refuses_a_group_with_a_file(api):
    import io
    import json

    part = io.BytesIO(b"log")
    part.name = "log.txt"
    response = api.multipart("/api/notify", {"payload": json.dumps({"text": "log", "group": "g1"}), "file": part})
    assert response.status_code == 400 and "cannot carry a file" in response.json()["error"]["message"]
    assert not OutboxMessage.objects.exists()


def test_it_shows_a_single_frame_without_the_your_code_heading(api):
    uuid = started(api)
    assert finish(api, uuid, diagnosis={"frames": [FRAMES[1]]}).status_code == 200
    text = render_process(finished_row(uuid)).text
    assert "your code:" not in text and "💡" not in text
    assert "📍 <b><code>train.py:12 in fit</code>  y = df['lable'] &amp; mask</b> ← failed here" in text
