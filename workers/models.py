"""Connect tokens and the local workers they connect."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from functools import cache
from typing import Any

from django.db import connection, models, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import Account
from core import rows
from core.secrets import hash_secret, new_secret
from core.state_machine import InvalidTransition
from workers.signals import worker_connected

CONNECT_TOKEN_TTL = timedelta(minutes=5)


class ConnectTokenQuerySet(models.QuerySet["ConnectToken"]):
    def usable(self) -> ConnectTokenQuerySet:
        return self.filter(used_at__isnull=True, expires_at__gt=timezone.now())


class ConnectToken(models.Model):
    """A one-time token in the ``curl … | python3 - --token=…`` command: 5 minutes, single use."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="connect_tokens")
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=16)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    objects = ConnectTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… for {self.account}"

    @property
    def state(self) -> str:
        if self.used_at:
            return "used"
        return "expired" if timezone.now() >= self.expires_at else "usable"

    @classmethod
    def issue(cls, account: Account) -> tuple[ConnectToken, str]:
        secret = new_secret("sbt")
        now = timezone.now()
        token = cls.objects.create(
            account=account,
            token_hash=secret.hash,
            prefix=secret.prefix,
            created_at=now,
            expires_at=now + CONNECT_TOKEN_TTL,
        )
        return token, secret.raw

    @classmethod
    def consume(cls, raw: str) -> ConnectToken | None:
        """The token's row if ``raw`` was usable, now marked used; ``None`` otherwise.

        One conditional UPDATE decides: of two connections racing with the same token,
        exactly one sees a row updated.
        """
        if not raw or len(raw) > 128:
            return None
        digest = hash_secret(raw)
        now = timezone.now()
        won = cls.objects.usable().filter(token_hash=digest).update(used_at=now) == 1
        return cls.objects.select_related("account").get(token_hash=digest) if won else None


class WorkerQuerySet(models.QuerySet["Worker"]):
    def live(self) -> WorkerQuerySet:
        return self.filter(revoked_at__isnull=True)


class Worker(models.Model):
    """A user's machine. One live (not revoked) worker per account; a newer one replaces it."""

    class RevokeReason(models.TextChoices):
        REPLACED = "replaced", "Replaced by a newer worker"
        USER = "user", "Disconnected by the user"
        OPERATOR = "operator", "Revoked by an operator"

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="workers")
    machine_id = models.CharField(max_length=64, blank=True)
    machine_name = models.CharField(max_length=255)
    platform = models.CharField(max_length=64, blank=True)
    os_release = models.CharField(max_length=128, blank=True)
    python_version = models.CharField(max_length=32, blank=True)
    packages = models.JSONField(default=dict, blank=True)
    models_available = models.JSONField(default=list, blank=True)
    worker_version = models.CharField(max_length=32, blank=True)
    credential_hash = models.CharField(max_length=64, unique=True, editable=False)
    credential_prefix = models.CharField(max_length=16)
    created_at = models.DateTimeField(default=timezone.now)
    connected_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    disconnected_at = models.DateTimeField(null=True, blank=True)
    disconnect_notified_at = models.DateTimeField(null=True, blank=True)
    channel_name = models.CharField(
        max_length=255, blank=True, help_text="Channel of the open WebSocket; empty while offline."
    )
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoke_reason = models.CharField(max_length=16, choices=RevokeReason.choices, blank=True)

    objects = WorkerQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["account"], condition=Q(revoked_at__isnull=True), name="one_live_worker_per_account"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.machine_name} ({self.account})"

    @property
    def is_online(self) -> bool:
        return self.revoked_at is None and bool(self.channel_name)

    @classmethod
    def enroll(cls, account: Account, machine: Mapping[str, Any]) -> tuple[Worker, str]:
        """A new live worker for ``account``, replacing the older one; returns it and its raw credential."""
        secret = new_secret("sbw")
        with transaction.atomic():
            for old in cls.objects.live().filter(account=account).select_for_update():
                old.revoke(cls.RevokeReason.REPLACED)
            worker = cls.objects.create(
                account=account,
                credential_hash=secret.hash,
                credential_prefix=secret.prefix,
                **cls.machine_fields(machine),
            )
        return worker, secret.raw

    @classmethod
    def authenticate(cls, raw_credential: str) -> Worker | None:
        """The live worker holding this credential, with its account, in one statement.

        Every worker reconnects with its credential after a deploy, so this is hand-written SQL
        (``core.rows``): the ORM's compilation of the join cost more than the query itself.
        """
        if not raw_credential or len(raw_credential) > 128:
            return None
        row = rows.fetch_one(_authenticate_sql(connection.vendor), [hash_secret(raw_credential)])
        if row is None:
            return None
        split = rows.width(Worker)
        worker = rows.instance(Worker, row[:split])
        worker.account = rows.instance(Account, row[split:])
        return worker

    @staticmethod
    def machine_fields(machine: Mapping[str, Any]) -> dict[str, Any]:
        """The model fields for what a worker reported about its machine (validated by the consumer)."""
        packages = machine.get("packages") or {}
        return {
            "machine_id": str(machine.get("machine_id", ""))[:64],
            "machine_name": str(machine.get("hostname") or "unknown machine")[:255],
            "platform": str(machine.get("platform", ""))[:64],
            "os_release": str(machine.get("os_release", ""))[:128],
            "python_version": str(machine.get("python", ""))[:32],
            "worker_version": str(machine.get("worker_version", ""))[:32],
            "packages": {str(k)[:64]: (str(v)[:32] if v else None) for k, v in list(packages.items())[:50]},
            "models_available": [str(m)[:32] for m in (machine.get("models") or [])][:20],
        }

    def _update_if_live(self, **fields: Any) -> None:
        """Change this live worker's row; a concurrent revocation wins and raises InvalidTransition."""
        if not Worker.objects.filter(pk=self.pk, revoked_at__isnull=True).update(**fields):
            raise InvalidTransition("this worker was revoked")
        for name, value in fields.items():
            setattr(self, name, value)

    def update_machine(self, machine: Mapping[str, Any]) -> None:
        self._update_if_live(**self.machine_fields(machine))

    def would_announce_connection(self) -> bool:
        """Whether the user hears of this worker's next connection: its first, or the first after
        a disconnect notice; a reconnect within the grace period is silent."""
        return self.connected_at is None or self.disconnect_notified_at is not None

    def mark_connected(self, channel_name: str, machine: Mapping[str, Any] | None = None) -> bool:
        """Record a new connection (and what the worker reported about its machine, in the same
        UPDATE). Returns True when the user should hear about it.

        They should on the first connection and after a disconnect notice was sent; a
        reconnect within the grace period is silent.
        """
        now = timezone.now()
        first = self.connected_at is None
        announce = self.would_announce_connection()
        self._update_if_live(
            **(self.machine_fields(machine) if machine is not None else {}),
            channel_name=channel_name,
            connected_at=now,
            last_seen_at=now,
            disconnected_at=None,
            disconnect_notified_at=None,
        )
        worker_connected.send(sender=Worker, worker=self, at=now, first=first)
        return announce

    def mark_seen(self) -> None:
        Worker.objects.filter(pk=self.pk).update(last_seen_at=timezone.now())

    def mark_disconnected(self, channel_name: str) -> bool:
        """The WebSocket ``channel_name`` closed. Ignored when a newer connection already took over."""
        now = timezone.now()
        updated = Worker.objects.filter(pk=self.pk, channel_name=channel_name).update(
            channel_name="", disconnected_at=now, last_seen_at=now
        )
        if updated:
            self.refresh_from_db()
        return bool(updated)

    def mark_disconnect_notified(self) -> bool:
        """Claim the "disconnected" notice: True for exactly one caller while the worker stays away."""
        now = timezone.now()
        claimed = Worker.objects.filter(
            pk=self.pk, channel_name="", disconnected_at__isnull=False, disconnect_notified_at__isnull=True
        ).update(disconnect_notified_at=now)
        if claimed:
            self.disconnect_notified_at = now
        return claimed == 1

    def revoke(self, reason: str) -> None:
        if self.revoked_at is not None:
            raise InvalidTransition("this worker is already revoked")
        self.revoked_at = timezone.now()
        self.revoke_reason = reason
        self.save(update_fields=["revoked_at", "revoke_reason"])



@cache
def _authenticate_sql(vendor: str) -> str:
    q = connection.ops.quote_name
    return (
        f"SELECT {', '.join(rows.select_list(Worker, 'w') + rows.select_list(Account, 'a'))} "
        f"FROM {q(Worker._meta.db_table)} w INNER JOIN {q(Account._meta.db_table)} a "
        f"ON a.{q('id')} = w.{q('account_id')} "
        f"WHERE w.{q('credential_hash')} = %s AND w.{q('revoked_at')} IS NULL"
    )
