"""track_progress: heartbeats at 10% steps, always 100% at the end, its own run when needed."""

from __future__ import annotations

import pytest
from experiment_bot import tracker
from experiment_bot.progress import ProgressSchedule, parse_every
from experiment_bot_fake import TEST_KEY, run_script


def progress_of(fake, uuid):
    return [(b["progress"]["done"], b["progress"]["total"]) for b in fake.heartbeats(uuid)]


def test_it_sends_every_10_percent_and_100_for_a_generator_with_total(fake, make_bot):
    bot = make_bot(fake)
    items = (i * i for i in range(100))
    seen = list(bot.track_progress(items, total=100, name="epochs"))
    assert seen == [i * i for i in range(100)]
    assert bot.flush(5)
    [start] = fake.started()
    assert start["name"] == "epochs" and start["total"] == 100
    assert progress_of(fake, start["uuid"]) == [(d, 100) for d in range(10, 101, 10)]
    assert fake.finish_of(start["uuid"])["status"] == "succeeded"


def test_it_uses_len_of_a_list_and_ends_at_100_percent(fake, make_bot):
    bot = make_bot(fake)
    for _ in bot.track_progress(list("abcdefghijklmnopqrstuvw")):  # 23 items
        pass
    assert bot.flush(5)
    [start] = fake.started()
    assert start["total"] == 23
    sent = progress_of(fake, start["uuid"])
    assert sent[-1] == (23, 23)
    assert [d for d, _ in sent] == [3, 5, 7, 10, 12, 14, 17, 19, 21, 23]


def test_it_reports_unknown_totals_at_the_end(fake, make_bot):
    bot = make_bot(fake)
    for _ in bot.track_progress(iter(range(7))):
        pass
    assert bot.flush(5)
    [start] = fake.started()
    assert start["total"] is None
    assert progress_of(fake, start["uuid"]) == [(7, 7)]


def test_it_sends_every_n_items(fake, make_bot):
    bot = make_bot(fake)
    for _ in bot.track_progress(range(10), every=4):
        pass
    assert bot.flush(5)
    [start] = fake.started()
    assert progress_of(fake, start["uuid"]) == [(4, 10), (8, 10), (10, 10)]


def test_it_attaches_to_the_active_run_instead_of_starting_one(fake, make_bot):
    bot = make_bot(fake)
    with bot.track("training") as run:
        for _epoch in bot.track_progress(range(5)):
            for _batch in bot.track_progress(range(3)):  # the outer loop owns the bar
                pass
    assert bot.flush(5)
    assert [s["name"] for s in fake.started()] == ["training"]
    assert progress_of(fake, run.uuid) == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


def test_it_finishes_a_loop_left_with_break_as_stopped_early(fake, make_bot, monkeypatch):
    monkeypatch.setattr(tracker, "DEFER_GRACE", 0.05)
    bot = make_bot(fake)
    for index in bot.track_progress(range(10), name="early stopping"):
        if index == 3:
            break
    [start] = fake.wait_for(lambda: fake.started())
    finish = fake.wait_for(lambda: fake.finish_of(start["uuid"]))
    assert finish["status"] == "succeeded"
    assert finish["exit_reason"] == "stopped early at 3/10"


def test_it_reports_an_exception_raised_by_the_iterable(fake, make_bot):
    bot = make_bot(fake)

    def broken_loader():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError):
        for _ in bot.track_progress(broken_loader(), total=5):
            pass
    assert bot.flush(5)
    [finish] = fake.finished()
    assert finish["status"] == "failed"
    assert finish["error"] == "OSError: disk gone"


def test_it_reports_a_crash_in_the_loop_body(fake, tmp_path):
    code = """
        import experiment_bot
        for epoch in experiment_bot.track_progress(range(100), name="crashy"):
            if epoch == 42:
                raise RuntimeError("loss is NaN")
    """
    result = run_script(tmp_path, code, env={"EXPERIMENT_BOT_URL": fake.url, "EXPERIMENT_BOT_KEY": TEST_KEY})
    assert result.returncode == 1
    assert "RuntimeError: loss is NaN" in result.stderr  # the user's traceback is still printed
    [finish] = fake.finished()
    assert finish["status"] == "failed"
    assert finish["error"] == "RuntimeError: loss is NaN"
    assert "loss is NaN" in finish["traceback"]


@pytest.mark.parametrize(
    ("every", "expected"),
    [("10%", ("percent", 10.0)), (25, ("items", 25.0)), ("30s", ("seconds", 30.0)), ("5", ("items", 5.0))],
)
def test_it_parses_every(every, expected):
    assert parse_every(every) == expected


@pytest.mark.parametrize("every", ["0%", "150%", 0, -1, "fast", True, "0s"])
def test_it_rejects_bad_every_values(every):
    with pytest.raises(ValueError):
        parse_every(every)


def test_it_falls_back_to_time_based_updates_without_a_total():
    schedule = ProgressSchedule("10%", None)
    assert (schedule.mode, schedule.amount) == ("seconds", 30.0)
