"""``Idempotency-Key``: a retried POST gets the first answer again and creates nothing new.

The answer is stored in an ``IdempotencyRecord`` inside the same transaction as the write. The
record is claimed *before* the write: a concurrent retry blocks on the unique constraint
(PostgreSQL) or on the write lock (SQLite), and once the first request commits it finds the
record and replays it. A refused request (4xx) stores nothing, so it can be retried after the
cause is fixed.

A record keeps a fingerprint of the request (the endpoint and the body). A key sent again with a
different request is a client bug that would silently lose the second message: it is answered
422 and nothing is replayed. A notification's fingerprint is that of the message itself, so a
message first sent alone and retried inside a batch (or back) is still recognised.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction

from accounts.models import ApiKey
from notifications.api.errors import ApiError, InvalidInput
from notifications.models import IdempotencyRecord

KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,128}$")
Answer = tuple[int, dict]
NOTIFY = "notify"
_MESSAGE_DEFAULTS: dict[str, Any] = {"text": "", "level": "info", "format": "text", "process_id": None,
                                     "metadata": {}}


def check_key(key: str) -> str:
    if not KEY_PATTERN.match(key):
        raise InvalidInput("'Idempotency-Key' must be 1-128 visible ASCII characters (a UUID is ideal)",
                           code="invalid_idempotency_key")
    return key


def message_fingerprint(data: dict[str, Any], upload: UploadedFile | None = None) -> str:
    """The fingerprint of one notification: its fields with their defaults, and its file."""
    message = {name: data.get(name) if data.get(name) is not None else default
               for name, default in _MESSAGE_DEFAULTS.items()}
    if upload is not None:
        digest = hashlib.sha256()
        for chunk in upload.chunks():
            digest.update(chunk)
        upload.seek(0)
        message["file"] = [upload.name or "", digest.hexdigest()]
    return _digest(NOTIFY, message)


def fingerprint(endpoint: str, data: dict[str, Any], upload: UploadedFile | None = None) -> str:
    """The fingerprint of a request to ``endpoint`` with this (parsed) body."""
    if endpoint == NOTIFY:
        return message_fingerprint(data, upload)
    return _digest(endpoint, data)


def _digest(endpoint: str, body: Any) -> str:
    canonical = json.dumps([endpoint, body], sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                           default=str)
    return hashlib.sha256(canonical.encode("utf-8", "replace")).hexdigest()


def claim(api_key: ApiKey, key: str, endpoint: str, fingerprint: str) -> IdempotencyRecord | None:
    """Claim ``key`` for this request inside the current transaction: None when it is ours to
    answer, or the earlier request's record."""
    existing = IdempotencyRecord.objects.filter(api_key=api_key, key=key).first()
    if existing is not None:
        return existing
    try:
        with transaction.atomic():
            IdempotencyRecord.objects.create(api_key=api_key, key=key, endpoint=endpoint, fingerprint=fingerprint,
                                             status_code=0, response={})
    except IntegrityError:  # a concurrent request with the same key committed first
        return IdempotencyRecord.objects.get(api_key=api_key, key=key)
    return None


def replay(record: IdempotencyRecord, endpoint: str, fingerprint: str) -> Answer:
    """The earlier answer, when this request is the same request again."""
    if record.endpoint != endpoint:
        raise ApiError(409, "idempotency_key_reused",
                       f"this Idempotency-Key was already used for /api/{record.endpoint}; use a new key")
    if record.fingerprint and record.fingerprint != fingerprint:
        raise ApiError(422, "idempotency_key_mismatch",
                       "this Idempotency-Key was already used for a request with a different body; "
                       "a retry must send the same request, and a new request needs a new key")
    if record.status_code == 0:
        raise ApiError(409, "request_in_progress",
                       "a request with this Idempotency-Key is still being processed; retry shortly")
    return record.status_code, record.response


def record(api_key: ApiKey, key: str, answer: Answer) -> None:
    """Store the answer of the request that claimed ``key`` (same transaction as its writes)."""
    IdempotencyRecord.objects.filter(api_key=api_key, key=key).update(status_code=answer[0], response=answer[1])


def run_once(api_key: ApiKey, key: str, endpoint: str, fingerprint: str,
             produce: Callable[[], Answer]) -> tuple[int, dict, bool]:
    """``produce()`` once per (api key, idempotency key); returns status, body and whether replayed."""
    with transaction.atomic():
        earlier = claim(api_key, key, endpoint, fingerprint)
        if earlier is not None:
            status, body = replay(earlier, endpoint, fingerprint)
            return status, body, True
        answer = produce()
        record(api_key, key, answer)
    return answer[0], answer[1], False
