"""Finding the key of a request in one statement, with its account and the caller's count of
unknown keys. Hand-written SQL built once per process: the ORM's compilation of the same query
(a join, a subquery) cost more than a millisecond of every request (benchmarks/README.md)."""

from __future__ import annotations

from datetime import datetime
from functools import cache

from django.db import connection
from django.utils import timezone

from accounts.models import Account, ApiKey
from core import rows
from core.secrets import hash_secret
from notifications import ratelimit
from notifications.models import AddressCounter


@cache
def _sql(vendor: str) -> str:
    q = connection.ops.quote_name
    counter = AddressCounter._meta.db_table
    return (
        f"SELECT {', '.join(rows.select_list(ApiKey, 'k') + rows.select_list(Account, 'a'))}, "
        f"(SELECT c.{q('count')} FROM {q(counter)} c WHERE c.{q('address')} = %s AND c.{q('window')} = %s "
        f"AND c.{q('window_start')} = %s) "
        f"FROM {q(ApiKey._meta.db_table)} k INNER JOIN {q(Account._meta.db_table)} a "
        f"ON a.{q('id')} = k.{q('account_id')} "
        f"WHERE k.{q('secret_hash')} = %s"
    )


def lookup(raw: str, address: str, now: datetime | None = None) -> tuple[ApiKey | None, int]:
    """The key whose secret is ``raw`` (with ``.account`` loaded), or None; and how many unknown
    keys ``address`` sent in the current window (0 when the key is unknown: not looked up)."""
    window = ratelimit.BAD_KEYS_PER_ADDRESS
    start = ratelimit.window_start(now or timezone.now(), window.seconds)
    params = [address, window.name, connection.ops.adapt_datetimefield_value(start), hash_secret(raw)]
    row = rows.fetch_one(_sql(connection.vendor), params)
    if row is None:
        return None, 0
    split = rows.width(ApiKey)
    key = rows.instance(ApiKey, row[:split])
    key.account = rows.instance(Account, row[split:split + rows.width(Account)])
    return key, row[-1] or 0
