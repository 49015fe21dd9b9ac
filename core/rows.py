"""Hand-written SELECTs turned into model instances, for the few hot paths where the ORM's
compilation of a query costs more than running it (benchmarks/README.md: the notify key lookup,
a worker's reconnect)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from django.db import connection
from django.db.models import Model

M = TypeVar("M", bound=Model)


def select_list(model: type[Model], alias: str) -> list[str]:
    """Every concrete column of ``model`` as ``alias."column"``, in ``_meta.concrete_fields`` order."""
    q = connection.ops.quote_name
    return [f"{alias}.{q(f.column)}" for f in model._meta.concrete_fields if f.column]


def width(model: type[Model]) -> int:
    return len([f for f in model._meta.concrete_fields if f.column])


def instance(model: type[M], values: Sequence[Any]) -> M:
    """``model`` from the values of its ``select_list`` columns, converted as the ORM converts
    them (SQLite's datetimes, JSON fields…)."""
    fields = [f for f in model._meta.concrete_fields if f.column]
    converted = list(values)
    for index, f in enumerate(fields):
        column = f.get_col(model._meta.db_table)
        for convert in [*connection.ops.get_db_converters(column), *f.get_db_converters(connection)]:
            converted[index] = convert(converted[index], column, connection)
    return model.from_db(connection.alias, [f.attname for f in fields], converted)


def fetch_one(sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()
