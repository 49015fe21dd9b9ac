"""Telegram accounts, their notification API keys and the pairing requests of ``setup()``."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import timedelta

from django.conf import settings
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

from core.secrets import hash_secret, new_secret, short_code
from core.state_machine import InvalidTransition, StateMachineModel


class Account(models.Model):
    """A Telegram user and their private chat with the bot."""

    telegram_user_id = models.BigIntegerField(unique=True)
    chat_id = models.BigIntegerField(help_text="Private chat with the bot; follows chat migrations.")
    username = models.CharField(max_length=64, blank=True)
    first_name = models.CharField(max_length=128, blank=True)
    last_name = models.CharField(max_length=128, blank=True)
    language_code = models.CharField(max_length=16, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_active_at = models.DateTimeField(default=timezone.now)
    blocked_at = models.DateTimeField(
        null=True, blank=True, help_text="Set when Telegram says the user blocked the bot; delivery stops."
    )

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.display_name

    @property
    def display_name(self) -> str:
        if self.username:
            return f"@{self.username}"
        full = f"{self.first_name} {self.last_name}".strip()
        return full or f"user {self.telegram_user_id}"

    @classmethod
    def from_telegram(
        cls,
        *,
        user_id: int,
        chat_id: int,
        username: str = "",
        first_name: str = "",
        last_name: str = "",
        language_code: str = "",
    ) -> tuple[Account, bool]:
        """The account of a Telegram user, created on first contact and refreshed after."""
        now = timezone.now()
        account, created = cls.objects.update_or_create(
            telegram_user_id=user_id,
            defaults={
                "chat_id": chat_id,
                "username": username or "",
                "first_name": first_name or "",
                "last_name": last_name or "",
                "language_code": language_code or "",
                "last_active_at": now,
                "blocked_at": None,
            },
        )
        return account, created

    def mark_blocked(self) -> None:
        self.blocked_at = timezone.now()
        self.save(update_fields=["blocked_at"])

    def move_chat(self, new_chat_id: int) -> None:
        self.chat_id = new_chat_id
        self.save(update_fields=["chat_id"])

    def active_key(self) -> ApiKey | None:
        return self.api_keys.filter(revoked_at__isnull=True).first()


class ApiKeyQuerySet(models.QuerySet):
    def active(self) -> ApiKeyQuerySet:
        return self.filter(revoked_at__isnull=True)


class ApiKey(models.Model):
    """A notification key (``exp_…``). Only its hash and a short prefix are stored."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="api_keys")
    prefix = models.CharField(max_length=16)
    secret_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["account"], condition=Q(revoked_at__isnull=True), name="one_active_key_per_account"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.prefix}… ({'revoked' if self.revoked_at else 'active'})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    @classmethod
    def issue(cls, account: Account) -> tuple[ApiKey, str]:
        """Revoke the account's active key, if any, and issue a new one; returns the raw key once."""
        secret = new_secret("exp")
        with transaction.atomic():
            cls.objects.active().filter(account=account).update(revoked_at=timezone.now())
            key = cls.objects.create(account=account, prefix=secret.prefix, secret_hash=secret.hash)
        return key, secret.raw

    @classmethod
    def adopt(cls, account: Account, *, secret_hash: str, prefix: str) -> ApiKey:
        """Make a key whose raw value the client already holds (pairing) the account's active key."""
        with transaction.atomic():
            cls.objects.active().filter(account=account).update(revoked_at=timezone.now())
            return cls.objects.create(account=account, prefix=prefix, secret_hash=secret_hash)

    @classmethod
    def authenticate(cls, raw: str) -> ApiKey | None:
        """The active key whose secret is ``raw``. The lookup is by SHA-256, so timing reveals nothing."""
        if not raw or not raw.startswith("exp_") or len(raw) > 128:
            return None
        key = cls.objects.select_related("account").filter(secret_hash=hash_secret(raw)).first()
        if key is None or not hmac.compare_digest(key.secret_hash, hash_secret(raw)):
            return None
        return key

    def revoke(self) -> None:
        if self.revoked_at is not None:
            raise InvalidTransition("this key is already revoked")
        self.revoked_at = timezone.now()
        self.save(update_fields=["revoked_at"])

    def touch(self) -> None:
        """Record use, at most once a minute per key to spare the database."""
        now = timezone.now()
        if self.last_used_at is None or now - self.last_used_at > timedelta(minutes=1):
            ApiKey.objects.filter(pk=self.pk).update(last_used_at=now)
            self.last_used_at = now


PAIRING_TTL = timedelta(minutes=10)


def _pairing_key(poll_secret: str) -> str:
    """The API key a pairing hands over, derived from the client's poll secret.

    The server keeps only hashes: the key is recomputed from the secret the client presents
    when it polls, so no usable key ever sits in the database.
    """
    digest = hmac.new(
        settings.SECRET_KEY.encode(), f"pairing:{poll_secret}".encode(), hashlib.sha256
    ).digest()
    return "exp_" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


class PairingRequest(StateMachineModel):
    """The device-login flow of ``experiment_bot.setup()``.

    pending → confirmed (the user tapped the t.me link and the bot confirmed) → claimed (the
    client fetched its key once); pending or confirmed → expired after ten minutes.
    """

    class State(models.TextChoices):
        PENDING = "pending"
        CONFIRMED = "confirmed"
        CLAIMED = "claimed"
        EXPIRED = "expired"

    TRANSITIONS = {
        State.PENDING: {State.CONFIRMED, State.EXPIRED},
        State.CONFIRMED: {State.CLAIMED, State.EXPIRED},
        State.CLAIMED: set(),
        State.EXPIRED: set(),
    }

    code = models.CharField(max_length=16, unique=True)
    poll_secret_hash = models.CharField(max_length=64, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    key_prefix = models.CharField(max_length=16)
    hostname = models.CharField(max_length=255, blank=True)
    label = models.CharField(max_length=255, blank=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True, help_text="Who started it (rate limits).")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    account = models.ForeignKey(Account, null=True, blank=True, on_delete=models.CASCADE)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    confirmed_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["client_ip", "created_at"])]

    def __str__(self) -> str:
        return f"pairing {self.code} ({self.state})"

    @classmethod
    def start(cls, *, hostname: str = "", label: str = "") -> tuple[PairingRequest, str]:
        """A new pending pairing; returns it and the poll secret the client must present."""
        poll_secret = new_secret("pair").raw
        key = _pairing_key(poll_secret)
        pairing = cls.objects.create(
            code=short_code(10),
            poll_secret_hash=hash_secret(poll_secret),
            key_hash=hash_secret(key),
            key_prefix=key[:12],
            hostname=hostname[:255],
            label=label[:255],
            expires_at=timezone.now() + PAIRING_TTL,
        )
        return pairing, poll_secret

    @property
    def is_expired(self) -> bool:
        return self.state == self.State.EXPIRED or (
            self.state in (self.State.PENDING, self.State.CONFIRMED) and timezone.now() >= self.expires_at
        )

    def confirm(self, account: Account) -> ApiKey:
        """The user tapped the link: the key the client will fetch becomes the account's key."""
        if self.is_expired:
            raise InvalidTransition("this pairing link has expired")
        with transaction.atomic():
            self._move(self.State.CONFIRMED, account=account, confirmed_at=timezone.now())
            return ApiKey.adopt(account, secret_hash=self.key_hash, prefix=self.key_prefix)

    def claim(self, poll_secret: str) -> str:
        """Hand the key over once, to the client that started the pairing."""
        if not hmac.compare_digest(hash_secret(poll_secret), self.poll_secret_hash):
            raise PermissionError("wrong pairing secret")
        self._move(self.State.CLAIMED, claimed_at=timezone.now())
        return _pairing_key(poll_secret)

    def expire(self) -> None:
        self._move(self.State.EXPIRED)
