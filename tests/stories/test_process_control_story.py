"""Stop, pause and act on a running script from the chat: a real client script, the real server and
bot, the Telegram sandbox. The tap waits on the server and reaches the script in the answer to its
next heartbeat; nothing connects to the user's machine."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from notifications.models import TrackedProcess
from tests.stories.test_notification_story import ROOT, private_cache, script_env, text_of  # noqa: F401

pytestmark = pytest.mark.e2e


@pytest.fixture
def api_key(running_bot, user) -> str:
    user.send("/start")
    welcome = user.wait_for_message("Welcome")
    return next(word for word in welcome["text"].split() if word.startswith("exp_"))


class Script:
    """A client script as a subprocess; its stdout lines are collected by a reader thread."""

    def __init__(self, code: str, env: dict[str, str], *, path: Path | None = None) -> None:
        command = [sys.executable, str(path)] if path else [sys.executable, "-c", textwrap.dedent(code)]
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()

    def wait_for_line(self, text: str, timeout: float = 30) -> str:
        with self.changed:
            found = self.changed.wait_for(lambda: next((x for x in self.lines if text in x), None), timeout)
        assert found, f"no line with {text!r} in:\n" + "\n".join(self.lines)
        return found

    def finish(self, timeout: float = 30) -> int:
        code = self.process.wait(timeout)
        self.reader.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def buttons(message) -> list[str]:
    rows = (message.get("reply_markup") or {}).get("inline_keyboard") or []
    return [button["text"] for row in rows for button in row]


def process_row(running_bot, name: str) -> TrackedProcess:
    return running_bot.call(lambda: TrackedProcess.objects.get(name=name))


def test_it_stops_a_running_script_from_its_message(running_bot, user, api_key):
    script = Script("""
        import time
        from experiment_bot import bot
        with bot.track("long training", heartbeat_interval=1) as run:
            print("started", flush=True)
            for epoch in bot.track_progress(range(100_000), every="1s"):
                run.log_metrics(epoch, loss=round(1 / (epoch + 1), 6))
                time.sleep(0.01)  # one epoch of training
        print("after the block: saving the model", flush=True)
    """, script_env(running_bot, api_key))
    try:
        started = user.wait_for_message("long training", timeout=30)
        assert "⏹ Stop" in buttons(started)
        query = user.tap("⏹ Stop", message=started)
        assert "Stop requested" in user.wait_for_callback_answer(query)["text"]
        # The start message says so at once, without buttons left to tap.
        edited = user.wait_for_edit(started["message_id"], "stop requested")
        assert buttons(edited) == []
        finished = user.wait_for_message(predicate=lambda m: "stopped from Telegram after" in text_of(m)
                                         and "⏱" in text_of(m), timeout=30)
        assert script.finish() == 0
    finally:
        script.kill()
    script.wait_for_line("after the block: saving the model")
    process = process_row(running_bot, "long training")
    assert (process.state, process.exit_reason, process.control) == ("cancelled", "stopped from Telegram", "stop")
    assert 0 < process.progress_done < 100_000
    assert "loss" in process.metrics and "📊 loss" in text_of(finished)
    assert "long training" in text_of(finished)
    final_start = user.wait_for_edit(started["message_id"], "stopped from Telegram")
    assert buttons(final_start) == []


def test_it_pauses_resumes_runs_actions_and_stops_a_script(running_bot, user, api_key):
    script = Script("""
        import time
        from experiment_bot import bot
        lr = [0.1]
        def halve():
            lr[0] /= 2
            print("lr is now", lr[0], flush=True)
            return lr[0]
        with bot.track("tunable", heartbeat_interval=1, actions={"lr ×0.5": halve}) as run:
            for step in bot.track_progress(range(100_000), total=100_000, every=50):
                if step == 0:
                    print("looping", flush=True)
                time.sleep(0.01)  # one training step
        print("done", run.status, flush=True)
    """, script_env(running_bot, api_key))
    try:
        script.wait_for_line("looping")
        bar = user.wait_for_message(predicate=lambda m: "⏸ Pause" in buttons(m), timeout=30)
        assert "lr ×0.5" in buttons(bar)

        query = user.tap("lr ×0.5", message=bar)
        assert "next step" in user.wait_for_callback_answer(query)["text"]
        script.wait_for_line("lr is now 0.05")
        assert "👆 lr ×0.5 done → 0.05" in text_of(user.wait_for_message("lr ×0.5 done", timeout=30))

        query = user.tap("⏸ Pause", message=bar)
        assert "Pause requested" in user.wait_for_callback_answer(query)["text"]
        paused = user.wait_for_edit(bar["message_id"], "paused from Telegram", timeout=30)
        assert "▶ Resume" in buttons(paused) and "⏸ Pause" not in buttons(paused)
        script.wait_for_line("paused from Telegram; waiting for ▶ Resume")
        done_while_paused = process_row(running_bot, "tunable").progress_done

        query = user.tap("▶ Resume", message=paused)
        assert "Resumed" in user.wait_for_callback_answer(query)["text"]
        script.wait_for_line("resumed from Telegram")
        resumed = user.wait_for_edit(bar["message_id"], predicate=lambda m: "⏸ Pause" in buttons(m), timeout=30)
        user.tap("⏹ Stop", message=resumed)
        user.wait_for_message(predicate=lambda m: "tunable" in text_of(m) and "stopped from Telegram after"
                              in text_of(m) and "⏱" in text_of(m), timeout=30)
        assert script.finish(60) == 0
    finally:
        script.kill()
    script.wait_for_line("done cancelled")
    process = process_row(running_bot, "tunable")
    assert process.progress_done > done_while_paused  # it went on after ▶ Resume
    assert (process.state, process.exit_reason, process.pending_actions) == ("cancelled", "stopped from Telegram", [])


def test_it_takes_the_buttons_off_the_start_message_when_the_run_ends(running_bot, user, api_key):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        from experiment_bot import bot
        with bot.track("quick job"):
            pass
    """)], env=script_env(running_bot, api_key), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    started = user.wait_for_message("quick job", timeout=30)
    user.wait_for_message(predicate=lambda m: "quick job" in text_of(m) and "finished in" in text_of(m), timeout=30)
    if buttons(started):  # it went out while the run lived: the end edits it
        started = user.wait_for_edit(started["message_id"], predicate=lambda m: buttons(m) == [])
    assert "quick job" in text_of(started) and buttons(started) == []
    assert process_row(running_bot, "quick job").control == "run"


def test_it_answers_a_tap_that_crosses_the_end_of_the_run(running_bot, user, api_key):
    """The run has ended but the edit taking ⏹ Stop off is not in the chat yet when the user taps it."""
    script = Script("""
        import time
        from experiment_bot import bot
        with bot.track("slow job"):
            print("running", flush=True)
            time.sleep(600)
    """, script_env(running_bot, api_key))
    try:
        script.wait_for_line("running")
        started = user.wait_for_message(predicate=lambda m: "slow job" in text_of(m) and "⏹ Stop" in buttons(m),
                                        timeout=30)
        # The run's end as recorded, before its edit is queued: the moment the tap crosses it.
        running_bot.call(lambda: TrackedProcess.objects.get(name="slow job").finish("succeeded"))
        query = user.tap("⏹ Stop", message=started)
        assert user.wait_for_callback_answer(query)["text"] == "It has already ended (succeeded); nothing to do."
        cleared = user.wait_for_edit(started["message_id"], predicate=lambda m: buttons(m) == [])
        assert "slow job" in text_of(cleared)
        assert process_row(running_bot, "slow job").control == "run"
    finally:
        script.kill()


def test_it_runs_the_stop_from_chat_example(running_bot, user, api_key):
    script = Script("", script_env(running_bot, api_key, PYTHONUNBUFFERED="1"),
                    path=ROOT / "examples" / "stop_from_chat.py")
    try:
        bar = user.wait_for_message(predicate=lambda m: "lr ×0.5" in buttons(m) and "⏸ Pause" in buttons(m),
                                    timeout=60)
        user.tap("lr ×0.5", message=bar)
        user.wait_for_message("lr ×0.5 done → 0.05", timeout=30)
        user.tap("⏹ Stop", message=bar)
        user.wait_for_message(predicate=lambda m: "stopped from Telegram after" in text_of(m)
                              and "📊" in text_of(m), timeout=30)
        assert script.finish(30) == 0
    finally:
        script.kill()
    script.wait_for_line("run cancelled: saving the model (lr 0.05")
