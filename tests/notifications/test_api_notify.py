"""POST /api/notify: JSON, multipart files, validation and idempotent retries."""

from __future__ import annotations

import io
import uuid

import pytest

from core.models import Attachment, OutboxMessage
from notifications.models import IdempotencyRecord
from tests.notifications.conftest import start_body

pytestmark = pytest.mark.django_db

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64
GIF = b"GIF89a" + b"\x00" * 64
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 64


def upload(data: bytes, name: str) -> io.BytesIO:
    part = io.BytesIO(data)
    part.name = name
    return part


def test_it_queues_a_notification_row(api, account):
    response = api.post("/api/notify", {"text": "Training <started> & going", "level": "success",
                                        "format": "markdown", "metadata": {"host": "gpu-box"},
                                        "unknown": "ignored"})
    assert response.status_code == 202
    message = OutboxMessage.objects.get()
    assert response.json() == {"message_id": message.pk, "status": "queued"}
    assert (message.account, message.chat_id, message.kind) == (account, account.chat_id, "notify")
    assert message.payload == {"text": "Training <started> & going", "level": "success", "format": "markdown",
                               "metadata": {"host": "gpu-box"}, "process_uuid": None}
    assert message.edit_key == "" and not message.files.exists()


def test_it_fills_defaults(api):
    assert api.post("/api/notify", {"text": "hi"}).status_code == 202
    payload = OutboxMessage.objects.get().payload
    assert (payload["level"], payload["format"], payload["metadata"]) == ("info", "text", {})


def test_it_links_a_notification_to_a_process(api):
    body = start_body()
    api.post("/api/processes/start", body)
    assert api.post("/api/notify", {"text": "epoch done", "process_id": body["uuid"]}).status_code == 202
    assert OutboxMessage.objects.filter(kind="notify").get().payload["process_uuid"] == body["uuid"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"text": "x", "level": "loud"}, "'level' must be one of info, success, warning, error"),
        ({"text": "x", "format": "rtf"}, "'format' must be one of text, markdown, html"),
        ({"text": 5}, "'text' must be a string"),
        ({}, "'text' is required"),
        ({"text": "   "}, "'text' must not be empty"),
        ({"text": "x", "metadata": [1]}, "'metadata' must be an object"),
        ({"text": "x", "process_id": "not-a-uuid"}, "'process_id' must be a UUID string"),
        ({"text": "x" * 70_000}, "'text' must be at most 65536 characters"),
    ],
)
def test_it_refuses_bad_input_naming_the_field(api, body, message):
    response = api.post("/api/notify", body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert error["message"].startswith(message)
    assert not OutboxMessage.objects.exists()


@pytest.mark.parametrize(("data", "name", "content_type"), [
    (PNG, "plot.bin", "image/png"),
    (JPEG, "photo", "image/jpeg"),
    (GIF, "anim.gif", "image/gif"),
    (WEBP, "x.webp", "image/webp"),
])
def test_it_sends_images_as_photos_by_their_bytes(api, data, name, content_type):
    response = api.multipart("/api/notify", {"payload": '{"text": "the loss curve", "level": "info"}',
                                             "file": upload(data, name)})
    assert response.status_code == 202, response.content
    attachment = Attachment.objects.get()
    assert (attachment.kind, attachment.filename, attachment.content_type) == ("photo", name, content_type)
    assert bytes(attachment.data) == data
    assert attachment.message.payload["text"] == "the loss curve"


def test_it_sends_other_files_as_documents_whatever_their_name(api):
    response = api.multipart("/api/notify", {"payload": '{"text": "log"}',
                                             "file": upload(b"epoch 1 loss 0.3\n", "../../etc/fake.png")})
    assert response.status_code == 202
    attachment = Attachment.objects.get()
    assert attachment.kind == "document"
    assert attachment.filename == "fake.png"
    assert not attachment.content_type.startswith("image/")


def test_it_accepts_a_file_without_text(api):
    response = api.multipart("/api/notify", {"file": upload(b"data", "run.log")})
    assert response.status_code == 202
    assert OutboxMessage.objects.get().payload["text"] == ""


def test_it_refuses_a_file_over_10_mib(api):
    response = api.multipart("/api/notify", {"payload": '{"text": "big"}',
                                             "file": upload(b"x" * (10 * 1024 * 1024 + 1), "big.bin")})
    assert response.status_code == 413
    assert response.json()["error"]["code"] in ("file_too_large", "too_large")
    assert not OutboxMessage.objects.exists()


def test_it_refuses_a_multipart_body_far_over_the_limit_before_reading_it(api):
    response = api.multipart("/api/notify", {"payload": "{}", "file": upload(b"x" * (11 * 1024 * 1024), "b")})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"


def test_it_refuses_a_bad_payload_field(api):
    response = api.multipart("/api/notify", {"payload": "{oops", "file": upload(b"x", "a.txt")})
    assert response.status_code == 400
    assert "'payload' field" in response.json()["error"]["message"]
    response = api.multipart("/api/notify", {"payload": '{"text": "x"}', "attachment": upload(b"x", "a.txt")})
    assert response.status_code == 400
    assert "'file'" in response.json()["error"]["message"]


def test_it_refuses_multipart_on_json_only_endpoints(api):
    response = api.multipart("/api/heartbeat", {"payload": "{}"})
    assert response.status_code == 415


def test_it_replays_an_idempotent_retry_without_a_second_row(api):
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    first = api.post("/api/notify", {"text": "once"}, headers=headers)
    second = api.post("/api/notify", {"text": "once"}, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    assert second["Idempotent-Replayed"] == "true" and not first.has_header("Idempotent-Replayed")
    assert OutboxMessage.objects.count() == 1
    assert IdempotencyRecord.objects.get().response == first.json()


def test_it_replays_a_multipart_retry_without_a_second_file(api):
    headers = {"Idempotency-Key": "retry-1"}
    for _ in range(2):
        response = api.multipart("/api/notify", {"payload": '{"text": "plot"}', "file": upload(PNG, "p.png")},
                                 headers=headers)
        assert response.status_code == 202
    assert OutboxMessage.objects.count() == 1 and Attachment.objects.count() == 1


def test_it_keeps_idempotency_keys_per_api_key(api, make_account):
    from accounts.models import ApiKey
    from tests.notifications.conftest import ApiClient

    other = ApiClient(ApiKey.issue(make_account())[1])
    headers = {"Idempotency-Key": "same"}
    assert api.post("/api/notify", {"text": "a"}, headers=headers).status_code == 202
    assert other.post("/api/notify", {"text": "b"}, headers=headers).status_code == 202
    assert OutboxMessage.objects.count() == 2


def test_it_does_not_store_refusals_so_a_fixed_retry_goes_through(api):
    headers = {"Idempotency-Key": "fix-me"}
    assert api.post("/api/notify", {"text": "x", "level": "bad"}, headers=headers).status_code == 400
    assert not IdempotencyRecord.objects.exists()
    assert api.post("/api/notify", {"text": "x"}, headers=headers).status_code == 202
    assert OutboxMessage.objects.count() == 1


def test_it_refuses_an_idempotency_key_reused_on_another_endpoint(api):
    headers = {"Idempotency-Key": "k1"}
    assert api.post("/api/notify", {"text": "x"}, headers=headers).status_code == 202
    response = api.post("/api/processes/start", start_body(), headers=headers)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_key_reused"


def test_it_refuses_a_malformed_idempotency_key(api):
    response = api.post("/api/notify", {"text": "x"}, headers={"Idempotency-Key": "x" * 200})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_idempotency_key"
