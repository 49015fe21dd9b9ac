"""Input checks of the notify API: one parser per request body, returning a typed value.

Unknown fields are ignored; a field of the wrong type or out of range is refused with a 400
that names it (``'level' must be one of info, success, warning, error``).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from notifications.api.errors import ApiError, InvalidInput
from notifications.api.idempotency import check_key, message_fingerprint
from notifications.services import FINAL_STATUSES, FORMATS, LEVELS

MAX_TEXT = 65_536
MAX_NAME = 200
MAX_TAGS = 32
MAX_TAG = 64
MAX_METRICS = 100
MAX_METRIC_NAME = 64
MAX_INTERVAL = 86_400
MAX_LABEL = 255
MAX_BATCH = 100  # messages in one POST /api/notify/batch

_MISSING = object()


# ---------------------------------------------------------------------------------- primitives


MAX_INTEGER = 2**63 - 1  # what the database's bigint holds


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value) and abs(value) <= MAX_INTEGER
    except OverflowError:  # an int too large for a float
        return False


def string(data: dict, name: str, *, required: bool = False, max_length: int | None = None,
           default: str = "", label: str | None = None) -> str:
    label = label or name
    value = data.get(name, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise InvalidInput(f"'{label}' is required")
        return default
    if not isinstance(value, str):
        raise InvalidInput(f"'{label}' must be a string")
    if max_length is not None and len(value) > max_length:
        raise InvalidInput(f"'{label}' must be at most {max_length} characters (got {len(value)})")
    return value


def choice(data: dict, name: str, choices: tuple[str, ...], default: str | None = None) -> str:
    value = data.get(name)
    if value is None and default is not None:
        return default
    if value not in choices:
        raise InvalidInput(f"'{name}' must be one of {', '.join(choices)}")
    return value


def uuid_value(data: dict, name: str, *, required: bool = False) -> uuid.UUID | None:
    value = data.get(name)
    if value is None:
        if required:
            raise InvalidInput(f"'{name}' is required (a UUID such as {uuid.UUID(int=0)})")
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"'{name}' must be a UUID string")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidInput(f"'{name}' must be a UUID string, not {value[:60]!r}") from None


def required_uuid(data: dict, name: str) -> uuid.UUID:
    value = uuid_value(data, name, required=True)
    assert value is not None  # required: missing is a 400 already
    return value


def integer(data: dict, name: str, *, minimum: int = 0, maximum: int | None = MAX_INTEGER,
            label: str | None = None) -> int | None:
    label = label or name
    value = data.get(name)
    if value is None:
        return None
    if not _is_number(value) or value != int(value):
        raise InvalidInput(f"'{label}' must be a whole number")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum not in (None, MAX_INTEGER) else f"at least {minimum}"
        raise InvalidInput(f"'{label}' must be {bound}")
    return value


def number(data: dict, name: str, *, minimum: float | None = None, label: str | None = None) -> float | None:
    label = label or name
    value = data.get(name)
    if value is None:
        return None
    if not _is_number(value):
        raise InvalidInput(f"'{label}' must be a number")
    if minimum is not None and value < minimum:
        raise InvalidInput(f"'{label}' must be at least {minimum}")
    return value


def obj(data: dict, name: str) -> dict[str, Any]:
    value = data.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"'{name}' must be an object")
    return value


def metrics(data: dict, name: str = "metrics") -> dict[str, float]:
    """``{name: number}``; ``null`` values (NaN/inf on the client) are dropped."""
    values = obj(data, name)
    if len(values) > MAX_METRICS:
        raise InvalidInput(f"'{name}' may hold at most {MAX_METRICS} metrics")
    clean: dict[str, float] = {}
    for key, value in values.items():
        if len(key) > MAX_METRIC_NAME:
            raise InvalidInput(f"metric names in '{name}' must be at most {MAX_METRIC_NAME} characters")
        if value is None:
            continue
        if not _is_number(value):
            raise InvalidInput(f"'{name}.{key}' must be a number")
        clean[key] = value
    return clean


def tags(data: dict, name: str = "tags") -> list[str]:
    value = data.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise InvalidInput(f"'{name}' must be a list of strings")
    if len(value) > MAX_TAGS:
        raise InvalidInput(f"'{name}' may hold at most {MAX_TAGS} tags")
    if any(len(tag) > MAX_TAG for tag in value):
        raise InvalidInput(f"each of '{name}' must be at most {MAX_TAG} characters")
    return [tag.strip() for tag in value if tag.strip()]


MAX_GROUP = 64
_GROUP = re.compile(r"^[A-Za-z0-9_.:-]*$")
MAX_HINT = 500
MAX_FRAMES = 10
MAX_FRAME_FILE = 300
MAX_FRAME_FUNCTION = 200
MAX_FRAME_CODE = 500


def group(data: dict, name: str = "group") -> str:
    """A notification's edit group: messages with the same group edit one chat message."""
    value = string(data, name, max_length=MAX_GROUP)
    if not _GROUP.match(value):
        raise InvalidInput(f"'{name}' may hold only letters, digits and _ . : -")
    return value


def diagnosis(data: dict, name: str = "diagnosis") -> dict[str, Any]:
    """``{"hint": str, "frames": [{"file", "line", "function", "code"}]}`` of a crash (both optional):
    the one-line interpretation and the user's own frames, the failing one last."""
    value = obj(data, name)
    clean: dict[str, Any] = {}
    hint = string(value, "hint", max_length=MAX_HINT, label=f"{name}.hint").strip()
    if hint:
        clean["hint"] = hint
    frames = value.get("frames")
    if frames is None:
        return clean
    if not isinstance(frames, list):
        raise InvalidInput(f"'{name}.frames' must be a list of {{file, line, function, code}} objects")
    if len(frames) > MAX_FRAMES:
        raise InvalidInput(f"'{name}.frames' may hold at most {MAX_FRAMES} frames")
    out = []
    for index, frame in enumerate(frames):
        label = f"{name}.frames[{index}]"
        if not isinstance(frame, dict):
            raise InvalidInput(f"'{label}' must be an object {{file, line, function, code}}")
        out.append({
            "file": string(frame, "file", required=True, max_length=MAX_FRAME_FILE, label=f"{label}.file"),
            "line": integer(frame, "line", maximum=10**9, label=f"{label}.line"),
            "function": string(frame, "function", max_length=MAX_FRAME_FUNCTION, label=f"{label}.function"),
            "code": string(frame, "code", max_length=MAX_FRAME_CODE, label=f"{label}.code"),
        })
    if out:
        clean["frames"] = out
    return clean


# ---------------------------------------------------------------------------------- bodies


@dataclass(frozen=True)
class RegisterInput:
    hostname: str = ""
    label: str = ""


@dataclass(frozen=True)
class NotifyInput:
    text: str
    level: str = "info"
    format: str = "text"
    process_id: UUID | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    group: str = ""


@dataclass(frozen=True)
class StartInput:
    uuid: UUID
    name: str
    tags: list[str] = field(default_factory=list)
    parent_uuid: UUID | None = None
    heartbeat_interval: int = 60
    metadata: dict[str, Any] = field(default_factory=dict)
    total: int | None = None
    actions: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class HeartbeatInput:
    uuid: UUID
    done: int | None = None
    total: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    step: float | None = None


@dataclass(frozen=True)
class FinishInput:
    uuid: UUID
    status: str
    error: str = ""
    traceback: str = ""
    runtime_s: float | None = None
    peak_memory_mb: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    exit_reason: str = ""
    diagnosis: dict[str, Any] = field(default_factory=dict)


def parse_register(data: dict) -> RegisterInput:
    return RegisterInput(
        hostname=string(data, "hostname", max_length=MAX_LABEL),
        label=string(data, "label", max_length=MAX_LABEL),
    )


def parse_notify(data: dict, *, has_file: bool = False) -> NotifyInput:
    text = string(data, "text", required=not has_file, max_length=MAX_TEXT)
    if not text.strip() and not has_file:
        raise InvalidInput("'text' must not be empty")
    return NotifyInput(
        text=text,
        level=choice(data, "level", LEVELS, default="info"),
        format=choice(data, "format", FORMATS, default="text"),
        process_id=uuid_value(data, "process_id"),
        metadata=obj(data, "metadata"),
        group=group(data),
    )


def parse_start(data: dict) -> StartInput:
    name = string(data, "name", required=True, max_length=MAX_NAME).strip()
    if not name:
        raise InvalidInput("'name' must not be empty")
    interval = number(data, "heartbeat_interval", minimum=0)
    if interval is not None and interval > MAX_INTERVAL:
        raise InvalidInput(f"'heartbeat_interval' must be a number of seconds between 0 and {MAX_INTERVAL}")
    return StartInput(
        uuid=required_uuid(data, "uuid"),
        name=name,
        tags=tags(data),
        parent_uuid=uuid_value(data, "parent_uuid"),
        heartbeat_interval=60 if interval is None else math.ceil(interval),
        metadata=obj(data, "metadata"),
        total=integer(data, "total"),
        actions=action_names(data),
    )


def action_names(data: dict) -> list[str]:
    """``actions``: the names of the run's action buttons (``bot.track(actions={...})``)."""
    from notifications.models import MAX_ACTION_NAME, MAX_ACTIONS

    value = data.get("actions")
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_ACTIONS:
        raise InvalidInput(f"'actions' must be a list of at most {MAX_ACTIONS} names")
    names: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item.strip() or len(item) > MAX_ACTION_NAME:
            raise InvalidInput(f"each of 'actions' must be a non-empty name of at most {MAX_ACTION_NAME} characters")
        if item in names:
            raise InvalidInput(f"'actions' names must be unique ({item!r} is repeated)")
        names.append(item)
    return names


def parse_heartbeat(data: dict) -> HeartbeatInput:
    progress = data.get("progress")
    done = total = None
    if progress is not None:
        if not isinstance(progress, dict):
            raise InvalidInput("'progress' must be an object {\"done\": n, \"total\": n | null} or null")
        done = integer(progress, "done", label="progress.done")
        if done is None:
            raise InvalidInput("'progress.done' is required when 'progress' is given")
        total = integer(progress, "total", label="progress.total")
    return HeartbeatInput(
        uuid=required_uuid(data, "uuid"),
        done=done,
        total=total,
        metrics=metrics(data),
        step=number(data, "step"),
    )


def parse_finish(data: dict) -> FinishInput:
    return FinishInput(
        uuid=required_uuid(data, "uuid"),
        status=choice(data, "status", FINAL_STATUSES),
        error=string(data, "error"),
        traceback=string(data, "traceback"),
        runtime_s=number(data, "runtime_s", minimum=0),
        peak_memory_mb=number(data, "peak_memory_mb", minimum=0),
        metrics=metrics(data),
        exit_reason=string(data, "exit_reason"),
        diagnosis=diagnosis(data),
    )


@dataclass(frozen=True)
class BatchItem:
    """One message of ``POST /api/notify/batch``: either parsed, or the error it is answered with."""

    message: NotifyInput | None = None
    idempotency_key: str | None = None
    error: ApiError | None = None
    fingerprint: str = ""  # of the message, as idempotency compares retries


def parse_batch_item(raw: Any) -> BatchItem:
    """A batch item is the single form's body plus an optional ``idempotency_key``; a bad
    item becomes an error answered in its place, not a refusal of the whole batch."""
    try:
        if not isinstance(raw, dict):
            raise InvalidInput("each item of 'messages' must be an object like the body of POST /api/notify")
        key = raw.get("idempotency_key")
        if key is not None:
            if not isinstance(key, str):
                raise InvalidInput("'idempotency_key' must be a string", code="invalid_idempotency_key")
            key = check_key(key)
        return BatchItem(message=parse_notify(raw), idempotency_key=key,
                         fingerprint=message_fingerprint(raw) if key is not None else "")
    except ApiError as exc:
        return BatchItem(error=exc)


def parse_notify_batch(data: dict) -> list[BatchItem]:
    """``{"messages": [...]}`` with 1 to ``MAX_BATCH`` items; each item parsed on its own."""
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise InvalidInput("'messages' is required: a list of messages, each like the body of POST /api/notify")
    if not messages:
        raise InvalidInput("'messages' must not be empty")
    if len(messages) > MAX_BATCH:
        raise ApiError(413, "too_many_messages",
                       f"a batch holds at most {MAX_BATCH} messages (got {len(messages)}); split it")
    return [parse_batch_item(raw) for raw in messages]


def check_notify_batch(data: dict) -> list[BatchItem]:
    """``parse_notify_batch`` that also refuses the first bad item (for documentation examples)."""
    items = parse_notify_batch(data)
    for index, item in enumerate(items):
        if item.error is not None:
            raise InvalidInput(f"messages[{index}]: {item.error.message}")
    return items


# operationId in notifications.schema → the parser of its JSON body
PARSERS: dict[str, Callable[[dict], Any]] = {
    "register": parse_register,
    "notify": parse_notify,
    "notifyBatch": check_notify_batch,
    "startProcess": parse_start,
    "heartbeat": parse_heartbeat,
    "finishProcess": parse_finish,
}
