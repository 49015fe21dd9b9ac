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

from accounts.networks import address_allowed, parse_networks
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
        """The newest active key (an account has one per paired machine)."""
        return ApiKey.objects.active().filter(account=self).first()

    def active_keys(self) -> list[ApiKey]:
        """Every active key (a rotated one still in its grace period too), newest first."""
        return list(ApiKey.objects.active().filter(account=self))


class ApiKeyQuerySet(models.QuerySet):
    def active(self) -> ApiKeyQuerySet:
        """Neither revoked nor expired (a rotated key is active until its grace period ends)."""
        return self.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()), revoked_at__isnull=True)


#: How long a rotated key keeps working next to its successor: the chat's buttons, and the default.
GRACE_CHOICES = (timedelta(hours=1), timedelta(hours=24), timedelta(days=7))
DEFAULT_GRACE = timedelta(hours=24)
#: A machine paired again: its previous key keeps working this long (revoke it in /status if it leaked).
REPAIR_GRACE = timedelta(minutes=5)
MAX_GRACE = timedelta(days=30)


KEY_NAME_CHARS = 64


def clean_key_name(raw: str) -> str:
    """A key's machine name as shown in the chat: one line, no control characters, at most 64 chars."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(raw or ""))
    return " ".join(text.split())[:KEY_NAME_CHARS]


class ApiKey(models.Model):
    """A notification key (``exp_…``). Only its hash and a short prefix are stored.

    One key per machine: ``setup()`` on another machine adds a key named after it (pairing the
    same machine again replaces that machine's key only); keys issued in the chat have no name.
    """

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=KEY_NAME_CHARS, blank=True, help_text="The machine it is for.")
    prefix = models.CharField(max_length=16)
    secret_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="Set when the key is rotated: it keeps working until then (grace period)."
    )
    replaced_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The key issued when this one was rotated.",
    )
    allowed_networks = models.JSONField(
        default=list, blank=True,
        help_text="CIDR networks (IPv4/IPv6) requests with this key may come from; empty allows any address.",
    )

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["account", "revoked_at"])]

    def __str__(self) -> str:
        state = "revoked" if self.revoked_at else "expired" if self.is_expired else "active"
        return f"{self.prefix}… ({state})"

    @property
    def is_expired(self) -> bool:
        """Past the end of its grace period after a rotation."""
        return self.expires_at is not None and timezone.now() >= self.expires_at

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and not self.is_expired

    def allows(self, address: str) -> bool:
        """True when requests from ``address`` may use this key (its allowlist is empty or holds it)."""
        return address_allowed(address, self.allowed_networks or [])

    @property
    def label(self) -> str:
        """How the chat names it: its machine, or its prefix when it has none."""
        return self.name or f"{self.prefix}…"

    @classmethod
    def issue(
        cls, account: Account, name: str = "", allowed_networks: list[str] | None = None
    ) -> tuple[ApiKey, str]:
        """Issue a new key (the account's other keys keep working); returns the raw key once."""
        secret = new_secret("exp")
        key = cls.objects.create(
            account=account, name=clean_key_name(name), prefix=secret.prefix, secret_hash=secret.hash,
            allowed_networks=list(allowed_networks or []),
        )
        return key, secret.raw

    @classmethod
    def adopt(cls, account: Account, *, secret_hash: str, prefix: str, name: str = "") -> ApiKey:
        """Add a key whose raw value the client already holds (pairing) for machine ``name``.

        Pairing the same machine again rotates its key: the active keys of the same account with
        the same machine name keep working for ``REPAIR_GRACE`` more (scripts running there switch
        to the new key from ``.env``), then expire; the new key takes over their IP allowlist.
        Keys of other machines are not touched.
        """
        name = clean_key_name(name)
        with transaction.atomic():
            replaced = list(cls.objects.active().select_for_update().filter(account=account, name=name)) if name else []
            networks = replaced[0].allowed_networks if replaced else []
            key = cls.objects.create(account=account, name=name, prefix=prefix, secret_hash=secret_hash,
                                     allowed_networks=list(networks or []))
            if replaced:
                ends = timezone.now() + REPAIR_GRACE
                same = cls.objects.filter(pk__in=[old.pk for old in replaced])
                same.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=ends)).update(expires_at=ends)
                same.filter(replaced_by__isnull=True).update(replaced_by=key)
            return key

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

    def rotate(self, grace: timedelta = DEFAULT_GRACE) -> tuple[ApiKey, str]:
        """Issue this key's successor (same machine name and allowlist) and let this key work for
        ``grace`` more, then expire. Returns the new key and its raw value, shown once.

        Raises ``InvalidTransition`` when the key is revoked, expired or rotated already (its
        successor is the one to rotate), and ``ValueError`` for a grace period outside 0–30 days.
        """
        if grace < timedelta(0) or grace > MAX_GRACE:
            raise ValueError(f"the grace period must be between 0 and {MAX_GRACE.days} days")
        with transaction.atomic():
            current = ApiKey.objects.select_for_update().get(pk=self.pk)
            if not current.is_active:
                raise InvalidTransition("this key is no longer active")
            if current.replaced_by_id is not None:
                raise InvalidTransition("this key was rotated already; rotate its new key instead")
            successor, raw = ApiKey.issue(current.account, current.name, current.allowed_networks)
            current.expires_at = timezone.now() + grace
            current.replaced_by = successor
            current.save(update_fields=["expires_at", "replaced_by"])
        self.expires_at, self.replaced_by = current.expires_at, successor
        return successor, raw

    def set_allowed_networks(self, entries: list[object]) -> list[str]:
        """Replace the allowlist (an empty list allows any address); returns it normalised.
        Raises ``accounts.networks.InvalidNetworks`` naming a bad entry."""
        self.allowed_networks = parse_networks(entries)
        self.save(update_fields=["allowed_networks"])
        return self.allowed_networks

    def rename(self, name: str) -> str:
        """Give the key a new machine name; returns the cleaned name (ValueError when empty)."""
        cleaned = clean_key_name(name)
        if not cleaned:
            raise ValueError("a key's name cannot be empty")
        self.name = cleaned
        self.save(update_fields=["name"])
        return cleaned

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
        """The user approved the link: the key the client will fetch is added for its machine."""
        if self.is_expired:
            raise InvalidTransition("this pairing link has expired")
        with transaction.atomic():
            self._move(self.State.CONFIRMED, account=account, confirmed_at=timezone.now())
            return ApiKey.adopt(
                account, secret_hash=self.key_hash, prefix=self.key_prefix, name=self.label or self.hostname
            )

    def claim(self, poll_secret: str) -> str:
        """Hand the key over once, to the client that started the pairing."""
        if not hmac.compare_digest(hash_secret(poll_secret), self.poll_secret_hash):
            raise PermissionError("wrong pairing secret")
        self._move(self.State.CLAIMED, claimed_at=timezone.now())
        return _pairing_key(poll_secret)

    def expire(self) -> None:
        self._move(self.State.EXPIRED)
