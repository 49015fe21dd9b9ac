"""``Idempotency-Key``: a retried POST gets the first answer again and creates nothing new.

The answer is stored in an ``IdempotencyRecord`` inside the same transaction as the write. The
record is claimed *before* the write: a concurrent retry blocks on the unique constraint
(PostgreSQL) or on the write lock (SQLite), and once the first request commits it finds the
record and replays it. A refused request (4xx) stores nothing, so it can be retried after the
cause is fixed.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from django.db import IntegrityError, transaction

from accounts.models import ApiKey
from notifications.api.errors import ApiError, InvalidInput
from notifications.models import IdempotencyRecord

KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,128}$")
Answer = tuple[int, dict]


def check_key(key: str) -> str:
    if not KEY_PATTERN.match(key):
        raise InvalidInput("'Idempotency-Key' must be 1-128 visible ASCII characters (a UUID is ideal)",
                           code="invalid_idempotency_key")
    return key


def _claim(api_key: ApiKey, key: str, endpoint: str) -> IdempotencyRecord | None:
    """Our placeholder record (None) or the earlier request's record."""
    existing = IdempotencyRecord.objects.filter(api_key=api_key, key=key).first()
    if existing is not None:
        return existing
    try:
        with transaction.atomic():
            IdempotencyRecord.objects.create(api_key=api_key, key=key, endpoint=endpoint, status_code=0,
                                             response={})
    except IntegrityError:  # a concurrent request with the same key committed first
        return IdempotencyRecord.objects.get(api_key=api_key, key=key)
    return None


def _replay(record: IdempotencyRecord, endpoint: str) -> Answer:
    if record.endpoint != endpoint:
        raise ApiError(409, "idempotency_key_reused",
                       f"this Idempotency-Key was already used for /api/{record.endpoint}; use a new key")
    if record.status_code == 0:
        raise ApiError(409, "request_in_progress",
                       "a request with this Idempotency-Key is still being processed; retry shortly")
    return record.status_code, record.response


def run_once(api_key: ApiKey, key: str, endpoint: str, produce: Callable[[], Answer]) -> tuple[int, dict, bool]:
    """``produce()`` once per (api key, idempotency key); returns status, body and whether replayed."""
    with transaction.atomic():
        earlier = _claim(api_key, key, endpoint)
        if earlier is not None:
            status, body = _replay(earlier, endpoint)
            return status, body, True
        status, body = produce()
        IdempotencyRecord.objects.filter(api_key=api_key, key=key).update(status_code=status, response=body)
    return status, body, False
