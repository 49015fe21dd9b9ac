"""The outbox of Telegram messages, and what the running bot tells every process about itself."""

from __future__ import annotations

from datetime import timedelta

from django.db import models
from django.utils import timezone

from core.state_machine import StateMachineModel


class OutboxMessage(StateMachineModel):
    """One message (or edit) to deliver to a chat. Domain code writes rows; the bot's sender delivers.

    ``kind`` names how the bot renders it: ``text`` uses ``text``/``parse_mode``/``buttons`` as
    given; the other kinds are rendered by the bot from ``payload`` and the rows it names (see
    ``Kind``). Rows sharing an ``edit_key`` (``core.outbox.job_edit_key`` and friends) edit one
    Telegram message, and only the newest pending one of them is delivered.
    """

    class Kind(models.TextChoices):
        TEXT = "text"  # ready to send: text, parse_mode, buttons and files as written
        JOB = "job"  # {"job_id", "state"}: the job's one message, from queued to its result
        WORKER = "worker"  # {"event", "worker_id"}: connected, reconnected, disconnected
        NOTIFY = "notify"  # {"text", "level", "format", "metadata", "process_uuid"} (+ one file)
        PROCESS = "process"  # {"uuid", "event", …}: a tracked process started, progressed, finished…

    class State(models.TextChoices):
        PENDING = "pending"
        SENDING = "sending"  # claimed by a sender
        SENT = "sent"
        SUPERSEDED = "superseded"  # a newer row with the same edit key, or merged into a burst
        FAILED = "failed"  # permanent failure, or retries exhausted

    TRANSITIONS = {
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

    # A lazy relation: core imports no other app of the project.
    account = models.ForeignKey("accounts.Account", on_delete=models.CASCADE, related_name="outbox")
    chat_id = models.BigIntegerField()
    kind = models.CharField(max_length=32, choices=Kind.choices, default=Kind.TEXT)
    payload = models.JSONField(default=dict, blank=True)
    text = models.TextField(blank=True)
    parse_mode = models.CharField(max_length=16, choices=ParseMode.choices, blank=True, default=ParseMode.HTML)
    buttons = models.JSONField(default=list, blank=True, help_text="Rows of {text, callback_data | url}.")
    edit_key = models.CharField(max_length=80, blank=True, db_index=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_at = models.DateTimeField(null=True, blank=True)
    claimed_by = models.CharField(max_length=64, blank=True, help_text="The sender holding the claim.")
    lease_expires_at = models.DateTimeField(
        null=True, blank=True, help_text="The claim lapses then unless its sender, still alive, renews it."
    )
    sent_at = models.DateTimeField(null=True, blank=True)
    sent_message_id = models.BigIntegerField(null=True, blank=True)
    files_sent = models.PositiveSmallIntegerField(default=0, help_text="Files already delivered (a retry skips them).")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

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
            lease_expires_at=None,
        )

    def postpone(self, reason: str, delay: timedelta) -> None:
        """Telegram asked to wait (a 429 with retry_after): back to pending for then, with no attempt
        used up, however long the flood control lasts."""
        self._move(
            self.State.PENDING,
            next_attempt_at=timezone.now() + delay,
            error=reason[:2000],
            claimed_at=None,
            claimed_by="",
            lease_expires_at=None,
            attempts=max(0, self.attempts - 1),
        )

    def release(self) -> None:
        """Give a claimed row back untouched (the sender is stopping)."""
        self._move(self.State.PENDING, claimed_at=None, claimed_by="", lease_expires_at=None,
                   attempts=max(0, self.attempts - 1))

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


class BotIdentity(models.Model):
    """What the running bot learned at start and the web processes need: one row.

    The bot process writes it (``core.site.publish_bot``); every process reads it to build
    "open the chat with ``/start <payload>``" links. Kept in the database, not in settings,
    because the web and bot processes are separate in production.
    """

    SINGLETON = 1

    id = models.PositiveSmallIntegerField(primary_key=True, default=SINGLETON, editable=False)
    username = models.CharField(max_length=64, blank=True, help_text="The bot's username, from getMe.")
    deep_link_base = models.CharField(
        max_length=255, blank=True, help_text="Where /start links open when not t.me (the sandbox web chat)."
    )
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "bot identity"
        verbose_name_plural = "bot identity"

    def __str__(self) -> str:
        return f"@{self.username}" if self.username else "bot identity (not published yet)"
