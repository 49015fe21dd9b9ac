"""What the bot keeps between restarts: conversation states, per-user data and live dashboards."""

from __future__ import annotations

from datetime import datetime

from django.db import models
from django.utils import timezone

from core.state_machine import StateMachineModel


class BotState(models.Model):
    """One record of python-telegram-bot persistence (see ``telegram_app.persistence``)."""

    class Kind(models.TextChoices):
        CONVERSATION = "conversation"
        USER_DATA = "user_data"
        CHAT_DATA = "chat_data"
        BOT_DATA = "bot_data"
        CALLBACK_DATA = "callback_data"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    name = models.CharField(max_length=64, blank=True, help_text="Conversation name, for conversations.")
    key = models.CharField(max_length=128, help_text="User, chat or conversation key.")
    data = models.JSONField(null=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["kind", "name", "key"], name="one_bot_state_per_key")]

    def __str__(self) -> str:
        return f"{self.kind} {self.name} {self.key}"


class IncomingUpdate(models.Model):
    """An update Telegram POSTed to the webhook, kept until the bot process has handled it.

    Telegram retries a webhook delivery it thinks failed; the unique ``update_id`` makes a
    repeat harmless.
    """

    update_id = models.BigIntegerField(unique=True)
    data = models.JSONField()
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["update_id"]

    def __str__(self) -> str:
        return f"update {self.update_id}"


class Dashboard(StateMachineModel):
    """An account's live ``/dashboard`` message: one row per account, kept edited by a sweep.

    ``live``: the sweep edits the message (through the outbox, under ``edit_key``) at most every
    ``settings.DASHBOARD_REFRESH`` seconds, and only when its text changed. ``stopped``: nothing
    ran for ``settings.DASHBOARD_IDLE_AFTER`` seconds (or the user sent ``/dashboard stop``); the
    message got a final edit saying so. ``/dashboard`` again (live or not) starts a new message
    under a new edit key, and the old one, if live, is edited to say it was replaced.
    """

    class State(models.TextChoices):
        LIVE = "live"
        STOPPED = "stopped"

    TRANSITIONS = {
        State.LIVE: {State.LIVE, State.STOPPED},  # live → live: replaced by a new message
        State.STOPPED: {State.LIVE},
    }

    # A lazy relation, as everywhere else in the project.
    account = models.OneToOneField("accounts.Account", on_delete=models.CASCADE, related_name="dashboard")
    state = models.CharField(max_length=16, choices=State.choices, default=State.STOPPED)
    edit_key = models.CharField(max_length=80, blank=True, help_text="The outbox edit key of the current message.")
    text = models.TextField(blank=True, help_text="The text last queued for the message.")
    opened_at = models.DateTimeField(default=timezone.now)
    edited_at = models.DateTimeField(default=timezone.now, help_text="When an edit was last queued.")
    checked_at = models.DateTimeField(default=timezone.now, help_text="When the sweep last rendered it.")
    idle_since = models.DateTimeField(null=True, blank=True, help_text="Since when nothing has been running.")
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["state", "checked_at"])]

    def __str__(self) -> str:
        return f"dashboard of account {self.account_id} ({self.state})"

    def go_live(self, *, edit_key: str, text: str, idle_since: datetime | None) -> None:
        now = timezone.now()
        self._move(self.State.LIVE, edit_key=edit_key, text=text, opened_at=now, edited_at=now, checked_at=now,
                   idle_since=idle_since, stopped_at=None)

    def stop(self, text: str) -> None:
        self._move(self.State.STOPPED, text=text, edited_at=timezone.now(), stopped_at=timezone.now())
