"""The worker protocol's frames (docs/worker-protocol.md): shapes and validation.

The consumer turns every inbound frame into one of these typed dicts or a ``ProtocolError``
whose code and message go back to the worker in an ``error`` frame.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from typing import Any, Literal, NotRequired, TypedDict

MAX_FRAME_BYTES = 1024 * 1024  # daphne's own default limit; we refuse over it too
MAX_DEPTH = 64  # objects and lists inside one another (results nest a few levels)
MAX_INT_DIGITS = 64  # Python's own limit (4,300 digits) fails with a ValueError, not a clear error


class CloseCode:
    BAD_AUTH_FRAME = 4000
    INVALID_TOKEN = 4001
    REVOKED = 4003
    AUTH_TIMEOUT = 4008
    REPLACED = 4009
    TOO_MANY_ATTEMPTS = 4029


class ProtocolError(Exception):
    def __init__(self, code: str, message: str, job_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.job_id = job_id


class Machine(TypedDict, total=False):
    machine_id: str
    hostname: str
    platform: str
    os_release: str
    python: str
    worker_version: str
    packages: dict[str, str | None]
    models: list[str]


class AuthFrame(TypedDict):
    type: Literal["auth"]
    token: NotRequired[str]
    credential: NotRequired[str]
    machine: Machine
    running_jobs: list[str]


class SearchState(TypedDict, total=False):
    """An AutoML search as a progress frame tells it (all optional, each checked)."""

    trial: int
    best_score: float
    metric: str
    best_model: str
    seconds_left: float


class ProgressFrame(TypedDict):
    type: Literal["progress"]
    job_id: str
    progress: int
    status: str
    message: str
    search: NotRequired[SearchState]


class ResultFrame(TypedDict):
    type: Literal["result"]
    job_id: str
    success: bool
    data: NotRequired[dict[str, Any]]
    error: NotRequired[str]
    error_code: NotRequired[str]


class PingFrame(TypedDict):
    type: Literal["ping"]


def decode(text: str | None, binary: bytes | None) -> dict[str, Any]:
    """One text frame → a JSON object as every text column can store it, or a ProtocolError
    saying what is wrong with it: numbers finite and of reasonable size, nesting bounded, lone
    surrogates (which no UTF-8 encoder writes) replaced by U+FFFD and NUL (which PostgreSQL text
    refuses) removed from every string and key."""
    if binary is not None:
        raise ProtocolError("binary_frame", "Binary frames are not part of the protocol; send JSON text.")
    if text is None:
        raise ProtocolError("empty_frame", "Empty frame.")
    if len(text) > MAX_FRAME_BYTES:
        raise ProtocolError("frame_too_large", f"Frames are limited to {MAX_FRAME_BYTES} bytes.")
    text = valid_text(text)
    if len(text.encode("utf-8")) > MAX_FRAME_BYTES:
        raise ProtocolError("frame_too_large", f"Frames are limited to {MAX_FRAME_BYTES} bytes.")
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_int=_integer, parse_float=_float)
    except RecursionError:
        raise ProtocolError("too_deep", f"The frame is nested too deeply (at most {MAX_DEPTH} levels).") from None
    except ProtocolError:
        raise
    except ValueError:
        raise ProtocolError("invalid_json", "The frame is not valid JSON.") from None
    if not isinstance(data, dict):
        raise ProtocolError("invalid_frame", "A frame must be a JSON object with a 'type'.")
    if _depth(data) > MAX_DEPTH:
        raise ProtocolError("too_deep", f"The frame is nested too deeply (at most {MAX_DEPTH} levels).")
    if _ESCAPED_SURROGATE_OR_NUL.search(text):
        data = _valid_strings(data)
    if not isinstance(data.get("type"), str):
        raise ProtocolError("invalid_frame", "A frame must have a string 'type'.")
    return data


_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE_OR_NUL = re.compile(r"\\u(?:[dD][89a-fA-F]|0000)")


def valid_text(value: str) -> str:
    """``value`` with lone surrogates replaced by U+FFFD and without NUL."""
    if _SURROGATE.search(value):
        value = _SURROGATE.sub("\ufffd", value)
    return value.replace("\x00", "") if "\x00" in value else value


def _valid_strings(value: Any) -> Any:
    """``valid_text`` applied to every string and key (escaped pairs were already joined by the parser)."""
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, list):
        return [_valid_strings(item) for item in value]
    if isinstance(value, dict):
        return {valid_text(key): _valid_strings(item) for key, item in value.items()}
    return value


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (without recursion; stops past the limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest


def _no_constant(name: str) -> None:
    raise ProtocolError("invalid_json", f"{name} is not a JSON number; send finite numbers.")


def _integer(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise ProtocolError(
            "number_too_large",
            f"A number in the frame has {digits} digits; at most {MAX_INT_DIGITS} are accepted "
            "(send bigger values as strings).",
        )
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError("number_too_large", f"The number {text[:40]} is too large (numbers must be finite).")
    return value


def _str(data: dict[str, Any], name: str, *, max_len: int = 500, required: bool = True) -> str:
    value = data.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise ProtocolError("invalid_field", f"'{name}' must be a string.")
    return value[:max_len]


def _job_id(data: dict[str, Any]) -> str:
    raw = data.get("job_id")
    try:
        return str(uuid.UUID(str(raw))) if isinstance(raw, str) else _bad_job_id()
    except ValueError:
        return _bad_job_id()


def _bad_job_id() -> str:
    raise ProtocolError("invalid_field", "'job_id' must be a job id (a UUID string).")


def parse_auth(data: dict[str, Any]) -> AuthFrame:
    if data["type"] != "auth":
        raise ProtocolError("auth_required", "The first frame must be 'auth'.")
    token, credential = data.get("token"), data.get("credential")
    if bool(token) == bool(credential):
        raise ProtocolError("invalid_auth", "Send exactly one of 'token' or 'credential'.")
    secret = token or credential
    if not isinstance(secret, str) or len(secret) > 128:
        raise ProtocolError("invalid_auth", "'token' / 'credential' must be a string.")
    machine = data.get("machine") or {}
    if not isinstance(machine, dict):
        raise ProtocolError("invalid_field", "'machine' must be an object.")
    packages = machine.get("packages") or {}
    models = machine.get("models") or []
    if not isinstance(packages, dict) or not isinstance(models, list):
        raise ProtocolError("invalid_field", "'machine.packages' must be an object and 'machine.models' a list.")
    running = data.get("running_jobs") or []
    if not isinstance(running, list) or not all(isinstance(j, str) for j in running):
        raise ProtocolError("invalid_field", "'running_jobs' must be a list of job ids.")
    frame: AuthFrame = {"type": "auth", "machine": machine, "running_jobs": running[:100]}  # type: ignore[typeddict-item]
    if token:
        frame["token"] = token
    else:
        frame["credential"] = secret
    return frame


def parse_progress(data: dict[str, Any]) -> ProgressFrame:
    job_id = _job_id(data)
    progress = data.get("progress", 0)
    if isinstance(progress, bool) or not isinstance(progress, (int, float)):
        raise ProtocolError("invalid_field", "'progress' must be a number from 0 to 100.", job_id)
    frame: ProgressFrame = {
        "type": "progress",
        "job_id": job_id,
        "progress": int(max(0, min(100, progress))),
        "status": _str(data, "status", max_len=64, required=False),
        "message": _str(data, "message", max_len=500, required=False),
    }
    if data.get("search") is not None:
        frame["search"] = _search(data["search"], job_id)
    return frame


def _finite(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value == value and abs(value) < 1e300


def _search(raw: Any, job_id: str) -> SearchState:
    """The ``search`` of a progress frame: known fields of the right type, others dropped."""
    if not isinstance(raw, dict):
        raise ProtocolError("invalid_field", "'search' must be an object.", job_id)
    search: SearchState = {}
    if _finite(raw.get("trial")):
        search["trial"] = int(max(0, min(10**9, raw["trial"])))
    if _finite(raw.get("best_score")):
        search["best_score"] = float(raw["best_score"])
    if _finite(raw.get("seconds_left")):
        search["seconds_left"] = float(max(0, min(10**7, raw["seconds_left"])))
    if isinstance(raw.get("metric"), str):
        search["metric"] = raw["metric"][:64]
    if isinstance(raw.get("best_model"), str):
        search["best_model"] = raw["best_model"][:64]
    return search


def parse_result(data: dict[str, Any]) -> ResultFrame:
    job_id = _job_id(data)
    success = data.get("success")
    if not isinstance(success, bool):
        raise ProtocolError("invalid_field", "'success' must be true or false.", job_id)
    frame: ResultFrame = {"type": "result", "job_id": job_id, "success": success}
    if success:
        result = data.get("data")
        if not isinstance(result, dict):
            raise ProtocolError("invalid_field", "'data' must be an object when success is true.", job_id)
        frame["data"] = result
    else:
        frame["error"] = _str(data, "error", max_len=4000, required=False)
        frame["error_code"] = _str(data, "error_code", max_len=32, required=False)
    return frame
