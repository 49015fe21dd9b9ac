"""Finding the key of a request in one statement, with its account and the caller's count of
unknown keys. Hand-written SQL built once per process: the ORM's compilation of the same query
(a join, a subquery) cost more than a millisecond of every request (benchmarks/README.md)."""

from __future__ import annotations

from datetime import datetime
from functools import cache

from django.db import connection
from django.utils import timezone

from accounts.models import Account, ApiKey
from core.secrets import hash_secret
from notifications import ratelimit
from notifications.models import AddressCounter


def _columns(model: type[ApiKey] | type[Account]) -> list[str]:
    return [f.column for f in model._meta.concrete_fields if f.column]


@cache
def _sql(vendor: str) -> str:
    q = connection.ops.quote_name
    key_columns = [f"k.{q(column)}" for column in _columns(ApiKey)]
    account_columns = [f"a.{q(column)}" for column in _columns(Account)]
    counter = AddressCounter._meta.db_table
    return (
        f"SELECT {', '.join(key_columns + account_columns)}, "
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
    with connection.cursor() as cursor:
        cursor.execute(_sql(connection.vendor), params)
        row = cursor.fetchone()
    if row is None:
        return None, 0
    key_fields = ApiKey._meta.concrete_fields
    account_fields = Account._meta.concrete_fields
    values = list(row)
    for index, f in enumerate([*key_fields, *account_fields]):  # as the ORM converts (SQLite datetimes…)
        column = f.get_col(f.model._meta.db_table)
        for convert in [*connection.ops.get_db_converters(column), *f.get_db_converters(connection)]:
            values[index] = convert(values[index], column, connection)
    key = ApiKey.from_db(connection.alias, [f.attname for f in key_fields], values[: len(key_fields)])
    key.account = Account.from_db(connection.alias, [f.attname for f in account_fields],
                                  values[len(key_fields): len(key_fields) + len(account_fields)])
    return key, values[-1] or 0
