"""What the bot keeps between restarts: conversation states and per-user data."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


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
