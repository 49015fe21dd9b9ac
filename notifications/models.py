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
MAX_ACTIONS = 8  # action buttons a run may declare (bot.track(actions=...))
MAX_ACTION_NAME = 32
MAX_PENDING_ACTIONS = 20  # taps waiting for the next heartbeat
STOPPED_FROM_TELEGRAM = "stopped from Telegram"  # the exit_reason the client reports after a stop


class TrackedProcessQuerySet(models.QuerySet):
    def active(self) -> TrackedProcessQuerySet:
        return self.filter(state__in=[TrackedProcess.State.RUNNING, TrackedProcess.State.STALLED])


class TrackedProcess(StateMachineModel):
    """A script run reported by the ``experiment_bot`` client, watched by its heartbeats."""

    class State(models.TextChoices):
        RUNNING = "running"
        STALLED = "stalled"  # heartbeats stopped: the dead-man's switch fired
        # Stalled for longer than settings.PROCESS_LOST_AFTER, or dismissed by the user: no longer
        # shown or watched, but a heartbeat or a finish still brings it back.
        LOST = "lost"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    TRANSITIONS = {
        State.RUNNING: {State.STALLED, State.SUCCEEDED, State.FAILED, State.CANCELLED},
        State.STALLED: {State.RUNNING, State.LOST, State.SUCCEEDED, State.FAILED, State.CANCELLED},
        State.LOST: {State.RUNNING, State.SUCCEEDED, State.FAILED, State.CANCELLED},
        State.SUCCEEDED: set(),
        State.FAILED: set(),
        State.CANCELLED: set(),
    }
    FINISHED = (State.SUCCEEDED, State.FAILED, State.CANCELLED)

    class Control(models.TextChoices):
        """What the chat asked the running client to do; it learns it from its next heartbeat reply."""

        RUN = "run"
        PAUSE = "pause"  # track_progress blocks at its next step until resumed (or stopped)
        STOP = "stop"  # the client raises StopRequested at its next step; never taken back

    CONTROL_TRANSITIONS = {
        Control.RUN: {Control.PAUSE, Control.STOP},
        Control.PAUSE: {Control.RUN, Control.STOP},
        Control.STOP: set(),
    }

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
    control = models.CharField(max_length=8, choices=Control.choices, default=Control.RUN)
    control_changed_at = models.DateTimeField(null=True, blank=True)
    actions = models.JSONField(default=list, blank=True, help_text="Names of the run's action buttons.")
    pending_actions = models.JSONField(
        default=list, blank=True, help_text="Indexes into actions tapped since the last heartbeat reply."
    )
    diagnosis = models.JSONField(default=dict, blank=True,
                                 help_text="The client's hint and the user's own frames of a crash.")

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

    @property
    def control_edit_key(self) -> str:
        """Outbox rows with this key edit the process's "started" message (it carries the ⏹ Stop button)."""
        return f"proc-start:{self.uuid}"

    @property
    def pausable(self) -> bool:
        """Pause/Resume are offered for runs with progress: ``track_progress`` pauses at its next step."""
        return self.progress_total is not None or self.progress_done is not None

    def is_overdue(self, grace: timedelta, now: Any = None) -> bool:
        now = now or timezone.now()
        return now - self.last_heartbeat_at > timedelta(seconds=self.heartbeat_interval) + grace

    def heartbeat(
        self, *, done: int | None = None, total: int | None = None, metrics: dict[str, float] | None = None,
        step: float | None = None,
    ) -> bool:
        """Record a heartbeat; returns True when it brought a stalled (or lost) process back."""
        if self.is_finished:
            raise InvalidTransition(f"process {self.uuid} has already finished")
        recovered = self.state in (self.State.STALLED, self.State.LOST)
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

    # ------------------------------------------------------------------ control from the chat

    def set_control(self, wanted: str) -> None:
        """Pause, resume or stop from the chat; refused when finished or not allowed from here."""
        if self.is_finished:
            raise InvalidTransition(f"process {self.uuid} has already finished")
        if wanted not in self.CONTROL_TRANSITIONS[self.Control(self.control)]:
            raise InvalidTransition(f"process {self.uuid} cannot go from {self.control} to {wanted}")
        now = timezone.now()
        updated = TrackedProcess.objects.filter(pk=self.pk, control=self.control).update(
            control=wanted, control_changed_at=now
        )
        if updated != 1:
            raise InvalidTransition(f"process {self.uuid} changed control concurrently")
        self.control, self.control_changed_at = wanted, now

    def queue_action(self, index: int) -> str:
        """Queue a tap on action button ``index`` for the next heartbeat reply; returns its name."""
        if self.is_finished:
            raise InvalidTransition(f"process {self.uuid} has already finished")
        if self.control == self.Control.STOP:
            raise InvalidTransition(f"process {self.uuid} is stopping")
        if not 0 <= index < len(self.actions):
            raise InvalidTransition(f"process {self.uuid} has no action {index}")
        if len(self.pending_actions) >= MAX_PENDING_ACTIONS:
            raise InvalidTransition(f"process {self.uuid} has {MAX_PENDING_ACTIONS} taps waiting already")
        self.pending_actions = [*self.pending_actions, index]
        TrackedProcess.objects.filter(pk=self.pk).update(pending_actions=self.pending_actions)
        return str(self.actions[index])

    def take_actions(self) -> list[str]:
        """The tapped actions' names, oldest first, now handed to the client (the queue empties)."""
        names = [str(self.actions[i]) for i in self.pending_actions
                 if isinstance(i, int) and 0 <= i < len(self.actions)]
        if self.pending_actions:
            self.pending_actions = []
            TrackedProcess.objects.filter(pk=self.pk).update(pending_actions=[])
        return names

    @property
    def stopped_from_chat(self) -> bool:
        return self.is_finished and self.exit_reason == STOPPED_FROM_TELEGRAM

    def mark_stalled(self) -> None:
        self._move(self.State.STALLED, stalled_at=timezone.now())

    def mark_lost(self, reason: str) -> None:
        """Stop showing and watching a stalled process (too long without a heartbeat, or dismissed)."""
        self._move(self.State.LOST, exit_reason=reason[:64])

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
        diagnosis: dict[str, Any] | None = None,
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
            diagnosis=diagnosis or {},
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


class FailureDigest(models.Model):
    """Runs of one account that failed, were killed, stalled or were lost close together
    (``notifications.digests``): from ``settings.FAILURE_DIGEST_THRESHOLD`` of them on, one message
    lists them instead of one alert each. Open for ``settings.FAILURE_DIGEST_WINDOW`` seconds from
    ``opened_at``; a failure after that opens a new group."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="failure_digests")
    opened_at = models.DateTimeField(default=timezone.now)
    # [{"uuid", "what" (crashed | killed | stalled | lost), "at" (ISO time), "row" (its own alert's outbox id)}]
    members = models.JSONField(default=list, blank=True)

    class Meta:
        indexes = [models.Index(fields=["account", "opened_at"])]

    def __str__(self) -> str:
        return f"{len(self.members)} failures from {self.opened_at:%Y-%m-%d %H:%M:%S}"
