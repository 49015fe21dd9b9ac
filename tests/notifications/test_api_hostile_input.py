"""Every API endpoint takes any input without a 5xx or a silent loss (issue 11, item 6): invalid
Unicode becomes U+FFFD wherever text is read (JSON, multipart, headers), huge numbers and deep
nesting are 400, multipart part counts over Django's limits are 413, a 202 is a row that renders,
and the admin shows whatever text is stored."""

from __future__ import annotations

import io
import itertools
import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import connection
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from accounts.models import Account, ApiKey, PairingRequest
from core.models import OutboxMessage
from notifications.models import IdempotencyRecord, TrackedProcess
from telegram_app.rendering import render
from tests.notifications.conftest import ApiClient, start_body

pytestmark = pytest.mark.django_db

# What a script sends for a run whose name came from a file name that is not UTF-8: Python
# decodes b"\xff" as the lone surrogate "\udcff", and json.dumps escapes it.
NON_UTF8_NAME = "run-\udcff.csv"
SHOWN_NAME = "run-\ufffd.csv"


def dumps(value: Any) -> str:
    return json.dumps(value)  # ensure_ascii: lone surrogates go out as \udXXX escapes


def texts(rendered) -> str:
    return rendered.text + "".join(part.caption for part in rendered.files)


# ---------------------------------------------------------------------------------- invalid Unicode


def test_it_replaces_invalid_unicode_in_every_text_of_a_process(api):
    body = start_body(name=NON_UTF8_NAME, tags=["lr=\ud800"], metadata={"script\udfff": "\udc80.py"})
    assert api.post("/api/processes/start", raw=dumps(body)).status_code == 201
    beat = {"uuid": body["uuid"], "progress": {"done": 5, "total": 10}, "metrics": {"loss\ud800": 0.5}}
    assert api.post("/api/heartbeat", raw=dumps(beat)).status_code == 200
    finish = {"uuid": body["uuid"], "status": "failed", "error": "KeyError: '\udcff'",
              "traceback": f'File "{NON_UTF8_NAME}", line 1\nKeyError: \'\udcff\'', "exit_reason": "\ud800"}
    assert api.post("/api/processes/finish", raw=dumps(finish)).status_code == 200

    process = TrackedProcess.objects.get()
    assert (process.name, process.tags, process.metadata) == (SHOWN_NAME, ["lr=\ufffd"], {"script\ufffd": "\ufffd.py"})
    assert process.metrics == {"loss\ufffd": 0.5}
    assert (process.error, process.exit_reason) == ("KeyError: '\ufffd'", "\ufffd")
    assert SHOWN_NAME in process.traceback


@pytest.mark.django_db(transaction=True)
def test_it_delivers_the_crash_notice_of_a_run_named_from_a_non_utf8_file(api, account):
    """The row from issue 11: the start and the crash notice of such a run are rendered and sent."""
    from tests.notifications.delivery import deliver_all

    body = start_body(name=NON_UTF8_NAME)
    api.post("/api/processes/start", raw=dumps(body))
    api.post("/api/processes/finish", raw=dumps({
        "uuid": body["uuid"], "status": "failed", "error": "ValueError: bad \udcff",
        "traceback": "Traceback (most recent call last):\n" + f'  File "/data/{NON_UTF8_NAME}"\n' * 400
                     + "ValueError: bad \udcff"}))
    rows = list(OutboxMessage.objects.order_by("id"))
    assert [row.payload["event"] for row in rows] == ["started", "finished"]
    for row in rows:
        assert SHOWN_NAME in texts(render(row))

    sent = deliver_all(account)
    assert len(sent) >= 2 and all(row.state == "sent" for row in OutboxMessage.objects.all())
    started, crashed = sent[0], sent[1]
    assert SHOWN_NAME in started["text"]
    crash_notice = crashed.get("text") or crashed["caption"]  # with the traceback file: one message, its caption
    assert SHOWN_NAME in crash_notice and "bad \ufffd" in crash_notice


def test_it_replaces_invalid_unicode_in_pairing_fields(anonymous):
    response = anonymous.post("/api/register", raw=dumps({"hostname": "box-\ud800", "label": "\udcff"}))
    assert response.status_code == 201
    assert PairingRequest.objects.values_list("hostname", "label").get() == ("box-\ufffd", "\ufffd")


def test_it_reads_headers_with_invalid_unicode_without_failing(api, issued_key):
    client = api.client
    response = client.get("/api/validate", HTTP_AUTHORIZATION="Bearer exp_\ud800")
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_key"
    response = api.post("/api/notify", {"text": "hi"}, headers={"Idempotency-Key": "k-\ud800"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_idempotency_key"


def test_it_replaces_invalid_unicode_in_the_url_and_query(anonymous):
    from django.test import RequestFactory

    from notifications.api.views import register_poll

    request = RequestFactory().get("/api/register/x", {"secret": "s"})
    assert register_poll(request, code="\ud800").status_code == 404
    assert register_poll(request, code="\x00").status_code == 404  # PostgreSQL refuses NUL in text
    assert anonymous.get("/api/register/%00", secret="%00").status_code == 404


def multipart_body(payload: bytes, filename: bytes, data: bytes) -> tuple[bytes, str]:
    """A multipart body as a client writes it, bytes and all (Django's test client refuses to
    write a name that is not valid Unicode)."""
    boundary = b"----statsbot-test-boundary"
    body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="payload"\r\n\r\n' + payload + b"\r\n"
            + b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="' + filename
            + b'"\r\nContent-Type: text/plain\r\n\r\n' + data + b"\r\n--" + boundary + b"--\r\n")
    return body, f"multipart/form-data; boundary={boundary.decode()}"


def test_it_reads_an_uploaded_file_name_that_is_not_utf8(api):
    body, content_type = multipart_body(dumps({"text": "log \udcff"}).encode(), b"train-\xff\xed\xa0\x80.log",
                                        b"log line\n")
    response = api.client.generic("POST", "/api/notify", body, content_type=content_type,
                                  HTTP_AUTHORIZATION=f"Bearer {api.raw_key}")
    assert response.status_code == 202
    message = OutboxMessage.objects.get()
    assert message.payload["text"] == "log \ufffd"
    filename = message.files.get().filename
    assert filename.startswith("train-") and filename.endswith(".log")
    filename.encode("utf-8")  # stored and sendable


# ---------------------------------------------------------------------------------- numbers and nesting

BODIES = {
    "/api/notify": lambda v: {"text": "x", "metadata": {"n": v}},
    "/api/notify/batch": lambda v: {"messages": [{"text": "x", "metadata": {"n": v}}]},
    "/api/processes/start": lambda v: start_body(total=v),
    "/api/heartbeat": lambda v: {"uuid": str(uuid.uuid4()), "progress": {"done": v}},
    "/api/processes/finish": lambda v: {"uuid": str(uuid.uuid4()), "status": "failed", "runtime_s": v},
    "/api/register": lambda v: {"hostname": "box", "extra": v},
}


@pytest.mark.parametrize("path", BODIES)
@pytest.mark.parametrize(("number", "says"), [("9" * 5000, "5000 digits"), ("-" + "9" * 65, "65 digits"),
                                              ("1e400", "must be finite"), ("-1.5e999", "must be finite")])
def test_it_refuses_huge_numbers_with_400_on_every_endpoint(api, path, number, says):
    raw = dumps(BODIES[path]("NUMBER")).replace('"NUMBER"', number)
    response = api.post(path, raw=raw)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_json" and says in error["message"]
    assert not OutboxMessage.objects.exists() and not TrackedProcess.objects.exists()


def test_it_accepts_ordinary_big_numbers(api):
    body = {"text": "x", "metadata": {"id": 10**40, "seed": -(2**63), "ratio": 1.5e300}}
    assert api.post("/api/notify", body).status_code == 202
    stored = OutboxMessage.objects.get().payload["metadata"]
    assert (stored["id"], stored["seed"]) == (10**40, -(2**63))
    assert float(stored["ratio"]) == 1.5e300  # PostgreSQL's jsonb gives it back as the integer it equals


@pytest.mark.parametrize("path", BODIES)
def test_it_refuses_deep_nesting_with_400_on_every_endpoint(api, path):
    deep = "[" * 64 + "]" * 64  # 65 levels inside the body's object
    response = api.post(path, raw=dumps(BODIES[path]("DEEP")).replace('"DEEP"', deep))
    assert response.status_code == 400
    assert "nested too deeply" in response.json()["error"]["message"]


def test_it_accepts_nesting_within_the_limit(api):
    nested = "[" * 61 + "1" + "]" * 61  # 64 levels with the body and "metadata"
    response = api.post("/api/notify", raw='{"text": "x", "metadata": {"a": ' + nested + "}}")
    assert response.status_code == 202
    assert render(OutboxMessage.objects.get()).text


# ---------------------------------------------------------------------------------- multipart counts


def test_it_answers_too_many_multipart_fields_with_413(api):
    fields = {f"f{n}": "x" for n in range(django_settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1)}
    response = api.multipart("/api/notify", {"payload": dumps({"text": "hi"}), **fields})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_many_parts" and "fields" in response.json()["error"]["message"]
    assert not OutboxMessage.objects.exists()


def test_it_answers_too_many_multipart_files_with_413(api):
    files = {}
    for n in range(150):
        part = io.BytesIO(b"x")
        part.name = f"{n}.txt"
        files[f"file{n}"] = part
    response = api.multipart("/api/notify", {"payload": dumps({"text": "hi"}), **files})
    assert response.status_code == 413
    assert "files" in response.json()["error"]["message"]
    assert not OutboxMessage.objects.exists()


def test_it_answers_too_many_query_parameters_with_413(anonymous):
    query = "&".join(f"p{n}=1" for n in range(django_settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1))
    response = anonymous.client.get(f"/api/register/abc?{query}")
    assert response.status_code == 413


# ---------------------------------------------------------------------------------- the admin


def test_the_admin_renders_any_stored_text(staff_client, issued_key, account):
    huge = "\ufffd" + "line of a very long traceback\n" * 40_000
    deep: Any = "leaf"
    for _ in range(60):
        deep = {"d": [deep]}
    process = TrackedProcess.objects.create(account=account, name=SHOWN_NAME, tags=["\ufffd"] * 32,
                                            metadata={"deep": deep, "big": "x" * 200_000}, traceback=huge,
                                            error=huge[:4000])
    message = OutboxMessage.objects.create(account=account, chat_id=account.chat_id, kind="notify",
                                           payload={"text": huge, "metadata": {"deep": deep}}, text=huge)
    record = IdempotencyRecord.objects.create(api_key=issued_key[0], key="k", endpoint="notify", status_code=202,
                                              response={"deep": deep})
    pairing, _ = PairingRequest.start(hostname="\ufffd" * 255)
    objects = [process, message, record, pairing, account]
    if connection.vendor == "sqlite":  # bytes that are not UTF-8, as another tool could have stored them
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE {TrackedProcess._meta.db_table} SET name = CAST(X'72756eeda080ff' AS TEXT) "
                           "WHERE id = %s", [process.pk])
            cursor.execute(f"UPDATE {Account._meta.db_table} SET first_name = CAST(X'c3' AS TEXT) WHERE id = %s",
                           [account.pk])
    for obj in objects:
        meta = obj._meta
        for url in (f"/admin/{meta.app_label}/{meta.model_name}/",
                    f"/admin/{meta.app_label}/{meta.model_name}/{obj.pk}/change/",
                    f"/admin/{meta.app_label}/{meta.model_name}/?q=%ED%A0%80"):
            response = staff_client.get(url)
            assert response.status_code == 200, (url, response.status_code)
    if connection.vendor == "sqlite":
        assert TrackedProcess.objects.get().name == b"run\xed\xa0\x80\xff".decode("utf-8", "replace")


# ---------------------------------------------------------------------------------- any input at all


@dataclass(frozen=True)
class Raw:
    """JSON text inserted as it is (numbers Python's json would refuse to write, deep nesting)."""

    text: str


def to_json(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    return json.dumps(value)


SURROGATES = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udcff", "\udfff"])
hostile_text = st.text(alphabet=st.characters() | SURROGATES, max_size=40) | st.sampled_from(
    ["\ud800", "\udcff", "a\udfffb", "\x00", "\u202e", "🙂" * 3, "<b>", "&amp;", "`x`", "*_[", "\ufeff", ""])
numbers = st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False, allow_infinity=False) | (
    st.integers(min_value=20, max_value=5000).map(lambda n: Raw("9" * n))) | st.sampled_from(
    [Raw("1e400"), Raw("-1e999"), Raw("NaN"), Raw("Infinity"), Raw("1.0e-400")])
deep = st.integers(min_value=1, max_value=1200).map(lambda n: Raw("[" * n + "]" * n))
leaves = hostile_text | numbers | st.booleans() | st.none() | deep
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(hostile_text, inner, max_size=4), max_leaves=12)
STARTED = "a process this key started"
uuids = st.uuids().map(str) | hostile_text
started = st.one_of(st.just(STARTED), st.just(STARTED), uuids)


def mostly(valid: st.SearchStrategy, other: st.SearchStrategy = values) -> st.SearchStrategy:
    """Usually a valid value (so the request gets past validation), sometimes anything."""
    return st.one_of(valid, valid, valid, other)


def message(extra: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    return st.fixed_dictionaries({"text": mostly(hostile_text.filter(str.strip))}, optional={
        "level": mostly(st.sampled_from(["info", "error"])),
        "format": mostly(st.sampled_from(["text", "markdown", "html"])),
        "metadata": mostly(st.dictionaries(hostile_text, values, max_size=4)), "process_id": mostly(st.none(), uuids),
        **extra})


ENDPOINTS: dict[str, st.SearchStrategy] = {
    "/api/notify": message({}),
    "/api/notify/batch": st.fixed_dictionaries({"messages": mostly(st.lists(
        mostly(message({"idempotency_key": hostile_text})), min_size=1, max_size=4))}),
    "/api/processes/start": st.fixed_dictionaries({"uuid": mostly(st.uuids().map(str), uuids), "name": mostly(
        hostile_text.filter(str.strip))}, optional={
        "tags": st.lists(hostile_text, max_size=3) | values, "metadata": values, "total": numbers,
        "heartbeat_interval": numbers, "parent_uuid": uuids}),
    "/api/heartbeat": st.fixed_dictionaries({"uuid": started}, optional={
        "progress": st.fixed_dictionaries({"done": numbers}, optional={"total": numbers}) | values,
        "metrics": st.dictionaries(hostile_text, numbers | values, max_size=3) | values, "step": numbers}),
    "/api/processes/finish": st.fixed_dictionaries({"uuid": started, "status": st.sampled_from(
        ["succeeded", "failed", "cancelled"]) | values}, optional={
        "error": hostile_text, "traceback": hostile_text, "runtime_s": numbers, "peak_memory_mb": numbers,
        "metrics": st.dictionaries(hostile_text, numbers, max_size=3), "exit_reason": hostile_text | values}),
    "/api/register": st.dictionaries(st.sampled_from(["hostname", "label", "other"]), hostile_text | values),
}
# Always tried, whatever hypothesis draws: the inputs of issue 11's table.
KNOWN_BAD: dict[str, list[Any]] = {
    "/api/notify": [{"text": "\ud800"}, {"text": "x", "metadata": {"\udcff": ["\udfff"]}, "level": "error"}],
    "/api/notify/batch": [{"messages": [{"text": "\ud800", "idempotency_key": "k"}, {"text": "ok"}]}],
    "/api/processes/start": [{"uuid": "00000000-0000-4000-8000-000000000001", "name": NON_UTF8_NAME,
                              "tags": ["\ud800"], "metadata": {"\udcff": 1}}],
    "/api/heartbeat": [{"uuid": STARTED, "metrics": {"\ud800": 1}, "progress": {"done": 1}}],
    "/api/processes/finish": [{"uuid": STARTED, "status": "failed",
                               "error": "\udcff", "traceback": "\ud800"}],
    "/api/register": [{"hostname": "\ud800", "label": "\udcff"}],
}
_users = itertools.count(7_700_001)


def fresh_client() -> ApiClient:
    user_id = next(_users)
    account, _ = Account.from_telegram(user_id=user_id, chat_id=user_id, first_name="Fuzz")
    return ApiClient(ApiKey.issue(account)[1])


def check_nothing_lost(path: str, response, client: ApiClient, before: set[int]) -> None:
    """Whatever the API accepted is a row the bot can render."""
    new_rows = OutboxMessage.objects.exclude(pk__in=before)
    for row in new_rows:
        rendered = render(row)
        assert rendered.text or rendered.files, row.payload
        rendered.text.encode("utf-8")  # what python-telegram-bot will send
    body = response.json()
    if path == "/api/notify" and response.status_code == 202:
        assert new_rows.filter(pk=body["message_id"]).exists()
    if path == "/api/notify/batch" and response.status_code == 200:
        accepted = [r["body"]["message_id"] for r in body["results"] if r["status"] == 202]
        assert set(accepted) <= set(OutboxMessage.objects.values_list("pk", flat=True))
        assert body["queued"] == len(accepted)
    if path == "/api/processes/start" and response.status_code == 201:
        assert TrackedProcess.objects.filter(uuid=body["uuid"]).exists()


@pytest.mark.parametrize("path", ENDPOINTS)
def test_no_input_makes_an_endpoint_fail_or_lose_a_message(path, db):
    @hypothesis_settings(max_examples=50, deadline=None, database=None, derandomize=True,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                HealthCheck.filter_too_much])
    @given(body=mostly(ENDPOINTS[path]), idempotency=st.none() | hostile_text,
           multipart=st.booleans() if path == "/api/notify" else st.just(False))
    def check(body: Any, idempotency: str | None, multipart: bool) -> None:
        run(body, idempotency, multipart)

    for known in KNOWN_BAD[path]:
        check = example(body=known, idempotency=None, multipart=False)(check)
        check = example(body=known, idempotency="k-\udcff", multipart=path == "/api/notify")(check)

    def run(body: Any, idempotency: str | None, multipart: bool) -> None:
        client = fresh_client()
        before = set(OutboxMessage.objects.values_list("pk", flat=True))
        headers = {"Idempotency-Key": idempotency} if idempotency is not None else {}
        if isinstance(body, dict) and body.get("uuid") == STARTED:  # a process of this key, running
            body = {**body, "uuid": client.post("/api/processes/start", start_body()).json()["uuid"]}
        raw = to_json(body)
        encoded = raw.encode("utf-8", "surrogatepass")  # a JSON text may hold any code point
        if multipart:
            content, content_type = multipart_body(encoded, b"data-\xff.bin", encoded[:1000])
        else:
            content, content_type = encoded, "application/json"
        response = client.client.generic("POST", path, content, content_type=content_type,
                                          HTTP_AUTHORIZATION=f"Bearer {client.raw_key}",
                                          **{f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()})
        assert response.status_code < 500, (response.status_code, raw[:300])
        assert response["Content-Type"] == "application/json"
        check_nothing_lost(path, response, client, before)

    check()


@hypothesis_settings(max_examples=40, deadline=None, database=None, derandomize=True,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(secret=hostile_text, code=hostile_text)
@example(secret="\ud800", code="\x00")  # PostgreSQL refuses NUL in text: a 500 there once
def test_no_query_makes_the_pairing_poll_fail(secret, code, db):
    from django.test import RequestFactory

    from notifications.api.views import register_poll, validate

    request = RequestFactory().get("/api/register/x")
    request.GET = request.GET.copy()
    request.GET["secret"] = secret
    assert register_poll(request, code=code).status_code < 500
    request = RequestFactory().get("/api/validate", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert validate(request).status_code in (401, 429)
