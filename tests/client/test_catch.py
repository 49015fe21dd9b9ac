"""bot.catch(): a repeating loop error is one message (one group) edited with its count; a crash
carries the diagnosis (hint + the user's frames)."""

from __future__ import annotations

import time

import pytest
from experiment_bot_fake import TEST_KEY, run_script


def repeats(fake) -> list[dict]:
    return [b for b in fake.bodies("/api/notify") if b.get("group")]


def test_it_aggregates_the_same_error_of_a_track_progress_loop_into_one_group(fake, make_bot):
    bot = make_bot(fake, update_interval=60)  # later updates wait: only the first and the final one go out

    def step(i: int) -> None:
        if i % 4 == 3:
            raise KeyError("label")

    for i in bot.track_progress(range(20), name="augment"):
        with bot.catch("augment"):
            step(i)
    assert bot.flush(5)
    sent = repeats(fake)
    assert len(sent) == 2, [b["text"] for b in sent]
    first, last = sent
    assert first["group"] == last["group"] and first["group"].startswith("catch-")
    assert first["level"] == "error" and first["format"] == "markdown"
    assert "**once**" in first["text"] and "iteration 3 ·" in first["text"]
    assert "**5 times**" in last["text"] and "iterations 3 … 19" in last["text"]
    assert "`KeyError: 'label'` in step `augment`" in last["text"]
    assert "📍 `" in last["text"] and "raise KeyError(\"label\")" in last["text"]
    assert last["text"].count("Traceback (most recent call last)") == 1
    [start] = fake.started()
    assert last["process_id"] == start["uuid"]
    assert fake.finish_of(start["uuid"])["status"] == "succeeded"  # caught: the loop went on


def test_it_sends_each_update_when_the_interval_allows(fake, make_bot):
    bot = make_bot(fake)  # update_interval 0: every repeat is sent

    with bot.track("many"):
        for i in range(3):
            with bot.catch(iteration=i * 10):
                int("not a number")
    assert bot.flush(5)
    texts = [b["text"] for b in repeats(fake)]
    assert ["once" in texts[0], "2 times" in texts[1], "3 times" in texts[2]] == [True, True, True]
    assert "iterations 0 … 20" in texts[2]


def test_it_keeps_different_errors_in_different_groups(fake, make_bot):
    bot = make_bot(fake)
    with bot.track("two kinds"):
        for i in range(4):
            with bot.catch():
                if i % 2:
                    raise ValueError("odd")
                raise KeyError("even")
    assert bot.flush(5)
    groups = {b["group"] for b in repeats(fake)}
    assert len(groups) == 2


def test_it_reraises_and_lets_base_exceptions_through(fake, make_bot):
    bot = make_bot(fake)
    with pytest.raises(ValueError):
        with bot.catch(reraise=True):
            raise ValueError("reported, then raised")
    with pytest.raises(KeyboardInterrupt):
        with bot.catch():
            raise KeyboardInterrupt
    assert bot.flush(5)
    assert len(repeats(fake)) == 1


def test_it_catches_as_a_decorator(fake, make_bot):
    bot = make_bot(fake)

    @bot.catch
    def flaky(x: int) -> int:
        return 10 // x

    assert flaky(0) is None and flaky(5) == 2
    assert bot.flush(5)
    [sent] = repeats(fake)
    assert "in step `test_it_catches_as_a_decorator.<locals>.flaky`" in sent["text"]


def test_it_sends_the_last_count_at_exit(fake, tmp_path):
    (tmp_path / ".experiment_bot.toml").write_text("[settings]\nupdate_interval = 3600\n")
    result = run_script(tmp_path, """
        import experiment_bot
        from experiment_bot import bot
        with bot.track("exit run"):
            for i in bot.track_progress(range(50)):
                with experiment_bot.catch("parse"):  # the module-level form
                    int("x%d" % i)
        print("done", flush=True)
    """, env={"EXPERIMENT_BOT_URL": fake.url, "EXPERIMENT_BOT_KEY": TEST_KEY})
    assert result.returncode == 0, result.stderr
    texts = [b["text"] for b in repeats(fake)]
    assert len(texts) == 2 and "**50 times**" in texts[-1] and "iterations 0 … 49" in texts[-1]


def test_it_sends_a_crash_with_its_hint_and_the_users_frames(fake, tmp_path):
    result = run_script(tmp_path, """
        from experiment_bot import bot

        def load(config):
            return config["batchsize"]

        @bot.track(name="crashing")
        def main():
            config = {"batch_size": 32, "lr": 0.1}
            load(config)

        main()
    """, env={"EXPERIMENT_BOT_URL": fake.url, "EXPERIMENT_BOT_KEY": TEST_KEY})
    assert result.returncode == 1
    [finish] = fake.finished()
    assert finish["status"] == "failed"
    diagnosis = finish["diagnosis"]
    assert diagnosis["hint"] == "No key 'batchsize' in dict config; nearest: 'batch_size'"
    assert [(f["file"], f["function"], f["code"]) for f in diagnosis["frames"]] == [  # from the tracked call in
        ("script.py", "main", "load(config)"),
        ("script.py", "load", 'return config["batchsize"]'),
    ]


def test_it_sends_no_frames_at_low_verbosity_but_still_the_hint(fake, tmp_path):
    (tmp_path / ".experiment_bot.toml").write_text('[settings]\nerror_verbosity = "low"\n')
    result = run_script(tmp_path, """
        from experiment_bot import bot
        with bot.track("quiet"):
            open("missing.csv")
    """, env={"EXPERIMENT_BOT_URL": fake.url, "EXPERIMENT_BOT_KEY": TEST_KEY})
    assert result.returncode == 1
    [finish] = fake.finished()
    assert finish["diagnosis"] == {
        "hint": f"No file 'missing.csv' relative to the working directory {tmp_path}"}


def test_it_reports_a_keyboard_interrupt_as_cancelled_with_its_hint(fake, make_bot):
    bot = make_bot(fake)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with bot.track("interrupted"):
            raise KeyboardInterrupt
    assert bot.flush(5) and time.monotonic() - started < 5
    [finish] = fake.finished()
    assert finish["status"] == "cancelled"
    assert finish["diagnosis"]["hint"].startswith("Stopped by hand: Ctrl+C")


def test_it_sends_the_latest_count_once_the_interval_has_passed_without_a_flush(fake, make_bot):
    bot = make_bot(fake, update_interval=0.3)
    with bot.track("timer"):
        for i in range(3):
            with bot.catch(iteration=i):
                raise RuntimeError("flaky")
        fake.wait_for(lambda: any("**3 times**" in b["text"] for b in repeats(fake)), timeout=5)
    texts = [b["text"] for b in repeats(fake)]
    assert len(texts) == 2 and "**once**" in texts[0] and "iterations 0 … 2" in texts[1]


CATCH_OUTSIDE_A_RUN = """
    from experiment_bot import bot
    for i in range(3):
        with bot.catch("parse"):  # no tracked run: the repeats are scoped to this process
            int("x%d" % i)
    print("done", flush=True)
"""


def test_it_posts_a_new_message_for_each_run_of_a_script_outside_a_tracked_run(fake, tmp_path):
    env = {"EXPERIMENT_BOT_URL": fake.url, "EXPERIMENT_BOT_KEY": TEST_KEY}
    groups = []
    for _ in range(2):
        before = len(repeats(fake))
        result = run_script(tmp_path, CATCH_OUTSIDE_A_RUN, env=env)
        assert result.returncode == 0, result.stderr
        sent = repeats(fake)[before:]
        assert {b["process_id"] for b in sent} == {None}
        assert "**3 times**" in sent[-1]["text"]
        groups.append({b["group"] for b in sent})
    first, second = groups
    assert len(first) == 1 and len(second) == 1  # within one process the repeats share one message
    assert first != second  # the second run of the script does not edit the first run's message


def test_it_starts_a_new_catch_session_in_a_forked_child():
    import os

    from experiment_bot.repeats import repeat_group

    parent = repeat_group(None, "step", KeyError, "train.py:3")
    assert repeat_group(None, "step", KeyError, "train.py:3") == parent
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its group and leave at once
        try:
            os.write(write, repeat_group(None, "step", KeyError, "train.py:3").encode())
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 200).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child.startswith("catch-") and child != parent


def test_it_sends_no_names_from_the_users_data_in_hints_at_low_verbosity(fake, tmp_path):
    (tmp_path / ".experiment_bot.toml").write_text('[settings]\nerror_verbosity = "low"\n')
    (tmp_path / "ghp_SECRET_listing.csv").write_text("")
    result = run_script(tmp_path, """
        from experiment_bot import bot
        tokens = {"ghp_SECRET_one": 1, "ghp_SECRET_two": 2}
        with bot.catch("lookup"):
            tokens["ghp_SECRET_on"]
        with bot.catch("open"):
            open("ghp_SECRET_listing.cs")
        with bot.track("quiet"):
            tokens["ghp_SECRET_tw"]
    """, env={"EXPERIMENT_BOT_URL": fake.url, "EXPERIMENT_BOT_KEY": TEST_KEY})
    assert result.returncode == 1
    [finish] = fake.finished()
    assert finish["diagnosis"] == {"hint": "No key 'ghp_SECRET_tw': a key/column that does not exist"}
    texts = [b["text"] for b in repeats(fake)]
    assert len(texts) == 2
    assert "💡 No key 'ghp_SECRET_on': a key/column that does not exist" in texts[0]
    assert f"💡 No file 'ghp_SECRET_listing.cs' relative to the working directory {tmp_path}" in texts[1]
    for text in texts:
        assert "ghp_SECRET_one" not in text and "ghp_SECRET_two" not in text and "listing.csv" not in text
