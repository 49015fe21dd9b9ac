"""Process-level behaviour: flush at exit, SIGTERM, fork, and the cost of importing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from experiment_bot_fake import TEST_KEY, free_port, run_script, script_env, write_script

HEAVY = (
    "urllib.request",
    "http.client",
    "ssl",
    "subprocess",
    "psutil",
    "yaml",
    "socket",
    "email",
    "tomllib",
    "numpy",
    "dataclasses",
    "inspect",
    "typing",
    "threading",
    "logging",
)


def test_it_flushes_at_exit(fake, tmp_path):
    code = """
        import experiment_bot
        experiment_bot.notify("last words")
    """
    result = run_script(tmp_path, code, env={"EXPERIMENT_BOT_URL": fake.url, "EXPERIMENT_BOT_KEY": TEST_KEY})
    assert result.returncode == 0, result.stderr
    assert [b["text"] for b in fake.bodies("/api/notify")] == ["last words"]


def test_it_does_not_hang_at_exit_when_the_server_is_down(tmp_path):
    code = """
        import experiment_bot
        with experiment_bot.track("doomed"):
            experiment_bot.notify("nobody is listening")
    """
    env = {
        "EXPERIMENT_BOT_URL": f"http://127.0.0.1:{free_port()}",
        "EXPERIMENT_BOT_KEY": TEST_KEY,
        "EXPERIMENT_BOT_FLUSH_TIMEOUT": "1",
    }
    began = time.monotonic()
    result = run_script(tmp_path, code, env=env)
    elapsed = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    assert elapsed < 1 + 3, elapsed  # the deadline plus interpreter start-up
    assert "not delivered before exit" in result.stderr


def test_it_reports_sigterm_as_cancelled(fake, tmp_path):
    script = write_script(
        tmp_path,
        """
        import time, experiment_bot
        with experiment_bot.track("killed by the scheduler"):
            while True:
                time.sleep(60)
    """,
    )
    process = subprocess.Popen(
        [sys.executable, str(script)],
        env=script_env({"EXPERIMENT_BOT_URL": fake.url, "EXPERIMENT_BOT_KEY": TEST_KEY}),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        [start] = fake.wait_for(lambda: fake.started())
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr
    finish = fake.finish_of(start["uuid"])
    assert finish["status"] == "cancelled"
    assert finish["exit_reason"] == "SIGTERM"


def test_it_leaves_a_users_sigterm_handler_alone(fake, tmp_path):
    code = """
        import signal, experiment_bot
        def mine(signum, frame):
            pass
        signal.signal(signal.SIGTERM, mine)
        with experiment_bot.track("job"):
            assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGTERM) is mine
    """
    result = run_script(tmp_path, code, env={"EXPERIMENT_BOT_URL": fake.url, "EXPERIMENT_BOT_KEY": TEST_KEY})
    assert result.returncode == 0, result.stderr


def test_it_restores_the_default_sigterm_handler_after_a_run(fake, make_bot):
    bot = make_bot(fake)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with bot.track("job"):
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_it_gives_a_forked_child_a_fresh_sender(make_bot):
    bot = make_bot(f"http://127.0.0.1:{free_port()}")
    bot.notify("queued in the parent")
    assert bot.stats["pending"] == 1
    pid = os.fork()
    if pid == 0:  # child: must not resend the parent's queue
        os._exit(0 if bot.stats["pending"] == 0 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert bot.stats["pending"] == 1


def test_it_imports_cheaply(tmp_path):
    probe = f"""
        import json, sys, time
        heavy = {HEAVY!r}
        before = set(sys.modules)
        t0 = time.perf_counter()
        import experiment_bot
        elapsed_ms = (time.perf_counter() - t0) * 1000
        after_import = sorted(m for m in heavy if m in sys.modules and m not in before)
        from experiment_bot import bot   # creating the default bot reads config, no network
        after_bot = sorted(m for m in ("urllib.request", "http.client", "subprocess", "psutil", "yaml", "socket")
                           if m in sys.modules and m not in before)
        print(json.dumps({{"ms": elapsed_ms, "after_import": after_import, "after_bot": after_bot}}))
    """
    result = run_script(tmp_path, probe, env={"EXPERIMENT_BOT_DISABLED": "1"})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    print(f"import experiment_bot took {report['ms']:.1f} ms")
    assert report["after_import"] == []
    assert report["after_bot"] == []

    timing = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import experiment_bot"],
        env=script_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    line = [row for row in timing.stderr.splitlines() if row.rstrip().endswith("| experiment_bot")][0]
    print("python -X importtime:", line)


def test_it_delivers_start_and_finish_at_exit_behind_a_message_the_server_keeps_failing(fake, tmp_path):
    original = fake.handle

    def handle(request):
        if request.path == "/api/notify" and (request.json or {}).get("text") == "poison":
            with fake.cond:
                fake.attempts.append(request)
                fake.cond.notify_all()
            return 500, {"error": {"code": "server_error", "message": "boom"}}, {}
        return original(request)

    fake.handle = handle
    code = """
        import experiment_bot
        experiment_bot.notify("poison")
        with experiment_bot.track("behind the poison"):
            pass
    """
    env = {
        "EXPERIMENT_BOT_URL": fake.url,
        "EXPERIMENT_BOT_KEY": TEST_KEY,
        "EXPERIMENT_BOT_FLUSH_TIMEOUT": "15",  # normal backoff; the exit flush cuts it short
    }
    began = time.monotonic()
    result = run_script(tmp_path, code, env=env)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - began < 12
    [start] = fake.started()
    assert start["name"] == "behind the poison"
    assert fake.finish_of(start["uuid"])["status"] == "succeeded"
    assert len([r for r in fake.attempts if r.path == "/api/notify"]) == 8
    assert "notify dropped after 8 attempts" in result.stderr
    assert "not delivered before exit" not in result.stderr
