"""The workers one web process holds, and the database work for all of them, batched.

An idle worker costs nothing per ping: a ping only notes the worker here, in memory. Every
``FLUSH_EVERY`` seconds one task per event loop does, for every connection it holds, in three
queries whatever their number:

- writes ``last_seen_at`` of the workers seen since the last flush (the stale-worker sweep,
  ``workers.services.mark_stale_workers``, relies on it being at most ``FLUSH_EVERY`` old);
- finds the workers revoked meanwhile (the revoke ring closes them at once; this is the net
  under a lost ring) and those whose row lost this connection's channel (the stale sweep ran
  while this process was too busy to flush), which take it back;
- finds the accounts with queued jobs, whose connections then claim them: the safety interval
  behind the doorbell (``jobs.dispatch``), which normally brings a job at once.

It also rejoins each connection's channel-layer group once an hour (groups expire after a day).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any, Protocol

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connection as database
from django.utils import timezone

from jobs.models import Job
from workers.models import Worker


def db(function: Any) -> Any:
    """``function`` run where the consumers' database calls run (one place to change it).

    On PostgreSQL: on up to ``DB_THREADS`` threads of their own, so one connection's queries do not
    wait behind another's (each call borrows a pooled connection and gives it back:
    ``DatabaseSyncToAsync`` closes old connections around it). Elsewhere (SQLite, one writer at a
    time): on Django's one thread-sensitive thread, as Channels does by default.
    """
    if not _on_postgresql():
        return database_sync_to_async(function)
    return database_sync_to_async(function, thread_sensitive=False, executor=_executor())


@cache
def _on_postgresql() -> bool:
    return database.vendor == "postgresql"  # asked once: the connection proxy's lookup is not free


DB_THREADS = 4


@cache
def _executor() -> ThreadPoolExecutor:
    """At most half the connection pool: HTTP requests and the bot borrow from the same pool."""
    pool = settings.DATABASES["default"].get("OPTIONS", {}).get("pool")
    threads = max(1, min(DB_THREADS, pool["max_size"] // 2)) if isinstance(pool, dict) else DB_THREADS
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="worker-db")


logger = logging.getLogger(__name__)

FLUSH_EVERY = 20.0  # seconds; WORKER_STALE_AFTER (90 s by default) must stay well above it
REJOIN_GROUP_EVERY = 3600.0


class Connection(Protocol):
    """What a held connection offers (``workers.consumers.WorkerConsumer``)."""

    channel_name: str
    group_joined_at: float

    @property
    def worker_id(self) -> int: ...

    @property
    def account_id(self) -> int: ...

    async def presence_revoked(self) -> None: ...

    async def presence_reclaim(self) -> None: ...

    async def presence_dispatch(self) -> None: ...

    async def presence_rejoin(self) -> None: ...


@dataclass
class Findings:
    revoked: set[int] = field(default_factory=set)
    lost_channel: set[int] = field(default_factory=set)
    queued_accounts: set[int] = field(default_factory=set)


def look(seen: list[int], held: dict[int, str], accounts: list[int], now: datetime) -> Findings:
    """The three queries of one flush (``held``: worker id → the channel this process holds)."""
    findings = Findings()
    if seen:
        Worker.objects.filter(pk__in=seen).update(last_seen_at=now)
    if held:
        for pk, revoked_at, channel in Worker.objects.filter(pk__in=list(held)).values_list(
            "pk", "revoked_at", "channel_name"
        ):
            if revoked_at is not None:
                findings.revoked.add(pk)
            elif channel == "":
                findings.lost_channel.add(pk)
    if accounts:
        findings.queued_accounts = set(
            Job.objects.filter(state=Job.State.QUEUED, account_id__in=accounts)
            .values_list("account_id", flat=True)
            .distinct()
        )
    return findings


class Presence:
    """The connections of one event loop (one web process)."""

    def __init__(self) -> None:
        self.held: dict[int, Connection] = {}
        self.seen: set[int] = set()
        self.task: asyncio.Task[None] | None = None

    def join(self, connection: Connection) -> None:
        self.held[connection.worker_id] = connection
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run(), name="worker presence")

    def leave(self, connection: Connection) -> None:
        if self.held.get(connection.worker_id) is connection:
            del self.held[connection.worker_id]
            self.seen.discard(connection.worker_id)  # the disconnect writes last_seen_at itself
        if not self.held and self.task is not None:
            self.task.cancel()
            self.task = None

    def saw(self, worker_id: int) -> None:
        self.seen.add(worker_id)

    async def _run(self) -> None:
        while self.held:
            await asyncio.sleep(FLUSH_EVERY)
            try:
                await self.flush()
            except Exception:  # a database outage must not end the heartbeat bookkeeping
                logger.exception("worker presence: flush failed; next try in %s s", FLUSH_EVERY)

    async def flush(self) -> Findings:
        seen, self.seen = self.seen, set()
        held = dict(self.held)

        findings = await db(look)(
            sorted(seen & held.keys()),
            {pk: c.channel_name for pk, c in held.items()},
            sorted({c.account_id for c in held.values()}),
            timezone.now(),
        )
        now = time.monotonic()
        for pk, connection in held.items():
            if pk in findings.revoked:
                await connection.presence_revoked()
                continue
            if pk in findings.lost_channel:
                await connection.presence_reclaim()
            if connection.account_id in findings.queued_accounts:
                await connection.presence_dispatch()
            if now - connection.group_joined_at > REJOIN_GROUP_EVERY:
                await connection.presence_rejoin()
        return findings


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Presence] = weakref.WeakKeyDictionary()


def presence() -> Presence:
    """This event loop's presence (one per web process; tests run several loops)."""
    loop = asyncio.get_running_loop()
    if loop not in _by_loop:
        _by_loop[loop] = Presence()
    return _by_loop[loop]
