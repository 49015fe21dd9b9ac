"""Tracked processes: start, heartbeats, metrics, finish with the right status."""

from __future__ import annotations

import logging
import os
import sys
import threading

import pytest
from experiment_bot import tracker
from experiment_bot.config import ENV_PARENT
from experiment_bot_fake import TEST_KEY, run_script


def test_it_tracks_a_plain_decorated_function(fake, make_bot):
    bot = make_bot(fake)

    @bot.track
    def train_model(x):
        return x * 2

    assert train_model(21) == 42
    assert train_model.__name__ == "train_model"
    assert bot.flush(5)
    [start] = fake.started()
    assert start["name"].endswith("train_model")
    assert start["tags"] == []
    assert start["parent_uuid"] is None
    assert start["metadata"]["python"].split()[-1] == ".".join(map(str, sys.version_info[:3]))
    finish = fake.finish_of(start["uuid"])
    assert finish["status"] == "succeeded"
    assert finish["error"] is None and finish["traceback"] is None and finish["exit_reason"] is None
    assert finish["runtime_s"] >= 0
    assert finish["peak_memory_mb"] > 0


def test_it_tracks_a_decorated_function_with_arguments(fake, make_bot):
    bot = make_bot(fake)

    @bot.track(name="sweep", tags=["lr=0.1", "fold=2"], heartbeat_interval=30)
    def run_sweep():
        return "done"

    assert run_sweep() == "done"
    assert run_sweep() == "done"
    assert bot.flush(5)
    first, second = fake.started()
    assert first["name"] == second["name"] == "sweep"
    assert first["tags"] == ["lr=0.1", "fold=2"]
    assert first["heartbeat_interval"] == 30
    assert first["uuid"] != second["uuid"]  # every call is its own process
    assert [f["status"] for f in fake.finished()] == ["succeeded", "succeeded"]


def test_it_reports_a_context_manager_that_succeeds(fake, make_bot):
    bot = make_bot(fake)
    with bot.track("Data preprocessing", tags=["v2"], metadata={"rows": 10}) as run:
        run.log_metrics(1, rows_done=10)
        assert bot.current_run is run
    assert bot.current_run is None
    assert bot.flush(5)
    [start] = fake.started()
    assert start == {**start, "uuid": run.uuid, "name": "Data preprocessing", "tags": ["v2"]}
    assert start["metadata"]["rows"] == 10
    finish = fake.finish_of(run.uuid)
    assert finish["status"] == "succeeded"
    assert finish["metrics"] == {"rows_done": 10}
    assert [r.path for r in fake.accepted] == [
        "/api/processes/start",
        "/api/heartbeat",
        "/api/processes/finish",
    ]


def test_it_reports_a_crash_with_traceback_and_reraises(fake, make_bot):
    bot = make_bot(fake)

    def load_data():
        raise ValueError("column 'target' not found")

    with pytest.raises(ValueError, match="target"):
        with bot.track("training") as run:
            load_data()
    assert bot.flush(5)
    finish = fake.finish_of(run.uuid)
    assert finish["status"] == "failed"
    assert finish["error"] == "ValueError: column 'target' not found"
    assert "Traceback (most recent call last)" in finish["traceback"]
    assert "in load_data" in finish["traceback"]
    assert finish["exit_reason"] is None


def test_it_reports_keyboard_interrupt_as_cancelled_and_reraises(fake, make_bot):
    bot = make_bot(fake)

    @bot.track
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert bot.flush(5)
    [finish] = fake.finished()
    assert finish["status"] == "cancelled"
    assert finish["exit_reason"] == "KeyboardInterrupt"


@pytest.mark.parametrize(("code", "status"), [(0, "succeeded"), (None, "succeeded"), (3, "failed")])
def test_it_reports_system_exit_by_its_code(fake, make_bot, code, status):
    bot = make_bot(fake)
    with pytest.raises(SystemExit):
        with bot.track("exiting"):
            sys.exit(code)
    assert bot.flush(5)
    [finish] = fake.finished()
    assert finish["status"] == status
    if status == "failed":
        assert finish["error"] == "SystemExit: 3"


def test_it_sends_heartbeats_on_a_background_thread(fake, make_bot):
    bot = make_bot(fake, heartbeat_interval=0.05)
    with bot.track("long job") as run:
        run.set_progress(3, 10, send=False)
        beats = fake.wait_for(lambda: len(fake.heartbeats(run.uuid)) >= 3 and fake.heartbeats(run.uuid))
    assert all(b["progress"] == {"done": 3, "total": 10} for b in beats)
    assert bot.flush(5)
    assert fake.started()[0]["heartbeat_interval"] == 1  # whole seconds for the server's stall check


def test_it_coalesces_metrics_and_never_loses_the_last_values(fake, make_bot):
    bot = make_bot(fake, update_interval=3600)
    with bot.track("metrics") as run:
        for step in range(1, 101):
            bot.log_metrics(step, loss=1 / step, acc=step / 100)
    assert bot.flush(5)
    beats = fake.heartbeats(run.uuid)
    assert beats == [{"uuid": run.uuid, "progress": None, "metrics": {"loss": 0.01, "acc": 1.0}, "step": 100}]
    assert fake.finish_of(run.uuid)["metrics"] == {"loss": 0.01, "acc": 1.0}
    assert len(run.history) == 100


def test_it_sends_metrics_at_most_every_update_interval(fake, make_bot):
    bot = make_bot(fake, update_interval=0.05, heartbeat_interval=0)
    with bot.track("metrics") as run:
        run.log_metrics(1, loss=1.0)  # less than update_interval after the start: kept
        beat = fake.wait_for(lambda: fake.heartbeats(run.uuid))  # the pulse thread sends it
        assert beat[0]["metrics"] == {"loss": 1.0} and beat[0]["step"] == 1
    assert bot.flush(5)


def test_it_nests_runs_as_parent_and_child(fake, make_bot):
    bot = make_bot(fake)
    with bot.track("pipeline") as outer:
        with bot.track("fold 1") as inner:
            pass
        with bot.track("independent", parent=None) as independent:
            pass
        with bot.track("explicit", parent=inner) as explicit:
            pass
        seen = {}

        def worker():
            with bot.track("in a thread") as threaded:
                seen["run"] = threaded

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
    assert bot.flush(5)
    parents = {s["name"]: s["parent_uuid"] for s in fake.started()}
    assert parents == {
        "pipeline": None,
        "fold 1": outer.uuid,
        "independent": None,
        "explicit": inner.uuid,
        "in a thread": outer.uuid,
    }
    assert independent.parent_uuid is None and explicit.parent_uuid == inner.uuid
    assert seen["run"].parent_uuid == outer.uuid


def test_it_passes_the_parent_to_child_processes(fake, make_bot, tmp_path):
    bot = make_bot(fake)
    child = """
        import experiment_bot
        with experiment_bot.track("child step"):
            pass
    """
    with bot.track("parent") as parent:
        assert os.environ[ENV_PARENT] == parent.uuid
        result = run_script(
            tmp_path,
            child,
            env={
                "EXPERIMENT_BOT_URL": fake.url,
                "EXPERIMENT_BOT_KEY": TEST_KEY,
                ENV_PARENT: os.environ[ENV_PARENT],
            },
        )
        assert result.returncode == 0, result.stderr
    assert ENV_PARENT not in os.environ
    assert bot.flush(5)
    started = {s["name"]: s for s in fake.started()}
    assert started["child step"]["parent_uuid"] == parent.uuid
    assert fake.finish_of(started["child step"]["uuid"])["status"] == "succeeded"


def test_it_tracks_async_functions(fake, make_bot):
    import asyncio

    bot = make_bot(fake)

    @bot.track(name="async job")
    async def job():
        await asyncio.sleep(0)
        return 7

    assert asyncio.run(job()) == 7
    assert bot.flush(5)
    assert [s["name"] for s in fake.started()] == ["async job"]
    assert fake.finished()[0]["status"] == "succeeded"


def test_it_attaches_notifications_inside_a_run_to_that_run(fake, make_bot):
    bot = make_bot(fake)
    with bot.track("job") as run:
        bot.notify("halfway")
    bot.notify("outside")
    assert bot.flush(5)
    assert [b["process_id"] for b in fake.bodies("/api/notify")] == [run.uuid, None]


def test_it_finishes_runs_left_open_at_exit(fake, tmp_path):
    code = """
        import threading, experiment_bot
        started = threading.Event()
        def forever():
            with experiment_bot.track("daemon work"):
                started.set()
                threading.Event().wait()
        threading.Thread(target=forever, daemon=True).start()
        started.wait()
    """
    result = run_script(tmp_path, code, env={"EXPERIMENT_BOT_URL": fake.url, "EXPERIMENT_BOT_KEY": TEST_KEY})
    assert result.returncode == 0, result.stderr
    [finish] = fake.finished()
    assert finish["status"] == "cancelled"
    assert finish["exit_reason"] == "interpreter exit"


def test_it_keeps_the_stack_clean_between_runs(fake, make_bot):
    bot = make_bot(fake)
    with pytest.raises(RuntimeError):
        with bot.track("a"):
            raise RuntimeError("x")
    assert tracker.current_run() is None
    assert not tracker._live


def test_it_sends_only_numbers_as_metrics(fake, make_bot, caplog):
    bot = make_bot(fake)
    with bot.track("odd metrics") as run:
        run.log_metrics("epoch 1", loss=0.5, converged=True, model="lgbm", nan=float("nan"))
    assert bot.flush(5)
    [beat] = fake.heartbeats(run.uuid)
    assert beat["step"] is None
    assert beat["metrics"] == {"loss": 0.5, "converged": 1, "nan": None}
    assert fake.finish_of(run.uuid)["metrics"] == {"loss": 0.5, "converged": 1}
    assert any("'model' is not a number" in r.getMessage() for r in caplog.records)


def test_it_keeps_names_tags_and_parents_within_the_contract(fake, make_bot):
    bot = make_bot(fake)
    with bot.track("x" * 500, tags=["t" * 100] + [f"tag{i}" for i in range(40)], parent="not-a-uuid") as run:
        pass
    assert bot.flush(5)
    [start] = fake.started()
    assert len(start["name"]) == 200
    assert len(start["tags"]) == 32 and len(start["tags"][0]) == 64
    assert start["parent_uuid"] is None and run.parent_uuid is None


def test_it_turns_the_stall_check_off_when_heartbeats_are_off(fake, make_bot):
    bot = make_bot(fake, heartbeat_interval=0)
    with bot.track("no heartbeats"):
        pass
    with bot.track("fractional", heartbeat_interval=2.5):
        pass
    assert bot.flush(5)
    assert [s["heartbeat_interval"] for s in fake.started()] == [0, 3]


def test_it_sends_a_numpy_total_as_a_plain_integer(fake, make_bot):
    np = pytest.importorskip("numpy")
    bot = make_bot(fake)
    with bot.track("numpy total", total=np.int64(10)) as run:
        pass
    for _ in bot.track_progress(range(3), total=np.int64(3), name="numpy loop"):
        pass
    assert bot.flush(5)
    first, second = fake.started()
    assert first["uuid"] == run.uuid
    assert first["total"] == 10 and type(first["total"]) is int
    assert second["total"] == 3
    assert [f["status"] for f in fake.finished()] == ["succeeded", "succeeded"]


@pytest.mark.parametrize(
    ("total", "sent"),
    [(10.7, 10), (4.0, 4), (float("inf"), None), (float("nan"), None), (-3, None), ("ten", None)],
)
def test_it_cleans_the_total_of_a_run(fake, make_bot, caplog, total, sent):
    from experiment_bot import _log

    _log.forget(f"total={total!r} is not a finite, non-negative number; sent without it")
    bot = make_bot(fake)
    with caplog.at_level(logging.WARNING, logger="experiment_bot"):
        with bot.track("odd total", total=total) as run:
            pass
    assert bot.flush(5)
    [start] = fake.started()
    assert start["total"] == sent
    assert fake.finish_of(run.uuid)["status"] == "succeeded"
    assert ("non-negative" in caplog.text) is (sent is None)
    if sent is None:
        with pytest.raises(ValueError, match="non-negative"):
            make_bot(fake, strict=True).track("strict", total=total).__enter__()
        assert tracker.current_run() is None


def test_it_tracks_with_an_infinite_heartbeat_interval_from_the_environment(fake, make_bot, monkeypatch):
    monkeypatch.setenv("EXPERIMENT_BOT_HEARTBEAT_INTERVAL", "inf")
    bot = make_bot(fake, heartbeat_interval=None)  # use the environment
    assert bot.settings.heartbeat_interval == 60.0
    with bot.track("env interval") as run:
        pass
    with bot.track("argument interval", heartbeat_interval=float("inf")) as second:
        pass
    assert bot.flush(5)
    assert [s["heartbeat_interval"] for s in fake.started()] == [60, 60]
    assert [fake.finish_of(r.uuid)["status"] for r in (run, second)] == ["succeeded", "succeeded"]
    with pytest.raises(ValueError, match="finite"):
        make_bot(fake, strict=True).track("strict", heartbeat_interval=float("nan")).__enter__()
    assert tracker._stacks == {} and tracker.current_run() is None


def test_it_runs_the_block_untracked_when_the_start_fails(fake, make_bot, monkeypatch, caplog):
    bot = make_bot(fake)

    def broken_start(run):
        raise OverflowError("cannot convert float infinity to integer")

    monkeypatch.setattr(bot, "_send_start", broken_start)
    with caplog.at_level(logging.WARNING, logger="experiment_bot"):
        with bot.track("doomed") as run:
            assert bot.current_run is run  # a local run: nesting and log_metrics still work
            run.log_metrics(1, loss=0.5)
            assert os.environ.get(ENV_PARENT) is None  # never announced, so no child's parent
        with pytest.raises(ZeroDivisionError):  # the user's own exception still goes through

            @bot.track
            def crashes():
                return 1 / 0

            crashes()
    assert run.status == "succeeded"
    assert tracker._stacks == {} and tracker._live == set()
    assert "could not start tracking doomed" in caplog.text and "OverflowError" in caplog.text
    assert bot.flush(5)
    assert fake.attempts == []  # nothing half-sent: no start, no heartbeat, no finish

    strict = make_bot(fake, strict=True)
    monkeypatch.setattr(strict, "_send_start", broken_start)
    with pytest.raises(OverflowError):
        with strict.track("strict"):
            pass
    assert tracker._stacks == {} and tracker._live == set()

    healthy = make_bot(fake)
    with healthy.track("works again") as later:
        pass
    assert healthy.flush(5)
    assert fake.finish_of(later.uuid)["status"] == "succeeded"
