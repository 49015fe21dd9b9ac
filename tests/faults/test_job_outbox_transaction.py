"""A job's state change and the outbox row that shows it are one transaction (issue 12, item 5):
a crash while the row is written leaves the job as it was, never "finished" with the chat still
showing "running" (nor the other way round).

The crash is injected at the database boundary: the statement writing the outbox row fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import DatabaseError, connection

from core.models import OutboxMessage
from jobs import services
from jobs.models import Job

pytestmark = pytest.mark.django_db


@contextmanager
def outbox_write_crashes() -> Iterator[None]:
    def crash(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.lstrip().upper().startswith(("INSERT", "UPDATE")) and "core_outboxmessage" in sql:
            raise DatabaseError("the process died while writing the outbox row")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(crash):
        yield


@pytest.fixture
def running_job(account) -> Job:
    job = Job.objects.create(account=account, action=Job.Action.TRAIN, params={"model_type": "lightgbm"})
    Job.objects.filter(pk=job.pk).update(state=Job.State.RUNNING, progress=10)
    job.refresh_from_db()
    return job


def test_it_keeps_the_job_unfinished_when_its_result_row_cannot_be_written(running_job):
    with outbox_write_crashes(), pytest.raises(DatabaseError):
        services.record_result(running_job, success=True, data={"metrics": {}}, error="", error_code="", size=10)
    running_job.refresh_from_db()
    assert running_job.state == Job.State.RUNNING and running_job.result in (None, {})
    assert not OutboxMessage.objects.exists()
    services.record_result(running_job, success=True, data={"metrics": {}}, error="", error_code="", size=10)
    running_job.refresh_from_db()  # the worker sends the result again (it does until acknowledged)
    assert running_job.state == Job.State.SUCCEEDED
    row = OutboxMessage.objects.get()
    assert row.payload == {"job_id": str(running_job.pk), "state": Job.State.SUCCEEDED}


def test_it_keeps_the_jobs_progress_when_its_row_cannot_be_written(running_job):
    with outbox_write_crashes(), pytest.raises(DatabaseError):
        services.record_progress(running_job, 60, "training", "fold 3 of 5")
    running_job.refresh_from_db()
    assert running_job.progress == 10 and running_job.stage == ""
    assert not OutboxMessage.objects.exists()


def test_it_writes_a_failed_result_and_its_row_together(running_job):
    services.record_result(running_job, success=False, data=None, error="out of memory", error_code="oom", size=0)
    running_job.refresh_from_db()
    row = OutboxMessage.objects.get()
    assert running_job.state == Job.State.FAILED and running_job.error_code == "oom"
    assert row.edit_key == running_job.edit_key and row.payload["state"] == Job.State.FAILED
