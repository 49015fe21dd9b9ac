"""Jobs for local workers: submit, dispatch, progress, results, cancellation, loss.

Everything here is synchronous ORM code; the worker consumer calls it through
``database_sync_to_async``. Each change the user should see becomes an outbox row with the
job's edit key, so the bot edits one message in place from "queued" to the result.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from functools import cache
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import Account
from core import events, rows
from core.layer import ring, worker_group
from core.models import OutboxMessage
from core.outbox import enqueue
from core.state_machine import InvalidTransition
from jobs.models import Job, WorkerRef

logger = logging.getLogger(__name__)

MAX_RESULT_BYTES = 1_000_000


class JobError(Exception):
    """A job request that cannot be accepted; the message is for the user."""


def _announce(job: Job) -> None:
    """Queue an outbox row that renders the job's current state.

    Rows are rendered from the database when sent, so one pending row per job is enough: a
    burst of progress frames (or a chat waiting out a 429) updates it instead of adding rows.
    """
    payload = {"job_id": str(job.id), "state": job.state}
    waiting = OutboxMessage.objects.filter(
        chat_id=job.account.chat_id, edit_key=job.edit_key, state=OutboxMessage.State.PENDING
    )
    if not waiting.update(payload=payload):
        enqueue(job.account, kind=OutboxMessage.Kind.JOB, payload=payload, edit_key=job.edit_key)


def announce_unfinished(account: Account) -> int:
    """Render the messages of the account's unfinished jobs again: its worker went away or came
    back, which changes what they say ("waiting for NAME" instead of "running 40 %")."""
    jobs = list(Job.objects.filter(account=account).unfinished().select_related("account"))
    for job in jobs:
        _announce(job)
    return len(jobs)


def submit_job(
    account: Account, action: str, params: dict[str, Any] | None = None, *, context: str = Job.Context.NONE
) -> Job:
    """Queue a job for the account's worker and wake it. ``context`` (a ``Job.Context``) tells the
    bot how to present results."""
    if action not in Job.Action.values:
        raise JobError(f"unknown action {action!r}")
    with transaction.atomic():
        job = Job.objects.create(
            account=account, action=action, params={**(params or {}), Job.CONTEXT_PARAM: str(context)}
        )
        _announce(job)
        ring(worker_group(account.pk), events.jobs_dispatch())
    logger.info("job %s (%s) queued for account %s", job.id, action, account.pk)
    return job


def job_frame(job: Job) -> dict[str, Any]:
    """The ``job`` message of the worker protocol."""
    return {"type": "job", "job_id": str(job.id), "action": job.action, "params": job.worker_params()}


def claim_for_dispatch(worker: WorkerRef) -> list[dict[str, Any]]:
    """Mark the account's queued jobs dispatched to ``worker``; returns the frames to send it."""
    frames = []
    with transaction.atomic():
        queued = Job.objects.filter(account_id=worker.account_id, state=Job.State.QUEUED).order_by("created_at")
        for job in queued.select_for_update(skip_locked=True):
            job.mark_dispatched(worker)
            frames.append(job_frame(job))
    return frames


def reconcile_after_reconnect(worker: WorkerRef, running_job_ids: list[str]) -> list[dict[str, Any]]:
    """After (re)connecting: keep the jobs the worker still runs, and send again those it does not know.

    A job the worker has finished but whose result was not acknowledged is sent again too; the
    worker answers a duplicate with its stored result.
    """
    running = set(running_job_ids)
    if not running and not _has_open_or_queued(worker):
        return []  # the usual reconnect after a deploy: one cheap query
    mine = Q(worker_id=worker.pk, state__in=[Job.State.DISPATCHED, Job.State.RUNNING])
    jobs = list(Job.objects.filter(mine | Q(account_id=worker.account_id, state=Job.State.QUEUED)))
    open_jobs = [job for job in jobs if job.state != Job.State.QUEUED]
    frames = [job_frame(job) for job in open_jobs if str(job.id) not in running]
    # Cancelled while the worker was away: the ring reached nobody, so say it now.
    cancelled = Job.objects.filter(account_id=worker.account_id, state=Job.State.CANCELLED,
                                   pk__in=[job_id for job_id in running if _is_uuid(job_id)])
    frames += [{"type": "cancel", "job_id": str(job.pk)} for job in cancelled]
    # Asked to stop early while the worker was away: say it again.
    frames += [{"type": "stop_early", "job_id": str(job.pk)} for job in open_jobs
               if job.stop_requested and str(job.id) in running]
    if len(open_jobs) < len(jobs):
        frames += claim_for_dispatch(worker)
    return frames


@cache
def _open_or_queued_sql(vendor: str) -> str:
    q = connection.ops.quote_name
    return (
        f"SELECT 1 FROM {q(Job._meta.db_table)} WHERE ({q('worker_id')} = %s AND {q('state')} IN (%s, %s)) "
        f"OR ({q('account_id')} = %s AND {q('state')} = %s) LIMIT 1"
    )


def _has_open_or_queued(worker: WorkerRef) -> bool:
    """Whether ``worker`` has jobs out or its account has jobs waiting (hand-written: asked on every
    reconnect, and the ORM's compilation of the OR cost more than the query)."""
    params = [worker.pk, Job.State.DISPATCHED.value, Job.State.RUNNING.value, worker.account_id, Job.State.QUEUED.value]
    return rows.fetch_one(_open_or_queued_sql(connection.vendor), params) is not None


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return False
    return True


def job_for_worker(worker: WorkerRef, job_id: str) -> Job | None:
    """The account's job with that id, or None (another account's job is refused like an unknown one)."""
    try:
        return Job.objects.select_related("account").get(pk=job_id, account_id=worker.account_id)
    except (Job.DoesNotExist, ValueError, TypeError):
        return None


def record_progress(job: Job, progress: int, stage: str, message: str, search: dict[str, Any] | None = None) -> None:
    """The worker's ``progress`` frame (with an Auto search's ``search``): the job's new progress and its
    outbox row, in one transaction."""
    if job.is_finished:
        return  # a late progress frame after cancel/loss changes nothing
    with transaction.atomic():
        job.record_progress(progress, stage, message, search)
        _announce(job)


def record_result(job: Job, *, success: bool, data: Any, error: str, error_code: str, size: int) -> None:
    """Complete the job from the worker's ``result`` frame: its final state and the outbox row that
    shows it are one transaction (a crash between them must not leave the chat showing "running")."""
    if job.state in (Job.State.SUCCEEDED, Job.State.FAILED, Job.State.CANCELLED):
        return  # a repeat of a result we have, or one the user no longer wants (cancelled): acknowledge it
    with transaction.atomic():
        _complete(job, success=success, data=data, error=error, error_code=error_code, size=size)
        _announce(job)
    logger.info("job %s finished: %s", job.id, job.state)


def _complete(job: Job, *, success: bool, data: Any, error: str, error_code: str, size: int) -> None:
    if success and size > MAX_RESULT_BYTES:
        job.fail(
            f"The worker's result was {size / 1e6:.1f} MB, over the 1 MB limit. Results carry a sample and "
            "summary only; update the worker (/connect) if this keeps happening.",
            "result_too_large",
        )
    elif success:
        if not isinstance(data, dict):
            job.fail("The worker sent a result without data.", "internal")
        else:
            job.succeed(data)
    else:
        job.fail(error or "The job failed on the worker without a reason.", error_code or "internal")


def cancel_job(job: Job) -> None:
    """Cancel now; a running job's worker is told to stop at its next checkpoint."""
    with transaction.atomic():
        was_out = job.state in (Job.State.DISPATCHED, Job.State.RUNNING)
        job.cancel()
        _announce(job)
        if was_out:
            ring(worker_group(job.account_id), events.jobs_cancel(str(job.id)))


def stop_early(job: Job) -> None:
    """Ask a running AutoML search to stop now and finish with the best model so far.

    The job stays running: the worker answers with a successful result (``search.stopped_early``).
    Raises ``InvalidTransition`` for a job that is not out on a worker, and ``JobError`` for one
    that is not a search."""
    if job.action != Job.Action.TRAIN or job.params.get("model_type") != "auto":
        raise JobError("Only an ⭐ Auto search can stop early; Cancel stops any other job.")
    with transaction.atomic():
        job.request_stop()
        _announce(job)
        ring(worker_group(job.account_id), events.jobs_stop_early(str(job.id)))


def requeue_job(job: Job) -> None:
    with transaction.atomic():
        job.requeue()
        _announce(job)
        ring(worker_group(job.account_id), events.jobs_dispatch())


def mark_lost_jobs(grace: float | None = None) -> int:
    """Jobs whose worker has been away longer than the grace period are lost; the user is told."""
    grace = settings.JOB_LOST_GRACE if grace is None else grace
    cutoff = timezone.now() - timedelta(seconds=grace)
    gone = Q(worker__isnull=True) | Q(worker__revoked_at__isnull=False) | Q(
        worker__channel_name="", worker__disconnected_at__lte=cutoff
    )
    count = 0
    candidates = Job.objects.filter(state__in=[Job.State.DISPATCHED, Job.State.RUNNING]).filter(gone)
    for job in candidates.select_related("account"):
        try:
            with transaction.atomic():
                job.mark_lost()
                _announce(job)
            count += 1
        except InvalidTransition:
            continue  # finished meanwhile
    return count

