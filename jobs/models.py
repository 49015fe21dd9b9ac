"""Jobs sent to a user's local worker, with an explicit state machine."""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from django.db import models
from django.utils import timezone

from accounts.models import Account
from core.outbox import job_edit_key
from core.state_machine import InvalidTransition, StateMachineModel


class WorkerRef(Protocol):
    """A ``workers.Worker``, as jobs see it without importing workers (which import jobs)."""

    @property
    def pk(self) -> Any: ...

    @property
    def account_id(self) -> int: ...


class JobQuerySet(models.QuerySet["Job"]):
    def unfinished(self) -> JobQuerySet:
        return self.filter(state__in=Job.UNFINISHED)


class Job(StateMachineModel):
    class Action(models.TextChoices):
        DESCRIBE = "describe"
        CHECK = "check"  # /train's target step: the data checks before the user confirms
        TRAIN = "train"
        PREDICT = "predict"
        LIST_MODELS = "list_models"
        DELETE_MODEL = "delete_model"
        RENAME_MODEL = "rename_model"
        AUTOSTART = "autostart"

    class State(models.TextChoices):
        QUEUED = "queued"  # waiting for the account's worker to be online
        DISPATCHED = "dispatched"  # sent to the worker, not yet reported as started
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"
        LOST = "lost"  # the worker went away mid-job and did not come back in time

    class Context(models.TextChoices):
        """Where a job was asked for, which decides how the bot presents its result."""

        NONE = "", "Unspecified"
        DESCRIBE = "describe"  # /train's path step: the columns become target buttons
        CHECK = "check"  # /train's target step: the checks become the task question (or a refusal)
        TRAIN = "train"
        PREDICT = "predict"  # /predict: a model list becomes buttons to pick one
        MODELS = "models"  # /models: a model list with delete buttons
        OPERATOR = "operator"  # submitted from the admin

    CONTEXT_PARAM = "_context"  # the key of ``params`` that holds the Context (never sent to the worker)

    TRANSITIONS = {
        State.QUEUED: {State.DISPATCHED, State.CANCELLED, State.FAILED},
        State.DISPATCHED: {
            State.QUEUED,
            State.RUNNING,
            State.SUCCEEDED,
            State.FAILED,
            State.CANCELLED,
            State.LOST,
        },
        State.RUNNING: {State.SUCCEEDED, State.FAILED, State.CANCELLED, State.LOST},
        # A worker that reconnects after the grace period may still deliver its result.
        State.LOST: {State.SUCCEEDED, State.FAILED, State.QUEUED},
        State.FAILED: {State.QUEUED},
        State.CANCELLED: {State.QUEUED},
        State.SUCCEEDED: set(),
    }
    UNFINISHED = (State.QUEUED, State.DISPATCHED, State.RUNNING)
    FINISHED = (State.SUCCEEDED, State.FAILED, State.CANCELLED, State.LOST)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="jobs")
    # By name only: workers import jobs, never the other way round.
    worker = models.ForeignKey("workers.Worker", null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="jobs")
    action = models.CharField(max_length=16, choices=Action.choices)
    params = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)
    stage = models.CharField(max_length=64, blank=True)
    message = models.CharField(max_length=500, blank=True)
    # A running AutoML search as the last progress frame told it ({"trial", "best_score", "metric",
    # "best_model", "seconds_left"}), and whether the user asked it to stop and keep the best so far.
    search = models.JSONField(null=True, blank=True)
    stop_requested = models.BooleanField(default=False)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    error_code = models.CharField(max_length=32, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["account", "state"]), models.Index(fields=["state", "updated_at"])]

    def __str__(self) -> str:
        return f"{self.action} {str(self.id)[:8]} ({self.state})"

    @property
    def is_finished(self) -> bool:
        return self.state in self.FINISHED

    @property
    def edit_key(self) -> str:
        """Outbox rows with this key edit the one Telegram message that shows this job."""
        return job_edit_key(self.id)

    @property
    def context(self) -> str:
        """Where the job was asked for (a ``Job.Context`` value; "" when unknown)."""
        value = self.params.get(self.CONTEXT_PARAM) if isinstance(self.params, dict) else None
        return value if isinstance(value, str) else ""

    def worker_params(self) -> dict[str, Any]:
        """``params`` as the worker sees them: without the server's own keys (``_…``)."""
        return {k: v for k, v in self.params.items() if not k.startswith("_")}

    def _move(self, new_state: str, **fields: Any) -> None:
        super()._move(new_state, updated_at=timezone.now(), **fields)

    def mark_dispatched(self, worker: WorkerRef) -> None:
        self._move(self.State.DISPATCHED, worker_id=worker.pk, dispatched_at=timezone.now())

    def mark_running(self) -> None:
        self._move(self.State.RUNNING, started_at=self.started_at or timezone.now())

    def record_progress(self, progress: int, stage: str, message: str, search: dict[str, Any] | None = None) -> None:
        if self.state == self.State.DISPATCHED:
            self.mark_running()
        if self.state != self.State.RUNNING:
            raise InvalidTransition(f"job {self.id} is {self.state}; progress is only for running jobs")
        self.progress = max(0, min(100, progress))
        self.stage = stage[:64]
        self.message = message[:500]
        fields: dict[str, Any] = {"progress": self.progress, "stage": self.stage, "message": self.message}
        if search is not None:
            self.search = search
            fields["search"] = search
        Job.objects.filter(pk=self.pk).update(**fields, updated_at=timezone.now())

    def request_stop(self) -> None:
        """The user asked an AutoML search to stop and keep the best model so far."""
        if self.state not in (self.State.DISPATCHED, self.State.RUNNING):
            raise InvalidTransition(f"job {self.id} is {self.state}; only a running search can stop early")
        self.stop_requested = True
        Job.objects.filter(pk=self.pk).update(stop_requested=True, updated_at=timezone.now())

    def succeed(self, result: dict[str, Any]) -> None:
        self._move(self.State.SUCCEEDED, result=result, progress=100, finished_at=timezone.now())

    def fail(self, error: str, code: str = "") -> None:
        self._move(self.State.FAILED, error=error[:4000], error_code=code[:32], finished_at=timezone.now())

    def cancel(self) -> None:
        self._move(self.State.CANCELLED, error_code="cancelled", finished_at=timezone.now())

    def mark_lost(self) -> None:
        self._move(self.State.LOST, error_code="lost", finished_at=timezone.now())

    def requeue(self) -> None:
        """Back to the queue: after a reconnect that did not report it, or by an operator."""
        self._move(
            self.State.QUEUED,
            worker_id=None,
            dispatched_at=None,
            started_at=None,
            finished_at=None,
            progress=0,
            stage="",
            message="",
            error="",
            error_code="",
            result=None,
            search=None,
            stop_requested=False,
        )
