"""A user's experiment scripts report to their chat through the experiment_bot library."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from core.models import OutboxMessage
from notifications.models import TrackedProcess

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    """The client's spool (under $XDG_CACHE_HOME) in the test's folder; scripts inherit it."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


def text_of(message) -> str:
    return message.get("text") or message.get("caption") or ""


@pytest.fixture
def api_key(running_bot, user) -> str:
    user.send("/start")
    welcome = user.wait_for_message("Welcome")
    return next(word for word in welcome["text"].split() if word.startswith("exp_"))


def script_env(running_bot, api_key: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "EXPERIMENT_BOT_URL": running_bot.web_url,
        "EXPERIMENT_BOT_KEY": api_key,
        "PYTHONPATH": f"{ROOT / 'client'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        **extra,
    }


def run_example(name: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "examples" / name)], env=env, capture_output=True,
                          text=True, timeout=120)


def test_it_delivers_a_quick_notification(running_bot, user, api_key):
    result = run_example("quick_notify.py", script_env(running_bot, api_key))
    assert result.returncode == 0, result.stderr
    assert user.wait_for_message(predicate=lambda m: "ℹ️" in text_of(m) or "✅" in text_of(m), timeout=30)


def test_it_edits_one_progress_message_and_finishes_with_a_chart(running_bot, user, api_key):
    result = run_example("progress.py", script_env(running_bot, api_key))
    assert result.returncode == 0, result.stderr
    started = user.wait_for_message("training", timeout=30)
    progress = user.wait_for_message(predicate=lambda m: "%" in text_of(m), timeout=30)
    final = user.wait_for_edit(progress["message_id"], "100%", timeout=30)
    assert "100/100" in text_of(final)
    finished = user.wait_for_message(predicate=lambda m: "finished in" in text_of(m), timeout=30)
    assert "loss" in text_of(finished)
    assert finished.get("photo"), "the chart and its text arrive as one message (the text is the caption)"
    assert user.download(finished["photo"][-1]["file_id"]).startswith(b"\x89PNG")
    progress_messages = [m for m in user.bot_messages() if "%" in text_of(m) and "▓" in text_of(m)]
    assert len(progress_messages) == 1, "progress must edit one message, not send many"
    assert started["message_id"] != progress["message_id"]


def test_it_reports_a_crash_with_its_traceback(running_bot, user, api_key):
    result = run_example("crash.py", script_env(running_bot, api_key))
    assert result.returncode != 0
    crash = user.wait_for_message(predicate=lambda m: "failed after" in text_of(m), timeout=30)
    text = text_of(crash)
    assert "Traceback" in text or "Error" in text
    assert any(e["type"] == "pre" for e in crash.get("entities", []))


def test_it_reports_a_killed_process_as_stalled(running_bot, user, api_key, settings):
    settings.HEARTBEAT_GRACE = 1
    script = textwrap.dedent("""
        import time
        from experiment_bot import bot
        with bot.track("doomed run", heartbeat_interval=1):
            print("started", flush=True)
            while True:
                time.sleep(0.5)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], env=script_env(running_bot, api_key),
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "started"
        user.wait_for_message("doomed run", timeout=30)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        stalled = user.wait_for_message(predicate=lambda m: "no heartbeat" in text_of(m), timeout=30)
        assert "doomed run" in text_of(stalled)
        assert running_bot.call(lambda: TrackedProcess.objects.get().state) == TrackedProcess.State.STALLED
    finally:
        if process.poll() is None:
            process.kill()


def test_it_revokes_a_key_so_scripts_can_no_longer_send(running_bot, user, api_key):
    user.send("/revoke")
    user.tap("Yes, revoke it", message=user.wait_for_message("Revoke key"))
    user.wait_for_edit(user.last_bot_message()["message_id"], "is revoked")
    check = textwrap.dedent("""
        import sys, experiment_bot
        from experiment_bot.errors import ApiError
        try:
            experiment_bot.ExperimentBot().validate()
        except ApiError as exc:
            sys.exit(3 if exc.status == 401 else 4)
    """)
    result = subprocess.run([sys.executable, "-c", check], env=script_env(running_bot, api_key),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stdout + result.stderr


def test_it_pairs_a_machine_with_setup_and_a_tap(running_bot, user, api_key, tmp_path):
    env = script_env(running_bot, api_key)
    env.pop("EXPERIMENT_BOT_KEY")
    process = subprocess.Popen([sys.executable, "-c", "import experiment_bot; experiment_bot.setup()"],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        link_line = next(line for line in process.stdout if "?start=pair_" in line)
        code = link_line.split("?start=")[1].split()[0]
        user.send(f"/start {code}")
        question = user.wait_for_message("Pair a machine with this chat?")
        assert "Approve only if you just ran experiment_bot.setup() yourself" in question["text"]
        user.tap("✅ Approve")
        user.wait_for_edit(question["message_id"], "Paired!")
        output = process.communicate(timeout=60)[0]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    saved = (tmp_path / ".env").read_text()
    assert "EXPERIMENT_BOT_KEY=exp_" in saved and oct((tmp_path / ".env").stat().st_mode & 0o777) == "0o600"
    new_key = saved.split("EXPERIMENT_BOT_KEY=")[1].split()[0]
    assert new_key != api_key
    result = run_example("quick_notify.py", {**script_env(running_bot, new_key)})
    assert result.returncode == 0, result.stderr


@pytest.mark.django_db(transaction=True)
def test_it_delivers_what_was_sent_while_the_server_was_down(settings, make_account):
    """Notifications queued by the client while nothing listens arrive once the server is up, once each."""
    from experiment_bot import ExperimentBot

    from accounts.models import ApiKey
    from core.models import OutboxMessage
    from telegram_app.runtime import RunOptions
    from tests.bot.conftest import RunningBot, free_port

    port = free_port()
    settings.PUBLIC_URL = f"http://127.0.0.1:{port}"
    account = make_account()
    _, raw_key = ApiKey.issue(account)
    client = ExperimentBot(api_key=raw_key, server=settings.PUBLIC_URL, retry_base_delay=0.05, retry_max_delay=0.5)
    for n in range(3):
        client.notify(f"epoch {n} done")
    assert client.flush(timeout=0.5) is False  # nothing listens yet: all three wait in the client
    server = RunningBot(RunOptions(port=port, sandbox_port=0)).start()
    try:
        assert client.flush(timeout=30) is True
        texts = server.call(lambda: sorted(OutboxMessage.objects.filter(kind="notify")
                                           .values_list("payload__text", flat=True)))
        assert texts == ["epoch 0 done", "epoch 1 done", "epoch 2 done"]
    finally:
        client.close()
        server.stop()


class Forwarder:
    """A TCP port that forwards to the real server once ``start()``ed: before that nothing
    listens there, which is what a client sees of a server that is down."""

    def __init__(self, target_port: int) -> None:
        from tests.bot.conftest import free_port

        self.port = free_port()
        self.target_port = target_port
        self._listener: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Forwarder:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, target), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def read_until_all(user, texts: list[str], timeout: float = 90) -> None:
    """Read the chat's new bot messages until every one of ``texts`` was in one of them."""
    deadline = time.monotonic() + timeout
    missing = set(texts)
    while missing:
        message = user.wait_for_message(timeout=max(0.1, deadline - time.monotonic()))
        missing = {text for text in missing if text not in text_of(message)}


def chat_text(user) -> str:
    return "\n".join(text_of(message) for message in user.bot_messages())


def run_script(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=120)


def test_it_delivers_every_one_of_100_notifications_sent_just_before_exit(running_bot, user, api_key):
    result = run_script("""
        import experiment_bot
        for n in range(100):
            experiment_bot.notify(f"burst {n:03d} done")
    """, script_env(running_bot, api_key))
    assert result.returncode == 0, result.stderr
    assert "not delivered" not in result.stderr and "dropped" not in result.stderr, result.stderr

    texts = [f"burst {n:03d} done" for n in range(100)]
    read_until_all(user, texts)
    everything = chat_text(user)
    assert [everything.count(text) for text in texts] == [1] * 100  # each once, whatever the merging
    rows = running_bot.call(lambda: list(OutboxMessage.objects.filter(kind="notify")
                                         .order_by("id").values_list("payload__text", flat=True)))
    assert rows == texts


def test_it_spools_at_exit_while_the_server_is_down_and_flush_delivers_each_once(
    running_bot, user, api_key, private_cache
):
    port = int(running_bot.web_url.rsplit(":", 1)[1].rstrip("/"))
    server = Forwarder(port)  # the URL the script uses: nothing listens there yet
    env = {**script_env(running_bot, api_key), "EXPERIMENT_BOT_URL": server.url, "EXPERIMENT_BOT_FLUSH_TIMEOUT": "1"}
    result = run_script("""
        import experiment_bot
        with experiment_bot.track("offline sweep"):
            for n in range(5):
                experiment_bot.notify(f"offline result {n}")
    """, env)
    assert result.returncode == 0, result.stderr
    assert "7 spooled" in result.stderr and "python -m experiment_bot flush" in result.stderr, result.stderr
    assert list((private_cache / "experiment_bot").glob("*/*.spool.json"))

    server.start()
    try:
        flush = subprocess.run([sys.executable, "-m", "experiment_bot", "flush"], env=env, capture_output=True,
                               text=True, timeout=120)
        assert flush.returncode == 0, flush.stdout + flush.stderr
        assert "7 of 7 spooled message(s) sent" in flush.stdout
        texts = [f"offline result {n}" for n in range(5)]
        read_until_all(user, [*texts, "offline sweep"])
        user.wait_for_message(predicate=lambda m: "finished in" in text_of(m), timeout=30)

        again = subprocess.run([sys.executable, "-m", "experiment_bot", "flush"], env=env, capture_output=True,
                               text=True, timeout=120)
        assert "nothing spooled" in again.stdout, again.stdout + again.stderr
        everything = chat_text(user)
        assert [everything.count(text) for text in texts] == [1] * 5
        assert running_bot.call(lambda: OutboxMessage.objects.filter(kind="notify").count()) == 5
        assert running_bot.call(lambda: TrackedProcess.objects.get().state) == TrackedProcess.State.SUCCEEDED
    finally:
        server.stop()
