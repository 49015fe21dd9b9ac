"""``from experiment_bot import tqdm``: the console bar as before, and the chat's progress message."""

from __future__ import annotations

import importlib.util

import pytest
from experiment_bot import tqdm, tqdm_compat, trange

real_tqdm_installed = importlib.util.find_spec("tqdm") is not None


def progress_of(fake, uuid):
    return [(b["progress"]["done"], b["progress"]["total"]) for b in fake.heartbeats(uuid) if b["progress"]]


def metrics_of(fake, uuid):
    return [(b["step"], b["metrics"]) for b in fake.heartbeats(uuid) if b["metrics"]]


@pytest.fixture(params=["real tqdm", "no tqdm"])
def console(request, monkeypatch):
    """Every test runs with the real tqdm drawing the console bar, and without tqdm installed."""
    if request.param == "real tqdm":
        if not real_tqdm_installed:
            pytest.skip("tqdm is not installed (pip install tqdm)")
    else:
        monkeypatch.setattr(tqdm_compat, "_real_tqdm", lambda: None)
    return request.param


def test_it_reports_a_wrapped_loop_like_track_progress(fake, make_bot, console, capsys):
    bot = make_bot(fake)
    seen = []
    for item in tqdm(range(20), desc="epochs", bot=bot):
        seen.append(item)
    assert seen == list(range(20))
    assert bot.flush(5)
    [start] = fake.started()
    assert start["name"] == "epochs" and start["total"] == 20
    assert progress_of(fake, start["uuid"]) == [(d, 20) for d in range(2, 21, 2)]
    assert fake.finish_of(start["uuid"])["status"] == "succeeded"
    drawn = capsys.readouterr().err
    assert ("20/20" in drawn) == (console == "real tqdm")


def test_it_sends_set_postfix_values_as_metrics(fake, make_bot, console):
    bot = make_bot(fake)
    bar = tqdm(range(4), desc="train", bot=bot)
    for step in bar:
        bar.set_postfix(loss=1.0 / (step + 1), note="text is shown, not sent")
    assert bot.flush(5)
    [start] = fake.started()
    assert metrics_of(fake, start["uuid"]) == [(0, {"loss": 1.0}), (1, {"loss": 0.5}), (2, {"loss": 1 / 3}),
                                               (3, {"loss": 0.25})]


def test_it_reports_manual_updates_and_finishes_on_close(fake, make_bot, console):
    bot = make_bot(fake)
    with tqdm(total=10, desc="batches", bot=bot, every=4) as bar:
        for _ in range(4):
            bar.update(2)
        assert bot.flush(5)
        [start] = fake.started()
        assert progress_of(fake, start["uuid"]) == [(4, 10), (8, 10)], "sent while the bar moves"
        bar.update(2)
        bar.set_postfix({"loss": bar.n / 100})
        assert bar.n == 10
    assert bot.flush(5)
    assert start["name"] == "batches" and start["total"] == 10
    assert progress_of(fake, start["uuid"])[-1] == (10, 10)
    assert (10, {"loss": 0.1}) in metrics_of(fake, start["uuid"])
    finish = fake.finish_of(start["uuid"])
    assert finish["status"] == "succeeded" and finish["exit_reason"] is None


def test_it_says_a_manual_bar_was_closed_early(fake, make_bot, console):
    bot = make_bot(fake)
    bar = tqdm(total=10, desc="download", bot=bot)
    bar.update(4)
    bar.close()
    bar.close()  # twice is fine
    assert bot.flush(5)
    [start] = fake.started()
    finish = fake.finish_of(start["uuid"])
    assert finish["status"] == "succeeded" and finish["exit_reason"] == "stopped early at 4/10 items"
    assert progress_of(fake, start["uuid"])[-1] == (4, 10)


def test_it_reports_an_exception_in_a_manual_bar_as_failed(fake, make_bot, console):
    bot = make_bot(fake)
    with pytest.raises(KeyError), tqdm(total=3, desc="rows", bot=bot) as bar:
        bar.update()
        raise KeyError("label")
    assert bot.flush(5)
    [start] = fake.started()
    finish = fake.finish_of(start["uuid"])
    assert finish["status"] == "failed" and finish["error"] == "KeyError: 'label'"


def test_it_reports_on_the_active_run(fake, make_bot, console):
    bot = make_bot(fake)
    with bot.track("outer") as run:
        for _ in trange(5, bot=bot):
            pass
        assert run.status == "running"
    assert bot.flush(5)
    [start] = fake.started()
    assert start["uuid"] == run.uuid and progress_of(fake, run.uuid)[-1] == (5, 5)


def test_it_sends_nothing_when_disabled(fake, make_bot, console):
    bot = make_bot(fake)
    assert list(tqdm(range(3), bot=bot, disable=True)) == [0, 1, 2]
    with tqdm(total=3, bot=bot, disable=True) as bar:
        bar.update(3)
    assert bot.flush(5)
    assert fake.started() == []


@pytest.mark.skipif(not real_tqdm_installed, reason="tqdm is not installed (pip install tqdm)")
def test_it_passes_tqdm_arguments_and_attributes_through(fake, make_bot):
    import tqdm as real

    bot = make_bot(fake)
    bar = tqdm(range(3), desc="x", bot=bot, unit="img", leave=False, mininterval=0)
    assert isinstance(bar._bar, real.tqdm) and bar.unit == "img" and len(bar) == 3
    assert list(bar) == [0, 1, 2]
    tqdm.write("a line above the bar")
