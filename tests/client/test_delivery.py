"""Notifications reach the server intact, once, in order, whatever the server does."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid

import pytest
from experiment_bot.errors import DeliveryError
from experiment_bot.sender import CRITICAL, HEARTBEAT, NOTE, Envelope
from experiment_bot_fake import TEST_KEY, FakeServer, free_port, run_script

P1 = str(uuid.uuid4())
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$")


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def counts(bot) -> dict[str, int]:
    stats = bot.stats
    assert stats["delivered"] == stats["sent"]  # the older name
    return {name: stats[name] for name in ("sent", "dropped", "pending")}


def test_it_sends_notify_payload_and_headers(fake, make_bot):
    bot = make_bot(fake)
    assert bot.notify("Training *started*", "success", format="markdown", metadata={"lr": 0.1}) is True
    assert bot.flush(5)

    [request] = fake.attempts
    assert request.method == "POST"
    assert request.path == "/api/notify"
    assert request.headers["authorization"] == f"Bearer {TEST_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert UUID_RE.match(request.headers["idempotency-key"])
    assert request.headers["user-agent"].startswith("experiment-bot/")
    body = request.json
    assert body["text"] == "Training *started*"
    assert body["level"] == "success"
    assert body["format"] == "markdown"
    assert body["process_id"] is None
    assert body["metadata"]["lr"] == 0.1
    assert body["metadata"]["host"]
    assert "script" in body["metadata"]


def test_it_returns_quickly_and_sends_in_the_background(fake, make_bot):
    release = threading.Event()
    original = fake.handle

    def slow_handle(request):
        release.wait(10)
        return original(request)

    fake.handle = slow_handle
    bot = make_bot(fake)
    bot.notify("one")  # the server holds this request until released
    assert bot.notify("two") is True  # queued although the first is still in flight
    assert bot.stats["pending"] == 2
    release.set()
    assert bot.flush(5)
    assert [b["text"] for b in fake.bodies("/api/notify")] == ["one", "two"]


def test_it_reuses_the_idempotency_key_so_a_retry_never_doubles(fake, make_bot):
    # The server stores the message but the answer is "lost" (500): the client must retry
    # with the same key and the server must not create a second message.
    fake.fail_next("/api/notify", 500, process_first=True)
    bot = make_bot(fake)
    bot.notify("exactly once")
    assert bot.flush(5)

    attempts = [r for r in fake.attempts if r.path == "/api/notify"]
    assert len(attempts) == 2
    assert attempts[0].headers["idempotency-key"] == attempts[1].headers["idempotency-key"]
    assert [b["text"] for b in fake.bodies("/api/notify")] == ["exactly once"]


def test_it_keeps_every_message_in_order_while_the_server_is_down(make_bot):
    port = free_port()
    bot = make_bot(f"http://127.0.0.1:{port}")
    for index in range(5):
        bot.notify(f"message {index}")
    assert bot.flush(0.3) is False  # nothing listens yet: retried, kept
    assert bot.stats["pending"] == 5

    server = FakeServer(port).start()
    try:
        assert bot.flush(10)
        assert [b["text"] for b in server.bodies("/api/notify")] == [f"message {i}" for i in range(5)]
        assert counts(bot) == {"sent": 5, "dropped": 0, "pending": 0}
    finally:
        server.stop()


def test_it_retries_server_errors_with_backoff(fake, make_bot):
    fake.fail_next("/api/notify", 503, times=3)
    bot = make_bot(fake)
    bot.notify("after three failures")
    assert bot.flush(5)
    assert len(fake.attempts) == 4
    assert [b["text"] for b in fake.bodies("/api/notify")] == ["after three failures"]


def test_it_honours_retry_after_on_429(fake, make_bot):
    fake.fail_next("/api/notify", 429, headers={"Retry-After": "1"})
    bot = make_bot(fake)
    bot.notify("rate limited")
    assert bot.flush(5)
    first, second = fake.attempts
    assert second.at - first.at >= 0.95
    assert second.headers["idempotency-key"] == first.headers["idempotency-key"]


def test_it_drops_messages_after_401_without_a_retry_storm(fake, make_bot, caplog):
    fake.valid_keys = {"exp_other"}
    bot = make_bot(fake)
    with caplog.at_level(logging.WARNING, logger="experiment_bot"):
        for index in range(5):
            bot.notify(f"message {index}")
        bot.flush(5)
        bot.notify("after the rejection")
        bot.flush(5)
    assert len(fake.attempts) == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "setup()" in errors[0].getMessage()
    assert bot.stats["pending"] == 0


def test_it_drops_other_4xx_once_without_retrying(fake, make_bot, caplog):
    fake.fail_next("/api/notify", 413)
    bot = make_bot(fake)
    with caplog.at_level(logging.WARNING, logger="experiment_bot"):
        bot.notify("too big")
        assert bot.flush(5)
        bot.notify("fine")
        assert bot.flush(5)
    assert len(fake.attempts) == 2
    assert [b["text"] for b in fake.bodies("/api/notify")] == ["fine"]
    assert any("413" in r.getMessage() for r in caplog.records)


def test_it_raises_delivery_errors_in_strict_mode(fake, make_bot):
    fake.valid_keys = {"exp_other"}
    bot = make_bot(fake, strict=True)
    bot.notify("rejected")
    with pytest.raises(DeliveryError, match="401"):
        bot.flush(5)


def test_it_drops_the_oldest_heartbeats_first_when_the_queue_is_full(make_bot):
    port = free_port()
    bot = make_bot(f"http://127.0.0.1:{port}", queue_size=5)
    sender = bot._get_sender()
    sender.put(
        Envelope(
            "/api/processes/start",
            {"uuid": P1, "name": "x", "metadata": {}},
            kind="start",
            priority=CRITICAL,
        )
    )
    assert bot.flush(0.2) is False  # the start is now in flight, failing
    for step in range(10):
        sender.put(
            Envelope(
                "/api/heartbeat",
                {"uuid": P1, "progress": {"done": step, "total": 10}},
                kind="heartbeat",
                priority=HEARTBEAT,
            )
        )
    sender.put(Envelope("/api/notify", {"text": "note", "metadata": {}}, kind="notify", priority=NOTE))
    sender.put(
        Envelope(
            "/api/processes/finish", {"uuid": P1, "status": "succeeded"}, kind="finish", priority=CRITICAL
        )
    )
    assert bot.stats["dropped"] == 7

    server = FakeServer(port).start()
    try:
        assert bot.flush(10)
        paths = [r.path for r in server.accepted]
        assert paths[0] == "/api/processes/start"
        assert paths[-2:] == ["/api/notify", "/api/processes/finish"]
        progress = [b["progress"]["done"] for b in server.bodies("/api/heartbeat")]
        assert progress == [7, 8, 9]  # the newest survived
        # The first message sent after the drops says how many were lost.
        first_after = server.accepted[1].json
        assert first_after["metadata"]["dropped_updates"] == 7
    finally:
        server.stop()


def test_it_never_drops_start_and_finish_messages(make_bot):
    port = free_port()
    bot = make_bot(f"http://127.0.0.1:{port}", queue_size=3)
    sender = bot._get_sender()
    uuids = [str(uuid.uuid4()) for _ in range(6)]
    for index in range(6):
        assert sender.put(
            Envelope(
                "/api/processes/start",
                {"uuid": uuids[index], "name": f"run {index}", "metadata": {}},
                kind="start",
                priority=CRITICAL,
            )
        )
    assert bot.stats["dropped"] == 0
    server = FakeServer(port).start()
    try:
        assert bot.flush(10)
        assert [b["uuid"] for b in server.started()] == uuids
    finally:
        server.stop()


def test_it_coalesces_heartbeats_while_the_server_is_down(make_bot):
    port = free_port()
    bot = make_bot(f"http://127.0.0.1:{port}")
    with bot.track("coalesced") as run:
        # The start fails (nothing listens): from then on the sender is degraded and coalesces.
        wait_until(lambda: bot._get_sender().degraded)
        for step in range(1, 51):
            run.log_metrics(step, loss=1 / step)
            run.set_progress(step, 50)
        server = FakeServer(port).start()
    try:
        assert bot.flush(10)
        heartbeats = server.heartbeats(run.uuid)
        assert len(heartbeats) == 1
        assert heartbeats[0]["step"] == 50
        assert heartbeats[0]["metrics"] == {"loss": 1 / 50}
        assert heartbeats[0]["progress"] == {"done": 50, "total": 50}
        assert server.finish_of(run.uuid)["metrics"] == {"loss": 1 / 50}
    finally:
        server.stop()


def test_it_sends_a_file_as_multipart(fake, make_bot, tmp_path):
    log_file = tmp_path / "train.log"
    log_file.write_bytes(b"epoch 1 loss 0.3\n")
    bot = make_bot(fake)
    bot.attach(log_file, "the log")
    assert bot.flush(5)
    [request] = fake.attempts
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert request.json["text"] == "the log"
    assert request.files["file"]["filename"] == "train.log"
    assert request.files["file"]["content"] == b"epoch 1 loss 0.3\n"
    assert request.files["file"]["content_type"] == "text/plain"


def test_it_refuses_files_over_the_limit_with_a_clear_message(fake, make_bot, tmp_path, monkeypatch, caplog):
    from experiment_bot import client

    monkeypatch.setattr(client, "MAX_FILE_BYTES", 10)
    big = tmp_path / "plot.png"
    big.write_bytes(b"x" * 11)
    bot = make_bot(fake)
    with caplog.at_level(logging.WARNING, logger="experiment_bot"):
        bot.attach(big)
    assert bot.flush(5)
    [request] = fake.attempts
    assert request.files == {}
    assert "plot.png" in request.json["text"] and "not attached" in request.json["text"]
    assert any("not attached" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="not attached"):
        make_bot(fake, strict=True).attach(big)


def test_it_is_a_no_op_without_a_key(fake, caplog):
    from experiment_bot import _log
    from experiment_bot.client import ExperimentBot

    _log.forget("no-key")
    with caplog.at_level(logging.WARNING, logger="experiment_bot"):
        first = ExperimentBot(server=fake.url)
        second = ExperimentBot(server=fake.url)
        assert first.notify("nobody hears this") is False

        @second.track
        def work():
            return 42

        assert work() == 42
        for _ in second.track_progress(range(3)):
            pass
    warnings = [r.getMessage() for r in caplog.records if "no API key" in r.getMessage()]
    assert len(warnings) == 1
    assert "experiment_bot.setup()" in warnings[0]
    assert fake.attempts == []


def test_it_retries_while_the_server_still_processes_the_first_attempt(fake, make_bot):
    fake.fail_next(
        "/api/notify", 409, body={"error": {"code": "request_in_progress", "message": "retry shortly"}}
    )
    bot = make_bot(fake)
    bot.notify("slow database")
    assert bot.flush(5)
    assert len(fake.attempts) == 2
    assert [b["text"] for b in fake.bodies("/api/notify")] == ["slow database"]


def test_it_shrinks_bodies_the_server_would_refuse_as_too_large(fake, make_bot):
    bot = make_bot(fake)
    bot.notify("huge metadata", metadata={"blob": "x" * 400_000})
    assert bot.flush(5)
    [body] = fake.bodies("/api/notify")
    assert body["text"] == "huge metadata"
    assert "omitted" in body["metadata"]["experiment_bot"]


def test_it_cuts_the_middle_of_a_huge_traceback(fake, make_bot):
    from experiment_bot.sender import JSON_LIMIT, fit_body

    body = {"uuid": "u", "traceback": "HEAD" + "x" * 600_000 + "TAIL", "metadata": {}}
    fit_body(body)
    assert len(json.dumps(body)) <= JSON_LIMIT
    assert body["traceback"].startswith("HEAD") and body["traceback"].endswith("TAIL")
    assert "characters cut by experiment_bot" in body["traceback"]


def test_it_refuses_an_empty_message(fake, make_bot):
    bot = make_bot(fake)
    assert bot.notify("   ") is False
    with pytest.raises(ValueError, match="non-empty"):
        make_bot(fake, strict=True).notify("")
    assert bot.flush(5)
    assert fake.attempts == []


def test_it_flushes_from_a_forked_multiprocessing_worker(fake, tmp_path):
    code = """
        import multiprocessing, experiment_bot

        def work(n):
            experiment_bot.notify(f"from worker {n}")

        if __name__ == "__main__":
            context = multiprocessing.get_context("fork")
            process = context.Process(target=work, args=(1,))
            process.start()
            process.join()
            raise SystemExit(process.exitcode)
    """
    result = run_script(tmp_path, code, env={"EXPERIMENT_BOT_URL": fake.url, "EXPERIMENT_BOT_KEY": TEST_KEY})
    assert result.returncode == 0, result.stderr
    assert [b["text"] for b in fake.bodies("/api/notify")] == ["from worker 1"]


def test_it_retries_at_once_when_flushing_instead_of_waiting_out_a_long_backoff(make_bot):
    port = free_port()
    bot = make_bot(f"http://127.0.0.1:{port}", retry_base_delay=10, retry_max_delay=60)
    bot.notify("waiting")
    assert bot.flush(0.1) is False  # failed once; now in a backoff of 5-10 s (20-40 s next)
    server = FakeServer(port).start()
    try:
        began = time.monotonic()
        assert bot.flush(3)  # the flush cuts the backoff short
        assert time.monotonic() - began < 3
        assert [b["text"] for b in server.bodies("/api/notify")] == ["waiting"]
    finally:
        server.stop()


def _fail_messages_with_text(fake, texts, status=500):
    """Make the fake answer ``status`` to every attempt at a notify whose text is in ``texts``
    (the "poison message" case); everything else is served normally."""
    original = fake.handle

    def handle(request):
        if request.path == "/api/notify" and (request.json or {}).get("text") in texts:
            with fake.cond:
                fake.attempts.append(request)
                fake.cond.notify_all()
            return status, {"error": {"code": "server_error", "message": "boom"}}, {}
        return original(request)

    fake.handle = handle


def test_it_drops_a_message_the_server_keeps_failing_and_delivers_the_rest(fake, make_bot, caplog):
    _fail_messages_with_text(fake, {"poison 1", "poison 2"})
    bot = make_bot(fake)
    with caplog.at_level(logging.DEBUG, logger="experiment_bot"):
        bot.notify("poison 1")
        with bot.track("behind the poison") as run:
            bot.notify("poison 2")
        bot.notify("last")
        assert bot.flush(10)

    for text in ("poison 1", "poison 2"):
        tries = [r for r in fake.attempts if r.path == "/api/notify" and r.json["text"] == text]
        assert len(tries) == 8  # the cap
        assert len({r.headers["idempotency-key"] for r in tries}) == 1
    assert [b["uuid"] for b in fake.started()] == [run.uuid]
    assert fake.finish_of(run.uuid)["status"] == "succeeded"
    assert [b["text"] for b in fake.bodies("/api/notify")] == ["last"]
    # Before giving up, the client checked that the server answers other requests.
    assert any(r.path == "/api/validate" for r in fake.attempts)
    assert counts(bot) == {"sent": 3, "dropped": 2, "pending": 0}
    gave_up = [r for r in caplog.records if "dropped after 8 attempts" in r.getMessage()]
    assert [r.levelno for r in gave_up] == [logging.WARNING, logging.DEBUG]  # one warning
    assert "HTTP 500" in gave_up[0].getMessage()


def test_it_reports_a_message_dropped_after_repeated_5xx_in_strict_mode(fake, make_bot):
    _fail_messages_with_text(fake, {"poison"}, status=502)
    bot = make_bot(fake, strict=True)
    bot.notify("poison")
    with pytest.raises(DeliveryError, match="notify dropped after 8 attempts.*HTTP 502"):
        bot.flush(10)


def test_it_keeps_a_failing_message_while_the_whole_server_answers_5xx(fake, make_bot):
    from experiment_bot_fake import Action

    with fake.cond:
        fake.always = Action(503)  # the probe fails too: an outage, not a bad message
    bot = make_bot(fake)
    bot.notify("kept")
    bot.notify("behind it")  # alone or with "kept" in a batch: both forms must keep it
    fake.wait_for(lambda: len([r for r in fake.attempts if r.path.startswith("/api/notify")]) >= 12)
    assert counts(bot) == {"sent": 0, "dropped": 0, "pending": 2}
    assert any(r.path == "/api/validate" for r in fake.attempts)

    with fake.cond:
        fake.always = None
    assert bot.flush(10)
    assert [b["text"] for b in fake.bodies("/api/notify")] == ["kept", "behind it"]
    assert counts(bot) == {"sent": 2, "dropped": 0, "pending": 0}


def test_it_keeps_retrying_past_the_cap_while_the_server_is_unreachable(make_bot):
    port = free_port()
    bot = make_bot(f"http://127.0.0.1:{port}")
    sender = bot._get_sender()
    tries = []
    enough = threading.Event()
    request = sender.transport.request

    def counting(method, path, **kwargs):
        tries.append(path)
        if len(tries) >= 20:
            enough.set()
        return request(method, path, **kwargs)

    sender.transport.request = counting
    bot.notify("first")
    bot.notify("second")
    assert enough.wait(10)  # far more than 8 failed attempts (connection refused)
    assert counts(bot) == {"sent": 0, "dropped": 0, "pending": 2}
    assert "/api/validate" not in tries  # an unreachable server needs no probe

    server = FakeServer(port).start()
    try:
        assert bot.flush(10)
        assert [b["text"] for b in server.bodies("/api/notify")] == ["first", "second"]
    finally:
        server.stop()


def test_it_bounds_the_memory_held_by_queued_attachments(make_bot, tmp_path, caplog):
    port = free_port()
    bot = make_bot(f"http://127.0.0.1:{port}")
    sender = bot._get_sender()
    assert sender.file_budget == 64 * 2**20
    sender.file_budget = 100
    files = {}
    for name, size in (("a.bin", 60), ("b.bin", 60), ("c.bin", 30), ("d.bin", 20)):
        files[name] = tmp_path / name
        files[name].write_bytes(name[0].encode() * size)
    with caplog.at_level(logging.WARNING, logger="experiment_bot"):
        for name in files:
            assert bot.attach(files[name], f"file {name}") is True
    # a (60) fits, b (60 more) does not, c (30) fits, d (20 more) does not.
    assert bot.stats["dropped"] == 2
    warnings = [r for r in caplog.records if "attachments waiting" in r.getMessage()]
    assert len(warnings) == 1

    server = FakeServer(port).start()
    try:
        assert bot.flush(10)
        requests = [r for r in server.accepted if r.path == "/api/notify"]
        assert [r.json["text"].split("\n")[0] for r in requests] == [f"file {n}" for n in files]
        assert [r.files.get("file", {}).get("content") for r in requests] == [
            b"a" * 60,
            None,
            b"c" * 30,
            None,
        ]
        assert "b.bin not attached" in requests[1].json["text"]
        # The message delivered after the drops says how many were lost (which one that is
        # depends on whether "a" was already in flight when they happened).
        reports = [r.json["metadata"].get("dropped_updates") for r in requests]
        assert [n for n in reports if n is not None] == [2]
    finally:
        server.stop()


def test_it_refuses_to_follow_redirects(fake, make_bot, caplog):
    from experiment_bot.errors import ApiError

    elsewhere = FakeServer().start()
    try:
        fake.fail_next("/api/notify", 307, headers={"Location": f"{elsewhere.url}/api/notify"})
        fake.fail_next("/api/validate", 301, headers={"Location": "https://moved.example/api/validate"})
        bot = make_bot(fake)
        with caplog.at_level(logging.WARNING, logger="experiment_bot"):
            bot.notify("not forwarded")
            assert bot.flush(5)
        assert elsewhere.attempts == []  # the key never went to the redirect target
        assert bot.stats["dropped"] == 1
        [warning] = [r.getMessage() for r in caplog.records if "redirect" in r.getMessage()]
        assert f"redirects to {elsewhere.url}/api/notify" in warning
        assert f"EXPERIMENT_BOT_URL={elsewhere.url}" in warning

        with pytest.raises(ApiError, match="redirects to https://moved.example/api/validate") as raised:
            bot.validate()
        assert raised.value.status == 301 and raised.value.code == "redirect"
        assert [r.method for r in fake.attempts if r.path == "/api/validate"] == ["GET"]
    finally:
        elsewhere.stop()
