"""Stop and keep the best (issue 14): the job stays running, the worker is told, now or on reconnect."""

from __future__ import annotations

import pytest

from core.state_machine import InvalidTransition
from jobs.models import Job
from jobs.services import JobError, reconcile_after_reconnect, stop_early, submit_job
from workers.models import Worker

pytestmark = pytest.mark.django_db


def running_search(account, model_type: str = "auto") -> tuple[Job, Worker]:
    worker, _ = Worker.enroll(account, {"hostname": "box"})
    job = submit_job(account, "train", {"model_type": model_type, "time_budget_s": 120}, context="train")
    job.mark_dispatched(worker)
    job.record_progress(30, "training", "Searching", {"trial": 2, "best_score": 0.5})
    return job, worker


def test_it_asks_a_search_to_stop_and_keeps_it_running(account, django_capture_on_commit_callbacks):
    job, _ = running_search(account)
    with django_capture_on_commit_callbacks() as rings:
        stop_early(job)
    job.refresh_from_db()
    assert job.state == Job.State.RUNNING and job.stop_requested and job.search == {"trial": 2, "best_score": 0.5}
    assert len(rings) == 1  # the doorbell to the worker's group (the consumer sends stop_early)
    job.record_progress(60, "training", "Searching", {"trial": 5})
    job.refresh_from_db()
    assert job.stop_requested and job.search == {"trial": 5}


def test_it_tells_a_reconnecting_worker_to_stop_again(account):
    job, worker = running_search(account)
    stop_early(job)
    frames = reconcile_after_reconnect(worker, [str(job.id)])
    assert frames == [{"type": "stop_early", "job_id": str(job.id)}]


def test_it_refuses_to_stop_a_single_model_or_a_finished_job(account):
    job, _ = running_search(account, model_type="lightgbm")
    with pytest.raises(JobError):
        stop_early(job)
    auto, _ = running_search(account)
    auto.succeed({"model_id": "m"})
    with pytest.raises(InvalidTransition):
        stop_early(auto)
    assert not Job.objects.get(pk=auto.pk).stop_requested
