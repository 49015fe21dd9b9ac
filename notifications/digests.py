"""Failure digests: when several of an account's runs fail together, one message lists them.

A node going down kills every run on it at once; one alert per run would bury the chat. So
every failure alert (a run that crashed, was killed by a signal, stalled or was lost) goes
through ``queue_alert``, inside the transaction of the state change that caused it:

* the account's failures within ``settings.FAILURE_DIGEST_WINDOW`` seconds of the first one
  form a group (a ``FailureDigest`` row); a failure after the window opens a new group;
* while the group has fewer than ``settings.FAILURE_DIGEST_THRESHOLD`` runs, each failure is
  queued as its usual alert, held until ``settings.FAILURE_DIGEST_HOLD`` seconds after the
  group opened (so a lone crash is told after a few seconds, never after the whole window);
* the failure that reaches the threshold folds the alerts still waiting (superseded) into one
  ``digest`` row listing every run of the group, and each later failure of the group queues
  another ``digest`` row with the same edit key: the sender edits that one message in place.

Alerts already sent when the threshold is reached stay as they are; the digest lists those runs
too. ``FAILURE_DIGEST_WINDOW=0`` turns digests off (every alert at once, on its own).

Outbox rows written here are ``OutboxMessage.Kind.PROCESS`` rows: the usual
``{"uuid", "event", …}`` with ``"digest": <group id>`` added, or
``{"event": "digest", "digest": <group id>, "uuid": <the newest run>}`` with
``edit_key=digest_edit_key(group id)`` (rendered by ``telegram_app.rendering.digest``).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.models import Account
from core.models import OutboxMessage
from core.outbox import enqueue
from core.state_machine import InvalidTransition
from notifications.models import FailureDigest, TrackedProcess

logger = logging.getLogger(__name__)

DIGEST_EVENT = "digest"
REPEAT_TAP_WINDOW = timedelta(minutes=1)
# How a finished run counts: failed is a crash; cancelled counts only when a signal (a scheduler,
# a node shutting down) ended it, not Ctrl-C or a stop the user asked for.
DELIBERATE_STOPS = {"SIGINT", "KeyboardInterrupt"}


def digest_edit_key(group_id: int) -> str:
    """Rows with this key edit the one digest message of a group."""
    return f"digest:{group_id}"


def failure_kind(process: TrackedProcess, event: str) -> str | None:
    """``crashed``, ``killed``, ``stalled`` or ``lost`` when ``event`` is a failure worth grouping,
    else None (starts, successes, progress, recoveries, deliberate stops)."""
    if event in ("stalled", "lost"):
        return event
    if event != "finished":
        return None
    if process.state == TrackedProcess.State.FAILED:
        return "crashed"
    reason = process.exit_reason or ""
    if process.state == TrackedProcess.State.CANCELLED and reason.startswith("SIG") and reason not in DELIBERATE_STOPS:
        return "killed"
    return None


def queue_alert(process: TrackedProcess, event: str, **extra: Any) -> OutboxMessage:
    """Queue ``process``'s alert for ``event`` (``finished``, ``stalled``, ``lost``), grouping failures.

    Call it inside the transaction that changed the process's state. Returns the row queued:
    the run's own alert, or the group's digest row.
    """
    payload: dict[str, Any] = {"uuid": str(process.uuid), "event": event, **extra}
    what = failure_kind(process, event)
    window = float(settings.FAILURE_DIGEST_WINDOW)
    if what is None or window <= 0:
        return enqueue(process.account, kind=OutboxMessage.Kind.PROCESS, payload=payload)
    with transaction.atomic():
        # One group per account at a time: concurrent failures of one account take turns here.
        list(Account.objects.select_for_update().filter(pk=process.account_id).values_list("pk", flat=True))
        now = timezone.now()
        group = (
            FailureDigest.objects.select_for_update()
            .filter(account_id=process.account_id, opened_at__gt=now - timedelta(seconds=window))
            .order_by("-opened_at", "-pk")
            .first()
        )
        if group is None:
            group = FailureDigest.objects.create(account_id=process.account_id, opened_at=now)
        due = max(now, group.opened_at + timedelta(seconds=float(settings.FAILURE_DIGEST_HOLD)))
        member: dict[str, Any] = {"uuid": str(process.uuid), "what": what, "at": now.isoformat()}
        members = [m for m in group.members if m.get("uuid") != member["uuid"]]  # a run once, as it is now
        folded = [m["row"] for m in group.members if m.get("alone") and m.get("row")]
        members.append(member)
        if len(members) < int(settings.FAILURE_DIGEST_THRESHOLD):
            row = enqueue(process.account, kind=OutboxMessage.Kind.PROCESS, payload={**payload, "digest": group.pk},
                          not_before=due)
            member.update(row=row.pk, alone=True)
        else:
            row = enqueue(process.account, kind=OutboxMessage.Kind.PROCESS,
                          payload={"event": DIGEST_EVENT, "digest": group.pk, "uuid": str(process.uuid)},
                          edit_key=digest_edit_key(group.pk), not_before=due)
            member["row"] = row.pk
            _fold(folded, row.pk)
        group.members = members
        group.save(update_fields=["members"])
    logger.info("process %s %s: failure %s of group %s", process.uuid, what, len(members), group.pk)
    return row


_ALERT_OF_STATE: dict[str, str] = {
    TrackedProcess.State.FAILED: "finished",
    TrackedProcess.State.CANCELLED: "finished",
    TrackedProcess.State.SUCCEEDED: "finished",
    TrackedProcess.State.STALLED: "stalled",
    TrackedProcess.State.LOST: "lost",
}


def send_run_alert(account: Account, process_uuid: str) -> TrackedProcess | None:
    """A digest's per-run button: queue that run's own full alert (error, traceback, chart) now.

    Returns the process (a running one, which came back, queues nothing), or None when the
    account has no such run.
    """
    try:
        process = TrackedProcess.objects.select_related("account").filter(account=account, uuid=process_uuid).first()
    except ValidationError:  # not a UUID
        return None
    if process is None:
        return None
    event = _ALERT_OF_STATE.get(process.state)
    if event is not None and not _alert_recently_queued(process, event):
        enqueue(process.account, kind=OutboxMessage.Kind.PROCESS, payload={"uuid": str(process.uuid), "event": event})
    return process


def _alert_recently_queued(process: TrackedProcess, event: str) -> bool:
    """A tap again on the same 🔎 while its alert waits, or within a minute of it: no second copy."""
    return OutboxMessage.objects.filter(
        account_id=process.account_id, kind=OutboxMessage.Kind.PROCESS, edit_key="",
        payload__uuid=str(process.uuid), payload__event=event, payload__digest__isnull=True,
        created_at__gte=timezone.now() - REPEAT_TAP_WINDOW,
    ).exclude(state__in=(OutboxMessage.State.FAILED, OutboxMessage.State.SUPERSEDED)).exists()


def _fold(row_ids: list[int], digest_row: int) -> None:
    """Alerts of the group not sent yet are shown by the digest instead (rows a sender already
    claimed go out as they are)."""
    for row in OutboxMessage.objects.filter(pk__in=row_ids, state=OutboxMessage.State.PENDING):
        try:
            row.supersede(f"folded into the failure digest #{digest_row}")
        except InvalidTransition:  # claimed meanwhile: it goes out on its own
            logger.info("outbox %s was claimed before it could be folded into #%s", row.pk, digest_row)


GROUPS_KEPT = timedelta(days=7)


def prune_digests() -> int:
    """Drop failure groups a week old: long closed, and their messages long sent."""
    deleted, _ = FailureDigest.objects.filter(opened_at__lt=timezone.now() - GROUPS_KEPT).delete()
    return deleted
