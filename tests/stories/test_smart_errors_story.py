"""Smart errors through the sandbox: examples/smart_errors.py, a real client script, produces one
repeated-error message edited to its final count and a crash message naming the user's line with a hint."""

from __future__ import annotations

import pytest

from notifications.models import TrackedProcess
from tests.stories.test_notification_story import private_cache, run_example, script_env, text_of  # noqa: F401

pytestmark = pytest.mark.e2e


@pytest.fixture
def api_key(running_bot, user) -> str:
    user.send("/start")
    welcome = user.wait_for_message("Welcome")
    return next(word for word in welcome["text"].split() if word.startswith("exp_"))


def test_it_aggregates_a_repeating_loop_error_and_explains_the_crash(running_bot, user, api_key):
    result = run_example("smart_errors.py", script_env(running_bot, api_key))
    assert result.returncode == 1, result.stderr
    assert "KeyError: 'sale'" in result.stderr  # the user's own traceback is untouched

    crash = user.wait_for_message(predicate=lambda m: "train on sales.csv failed after" in text_of(m), timeout=30)
    text = text_of(crash)
    assert "💡 No column 'sale' in DataFrame sales; nearest: 'sales'" in text
    assert "📍 examples/smart_errors.py:48 in main  print(sales[\"sale\"])" in text
    assert "← failed here" in text
    bold = [text[e["offset"]:e["offset"] + e["length"]] for e in crash.get("entities", []) if e["type"] == "bold"]
    assert any("print(sales[\"sale\"])" in b for b in bold)

    def repeated() -> list[dict]:
        return [m for m in user.messages() if "🔁" in text_of(m) and not m.get("deleted")]

    [first] = repeated()  # queued before the crash: already in the chat
    if "5 times" not in text_of(first):
        first = user.wait_for_edit(first["message_id"], "5 times", timeout=30)
    final = text_of(first)
    assert "KeyError: 'label' in step augment: 5 times (caught, the loop went on)" in final
    assert "iterations 3 … 19" in final
    assert "💡 No key 'label' in dict sample; nearest: 'labels'" in final
    assert final.count("Traceback (most recent call last)") == 1
    assert len(repeated()) == 1  # one message, edited: not five
    diagnosis = running_bot.call(lambda: TrackedProcess.objects.get(name="train on sales.csv").diagnosis)
    assert diagnosis["frames"][-1]["code"] == 'print(sales["sale"])  # a typo: the crash message suggests \'sales\''


def test_it_tells_a_scheduler_sigterm_from_a_crash(running_bot, user, api_key, tmp_path):
    import re
    import signal
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import time
        from experiment_bot import bot
        with bot.track("slurm job"):
            print("started", flush=True)
            while True:
                time.sleep(0.2)
    """)
    (tmp_path / "job.py").write_text(script)
    process = subprocess.Popen([sys.executable, "job.py"], cwd=tmp_path, stdout=subprocess.PIPE, text=True,
                               env=script_env(running_bot, api_key, SLURM_JOB_ID="4242"))
    try:
        assert process.stdout.readline().strip() == "started"
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 143
    finally:
        if process.poll() is None:
            process.kill()
    stopped = user.wait_for_message(predicate=lambda m: "slurm job cancelled after" in text_of(m), timeout=30)
    text = text_of(stopped)
    assert "💡 Slurm sent SIGTERM: the job hit its time limit or was cancelled (scancel)" in text
    # The signal lands in the loop's sleep almost always, but it may still catch the print's flush:
    # either way the line named is the user's own, where the script really was.
    assert re.search(r"📍 job\.py:(7 in <module>  time\.sleep\(0\.2\)|5 in <module>  print\(\"started\", flush=True\)) "
                     r"← stopped here", text), text
