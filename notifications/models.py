"""The outbox of Telegram messages, tracked processes, and the notify API's bookkeeping."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.db import models
from django.utils import timezone

from accounts.models import Account, ApiKey
from accounts.state_machine import InvalidTransition, StateMachineModel

MAX_METRIC_NAMES = 100
PROCESS_TAG_EMOJI = ["🟦", "🟩", "🟨", "🟧", "🟥", "🟪", "🟫", "⬛", "🔷", "🔶", "🟢", "🟣"]
MAX_METRIC_POINTS = 500


class OutboxMessageQuerySet(models.QuerySet):
    def due(self) -> OutboxMessageQuerySet:
        return self.filter(state=OutboxMessage.State.PENDING, next_attempt_at__lte=timezone.now())


class OutboxMessage(StateMachineModel):
    """One message (or edit) to deliver to a chat. Domain code writes rows; the bot's sender delivers.

    ``kind`` names how the bot renders it: ``text`` uses ``text``/``parse_mode``/``buttons`` as
    given; other kinds (``job``, ``worker_connected``, ``process_progress``…) are rendered by the
    bot from ``payload``. Rows sharing an ``edit_key`` edit one Telegram message, and only the
    newest pending one of them is delivered.
    """

    class State(models.TextChoices):
        PENDING = "pending"
        SENDING = "sending"  # claimed by a sender
        SENT = "sent"
        SUPERSEDED = "superseded"  # a newer row with the same edit key, or merged into a burst
        FAILED = "failed"  # permanent failure, or retries exhausted

    TRANSITIONS: dict[str, set[str]] = {
        State.PENDING: {State.SENDING, State.SUPERSEDED, State.FAILED},
        State.SENDING: {State.SENT, State.PENDING, State.FAILED, State.SUPERSEDED},
        State.SENT: set(),
        State.SUPERSEDED: set(),
        State.FAILED: {State.PENDING},
    }
    MAX_ATTEMPTS = 8

    class ParseMode(models.TextChoices):
        NONE = "", "Plain text"
        HTML = "HTML"
        MARKDOWN_V2 = "MarkdownV2"

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="outbox")
    chat_id = models.BigIntegerField()
    kind = models.CharField(max_length=32, default="text")
    payload = models.JSONField(default=dict, blank=True)
    text = models.TextField(blank=True)
    parse_mode = models.CharField(max_length=16, choices=ParseMode.choices, blank=True, default="HTML")
    buttons = models.JSONField(default=list, blank=True, help_text="Rows of {text, callback_data | url}.")
    edit_key = models.CharField(max_length=80, blank=True, db_index=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_at = models.DateTimeField(null=True, blank=True)
    claimed_by = models.CharField(max_length=64, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    sent_message_id = models.BigIntegerField(null=True, blank=True)
    files_sent = models.PositiveSmallIntegerField(default=0, help_text="Files already delivered (a retry skips them).")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = OutboxMessageQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["state", "next_attempt_at"]),
            models.Index(fields=["chat_id", "edit_key", "state"]),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.kind} to {self.chat_id} ({self.state})"

    def mark_sent(self, message_id: int | None) -> None:
        self._move(self.State.SENT, sent_at=timezone.now(), sent_message_id=message_id, error="")

    def retry_later(self, error: str, delay: timedelta) -> None:
        """A transient failure: back to pending, or failed for good once attempts run out."""
        if self.attempts >= self.MAX_ATTEMPTS:
            self.fail(f"gave up after {self.attempts} attempts: {error}")
            return
        self._move(
            self.State.PENDING,
            next_attempt_at=timezone.now() + delay,
            error=error[:2000],
            claimed_at=None,
            claimed_by="",
        )

    def release(self) -> None:
        """Give a claimed row back untouched (the sender is stopping)."""
        self._move(self.State.PENDING, claimed_at=None, claimed_by="", attempts=max(0, self.attempts - 1))

    def fail(self, error: str) -> None:
        self._move(self.State.FAILED, error=error[:2000])

    def supersede(self, reason: str = "") -> None:
        self._move(self.State.SUPERSEDED, error=reason[:2000])

    def requeue(self) -> None:
        """An operator's retry of a failed message."""
        self._move(self.State.PENDING, attempts=0, next_attempt_at=timezone.now(), error="")


class Attachment(models.Model):
    """A file to send with an outbox message: uploaded logs and plots, long texts as documents.

    Kept in the database so any sender process can deliver it; size-limited by the API.
    """

    class Kind(models.TextChoices):
        PHOTO = "photo"
        DOCUMENT = "document"

    message = models.ForeignKey(OutboxMessage, on_delete=models.CASCADE, related_name="files")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=100, blank=True)
    data = models.BinaryField()
    caption = models.CharField(max_length=1024, blank=True)

    def __str__(self) -> str:
        return f"{self.kind} {self.filename}"


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

    TRANSITIONS: dict[str, set[str]] = {
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
        return f"proc:{self.uuid}"

    def is_overdue(self, grace: timedelta, now: Any = None) -> bool:
        now = now or timezone.now()
        return now - self.last_heartbeat_at > timedelta(seconds=self.heartbeat_interval) + grace

    def heartbeat(
        self, *, done: int | None = None, total: int | None = None, metrics: dict[str, float] | None = None,
        step: int | None = None,
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
    status_code = models.PositiveSmallIntegerField()
    response = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["api_key", "key"], name="one_answer_per_idempotency_key")]

    def __str__(self) -> str:
        return f"{self.endpoint} {self.key}"


class RateCounter(models.Model):
    """Requests per API key in a fixed time window; shared by every web process."""

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
