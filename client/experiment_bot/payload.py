"""Shaping values for the API: JSON-safe metrics and metadata, names, tags and UUIDs within
the server's limits, and how an exception becomes a finish status, error and traceback."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from . import signals
from ._log import warn_once as _warn_once
from .errors import StopRequested

#: The exit_reason of a run ended by ⏹ Stop in the chat (the server words its messages by it).
STOPPED_FROM_TELEGRAM = "stopped from Telegram"

if TYPE_CHECKING:
    from types import TracebackType

TRACEBACK_LIMIT = 64_000


def jsonable(value: Any, *, metric: bool = False, depth: int = 0) -> Any:
    """A JSON-safe copy: numpy scalars become numbers, non-finite floats None (metrics) or text."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return None if metric else str(value)
    if depth > 6:
        return str(value)[:1000]
    if isinstance(value, dict):
        return {str(k): jsonable(v, metric=metric, depth=depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, metric=metric, depth=depth + 1) for v in value]
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return jsonable(item(), metric=metric, depth=depth + 1)
        except Exception:
            pass
    if hasattr(value, "__float__"):
        try:
            return jsonable(float(value), metric=metric, depth=depth + 1)
        except Exception:
            pass
    return str(value)[:1000]


MAX_NAME = 200
MAX_TAGS = 32
MAX_TAG = 64
MAX_METRICS = 100
MAX_METRIC_NAME = 64


def clean_name(name: str) -> str:
    name = " ".join(str(name).split()) or "process"
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 1] + "…"


def clean_tags(tags: Any) -> list[str]:
    if isinstance(tags, str):
        tags = [tags]
    cleaned = [str(tag).strip()[:MAX_TAG] for tag in tags or ()]
    cleaned = [tag for tag in cleaned if tag]
    if len(cleaned) > MAX_TAGS:
        _warn_once("tags", "experiment_bot: only the first %d tags of a run are sent", MAX_TAGS)
    return cleaned[:MAX_TAGS]


def as_uuid(value: Any, what: str) -> str | None:
    """``value`` as a canonical UUID string, or None (with a warning) when it is not one."""
    if value is None or value == "":
        return None
    import uuid

    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        _warn_once(f"uuid:{what}:{value}", "experiment_bot: %s %r is not a UUID; ignored", what, value)
        return None


def clean_number(value: Any) -> int | float | None:
    """A finite JSON number (bools count as 0/1), or None."""
    value = jsonable(value, metric=True)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    return None


def clean_count(value: Any, what: str) -> tuple[int | None, str | None]:
    """``(count, None)`` for a finite, non-negative number (numpy scalars included; truncated
    with ``int()``), else ``(None, problem)``. None stays None."""
    if value is None:
        return None, None
    number = None if isinstance(value, bool) else clean_number(value)
    if number is None or number < 0:
        return None, f"{what}={value!r} is not a finite, non-negative number; sent without it"
    return int(number), None


def clean_metrics(values: dict[str, Any]) -> dict[str, Any]:
    """Numbers only (the server charts them), at most 100 names of at most 64 characters."""
    clean: dict[str, Any] = {}
    for name, value in values.items():
        number = clean_number(value)
        if (
            number is None
            and value is not None
            and not (isinstance(value, float) and not math.isfinite(value))
        ):
            _warn_once(
                f"metric:{name}", "experiment_bot: metric %r is not a number (%r); ignored", name, value
            )
            continue
        if len(clean) >= MAX_METRICS:
            _warn_once(
                "metrics-many", "experiment_bot: only %d metric names per update are sent", MAX_METRICS
            )
            break
        clean[str(name)[:MAX_METRIC_NAME]] = number
    return clean


def describe_exception(exc: BaseException) -> str:
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    text = str(exc)
    return f"{name}: {text}" if text else name


def format_traceback(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None, verbosity: str
) -> str | None:
    if verbosity == "low":
        return None
    import traceback

    capture_locals = verbosity == "high"
    try:
        text = "".join(
            traceback.TracebackException(exc_type, exc, tb, capture_locals=capture_locals).format()
        )
    except Exception:
        text = "".join(traceback.format_exception(exc_type, exc, tb))
    if len(text) > TRACEBACK_LIMIT:
        head = TRACEBACK_LIMIT // 8
        tail = TRACEBACK_LIMIT - head
        omitted = len(text) - head - tail
        text = f"{text[:head]}\n… {omitted} characters omitted …\n{text[-tail:]}"
    return text


def classify(exc: BaseException | None) -> tuple[str, str | None]:
    """(status, exit_reason) for the way a run ended."""
    if exc is None:
        return "succeeded", None
    if isinstance(exc, StopRequested):
        return "cancelled", STOPPED_FROM_TELEGRAM
    if isinstance(exc, signals.SignalExit):
        return "cancelled", exc.signal_name
    if isinstance(exc, KeyboardInterrupt):
        return "cancelled", "KeyboardInterrupt"
    if isinstance(exc, SystemExit):
        if exc.code in (None, 0):
            return "succeeded", None
        return "failed", f"SystemExit({exc.code!r})"
    return "failed", None
