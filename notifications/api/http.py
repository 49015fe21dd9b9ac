"""The plumbing every API view shares: methods, size and content-type checks, bearer keys,
rate limits, JSON bodies, idempotency and error mapping. Views stay a few lines each."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParserError
from django.views.decorators.csrf import csrf_exempt

from accounts.models import ApiKey
from notifications import ratelimit
from notifications.api import idempotency
from notifications.api.errors import ApiError, InvalidInput, json_response
from notifications.services import MAX_FILE_BYTES, ProcessConflict, ServiceError, UnknownProcess

logger = logging.getLogger(__name__)

JSON_LIMIT = 256 * 1024
FILE_LIMIT = MAX_FILE_BYTES
MULTIPART_LIMIT = FILE_LIMIT + JSON_LIMIT + 64 * 1024  # the file, the payload and the multipart framing

GET_A_KEY = "Run /start in the bot or experiment_bot.setup() to get one."
AUTH_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="statsbot"'}


@dataclass
class Call:
    """One API request after the shared checks."""

    request: HttpRequest
    api_key: ApiKey | None = None
    data: dict[str, Any] = field(default_factory=dict)
    upload: UploadedFile | None = None


Answer = tuple[int, dict]
Handler = Callable[..., Answer]


@dataclass(frozen=True)
class Spec:
    methods: tuple[str, ...]
    name: str
    auth: bool
    body: str | None  # None, "json", or "json_or_file" (multipart with payload + file)
    atomic: bool = True  # run the handler in a transaction


def endpoint(
    *methods: str, name: str, auth: bool = True, body: str | None = None, atomic: bool = True
) -> Callable[[Handler], Any]:
    """Turn ``handler(call, **url_kwargs) -> (status, body)`` into a CSRF-exempt JSON view."""
    spec = Spec(methods=tuple(methods), name=name, auth=auth, body=body, atomic=atomic)

    def decorate(handler: Handler) -> Callable[..., HttpResponse]:
        @csrf_exempt
        @wraps(handler)
        def view(request: HttpRequest, **kwargs: Any) -> HttpResponse:
            try:
                return _dispatch(request, handler, spec, kwargs)
            except ApiError as exc:
                return exc.response()
            except Exception:
                logger.exception("api %s failed", spec.name)
                return ApiError(500, "server_error", "the server failed; the request can be retried").response()

        view.api_spec = spec  # type: ignore[attr-defined]
        return view

    return decorate


def _dispatch(request: HttpRequest, handler: Handler, spec: Spec, kwargs: dict[str, Any]) -> HttpResponse:
    if request.method not in spec.methods:
        raise ApiError(405, "method_not_allowed", f"{request.method} is not allowed here; use {', '.join(spec.methods)}",
                       {"Allow": ", ".join(spec.methods)})
    if spec.body:
        _check_declared_length(request, spec.body)
    call = Call(request)
    if spec.auth:
        call.api_key = authenticate(request)
        decision = ratelimit.hit(call.api_key)
        if not decision.allowed:
            raise ApiError(429, "rate_limited",
                           f"more than {decision.limit} requests in the {decision.window} window; "
                           f"retry in {decision.retry_after}s",
                           {"Retry-After": str(decision.retry_after)})
        call.api_key.touch()
    if spec.body:
        _read_body(call, spec.body)
    return _run(handler, call, kwargs, spec)


def authenticate(request: HttpRequest) -> ApiKey:
    """The active key of ``Authorization: Bearer exp_…``, or a 401 that says what to do."""
    header = request.headers.get("Authorization", "").strip()
    if not header:
        raise ApiError(401, "missing_key", f"send your key as 'Authorization: Bearer exp_…'. {GET_A_KEY}",
                       AUTH_CHALLENGE)
    scheme, _, raw = header.partition(" ")
    raw = raw.strip()
    if scheme.lower() != "bearer" or not raw:
        raise ApiError(401, "invalid_key", "the Authorization header must be 'Bearer exp_…'", AUTH_CHALLENGE)
    key = ApiKey.authenticate(raw)
    if key is None:
        raise ApiError(401, "invalid_key", f"this key is not valid. {GET_A_KEY}", AUTH_CHALLENGE)
    if not key.is_active:
        raise ApiError(401, "revoked_key",
                       "this key was revoked. Run /start in the bot or experiment_bot.setup() to get a new one.",
                       AUTH_CHALLENGE)
    return key


# ---------------------------------------------------------------------------------- bodies


def _is_multipart(request: HttpRequest) -> bool:
    return request.content_type == "multipart/form-data"


def _check_declared_length(request: HttpRequest, kind: str) -> None:
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise InvalidInput("the Content-Length header is not a number", code="invalid_request") from None
    limit = MULTIPART_LIMIT if kind == "json_or_file" and _is_multipart(request) else JSON_LIMIT
    if declared > limit:
        raise _too_large(limit)


def _too_large(limit: int) -> ApiError:
    what = "a file upload" if limit > JSON_LIMIT else "a JSON body"
    return ApiError(413, "too_large", f"the request is too large: the limit for {what} is {limit // 1024} KiB")


def _read_body(call: Call, kind: str) -> None:
    request = call.request
    if kind == "json_or_file" and _is_multipart(request):
        _read_multipart(call)
        return
    try:
        raw = request.body
    except RequestDataTooBig:
        raise _too_large(JSON_LIMIT) from None
    if len(raw) > JSON_LIMIT:
        raise _too_large(JSON_LIMIT)
    if not raw.strip():
        call.data = {}
        return
    if request.content_type != "application/json":
        accepted = "application/json" + (" or multipart/form-data" if kind == "json_or_file" else "")
        raise ApiError(415, "unsupported_media_type",
                       f"send the body as {accepted}, not {request.content_type or 'no Content-Type'}")
    call.data = parse_json_object(raw)


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _without_nul(value: Any) -> Any:
    """NUL characters (which PostgreSQL text cannot store) removed from every string and key."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _valid_unicode(value: Any) -> Any:
    """Lone surrogates (``"\\ud800"`` escapes JSON allows but no text column stores) replaced by
    U+FFFD in every string and key; escaped pairs were already joined by the parser."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_valid_unicode(item) for item in value]
    if isinstance(value, dict):
        return {_valid_unicode(key): _valid_unicode(item) for key, item in value.items()}
    return value


def parse_json_object(raw: bytes | str, what: str = "the body") -> dict[str, Any]:
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        data = json.loads(text, parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise InvalidInput(f"{what} must be UTF-8 encoded JSON", code="invalid_json") from None
    except RecursionError:
        raise InvalidInput(f"{what} is nested too deeply", code="invalid_json") from None
    except ValueError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{what} must be a JSON object", code="invalid_json")
    try:
        if _SURROGATE_ESCAPE.search(text):
            data = _valid_unicode(data)
        return _without_nul(data) if "\\u0000" in text.lower() else data
    except RecursionError:
        raise InvalidInput(f"{what} is nested too deeply", code="invalid_json") from None


def _read_multipart(call: Call) -> None:
    request = call.request
    try:
        fields, files = request.POST, request.FILES
    except RequestDataTooBig:
        raise _too_large(MULTIPART_LIMIT) from None
    except MultiPartParserError as exc:
        raise InvalidInput(f"the multipart body cannot be parsed: {exc}", code="invalid_multipart") from None
    payload: str | bytes | None = fields.get("payload")
    if payload is None and "payload" in files:
        part = files["payload"]
        if part.size > JSON_LIMIT:
            raise _too_large(JSON_LIMIT)
        payload = part.read()
    if payload is not None and len(payload) > JSON_LIMIT:
        raise _too_large(JSON_LIMIT)
    call.data = parse_json_object(payload, "the 'payload' field") if payload else {}
    upload = files.get("file")
    if upload is None and any(name != "payload" for name in files):
        raise InvalidInput("send the file in the multipart field named 'file'", code="invalid_multipart")
    if upload is not None and upload.size > FILE_LIMIT:
        raise ApiError(413, "file_too_large",
                       f"the file is {upload.size} bytes; the limit is {FILE_LIMIT} bytes (10 MiB)")
    call.upload = upload


# ---------------------------------------------------------------------------------- running


def _invoke(handler: Handler, call: Call, kwargs: dict[str, Any]) -> Answer:
    try:
        return handler(call, **kwargs)
    except UnknownProcess as exc:
        raise ApiError(404, exc.code, str(exc)) from None
    except ProcessConflict as exc:
        raise ApiError(409, exc.code, str(exc)) from None
    except ServiceError as exc:
        raise ApiError(400, exc.code, str(exc)) from None


def _run(handler: Handler, call: Call, kwargs: dict[str, Any], spec: Spec) -> HttpResponse:
    key = call.request.headers.get("Idempotency-Key")
    if call.request.method == "POST" and key is not None and call.api_key is not None:
        status, body, replayed = idempotency.run_once(
            call.api_key, idempotency.check_key(key.strip()), spec.name, lambda: _invoke(handler, call, kwargs)
        )
        return json_response(status, body, {"Idempotent-Replayed": "true"} if replayed else None)
    if not spec.atomic:
        return json_response(*_invoke(handler, call, kwargs))
    with transaction.atomic():
        status, body = _invoke(handler, call, kwargs)
    return json_response(status, body)
