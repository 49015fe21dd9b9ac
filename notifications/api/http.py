"""The plumbing every API view shares: methods, size and content-type checks, bearer keys,
rate limits, JSON bodies, idempotency and error mapping. Views stay a few lines each."""

from __future__ import annotations

import io
import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, cast

from django.core.exceptions import (
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.http import HttpRequest, HttpResponse, QueryDict
from django.http.multipartparser import MultiPartParser, MultiPartParserError
from django.utils.datastructures import MultiValueDict
from django.views.decorators.csrf import csrf_exempt

from accounts.models import ApiKey
from core import client_address
from notifications import ratelimit
from notifications.api import idempotency, keys
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
    address: str = client_address.UNKNOWN
    data: dict[str, Any] = field(default_factory=dict)
    upload: UploadedFile | None = None
    key: ApiKey | None = None
    charged: bool = False

    @property
    def api_key(self) -> ApiKey:
        """The request's key (endpoints declared with ``auth=True`` always have one)."""
        if self.key is None:
            raise RuntimeError("this endpoint takes no API key")
        return self.key

    @property
    def size(self) -> int:
        """The size of the request body (a multipart body is read already: its declared length)."""
        if not _is_multipart(self.request):
            return len(self.request.body)
        declared = int(self.request.META.get("CONTENT_LENGTH") or 0)  # checked to be a number already
        return declared or (self.upload.size or 0 if self.upload is not None else 0) + len(json.dumps(self.data))

    def charge(self, *, messages: int | None = None) -> None:
        """Count this request against the key's windows, and ``messages`` notifications (with the
        request's bytes) against its minute budgets: one statement, or 429. Runs inside the
        request's transaction, so a refused request rolls its own charge back."""
        decision = ratelimit.charge(self.api_key.pk, messages=messages,
                                    size=self.size if messages is not None else 0)
        self.charged = True
        if not decision.allowed:
            raise rate_limited(decision)


Answer = tuple[int, dict]
Handler = Callable[..., Answer]


@dataclass(frozen=True)
class Spec:
    methods: tuple[str, ...]
    name: str
    auth: bool
    body: str | None  # None, "json", or "json_or_file" (multipart with payload + file)
    atomic: bool = True  # run the handler in a transaction (always, with a key)
    budget: bool = False  # the handler charges notifications itself (``Call.charge(messages=…)``)


def endpoint(
    *methods: str, name: str, auth: bool = True, body: str | None = None, atomic: bool = True,
    budget: bool = False,
) -> Callable[[Handler], Callable[..., HttpResponse]]:
    """Turn ``handler(call, **url_kwargs) -> (status, body)`` into a CSRF-exempt JSON view."""
    spec = Spec(methods=tuple(methods), name=name, auth=auth, body=body, atomic=atomic, budget=budget)

    def decorate(handler: Handler) -> Callable[..., HttpResponse]:
        @csrf_exempt
        @wraps(handler)
        def view(request: HttpRequest, **kwargs: Any) -> HttpResponse:
            try:
                return _dispatch(request, handler, spec, kwargs)
            except ApiError as exc:
                return exc.response()
            except (TooManyFieldsSent, TooManyFilesSent) as exc:
                return _too_many_parts(exc).response()
            except RequestDataTooBig:
                return _too_large(MULTIPART_LIMIT).response()
            except SuspiciousOperation as exc:
                logger.info("api %s: refused a suspicious request: %s", spec.name, exc)
                return ApiError(400, "invalid_request", "the request is malformed").response()
            except Exception:
                logger.exception("api %s failed", spec.name)
                return ApiError(500, "server_error", "the server failed; the request can be retried").response()

        view.api_spec = spec  # type: ignore[attr-defined]
        return view

    return decorate


def rate_limited(decision: ratelimit.Decision) -> ApiError:
    if decision.window == ratelimit.MESSAGES_PER_MINUTE.name:
        what = f"more than {decision.limit} messages of notifications per minute for this key"
    elif decision.window == ratelimit.BYTES_PER_MINUTE.name:
        what = f"more than {decision.limit} bytes of notifications per minute for this key"
    elif decision.window == ratelimit.BAD_KEYS_PER_ADDRESS.name:
        what = f"more than {decision.limit} requests with an unknown API key from this address"
    else:
        what = f"more than {decision.limit} requests in the {decision.window} window"
    return ApiError(429, "rate_limited", f"{what}; retry in {decision.retry_after}s",
                    {"Retry-After": str(decision.retry_after)})


def _dispatch(request: HttpRequest, handler: Handler, spec: Spec, kwargs: dict[str, Any]) -> HttpResponse:
    if request.method not in spec.methods:
        raise ApiError(405, "method_not_allowed", f"{request.method} is not allowed here; use {', '.join(spec.methods)}",
                       {"Allow": ", ".join(spec.methods)})
    kwargs = {name: valid_text(value) if isinstance(value, str) else value for name, value in kwargs.items()}
    if spec.body:
        _check_declared_length(request, spec.body)
    call = Call(request, address=client_address.of_request(request))
    body_error: ApiError | None = None
    if spec.body:
        try:
            _read_body(call, spec.body)
        except ApiError as exc:  # answered after the key check: a client without a key hears that first
            body_error = exc
    if not spec.auth:
        if body_error is not None:
            raise body_error
        return _run(handler, call, kwargs, spec)
    try:
        raw = bearer_token(request)
        with transaction.atomic():  # the key, the limits and the writes: one transaction
            call.key = authenticate(raw, call.address)
            if body_error is not None:
                raise body_error
            return _run(handler, call, kwargs, spec)
    except ApiError as exc:
        raise _after_refusal(call, exc) from None


def _after_refusal(call: Call, exc: ApiError) -> ApiError:
    """What a refused request still counts, in its own statement (its transaction rolled back).

    A 429 counts nothing (refused requests never use a quota up). An unknown key, or a key sent
    from outside its allowlist, counts against the client's address, and is answered 429 once the
    address is over its limit: a leaked key tried from elsewhere is throttled like a guessed one.
    A revoked or expired key counts nothing (a forgotten script of the key's owner must not lock
    out everyone behind the same address). Any other refusal of a valid key counts as one
    request of that key.
    """
    if isinstance(exc, UnusableKey):
        decision = ratelimit.record_bad_key(call.address)
        return exc if decision.allowed else rate_limited(decision)
    if call.key is not None and exc.status != 429:
        ratelimit.charge(call.key.pk)
    return exc


class UnusableKey(ApiError):
    """A key this request may not use (unknown, or outside its allowlist): counted against the
    address (``_after_refusal``)."""


class UnknownKey(UnusableKey):
    def __init__(self, message: str) -> None:
        super().__init__(401, "invalid_key", message, AUTH_CHALLENGE)


def bearer_token(request: HttpRequest) -> str:
    """The key of ``Authorization: Bearer exp_…``, or a 401 that says what to do."""
    header = valid_text(request.headers.get("Authorization", "")).strip()
    if not header:
        raise ApiError(401, "missing_key", f"send your key as 'Authorization: Bearer exp_…'. {GET_A_KEY}",
                       AUTH_CHALLENGE)
    scheme, _, raw = header.partition(" ")
    raw = raw.strip()
    if scheme.lower() != "bearer" or not raw:
        raise UnknownKey("the Authorization header must be 'Bearer exp_…'")
    return raw


def authenticate(raw: str, address: str) -> ApiKey:
    """The active key ``raw`` in one query, which also reads the address's count of unknown keys:
    an address over its limit is refused whatever key it sends."""
    key, failures = keys.lookup(raw, address) if raw.startswith("exp_") and len(raw) <= 128 else (None, 0)
    if key is None:
        raise UnknownKey(f"this key is not valid. {GET_A_KEY}")
    throttled = ratelimit.address_refusal(failures)
    if not throttled.allowed:
        raise rate_limited(throttled)
    if key.revoked_at is not None:
        raise ApiError(401, "revoked_key",
                       "this key was revoked. Run /start in the bot or experiment_bot.setup() to get a new one.",
                       AUTH_CHALLENGE)
    if key.is_expired:
        raise expired_key(key)
    if not key.allows(address):
        raise UnusableKey(403, "ip_not_allowed",
                       f"this key only accepts requests from its allowed networks, and this one came from {address}. "
                       "Change the key's allowed networks in /status in the bot (🌐 button).")
    key.touch()
    return key


def expired_key(key: ApiKey) -> ApiError:
    """The 401 of a rotated key after its grace period: when it ended, and which key replaced it."""
    successor = (ApiKey.objects.filter(pk=key.replaced_by_id).values_list("prefix", flat=True).first()
                 if key.replaced_by_id is not None else None)
    successor_text = f"; the key that replaced it starts with {successor}…" if successor else ""
    ended = key.expires_at.strftime("%Y-%m-%d %H:%M UTC") if key.expires_at else "now"
    return ApiError(401, "key_expired",
                    f"this key was rotated and expired at {ended}{successor_text}. Put the new key in "
                    "EXPERIMENT_BOT_KEY (e.g. your .env) or run experiment_bot.setup() to pair this machine again.",
                    AUTH_CHALLENGE)


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


MAX_DEPTH = 64  # objects and lists inside one another
MAX_INT_DIGITS = 64


def _integer(text: str) -> int:
    """JSON integers up to 64 digits (Python's own limit is 4,300 and fails with a ValueError)."""
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidInput(f"a number in the body has {len(text.lstrip('-'))} digits; at most {MAX_INT_DIGITS} "
                           "are accepted (send bigger values as strings)", code="invalid_json")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidInput(f"the number {text[:40]} is too large (numbers must be finite)", code="invalid_json")
    return value


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


def valid_text(value: str) -> str:
    """``value`` with lone surrogates (which no text column stores and no UTF-8 encoder writes)
    replaced by U+FFFD, and without NUL (which PostgreSQL text refuses). Every string the API
    reads from outside goes through this or ``_valid_unicode``/``_without_nul``: JSON bodies,
    multipart fields and file names, headers, URL parts, query parameters."""
    if _SURROGATE.search(value):
        value = _SURROGATE.sub("\ufffd", value)
    return value.replace("\x00", "") if "\x00" in value else value


def _valid_unicode(value: Any) -> Any:
    """Lone surrogates (``"\\ud800"`` escapes JSON allows but no text column stores) replaced by
    U+FFFD in every string and key; escaped pairs were already joined by the parser."""
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, list):
        return [_valid_unicode(item) for item in value]
    if isinstance(value, dict):
        return {_valid_unicode(key): _valid_unicode(item) for key, item in value.items()}
    return value


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (without recursion)."""
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


def parse_json_object(raw: bytes | str, what: str = "the body") -> dict[str, Any]:
    """A JSON object from the outside, as every text column can store it: invalid Unicode
    replaced, NUL removed, numbers finite and of reasonable size, nesting bounded; or a 400."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else valid_text(raw)
        data = json.loads(text, parse_constant=_no_constants, parse_int=_integer, parse_float=_float)
    except UnicodeDecodeError:
        raise InvalidInput(f"{what} must be UTF-8 encoded JSON", code="invalid_json") from None
    except RecursionError:
        raise InvalidInput(f"{what} is nested too deeply", code="invalid_json") from None
    except ValueError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{what} must be a JSON object", code="invalid_json")
    if _depth(data) > MAX_DEPTH:
        raise InvalidInput(f"{what} is nested too deeply (at most {MAX_DEPTH} levels)", code="invalid_json")
    if _SURROGATE_ESCAPE.search(text):
        data = _valid_unicode(data)
    return _without_nul(data) if "\\u0000" in text.lower() else data


def utf8_part_headers(body: bytes, boundary: bytes) -> bytes | None:
    """``body`` with every part's headers made valid UTF-8 (bad bytes become U+FFFD), or None
    when they are already. Django skips a part whose headers do not decode, so a file named
    in another encoding would be dropped without a word."""
    delimiter = b"--" + boundary
    pieces: list[bytes] = []
    done = 0
    position = body.find(delimiter)
    while position != -1:
        start = body.find(b"\r\n", position + len(delimiter))
        end = body.find(b"\r\n\r\n", start) if start != -1 else -1
        if end == -1:
            break
        headers = body[start:end]
        try:
            headers.decode("utf-8")
        except UnicodeDecodeError:
            pieces += [body[done:start], headers.decode("utf-8", "replace").encode("utf-8")]
            done = end
        position = body.find(delimiter, end)
    if not pieces:
        return None
    return b"".join([*pieces, body[done:]])


def _parse_multipart(request: HttpRequest) -> tuple[QueryDict, MultiValueDict]:
    boundary = request.content_params.get("boundary", "") if request.content_params else ""
    repaired = utf8_part_headers(request.body, boundary.encode("latin-1")) if boundary else None
    if repaired is None:
        return request.POST, request.FILES
    meta = {**request.META, "CONTENT_LENGTH": str(len(repaired))}
    return MultiPartParser(meta, io.BytesIO(repaired), request.upload_handlers, request.encoding).parse()


def _read_multipart(call: Call) -> None:
    request = call.request
    try:
        fields, files = _parse_multipart(request)
    except RequestDataTooBig:
        raise _too_large(MULTIPART_LIMIT) from None
    except MultiPartParserError as exc:
        raise InvalidInput(f"the multipart body cannot be parsed: {exc}", code="invalid_multipart") from None
    payload: str | bytes | None = fields.get("payload")
    if payload is None and "payload" in files:
        part = cast(UploadedFile, files["payload"])
        if (part.size or 0) > JSON_LIMIT:
            raise _too_large(JSON_LIMIT)
        payload = part.read()
    if payload is not None and len(payload) > JSON_LIMIT:
        raise _too_large(JSON_LIMIT)
    call.data = parse_json_object(payload, "the 'payload' field") if payload else {}
    upload = files.get("file")
    if upload is None and any(name != "payload" for name in files):
        raise InvalidInput("send the file in the multipart field named 'file'", code="invalid_multipart")
    if upload is not None and (upload.size or 0) > FILE_LIMIT:
        raise ApiError(413, "file_too_large",
                       f"the file is {upload.size} bytes; the limit is {FILE_LIMIT} bytes (10 MiB)")
    if upload is not None:
        upload.name = valid_text(upload.name or "")
        upload.content_type = valid_text(upload.content_type or "")
    call.upload = upload


def _too_many_parts(exc: Exception) -> ApiError:
    what = "files" if isinstance(exc, TooManyFilesSent) else "fields"
    return ApiError(413, "too_many_parts",
                    f"the request has too many {what}: send one 'payload' field and at most one 'file'")


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


def _answer(handler: Handler, call: Call, kwargs: dict[str, Any], spec: Spec) -> Answer:
    if call.key is not None and not spec.budget:
        call.charge()
    answer = _invoke(handler, call, kwargs)
    if call.key is not None and not call.charged:
        call.charge()
    return answer


def _run(handler: Handler, call: Call, kwargs: dict[str, Any], spec: Spec) -> HttpResponse:
    header = call.request.headers.get("Idempotency-Key")
    if call.request.method == "POST" and header is not None and call.key is not None:
        key = idempotency.check_key(valid_text(header).strip())
        fingerprint = idempotency.fingerprint(spec.name, call.data, call.upload)
        earlier = idempotency.claim(call.key, key, spec.name, fingerprint)
        if earlier is not None:
            status, body = idempotency.replay(earlier, spec.name, fingerprint)
            call.charge()  # a replay counts as a request, never as another message
            return json_response(status, body, {"Idempotent-Replayed": "true"})
        answer = _answer(handler, call, kwargs, spec)
        idempotency.record(call.key, key, answer)
        return json_response(*answer)
    if call.key is not None or not spec.atomic:  # with a key: inside the request's transaction already
        return json_response(*_answer(handler, call, kwargs, spec))
    with transaction.atomic():
        return json_response(*_answer(handler, call, kwargs, spec))
