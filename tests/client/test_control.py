"""Stop, pause and actions from the chat: the heartbeat answer carries them, the loop acts on them."""

from __future__ import annotations

import sys
import threading
import time

import pytest
from experiment_bot import StopRequested, tracker

WORK = 0.002  # seconds of "training" per loop item


def work() -> None:
    time.sleep(WORK)  # stands for the user's work in the loop body, not a synchronisation


def test_it_raises_stop_requested_at_the_next_step_and_reports_stopped_from_telegram(fake, make_bot):
    bot = make_bot(fake)
    steps = 0
    with bot.track("train", heartbeat_interval=0.05) as run:
        for step in bot.track_progress(range(100_000), every=1000):
            if step == 0:
                fake.command(run.uuid, control="stop")
            run.log_metrics(step, loss=1 / (step + 1))
            steps += 1
            work()
    # The with block ended quietly; the code after it runs.
    assert 0 < steps < 100_000
    assert bot.flush(5)
    finish = fake.finish_of(run.uuid)
    assert (finish["status"], finish["exit_reason"]) == ("cancelled", "stopped from Telegram")
    assert finish["metrics"]["loss"] == pytest.approx(1 / steps)
    assert fake.heartbeats(run.uuid)[-1]["progress"]["done"] == steps  # the bar shows where it stopped


def test_it_lets_stop_requested_through_except_exception(fake, make_bot):
    bot = make_bot(fake)
    caught = []
    with bot.track("train", heartbeat_interval=0.05) as run:
        fake.command(run.uuid, control="stop")
        try:
            for _ in bot.track_progress(range(100_000)):
                work()
        except Exception as exc:  # the user's broad handler must not swallow a stop
            caught.append(exc)
        raise AssertionError("not reached: StopRequested ends the block")
    assert caught == []
    assert bot.flush(5)
    assert fake.finish_of(run.uuid)["exit_reason"] == "stopped from Telegram"


def test_it_raises_in_a_loop_without_a_track_block_and_reports_the_auto_run(fake, make_bot):
    bot = make_bot(fake, heartbeat_interval=0.05)
    with pytest.raises(StopRequested):
        for step in bot.track_progress(range(100_000), name="loop"):
            if step == 0:
                fake.command(fake.wait_for(fake.started)[0]["uuid"], control="stop")
            work()
    assert bot.flush(5)
    [start] = fake.started()
    assert fake.finish_of(start["uuid"])["exit_reason"] == "stopped from Telegram"


def test_it_sets_should_stop_for_code_that_polls(fake, make_bot):
    bot = make_bot(fake)
    with bot.track("poller", heartbeat_interval=0.05) as run:
        assert bot.should_stop is False
        fake.command(run.uuid, control="stop")
        fake.wait_for(lambda: bot.should_stop)
    assert bot.flush(5)
    finish = fake.finish_of(run.uuid)
    assert (finish["status"], finish["exit_reason"]) == ("cancelled", "stopped from Telegram")


def test_it_runs_tapped_actions_once_in_the_loop_thread_and_reports_them(fake, make_bot):
    bot = make_bot(fake)
    lr = [0.1]
    threads = []

    def halve() -> float:
        threads.append(threading.get_ident())
        lr[0] /= 2
        return lr[0]

    with bot.track("train", heartbeat_interval=0.05, actions={"lr ×0.5": halve}) as run:
        fake.command(run.uuid, actions=["lr ×0.5", "not offered"])
        for _ in bot.track_progress(range(100_000)):
            if threads:
                break
            work()
    assert threads == [threading.get_ident()] and lr == [0.05]
    assert bot.flush(5)
    assert fake.started()[0]["actions"] == ["lr ×0.5"]
    assert "👆 lr ×0.5 done → 0.05" in fake.notify_texts()


def test_it_reports_a_failing_action_and_goes_on(fake, make_bot):
    bot = make_bot(fake)

    def broken() -> None:
        raise ValueError("no optimizer yet")

    with bot.track("train", heartbeat_interval=0.05, actions={"save": broken}) as run:
        fake.command(run.uuid, actions=["save"])
        for _ in bot.track_progress(range(100_000)):
            if any("save failed" in text for text in fake.notify_texts()):
                break
            work()
    assert bot.flush(5)
    assert fake.finish_of(run.uuid)["status"] == "succeeded"
    assert "⚠️ save failed: ValueError: no optimizer yet" in fake.notify_texts()


def test_it_waits_while_paused_and_goes_on_when_resumed(fake, make_bot):
    bot = make_bot(fake)
    done = []
    started = threading.Event()

    def loop() -> None:
        with bot.track("train", heartbeat_interval=0.05) as run:
            done.append(run)
            for _ in bot.track_progress(range(400)):
                started.set()
                work()
            done.append("finished")

    thread = threading.Thread(target=loop)
    thread.start()
    assert started.wait(5)
    run = done[0]
    fake.command(run.uuid, control="pause")
    fake.wait_for(lambda: run.paused)
    paused_count = len(fake.heartbeats(run.uuid))
    fake.wait_for(lambda: len(fake.heartbeats(run.uuid)) > paused_count + 2)  # still alive while paused
    assert done == [run] and thread.is_alive()
    fake.command(run.uuid, control="run")
    thread.join(10)
    assert done == [run, "finished"] and not run.paused
    assert bot.flush(5)
    assert fake.finish_of(run.uuid)["status"] == "succeeded"


def test_it_heartbeats_sooner_while_listening_with_a_long_interval(fake, make_bot, monkeypatch):
    monkeypatch.setattr(tracker, "CONTROL_POLL_S", 0.05)
    bot = make_bot(fake)
    with bot.track("slow beats", heartbeat_interval=3600) as run:
        fake.command(run.uuid, control="stop")
        for _ in bot.track_progress(range(100_000), every="1h"):
            work()
    assert bot.flush(5)
    assert fake.finish_of(run.uuid)["exit_reason"] == "stopped from Telegram"



def test_it_asks_for_commands_while_frequent_progress_updates_are_coalesced(fake, make_bot):
    bot = make_bot(fake, update_interval=3600)  # progress updates wait an hour to be sent
    steps = 0
    with bot.track("busy loop", heartbeat_interval=0.05) as run:
        fake.command(run.uuid, control="stop")
        for _ in bot.track_progress(range(5000), every=1):
            steps += 1
            work()
    assert steps < 5000
    assert bot.flush(5)
    assert fake.finish_of(run.uuid)["exit_reason"] == "stopped from Telegram"


def test_it_reports_success_when_nothing_listened_for_the_stop(fake, make_bot):
    bot = make_bot(fake)
    with bot.track("deaf", heartbeat_interval=0.05) as run:
        fake.command(run.uuid, control="stop")
        fake.wait_for(lambda: len(fake.heartbeats(run.uuid)) >= 2)  # the answers said "stop"
    assert bot.flush(5)
    assert fake.finish_of(run.uuid)["status"] == "succeeded"


# --------------------------------------------------------------------------- framework callbacks


@pytest.fixture
def stopped_run(fake, make_bot):
    """A run whose heartbeat answers already said "stop" before training starts."""
    bot = make_bot(fake)
    tracker_ = bot.track("fit", heartbeat_interval=0.05)
    run = tracker_.__enter__()
    fake.command(run.uuid, control="stop")
    fake.wait_for(lambda: run._control == "stop")
    yield bot, run
    tracker_.__exit__(None, None, None)
    assert bot.flush(5)
    finish = fake.finish_of(run.uuid)
    assert (finish["status"], finish["exit_reason"]) == ("cancelled", "stopped from Telegram")


def test_it_stops_a_keras_fit_gracefully(stopped_run, monkeypatch):
    from experiment_bot import keras
    from fake_frameworks import fake_keras_module, keras_fit

    monkeypatch.setitem(sys.modules, "keras", fake_keras_module())
    callback = keras.build_callback_class()(bot=stopped_run[0])
    keras_fit([callback], epochs=50)  # returns normally: model.stop_training was set
    assert stopped_run[1].progress["done"] <= 1


def test_it_stops_a_lightning_fit_gracefully(stopped_run, monkeypatch):
    from experiment_bot import lightning
    from fake_frameworks import FakeLitModel, FakeTrainer, fake_lightning_module

    monkeypatch.setitem(sys.modules, "lightning.pytorch", fake_lightning_module())
    trainer = FakeTrainer([lightning.build_callback_class()(bot=stopped_run[0])], max_epochs=50)
    trainer.fit(FakeLitModel())
    assert trainer.should_stop and trainer.global_step == 1


def test_it_stops_a_transformers_training_gracefully(stopped_run, monkeypatch):
    from experiment_bot import hf
    from fake_frameworks import fake_transformers_module, hf_train

    monkeypatch.setitem(sys.modules, "transformers", fake_transformers_module())
    hf_train([hf.build_callback_class()(bot=stopped_run[0])], max_steps=1000)
    assert stopped_run[1].progress["done"] == 1


# --------------------------------------------------------------------------- worker threads


def test_it_raises_stop_requested_only_in_the_thread_that_runs_the_track_block(fake, make_bot):
    from concurrent.futures import ThreadPoolExecutor

    bot = make_bot(fake)
    seen_in_worker = []

    def worker() -> int | str:
        items = 0
        try:
            for _ in bot.track_progress(range(50)):  # attaches to the main thread's run
                items += 1
        except BaseException as exc:  # noqa: BLE001 - kept from reaching the main thread via result()
            return repr(exc)
        seen_in_worker.append(bot.should_stop)  # code polling in a worker still learns of the stop
        return items

    after_checkpoint = []
    with bot.track("train", heartbeat_interval=0.05) as run:
        fake.command(run.uuid, control="stop")
        fake.wait_for(lambda: run._control == "stop")
        with ThreadPoolExecutor(max_workers=1) as pool:
            assert pool.submit(worker).result(timeout=10) == 50  # the worker was not stopped
        assert seen_in_worker == [True]
        run.checkpoint()  # the main thread's next step raises (the worker did not "use up" the stop)
        after_checkpoint.append("not reached")
    assert after_checkpoint == []
    assert bot.flush(5)
    finish = fake.finish_of(run.uuid)
    assert (finish["status"], finish["exit_reason"]) == ("cancelled", "stopped from Telegram")


def test_it_does_not_pause_a_worker_thread_of_a_run(fake, make_bot):
    from concurrent.futures import ThreadPoolExecutor

    bot = make_bot(fake)
    with bot.track("train", heartbeat_interval=0.05) as run:
        fake.command(run.uuid, control="pause")
        fake.wait_for(lambda: run._control == "pause")
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            items = pool.submit(lambda: sum(1 for _ in bot.track_progress(range(50)))).result(timeout=10)
        finally:
            fake.command(run.uuid, control="run")  # never leave a blocked worker behind
            pool.shutdown()
        assert items == 50 and not run.paused
    assert bot.flush(5)
    assert fake.finish_of(run.uuid)["status"] == "succeeded"
