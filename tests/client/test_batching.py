"""Bursts go out as few batch requests, each message keeping its own key and its own fate."""

from __future__ import annotations

import json
import logging
import threading

from experiment_bot_fake import TEST_KEY, run_script


class Gate:
    """Makes the fake hold the first request until ``release()``, so that a burst queues up
    behind it in the client: ``send_first(bot, text)`` returns once that request arrived."""

    def __init__(self, fake) -> None:
        self.arrived = threading.Event()
        self.released = threading.Event()
        original = fake.handle

        def handle(request):
            if not self.arrived.is_set():
                self.arrived.set()
                self.released.wait(10)
            return original(request)

        fake.handle = handle

    def send_first(self, bot, text: str) -> None:
        bot.notify(text)
        assert self.arrived.wait(10)

    def release(self) -> None:
        self.released.set()


def notify_requests(fake):
    return [r for r in fake.attempts if r.path in ("/api/notify", "/api/notify/batch")]


def test_it_sends_a_burst_as_a_few_batch_requests_in_order(fake, make_bot):
    gate = Gate(fake)
    bot = make_bot(fake)
    gate.send_first(bot, "burst 0")
    for n in range(1, 250):
        assert bot.notify(f"burst {n}", metadata={"n": n})
    gate.release()
    assert bot.flush(10)

    assert fake.notify_texts() == [f"burst {n}" for n in range(250)]
    batches = fake.batches()
    assert [len(r.json["messages"]) for r in batches] == [100, 100, 49]  # the first went alone
    assert len(notify_requests(fake)) == 4
    for request in batches:
        assert "idempotency-key" not in request.headers  # each item carries its own
        assert request.headers["authorization"] == f"Bearer {TEST_KEY}"
        for item in request.json["messages"]:
            assert set(item) == {"text", "level", "format", "process_id", "metadata", "idempotency_key"}
            assert item["metadata"]["host"] and item["metadata"]["n"] == int(item["text"].split()[1])
    assert fake.attempts[0].path == "/api/notify"  # one message alone: the single form
    keys = [item["idempotency_key"] for r in batches for item in r.json["messages"]]
    assert len(set(keys)) == 249
    stats = bot.stats
    assert (stats["sent"], stats["dropped"], stats["pending"], stats["spooled"]) == (250, 0, 0, 0)


def test_it_keeps_batches_under_the_servers_body_limit(fake, make_bot):
    gate = Gate(fake)
    bot = make_bot(fake)
    gate.send_first(bot, "first")
    for n in range(12):
        bot.notify(f"{n} " + "x" * 60_000)
    gate.release()
    assert bot.flush(10)
    assert [text.split()[0] for text in fake.notify_texts()] == ["first"] + [str(n) for n in range(12)]
    batches = fake.batches()
    assert len(batches) >= 3
    assert all(len(r.raw) <= 256 * 1024 for r in batches)


def test_it_never_doubles_a_message_when_a_batch_answer_is_lost(fake, make_bot):
    gate = Gate(fake)
    fake.fail_next("/api/notify/batch", 500, process_first=True)  # stored, but the answer is lost
    bot = make_bot(fake)
    gate.send_first(bot, "first")
    for n in range(5):
        bot.notify(f"once {n}")
    gate.release()
    assert bot.flush(10)

    first, second = fake.batches()
    assert first.json["messages"] == second.json["messages"]  # the same keys again
    assert fake.notify_texts() == ["first"] + [f"once {n}" for n in range(5)]
    assert bot.stats["sent"] == 6


def test_it_sends_one_by_one_to_a_server_without_the_batch_form(fake, make_bot):
    fake.batch_form = False
    gate = Gate(fake)
    bot = make_bot(fake)
    gate.send_first(bot, "old server 0")
    for n in range(1, 5):
        bot.notify(f"old server {n}")
    gate.release()
    assert bot.flush(10)
    bot.notify("later 1")
    bot.notify("later 2")
    assert bot.flush(10)

    assert fake.notify_texts() == [f"old server {n}" for n in range(5)] + ["later 1", "later 2"]
    assert len(fake.batches()) == 1  # tried once; from then on one by one
    assert bot.stats["dropped"] == 0


def test_it_drops_only_the_message_the_server_refuses(fake, make_bot, caplog):
    fake.refuse_item(lambda body: body["text"] == "bad", 400, "invalid_input")
    gate = Gate(fake)
    bot = make_bot(fake)
    with caplog.at_level(logging.WARNING, logger="experiment_bot"):
        gate.send_first(bot, "first")
        for text in ("a", "bad", "b"):
            bot.notify(text)
        gate.release()
        assert bot.flush(10)
    assert fake.notify_texts() == ["first", "a", "b"]
    assert len(fake.batches()) == 1  # not retried
    assert (bot.stats["sent"], bot.stats["dropped"]) == (3, 1)
    [warning] = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert "HTTP 400 invalid_input" in warning


def test_it_retries_the_messages_the_server_is_still_processing(fake, make_bot):
    busy = {"left": 2}

    def still_processing(body):
        if body["text"] == "slow" and busy["left"]:
            busy["left"] -= 1
            return True
        return False

    fake.refuse_item(still_processing, 409, "request_in_progress")
    gate = Gate(fake)
    bot = make_bot(fake)
    gate.send_first(bot, "first")
    for text in ("fast", "slow"):
        bot.notify(text)
    gate.release()
    assert bot.flush(10)
    assert fake.notify_texts() == ["first", "fast", "slow"]
    batch_sizes = [len(r.json["messages"]) for r in fake.batches()]
    assert batch_sizes[0] == 2 and sum(1 for r in fake.attempts if r.path == "/api/notify") >= 2
    assert bot.stats["dropped"] == 0


def test_it_waits_out_a_429_and_sends_what_queued_meanwhile_together(fake, make_bot):
    fake.fail_next("/api/notify", 429, headers={"Retry-After": "1"})
    bot = make_bot(fake)
    bot.notify("limited")
    fake.wait_for(lambda: fake.attempts)  # refused once; the sender now waits out Retry-After
    for n in range(30):
        bot.notify(f"meanwhile {n}")
    assert bot.flush(10)
    assert fake.notify_texts() == ["limited"] + [f"meanwhile {n}" for n in range(30)]
    [batch] = fake.batches()
    assert len(batch.json["messages"]) == 31
    assert batch.json["messages"][0]["idempotency_key"] == fake.attempts[0].headers["idempotency-key"]
    assert bot.stats["dropped"] == 0


def test_it_finds_the_message_a_server_keeps_failing_inside_a_batch(fake, make_bot):
    original = fake.handle

    def handle(request):
        body = request.json or {}
        texts = [item.get("text") for item in body.get("messages", [])] or [body.get("text")]
        if "poison" in texts:
            with fake.cond:
                fake.attempts.append(request)
                fake.cond.notify_all()
            return 500, {"error": {"code": "server_error", "message": "boom"}}, {}
        return original(request)

    fake.handle = handle
    gate = Gate(fake)
    bot = make_bot(fake)
    gate.send_first(bot, "first")
    for text in ("a", "poison", "b"):
        bot.notify(text)
    gate.release()
    assert bot.flush(20)
    assert fake.notify_texts() == ["first", "a", "b"]
    assert (bot.stats["sent"], bot.stats["dropped"]) == (3, 1)


def test_it_replaces_invalid_unicode_so_a_crash_notice_always_goes_out(fake, tmp_path):
    code = r"""
        import os, experiment_bot
        name = os.fsdecode(b"run-\xff\xfe.csv")          # a file name that is not UTF-8
        experiment_bot.notify("loading " + name, metadata={"file\udc80": name})
        with experiment_bot.track(name):
            raise RuntimeError("bad row in " + name)
    """
    result = run_script(tmp_path, code, env={"EXPERIMENT_BOT_URL": fake.url, "EXPERIMENT_BOT_KEY": TEST_KEY})
    assert result.returncode == 1 and "RuntimeError" in result.stderr
    for request in fake.attempts:
        text = request.raw.decode("utf-8")  # strict: no surrogates encoded
        assert "\\ud" not in text.lower()  # and no JSON escapes of them either
        json.loads(text)
    [start] = fake.started()
    assert start["name"] == "run-\ufffd\ufffd.csv"
    finish = fake.finish_of(start["uuid"])
    assert finish["status"] == "failed"
    assert finish["error"] == "RuntimeError: bad row in run-\ufffd\ufffd.csv"
    [note] = fake.bodies("/api/notify")
    assert note["text"] == "loading run-\ufffd\ufffd.csv"
    assert note["metadata"]["file\ufffd"] == "run-\ufffd\ufffd.csv"


def test_it_keeps_surrogate_pairs_and_cleans_file_names():
    from experiment_bot.transport import encode_json, encode_multipart, valid_unicode

    assert valid_unicode("ok \ud83d\ude00 \ud800") == "ok \U0001f600 \ufffd"
    assert valid_unicode("fine é") == "fine é"
    assert encode_json({"k\udcff": ["\udcff"]}).decode("utf-8") == '{"k\ufffd": ["\ufffd"]}'
    body, _content_type = encode_multipart(
        {"payload": (None, b"{}", "application/json"), "file": ("train-\udcff.log", b"loss", "text/plain")}
    )
    assert 'filename="train-\ufffd.log"' in body.decode("utf-8")
