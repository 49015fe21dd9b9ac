"""Pairing a machine with a chat (``experiment_bot.setup()``, the device-login pattern).

The client starts a pairing (``POST /api/register``), prints a ``/start pair_<code>`` link and
polls; the user opens the link and approves in the bot (``confirm_pairing``); the client's
next poll claims the key (``PairingRequest.claim``). Pairings expire after ten minutes.
"""

from __future__ import annotations

import logging
from enum import StrEnum

from django.utils import timezone

from accounts.models import Account, ApiKey, PairingRequest
from core.state_machine import InvalidTransition

logger = logging.getLogger(__name__)


class PairingRefusal(StrEnum):
    """Why ``confirm_pairing`` did not pair. Compares equal to its code (``"expired"``…);
    ``str()`` and ``.message`` give the sentence the bot can show the user."""

    UNKNOWN = "unknown"
    EXPIRED = "expired"
    ALREADY_USED = "already_used"

    @property
    def message(self) -> str:
        return {
            "unknown": "This pairing link is not valid.",
            "expired": "This pairing link has expired (links last 10 minutes).",
            "already_used": "This pairing link was already used by another Telegram account.",
        }[self.value]

    def __str__(self) -> str:  # what a person reads; compare with the members or their values
        return self.message

    def __format__(self, spec: str) -> str:
        return format(self.message, spec)


def start_pairing(*, hostname: str = "", label: str = "") -> tuple[PairingRequest, str]:
    """A new pending pairing for ``experiment_bot.setup()``; returns it and the poll secret."""
    pairing, poll_secret = PairingRequest.start(hostname=hostname, label=label)
    logger.info("pairing #%s started (host %r)", pairing.pk, pairing.hostname)
    return pairing, poll_secret


def confirm_pairing(account: Account, code: str) -> ApiKey | PairingRefusal:
    """The user opened ``t.me/<bot>?start=pair_<code>``: add the pairing's key for its machine.

    Returns the new active ``ApiKey`` (named after the machine; the account's keys for other
    machines keep working, an older key of the same machine is revoked), or a
    ``PairingRefusal``. Tapping the link again from the same account returns the same key.
    Queues no message: the bot answers the user itself.
    """
    code = code.strip().removeprefix("pair_")
    pairing = PairingRequest.objects.filter(code=code).first() if 0 < len(code) <= 16 else None
    if pairing is None:
        return PairingRefusal.UNKNOWN
    if pairing.state in (PairingRequest.State.CONFIRMED, PairingRequest.State.CLAIMED):
        return _same_pairing_key(pairing, account)
    if pairing.is_expired:
        return PairingRefusal.EXPIRED
    try:
        key = pairing.confirm(account)
    except InvalidTransition:
        pairing.refresh_from_db()
        if pairing.state in (PairingRequest.State.CONFIRMED, PairingRequest.State.CLAIMED):
            return _same_pairing_key(pairing, account)
        return PairingRefusal.EXPIRED
    logger.info("pairing #%s confirmed by account %s", pairing.pk, account.pk)
    return key


def _same_pairing_key(pairing: PairingRequest, account: Account) -> ApiKey | PairingRefusal:
    if pairing.account_id == account.pk:
        key = ApiKey.objects.active().filter(account=account, secret_hash=pairing.key_hash).first()
        if key is not None:
            return key
    return PairingRefusal.ALREADY_USED


def expire_pairings() -> int:
    """Move pending and confirmed pairings past their expiry to ``expired``; returns how many."""
    expired = 0
    due = PairingRequest.objects.filter(
        state__in=[PairingRequest.State.PENDING, PairingRequest.State.CONFIRMED], expires_at__lte=timezone.now()
    )
    for pairing in due:
        try:
            pairing.expire()
        except InvalidTransition:
            continue
        expired += 1
    if expired:
        logger.info("expired %s pairing requests", expired)
    return expired
