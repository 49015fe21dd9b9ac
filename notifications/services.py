"""Experiment notifications: what the notify API and the bot's periodic sweeps do.

Plain synchronous ORM code. Every change the user should see becomes an outbox row through
``core.outbox.enqueue``; the bot renders it (``telegram_app.rendering.notify``)
from the row's payload and the process as it is in the database at sending time.

Outbox rows written here:

* kind ``OutboxMessage.Kind.NOTIFY``: ``{"text", "level", "format", "metadata", "process_uuid"}`` (+ one file);
* kind ``OutboxMessage.Kind.PROCESS``: ``{"uuid", "event"}`` with ``event`` one of ``started``, ``progress``,
  ``finished``, ``stalled`` (+ ``silent_s``, ``interval_s``) and ``recovered`` (+ ``silent_s``).
  ``progress`` rows carry ``edit_key=process.progress_edit_key``: they edit one message.
  ``started`` rows carry ``edit_key=process.control_edit_key``: a later ``started`` row (after a tap on
  ⏹ Stop / ⏸ Pause / an action, and at the finish unless the start message is still unsent) edits the
  start message's state and buttons.
  Failure alerts (``finished`` as failed or killed, ``stalled``, ``lost``) go through
  ``notifications.digests.queue_alert``: held a few seconds, and folded into one ``digest`` row
  when several runs fail together.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid as uuid_lib
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Account, ApiKey
from core.models import Attachment, OutboxMessage
from core.outbox import FileToSend, enqueue
from core.state_machine import InvalidTransition
from notifications.digests import prune_digests, queue_alert
from notifications.models import AddressCounter, IdempotencyRecord, RateCounter, TrackedProcess
from tg_rules.images import image_type

logger = logging.getLogger(__name__)

LEVELS = ("info", "success", "warning", "error")
FORMATS = ("text", "markdown", "html")
FINAL_STATUSES = ("succeeded", "failed", "cancelled")
MAX_FILE_BYTES = 10 * 1024 * 1024

_UNSAFE_FILENAME = re.compile(r"[\x00-\x1f\x7f]")
_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$")


class ServiceError(Exception):
    """A request the services refuse; ``code`` is machine-readable, the message is for people."""

    code = "invalid"


class UnknownProcess(ServiceError):
    code = "unknown_process"


class ProcessConflict(ServiceError):
    code = "conflict"


# ---------------------------------------------------------------------------------- files


def clean_filename(name: str, default: str = "file") -> str:
    """A base name without folders or control characters, at most 255 characters, extension kept."""
    base = _UNSAFE_FILENAME.sub("", name.replace("\\", "/")).rsplit("/", 1)[-1].strip().lstrip(".")
    if not base:
        return default
    if len(base) > 255:
        stem, dot, ext = base.rpartition(".")
        base = (stem[: 254 - len(ext)] + dot + ext) if dot and len(ext) <= 16 else base[:255]
    return base


def attachment_for(filename: str, data: bytes, content_type: str = "") -> FileToSend:
    """An uploaded file as an outbox attachment: images (by content, not name) become photos."""
    if len(data) > MAX_FILE_BYTES:
        raise ServiceError(f"the file is {len(data)} bytes; the limit is {MAX_FILE_BYTES} bytes (10 MiB)")
    sniffed = image_type(data)
    if sniffed:
        return FileToSend(kind=Attachment.Kind.PHOTO, filename=clean_filename(filename, "image"), data=data,
                          content_type=sniffed)
    declared = (content_type or "").split(";", 1)[0].strip().lower()
    if not _CONTENT_TYPE.match(declared) or declared.startswith("image/"):
        declared = "application/octet-stream"
    return FileToSend(kind=Attachment.Kind.DOCUMENT, filename=clean_filename(filename), data=data,
                      content_type=declared)


# ---------------------------------------------------------------------------------- notify


def notify(
    api_key: ApiKey,
    text: str,
    level: str = "info",
    fmt: str = "text",
    process_uuid: uuid_lib.UUID | str | None = None,
    metadata: dict[str, Any] | None = None,
    file: FileToSend | None = None,
    *,
    group: str = "",
) -> OutboxMessage:
    """Queue one notification for the key's chat.

    ``group`` (``bot.catch()``'s repeated errors): every notification of the account with the
    same group edits one chat message instead of sending a new one.

    ``process_uuid`` links it to a tracked process of the same account (its name and colour tag
    are shown); an unknown one is kept in the payload but shows nothing.
    """
    if level not in LEVELS:
        raise ServiceError(f"'level' must be one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ServiceError(f"'format' must be one of {', '.join(FORMATS)}")
    payload = {
        "text": text,
        "level": level,
        "format": fmt,
        "metadata": metadata or {},
        "process_uuid": str(process_uuid) if process_uuid else None,
    }
    edit_key = group_edit_key(api_key.account_id, group) if group else ""
    message = enqueue(api_key.account, kind=OutboxMessage.Kind.NOTIFY, payload=payload, files=[file] if file else [],
                      edit_key=edit_key)
    logger.info("notify: queued message %s (%s) for account %s", message.pk, level, api_key.account_id)
    return message


def group_edit_key(account_id: int, group: str) -> str:
    """The edit key of a notify ``group``: per account, so no client can aim at another's message."""
    digest = hashlib.sha256(f"{account_id}:{group}".encode()).hexdigest()[:40]
    return f"grp:{digest}"


# ---------------------------------------------------------------------------------- processes


def _pending(account: Account, edit_key: str) -> bool:
    """Whether a row with ``edit_key`` waits to be sent, locked until this transaction ends: the
    sender (``SKIP LOCKED``) then cannot claim and render it before what this transaction changes."""
    return OutboxMessage.objects.select_for_update().filter(
        chat_id=account.chat_id, edit_key=edit_key, state=OutboxMessage.State.PENDING
    ).exists()


def _process_row(process: TrackedProcess, event: str, *, edit: bool = False, **extra: Any) -> OutboxMessage:
    payload = {"uuid": str(process.uuid), "event": event, **extra}
    edit_key = process.progress_edit_key if edit else ""
    if event == "started":
        edit_key = process.control_edit_key
    return enqueue(process.account, kind=OutboxMessage.Kind.PROCESS, payload=payload, edit_key=edit_key)


def _locked_process(account: Account, process_uuid: uuid_lib.UUID | str) -> TrackedProcess:
    """The account's process, locked for the rest of the transaction (PostgreSQL)."""
    process_uuid = _as_uuid(process_uuid)
    process = (
        TrackedProcess.objects.select_for_update(of=("self",))
        .select_related("account")
        .filter(uuid=process_uuid, account=account)
        .first()
    )
    if process is None:
        raise UnknownProcess(f"no process {process_uuid} was started with this key's account; "
                             "call /api/processes/start first")
    return process


_PREF_OF_EVENT = {"started": "on_start", "succeeded": "on_success", "failed": "on_error", "cancelled": "on_error"}


def wants_message(process: TrackedProcess, event: str) -> bool:
    """False when the client's ``metadata.notify_prefs`` turned this message off (start, success,
    error/cancel). The event is still recorded; stalls and recoveries are always reported."""
    prefs = process.metadata.get("notify_prefs") if isinstance(process.metadata, dict) else None
    if not isinstance(prefs, dict):
        return True
    return prefs.get(_PREF_OF_EVENT.get(event, ""), True) is not False


def _as_uuid(value: uuid_lib.UUID | str) -> uuid_lib.UUID:
    try:
        return value if isinstance(value, uuid_lib.UUID) else uuid_lib.UUID(str(value))
    except ValueError:
        raise ServiceError(f"{value!r} is not a UUID") from None


def _owned(process: TrackedProcess, account: Account) -> TrackedProcess:
    if process.account_id != account.pk:
        raise ProcessConflict(f"the uuid {process.uuid} is already used by another process; use a fresh uuid4")
    return process


def start_process(
    api_key: ApiKey,
    *,
    uuid: uuid_lib.UUID | str,
    name: str,
    tags: list[str] | None = None,
    parent_uuid: uuid_lib.UUID | str | None = None,
    heartbeat_interval: int = 60,
    metadata: dict[str, Any] | None = None,
    total: int | None = None,
    actions: list[str] | None = None,
) -> tuple[TrackedProcess, bool]:
    """Start tracking a process; returns it and whether it is new (a repeated start changes nothing).

    A ``parent_uuid`` naming no process of the same account is ignored. ``heartbeat_interval`` 0
    turns the dead-man's switch off for this process.
    """
    account = api_key.account
    uuid = _as_uuid(uuid)
    with transaction.atomic():
        existing = TrackedProcess.objects.select_related("account").filter(uuid=uuid).first()
        if existing is not None:
            return _owned(existing, account), False
        parent = None
        if parent_uuid and _as_uuid(parent_uuid) != uuid:
            parent = TrackedProcess.objects.filter(uuid=parent_uuid, account=account).first()
        try:
            with transaction.atomic():
                process = TrackedProcess.objects.create(
                    uuid=uuid, account=account, name=name, tags=list(tags or []), parent=parent,
                    heartbeat_interval=heartbeat_interval, metadata=metadata or {}, progress_total=total,
                    actions=list(actions or []),
                )
        except IntegrityError:  # the same uuid started concurrently
            return _owned(TrackedProcess.objects.select_related("account").get(uuid=uuid), account), False
        process.account = account
        if wants_message(process, "started"):
            _process_row(process, "started")
    logger.info("process %s (%s) started for account %s", process.uuid, name, account.pk)
    return process, True


def progress_step(done: int | None, total: int | None) -> tuple[str, int] | None:
    """What the progress message shows, coarsely: a whole percentage, or (with no total) the count
    to two significant digits. A new progress row is queued only when this changes."""
    if done is None:
        return None
    if total and total > 0:
        return "percent", max(0, min(100, done * 100 // total))
    done = max(0, done)
    if done < 100:
        return "count", done
    magnitude = 10 ** (len(str(done)) - 2)
    return "count", done // magnitude * magnitude


def heartbeat(
    api_key: ApiKey,
    *,
    uuid: uuid_lib.UUID | str,
    done: int | None = None,
    total: int | None = None,
    metrics: dict[str, float] | None = None,
    step: float | None = None,
) -> TrackedProcess:
    """Record a heartbeat; queue a progress edit when the shown progress changes, and a
    ``recovered`` notice when it brings a stalled process back."""
    with transaction.atomic():
        process = _locked_process(api_key.account, uuid)
        if process.is_finished:
            raise ProcessConflict(f"process {process.uuid} has already finished ({process.state})")
        shown_before = progress_step(process.progress_done, process.progress_total)
        silent_s = int((timezone.now() - process.last_heartbeat_at).total_seconds())
        recovered = process.heartbeat(done=done, total=total, metrics=metrics or None, step=step)
        if recovered:
            _process_row(process, "recovered", silent_s=silent_s)
            logger.info("process %s recovered after %ss without heartbeat", process.uuid, silent_s)
        shown_after = progress_step(process.progress_done, process.progress_total)
        if shown_after is not None and shown_after != shown_before:
            _process_row(process, "progress", edit=True)
    return process


def heartbeat_answer(
    api_key: ApiKey,
    *,
    uuid: uuid_lib.UUID | str,
    done: int | None = None,
    total: int | None = None,
    metrics: dict[str, float] | None = None,
    step: float | None = None,
) -> dict[str, Any]:
    """A heartbeat, answered with what the chat asks of the client: ``{"state", "control",
    "actions"}``. ``control`` is ``run``, ``pause`` or ``stop`` (it stays until changed); the
    tapped ``actions`` are handed over once (a retried request replays the same answer)."""
    with transaction.atomic():
        process = heartbeat(api_key, uuid=uuid, done=done, total=total, metrics=metrics, step=step)
        actions = process.take_actions()  # still locked: the heartbeat's transaction is this one
    if actions:
        logger.info("process %s: %s action tap(s) handed to the client", process.uuid, len(actions))
    return {"state": process.state, "control": process.control, "actions": actions}


class ControlRefused(ServiceError):
    code = "refused"


class ProcessEnded(ControlRefused):
    """A tap on a button of a run that has finished: its buttons are stale."""


CONTROL_COMMANDS = ("stop", "pause", "resume", "action")


def control_process(
    account: Account, process_uuid: uuid_lib.UUID | str, command: str, index: int | None = None
) -> tuple[TrackedProcess, str]:
    """A tap on a process message's ⏹ Stop, ⏸ Pause, ▶ Resume or action button.

    Only the account that started the run may act. Returns the process and what to tell the
    user; raises ``UnknownProcess`` / ``ControlRefused`` (its message is for the user) for a
    stale or repeated tap. The client learns the change from the reply to its next heartbeat;
    the messages showing the buttons are edited through the outbox in the same transaction.
    """
    if command not in CONTROL_COMMANDS:
        raise ServiceError(f"unknown command {command!r}")
    try:
        wanted = _as_uuid(process_uuid)
    except ServiceError:
        raise UnknownProcess("That run is no longer known.") from None
    Control = TrackedProcess.Control
    with transaction.atomic():
        process = (TrackedProcess.objects.select_for_update(of=("self",)).select_related("account")
                   .filter(uuid=wanted).first())
        if process is None:
            raise UnknownProcess("That run is no longer known.")
        if process.account_id != account.pk:
            raise ControlRefused("Only the chat that started this run can control it.")
        if process.is_finished:
            raise ProcessEnded(f"It has already ended ({process.state}); nothing to do.")
        if process.control == Control.STOP:
            raise ControlRefused("Stop was already requested; the run stops at its next step.")
        if command == "action":
            try:
                name = process.queue_action(index if index is not None else -1)
            except InvalidTransition:
                if index is not None and 0 <= index < len(process.actions):
                    raise ControlRefused("Too many taps are waiting for the run; try again in a moment.") from None
                raise ControlRefused("That action is not offered by this run.") from None
            answer = f"“{name}” runs at the run's next step."
        else:
            target, answer, refusal = {
                "stop": (Control.STOP, "⏹ Stop requested: the run stops at its next step.", ""),
                "pause": (Control.PAUSE, "⏸ Pause requested: the run waits at its next step.", "It is already paused."),
                "resume": (Control.RUN, "▶ Resumed.", "It is not paused."),
            }[command]
            if command == "pause" and not process.pausable:
                raise ControlRefused("This run has no progress steps to pause at.")
            try:
                process.set_control(target)
            except InvalidTransition:
                raise ControlRefused(refusal or "Not possible now.") from None
            # The messages showing the buttons follow the new state.
            if wants_message(process, "started"):
                _process_row(process, "started")
            if process.progress_done is not None:
                _process_row(process, "progress", edit=True)
    logger.info("process %s: %s from the chat of account %s", process.uuid, command, account.pk)
    return process, answer


def finish_process(
    api_key: ApiKey,
    *,
    uuid: uuid_lib.UUID | str,
    status: str,
    error: str = "",
    traceback: str = "",
    runtime_s: float | None = None,
    peak_memory_mb: float | None = None,
    metrics: dict[str, float] | None = None,
    exit_reason: str = "",
    diagnosis: dict[str, Any] | None = None,
) -> tuple[TrackedProcess, bool]:
    """Finish a process; returns it and whether this call finished it. ``diagnosis`` is the
    client's ``{"hint", "frames"}`` of a crash (checked by the API's validation).

    A repeat with the status it already has changes nothing; a different final status is a
    conflict. When the process showed progress, its progress message is edited once more to the
    final state, then a separate ``finished`` message follows.
    """
    if status not in FINAL_STATUSES:
        raise ServiceError(f"'status' must be one of {', '.join(FINAL_STATUSES)}")
    with transaction.atomic():
        process = _locked_process(api_key.account, uuid)
        if process.is_finished:
            if process.state == status:
                return process, False
            raise ProcessConflict(f"process {process.uuid} has already finished as {process.state}")
        process.finish(status, error=error, traceback=traceback, exit_reason=exit_reason,
                       runtime_s=runtime_s, peak_memory_mb=peak_memory_mb, metrics=metrics, diagnosis=diagnosis)
        if process.progress_done is not None:
            _process_row(process, "progress", edit=True)
        if wants_message(process, "started") and not _pending(process.account, process.control_edit_key):
            # The start message carries ⏹ Stop while the run lives: edit it to its final state,
            # without buttons. A start message not yet sent renders that state itself.
            _process_row(process, "started")
        if wants_message(process, status):
            queue_alert(process, "finished")  # failures of several runs together: one digest
    logger.info("process %s finished: %s", process.uuid, status)
    return process, True


SWEEP_BATCH = 1000  # per sweep; the next sweep takes the rest


def _grace(grace: timedelta | float | None) -> timedelta:
    if grace is None:
        grace = settings.HEARTBEAT_GRACE
    return grace if isinstance(grace, timedelta) else timedelta(seconds=grace)


def mark_stalled_processes(grace: timedelta | float | None = None) -> int:
    """The dead-man's switch: mark running processes whose heartbeats stopped as stalled.

    Overdue means no heartbeat for ``heartbeat_interval`` + ``grace`` (default
    ``settings.HEARTBEAT_GRACE`` seconds). Each stall queues one ``stalled`` row; a process stays
    stalled (and is not reported again) until a heartbeat brings it back. Returns how many were
    marked. Safe to run from several processes at once.
    """
    grace = _grace(grace)
    cutoff = timezone.now() - grace
    candidates = list(
        TrackedProcess.objects.filter(
            state=TrackedProcess.State.RUNNING, heartbeat_interval__gt=0, last_heartbeat_at__lt=cutoff
        ).order_by("last_heartbeat_at").values_list("pk", flat=True)[:SWEEP_BATCH]
    )
    marked = 0
    for pk in candidates:
        with transaction.atomic():
            process = (
                TrackedProcess.objects.select_for_update(of=("self",), skip_locked=True)
                .select_related("account")
                .filter(pk=pk, state=TrackedProcess.State.RUNNING)
                .first()
            )
            now = timezone.now()
            if process is None or not process.is_overdue(grace, now=now):
                continue
            try:
                process.mark_stalled()
            except InvalidTransition:
                continue
            silent_s = int((now - process.last_heartbeat_at).total_seconds())
            queue_alert(process, "stalled", silent_s=silent_s, interval_s=process.heartbeat_interval)
            marked += 1
        logger.info("process %s stalled: no heartbeat for %ss", process.uuid, silent_s)
    return marked


def mark_lost_processes(after: timedelta | float | None = None) -> int:
    """Mark processes stalled for longer than ``after`` (default ``settings.PROCESS_LOST_AFTER``
    seconds) as lost: they leave ``/status`` and one ``lost`` row tells the user. A heartbeat
    still brings such a process back. Returns how many were marked."""
    if after is None:
        after = settings.PROCESS_LOST_AFTER
    after = after if isinstance(after, timedelta) else timedelta(seconds=after)
    cutoff = timezone.now() - after
    candidates = list(
        TrackedProcess.objects.filter(state=TrackedProcess.State.STALLED, stalled_at__lt=cutoff)
        .order_by("stalled_at").values_list("pk", flat=True)[:SWEEP_BATCH]
    )
    marked = 0
    for pk in candidates:
        with transaction.atomic():
            process = (
                TrackedProcess.objects.select_for_update(of=("self",), skip_locked=True)
                .select_related("account")
                .filter(pk=pk, state=TrackedProcess.State.STALLED, stalled_at__lt=cutoff)
                .first()
            )
            if process is None:
                continue
            silent_s = int((timezone.now() - process.last_heartbeat_at).total_seconds())
            process.mark_lost("no heartbeat")
            queue_alert(process, "lost", silent_s=silent_s)
            marked += 1
        logger.info("process %s lost: no heartbeat for %ss", process.uuid, silent_s)
    return marked


def dismiss_process(account: Account, process_uuid: uuid_lib.UUID | str) -> TrackedProcess | None:
    """The user dismissed a stalled process from its message: mark it lost at once.

    Returns the process (in whatever state it is now: one that came back stays running), or
    None when the account has no such process. Queues nothing: the bot edits the message.
    """
    try:
        wanted = _as_uuid(process_uuid)
    except ServiceError:
        return None
    with transaction.atomic():
        process = (
            TrackedProcess.objects.select_for_update(of=("self",))
            .filter(account=account, uuid=wanted).first()
        )
        if process is None:
            return None
        if process.state == TrackedProcess.State.STALLED:
            process.mark_lost("dismissed")
            logger.info("process %s dismissed by account %s", process.uuid, account.pk)
    return process


def process_tree(account: Account) -> list[dict[str, Any]]:
    """The account's running and stalled processes as a tree, oldest first (for ``/status``).

    Each node: ``{"uuid", "name", "tags", "tag_emoji", "state", "progress", "runtime_s",
    "started_at", "last_heartbeat_at", "children"}`` where ``progress`` is ``None`` or
    ``{"done", "total", "percent"}`` (``total``/``percent`` may be ``None``). A process whose
    parent is not active itself is a root.
    """
    now = timezone.now()
    processes = list(TrackedProcess.objects.active().filter(account=account).order_by("started_at", "pk"))
    nodes = {p.pk: _node(p, now) for p in processes}
    roots: list[dict[str, Any]] = []
    for process in processes:
        parent = nodes.get(process.parent_id) if process.parent_id else None
        (parent["children"] if parent is not None else roots).append(nodes[process.pk])
    return roots


def _node(process: TrackedProcess, now: datetime) -> dict[str, Any]:
    progress = None
    if process.progress_done is not None:
        total = process.progress_total if process.progress_total and process.progress_total > 0 else None
        percent = min(100.0, round(process.progress_done * 100 / total, 1)) if total else None
        progress = {"done": process.progress_done, "total": total, "percent": percent}
    return {
        "uuid": str(process.uuid),
        "name": process.name,
        "tags": list(process.tags),
        "tag_emoji": process.tag_emoji,
        "state": process.state,
        "progress": progress,
        "runtime_s": max(0.0, (now - process.started_at).total_seconds()),
        "started_at": process.started_at,
        "last_heartbeat_at": process.last_heartbeat_at,
        "children": [],
    }


# ---------------------------------------------------------------------------------- bookkeeping

IDEMPOTENCY_TTL = timedelta(days=1)
RATE_COUNTER_TTL = timedelta(hours=2)


def prune_bookkeeping() -> int:
    """Delete idempotency answers older than a day, rate counters older than two hours and
    failure digest groups older than a week."""
    now = timezone.now()
    answers, _ = IdempotencyRecord.objects.filter(created_at__lt=now - IDEMPOTENCY_TTL).delete()
    counters, _ = RateCounter.objects.filter(window_start__lt=now - RATE_COUNTER_TTL).delete()
    addresses, _ = AddressCounter.objects.filter(window_start__lt=now - RATE_COUNTER_TTL).delete()
    return answers + counters + addresses + prune_digests()
