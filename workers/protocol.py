"""The worker protocol's frames (docs/worker-protocol.md): shapes and validation.

The consumer turns every inbound frame into one of these typed dicts or a ``ProtocolError``
whose code and message go back to the worker in an ``error`` frame.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal, NotRequired, TypedDict

MAX_FRAME_BYTES = 1024 * 1024  # daphne's own default limit; we refuse over it too


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


class ProgressFrame(TypedDict):
    type: Literal["progress"]
    job_id: str
    progress: int
    status: str
    message: str


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
    """One text frame → a JSON object, or a ProtocolError saying what is wrong with it."""
    if binary is not None:
        raise ProtocolError("binary_frame", "Binary frames are not part of the protocol; send JSON text.")
    if text is None:
        raise ProtocolError("empty_frame", "Empty frame.")
    if len(text) > MAX_FRAME_BYTES or len(text.encode("utf-8")) > MAX_FRAME_BYTES:
        raise ProtocolError("frame_too_large", f"Frames are limited to {MAX_FRAME_BYTES} bytes.")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise ProtocolError("invalid_json", "The frame is not valid JSON.") from None
    if not isinstance(data, dict):
        raise ProtocolError("invalid_frame", "A frame must be a JSON object with a 'type'.")
    if not isinstance(data.get("type"), str):
        raise ProtocolError("invalid_frame", "A frame must have a string 'type'.")
    return data


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
    return {
        "type": "progress",
        "job_id": job_id,
        "progress": int(max(0, min(100, progress))),
        "status": _str(data, "status", max_len=64, required=False),
        "message": _str(data, "message", max_len=500, required=False),
    }


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
