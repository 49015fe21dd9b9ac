"""Tracked processes, and the notify API's bookkeeping (idempotency answers, rate counters)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.db import models
from django.utils import timezone

from accounts.models import Account, ApiKey
from core.outbox import process_edit_key
from core.state_machine import InvalidTransition, StateMachineModel

MAX_METRIC_NAMES = 100
PROCESS_TAG_EMOJI = ["🟦", "🟩", "🟨", "🟧", "🟥", "🟪", "🟫", "⬛", "🔷", "🔶", "🟢", "🟣"]
MAX_METRIC_POINTS = 500


class TrackedProcessQuerySet(models.QuerySet):
    def active(self) -> TrackedProcessQuerySet:
        return self.filter(state__in=[TrackedProcess.State.RUNNING, TrackedProcess.State.STALLED])


class TrackedProcess(StateMachineModel):
    """A script run reported by the ``experiment_bot`` client, watched by its heartbeats."""

    class State(models.TextChoices):
        RUNNING = "running"
        STALLED = "stalled"  # heartbeats stopped: the dead-man's switch fired
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    TRANSITIONS = {
        State.RUNNING: {State.STALLED, State.SUCCEEDED, State.FAILED, State.CANCELLED},
        State.STALLED: {State.RUNNING, State.SUCCEEDED, State.FAILED, State.CANCELLED},
        State.SUCCEEDED: set(),
        State.FAILED: set(),
        State.CANCELLED: set(),
    }
    FINISHED = (State.SUCCEEDED, State.FAILED, State.CANCELLED)

    uuid = models.UUIDField(unique=True, default=uuid.uuid4)
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="processes")
    name = models.CharField(max_length=200)
    tags = models.JSONField(default=list, blank=True)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")
    state = models.CharField(max_length=16, choices=State.choices, default=State.RUNNING)
    started_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)
    heartbeat_interval = models.PositiveIntegerField(default=60, help_text="Seconds between heartbeats.")
    last_heartbeat_at = models.DateTimeField(default=timezone.now)
    stalled_at = models.DateTimeField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True, help_text="Latest value of each metric.")
    metric_series = models.JSONField(default=list, blank=True, help_text="[{step, values}], capped.")
    progress_done = models.BigIntegerField(null=True, blank=True)
    progress_total = models.BigIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    exit_reason = models.CharField(max_length=64, blank=True)
    runtime_s = models.FloatField(null=True, blank=True)
    peak_memory_mb = models.FloatField(null=True, blank=True)

    objects = TrackedProcessQuerySet.as_manager()

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["state", "last_heartbeat_at"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.state})"

    @property
    def tag_emoji(self) -> str:
        """A short colour tag that tells parallel runs apart at a glance."""
        return PROCESS_TAG_EMOJI[self.uuid.int % len(PROCESS_TAG_EMOJI)]

    @property
    def is_finished(self) -> bool:
        return self.state in self.FINISHED

    @property
    def progress_edit_key(self) -> str:
        """Outbox rows with this key edit the one message showing this process's progress."""
        return process_edit_key(self.uuid)

    def is_overdue(self, grace: timedelta, now: Any = None) -> bool:
        now = now or timezone.now()
        return now - self.last_heartbeat_at > timedelta(seconds=self.heartbeat_interval) + grace

    def heartbeat(
        self, *, done: int | None = None, total: int | None = None, metrics: dict[str, float] | None = None,
        step: float | None = None,
    ) -> bool:
        """Record a heartbeat; returns True when it brought a stalled process back."""
        if self.is_finished:
            raise InvalidTransition(f"process {self.uuid} has already finished")
        recovered = self.state == self.State.STALLED
        fields: dict[str, Any] = {"last_heartbeat_at": timezone.now()}
        if done is not None:
            fields["progress_done"] = done
        if total is not None:
            fields["progress_total"] = total
        if metrics:
            fields["metrics"] = _capped_merge(self.metrics, metrics)
            if step is not None:
                series = [*self.metric_series, {"step": step, "values": metrics}]
                fields["metric_series"] = series[-MAX_METRIC_POINTS:]
        if recovered:
            self._move(self.State.RUNNING, stalled_at=None, **fields)
        else:
            TrackedProcess.objects.filter(pk=self.pk).update(**fields)
            for name, value in fields.items():
                setattr(self, name, value)
        return recovered

    def mark_stalled(self) -> None:
        self._move(self.State.STALLED, stalled_at=timezone.now())

    def finish(
        self,
        status: str,
        *,
        error: str = "",
        traceback: str = "",
        exit_reason: str = "",
        runtime_s: float | None = None,
        peak_memory_mb: float | None = None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        if status not in self.FINISHED:
            raise InvalidTransition(f"{status!r} is not a final state")
        now = timezone.now()
        self._move(
            status,
            ended_at=now,
            error=error[:4000],
            traceback=traceback[:100_000],
            exit_reason=exit_reason[:64],
            runtime_s=runtime_s if runtime_s is not None else (now - self.started_at).total_seconds(),
            peak_memory_mb=peak_memory_mb,
            metrics=_capped_merge(self.metrics, metrics or {}),
        )


def _capped_merge(current: dict[str, float], new: dict[str, float]) -> dict[str, float]:
    """Latest value per metric; names past ``MAX_METRIC_NAMES`` are not added."""
    merged = dict(current)
    for name, value in new.items():
        if name in merged or len(merged) < MAX_METRIC_NAMES:
            merged[name] = value
    return merged


class IdempotencyRecord(models.Model):
    """The first answer to a POST carrying an ``Idempotency-Key``, replayed to retries."""

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=128)
    endpoint = models.CharField(max_length=64)
    fingerprint = models.CharField(
        max_length=64, blank=True, default="",
        help_text="SHA-256 of the endpoint and the request body: a retry must send the same request.",
    )
    status_code = models.PositiveSmallIntegerField()
    response = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["api_key", "key"], name="one_answer_per_idempotency_key")]

    def __str__(self) -> str:
        return f"{self.endpoint} {self.key}"


class RateCounter(models.Model):
    """Requests (or messages, or bytes) per API key in a fixed time window; shared by every web
    process, counted with one upsert per request (``notifications.ratelimit``)."""

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="+")
    window = models.CharField(max_length=16)
    window_start = models.DateTimeField()
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["api_key", "window", "window_start"], name="one_counter_per_window")
        ]

    def __str__(self) -> str:
        return f"{self.window} from {self.window_start}: {self.count}"


class AddressCounter(models.Model):
    """Requests with an unknown API key per client address in a fixed time window."""

    address = models.GenericIPAddressField()
    window = models.CharField(max_length=16)
    window_start = models.DateTimeField()
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["address", "window", "window_start"], name="one_address_counter_per_window")
        ]

    def __str__(self) -> str:
        return f"{self.address} {self.window} from {self.window_start}: {self.count}"
