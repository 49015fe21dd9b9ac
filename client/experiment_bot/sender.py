"""Background delivery: one daemon thread per bot, a bounded queue, retries, flush at exit.

The user's thread only appends to a deque under a lock; everything that can be slow (DNS,
connecting, a server that is down, 429 pauses) happens on the sender thread.

Retry policy: a server that cannot be reached (connection refused, DNS, timeouts) is *down*:
the message at the head of the queue is retried for as long as it takes, and nothing behind
it overtakes it. A server that answers 5xx (or "request in progress") to one message gets
``max_attempts`` tries or ``max_failing_seconds``, whichever comes first. Before the last
try a cheap ``GET /api/validate`` tells the two cases apart: if the server answers it, the
message is tried once more at once, and if that fails too the failure is about this message,
which is dropped (logged, counted) so the rest can go; if the probe fails too, the whole
server is unwell and the message is kept like in any outage (probed again on each failure).

Batching: plain notifications (no file) waiting next to each other at the head of the queue
go out together as one ``POST /api/notify/batch`` (up to 100 messages or ~240 KB); the server
answers each item as the single form would, so each keeps its own idempotency key and its own
fate. A server without the batch form (404/405) gets them one by one from then on.

Spool: whatever is still queued when the exit flush runs out of time (or ``close()`` is called)
is written to the local spool (see :mod:`experiment_bot.spool`) with its idempotency keys, and
sent by the next process with the same server and key (or ``python -m experiment_bot flush``).
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import threading
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from .errors import ApiError, TransportError
from .transport import Transport

if TYPE_CHECKING:
    from pathlib import Path

    from .spool import Spool

log = logging.getLogger("experiment_bot")

#: Priorities: when the queue is full the oldest message of the lowest priority goes first.
HEARTBEAT = 0  # heartbeats and progress: the next one supersedes them
NOTE = 1  # plain notify() messages
CRITICAL = 2  # process start / finish and error notifications: never dropped by the bound

DEFAULT_MAXSIZE = 1000
#: Tries for one message the server keeps answering with 5xx, and the longest time it may keep
#: failing, before it is dropped (only when the server answers other requests; see above).
MAX_ATTEMPTS = 8
MAX_FAILING_SECONDS = 600.0
#: Bytes of attachments the queue may hold; beyond it new attachments are dropped.
DEFAULT_FILE_BUDGET = 64 * 2**20
#: While a flush waits (e.g. at exit), failed deliveries are retried at least this often.
HURRY_DELAY = 0.25
#: The batch form of ``POST /api/notify``: at most this many messages and bytes per request
#: (the server takes 100 messages and a 256 KiB body).
BATCH_PATH = "/api/notify/batch"
MAX_BATCH = 100
BATCH_BYTES = 240 * 1024
#: Statuses of the batch request that mean "this server has no batch form": send one by one.
NO_BATCH_FORM = (404, 405)
#: The 403 of a key whose IP allowlist does not hold this machine's address: every message would be refused.
KEY_REFUSED_CODE = "ip_not_allowed"


class Envelope:
    """One POST to deliver, with its idempotency key (reused on every retry)."""

    __slots__ = (
        "path",
        "body",
        "kind",
        "priority",
        "file",
        "key",
        "coalesce",
        "prepare",
        "extra_fields",
        "from_spool",
        "reported",
        "size",
        "on_reply",
    )

    def __init__(
        self,
        path: str,
        body: dict[str, Any],
        *,
        kind: str,
        priority: int,
        file: tuple[str, bytes, str] | None = None,
        coalesce: str | None = None,
        prepare: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        import uuid

        self.path = path
        self.body = body
        self.kind = kind
        self.priority = priority
        self.file = file
        self.key = str(uuid.uuid4())
        self.coalesce = coalesce
        self.prepare = prepare
        # Fields added beyond the documented body; stripped and retried once if the server says 400.
        self.extra_fields: list[str] = []
        self.from_spool = False  # loaded from an earlier process's spool
        self.reported = 0  # dropped updates this message reports (metadata.dropped_updates)
        self.size = 0  # encoded size of the body, once prepared
        # Called (in the sender thread) with the server's JSON answer once delivered.
        self.on_reply: Callable[[dict[str, Any]], None] | None = None

    def __repr__(self) -> str:
        return f"<Envelope {self.kind} {self.path} key={self.key}>"


def merge_heartbeats(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A heartbeat that replaces a queued one: newest progress, newest metrics that exist."""
    merged = dict(old)
    if new.get("progress") is not None:
        merged["progress"] = new["progress"]
    if new.get("metrics"):
        merged["metrics"] = new["metrics"]
        merged["step"] = new.get("step")
    return merged


JSON_LIMIT = 250 * 1024  # the server accepts 256 KiB; keep a margin


def _object(value: Any) -> dict[str, Any]:
    """``value`` when the server answered a JSON object there, else an empty one."""
    return value if isinstance(value, dict) else {}


def _encoded_size(body: dict[str, Any]) -> int:
    import json

    return len(json.dumps(body, allow_nan=False).encode("utf-8"))


def fit_body(body: dict[str, Any], limit: int = JSON_LIMIT) -> None:
    """Shrink an oversized body so the server does not refuse it (413): metadata goes first,
    then the middle of a traceback, then the end of a text."""
    size = _encoded_size(body)
    if size <= limit:
        return
    if body.get("metadata"):
        body["metadata"] = {"experiment_bot": f"metadata omitted: the message was {size} bytes"}
        size = _encoded_size(body)
    for field in ("traceback", "text", "error"):
        value = body.get(field)
        if size <= limit or not isinstance(value, str):
            continue
        keep = max(0, len(value) - (size - limit) - 200)
        note = f"\n… {len(value) - keep} characters cut by experiment_bot …\n"
        body[field] = value[: keep // 4] + note + value[len(value) - (keep - keep // 4) :] if keep else note
        size = _encoded_size(body)


_senders: weakref.WeakSet[Sender] = weakref.WeakSet()
_exit_callbacks: list[Callable[[], None]] = []
_hooks_installed = False
_hooks_lock = threading.Lock()


def add_exit_callback(callback: Callable[[], None]) -> None:
    """Run ``callback`` at interpreter exit just before the queues are flushed."""
    with _hooks_lock:
        if callback not in _exit_callbacks:
            _exit_callbacks.append(callback)


def _install_process_hooks() -> None:
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        _hooks_installed = True
    atexit.register(_flush_all_at_exit)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)


def _flush_all_at_exit() -> None:
    for callback in list(_exit_callbacks):
        try:
            callback()
        except Exception:
            log.debug("experiment_bot: exit callback failed", exc_info=True)
    senders = [sender for sender in list(_senders) if sender.active_in_this_process()]
    busy = [sender for sender in senders if sender.pending()]
    if busy:
        # One shared deadline: several bots never add up their flush timeouts.
        deadline = time.monotonic() + max(sender.flush_timeout for sender in busy)
        for sender in busy:
            sender.flush(max(0.0, deadline - time.monotonic()))
    for sender in senders:
        sender.finish_at_exit()


_mp_registered_pid = 0


def _register_multiprocessing_flush() -> None:
    """A forked multiprocessing worker ends with ``os._exit`` (no atexit): flush through
    multiprocessing's own exit finalizers instead. Only if the script already uses it."""
    global _mp_registered_pid
    if _mp_registered_pid == os.getpid():
        return
    _mp_registered_pid = os.getpid()
    import sys

    multiprocessing = sys.modules.get("multiprocessing")
    if multiprocessing is None:
        return
    try:
        if multiprocessing.parent_process() is None:
            return
        import multiprocessing.util

        multiprocessing.util.Finalize(None, _flush_all_at_exit, exitpriority=100)
    except Exception:
        log.debug("experiment_bot: cannot register the multiprocessing exit flush", exc_info=True)


def _after_fork_in_child() -> None:
    for sender in list(_senders):
        sender.reset_after_fork()


class Sender:
    """Delivers :class:`Envelope` objects in order on one daemon thread."""

    def __init__(
        self,
        transport: Transport,
        *,
        maxsize: int = DEFAULT_MAXSIZE,
        flush_timeout: float = 5.0,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        max_attempts: int = MAX_ATTEMPTS,
        max_failing_seconds: float = MAX_FAILING_SECONDS,
        file_budget: int = DEFAULT_FILE_BUDGET,
        spool: Spool | None = None,
    ) -> None:
        self.transport = transport
        self.maxsize = max(1, int(maxsize))
        self.flush_timeout = flush_timeout
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_attempts = max(2, int(max_attempts))
        self.max_failing_seconds = max_failing_seconds
        self.file_budget = file_budget
        self.spool = spool
        #: Set by the client: after a 401, a key other than the given one found now (``.env``…), with its source.
        self.key_refresh: Callable[[str], tuple[str, str] | None] | None = None
        self._keys_tried: set[str] = set()
        self.delivered = 0  # messages the server accepted (replays of earlier attempts included)
        self.dropped = 0  # messages given up on (refused, or dropped by the bounded queue)
        self.spooled = 0  # messages written to the spool for a later process
        self.from_spool = 0  # messages loaded from an earlier process's spool
        self._init_state()
        _senders.add(self)
        _install_process_hooks()

    def _init_state(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[Envelope] = deque()
        self._inflight: list[Envelope] = []
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False
        self._stop = False
        self._finished = False  # the exit flush ran
        self._abandoned = False  # what was pending went to the spool: late outcomes are ignored
        self._hurry = 0
        self._degraded = False
        self._key_rejected = False
        self._batch_form = True  # False once the server showed it has no batch form
        self._unreported_drops = 0
        self._errors: list[str] = []
        self._logged: set[Any] = set()
        self._drop_episode = False
        self._file_episode = False
        self._spool_loaded = False  # the spool was read once at start
        self._spool_more = False  # files were left in the spool: read more once the queue drains
        self._spool_claims: list[Path] = []
        self._problem = ""  # the last reason a delivery failed (for the exit line)

    # ------------------------------------------------------------------ public

    @property
    def degraded(self) -> bool:
        """True while the server is failing (unreachable, 5xx, rate limiting)."""
        return self._degraded

    def put(self, envelope: Envelope) -> bool:
        """Queue a message; never blocks on the network. False when it was refused."""
        if self._pid != os.getpid():  # forked without the at-fork hook (e.g. os.fork on 3.6)
            self.reset_after_fork()
        with self._cond:
            if self._closed or self._key_rejected or self._abandoned:
                return False
            if envelope.coalesce is not None and self._degraded and self._coalesce(envelope):
                self._cond.notify_all()
                return True
            if len(self._queue) >= self.maxsize and not self._make_room(envelope):
                return False
            if envelope.file is not None:
                self._check_file_budget(envelope)
            self._queue.append(envelope)
            self._ensure_thread()
            self._cond.notify_all()
        return True

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + len(self._inflight)

    def counts(self) -> dict[str, int]:
        """``sent`` / ``spooled`` / ``dropped`` / ``pending`` / ``from_spool`` (one consistent snapshot)."""
        with self._cond:
            return {
                "sent": self.delivered,
                "spooled": self.spooled,
                "dropped": self.dropped,
                "pending": len(self._queue) + len(self._inflight),
                "from_spool": self.from_spool,
            }

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is delivered or dropped; False on timeout."""
        deadline = time.monotonic() + (self.flush_timeout if timeout is None else timeout)
        with self._cond:
            self._hurry += 1
            self._cond.notify_all()
            try:
                while self._queue or self._inflight or (self._spool_more and not self._stop):
                    if self._thread is None or not self._thread.is_alive():
                        if not self._ensure_thread():
                            return False
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                return True
            finally:
                self._hurry -= 1

    def load_spool(self) -> int:
        """Claim the spool of this server and key now and queue its messages ahead of newer
        ones; returns how many. (The sender thread does this by itself when it starts.)"""
        with self._cond:
            self._spool_loaded = True
        return self._load_spool()

    def close(self, timeout: float | None = None, *, report: bool = True) -> bool:
        """Flush (bounded by ``timeout``), then stop the thread; later messages are refused.
        What could not be sent in time is written to the spool (and said, unless ``report``
        is False)."""
        done = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._stop = True
            thread = self._thread
            self._cond.notify_all()
        spooled, lost = self.spool_pending()
        if (spooled or lost) and report:
            self._log_leftovers("at close", spooled, lost, timeout if timeout is not None else self.flush_timeout)
        self._release_claims()
        if thread is not None and thread is not threading.current_thread():
            thread.join(0.5)
        return done

    def active_in_this_process(self) -> bool:
        return self._pid == os.getpid() and not self._closed and not self._finished

    def flush_at_exit(self, timeout: float | None = None) -> None:
        """Flush for at most ``timeout``, then spool what is left and say so (the exit line)."""
        if not self.active_in_this_process():
            return
        if self.pending():
            self.flush(self.flush_timeout if timeout is None else timeout)
        self.finish_at_exit()

    def finish_at_exit(self) -> None:
        """After the exit flush: stop the thread, spool what is still pending, print the exit line."""
        if not self.active_in_this_process():
            return
        self._finished = True
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        spooled, lost = self.spool_pending()
        self._release_claims()
        if spooled or lost:
            self._log_leftovers("before exit", spooled, lost, self.flush_timeout)
        else:
            counts = self.counts()
            if counts["dropped"]:
                log.warning(
                    "experiment_bot: %d message(s) sent, %d dropped (see the warnings above)",
                    counts["sent"],
                    counts["dropped"],
                )
            elif counts["sent"]:
                log.info("experiment_bot: %d message(s) sent", counts["sent"])

    def spool_pending(self) -> tuple[int, int]:
        """Write every pending message to the spool; returns (spooled, lost). The thread's late
        outcomes for them are ignored afterwards (a message both delivered and spooled is
        only replayed later: the server knows its idempotency key)."""
        with self._cond:
            envelopes = [*self._inflight, *self._queue]
            self._queue.clear()
            self._inflight = []
            self._abandoned = True
            self._cond.notify_all()
        if not envelopes:
            return 0, 0
        from .spool import envelope_to_item

        items = []
        for envelope in envelopes:
            self._prepare_one(envelope)
            items.append(envelope_to_item(envelope))
        path = None
        if self.spool is not None:
            try:
                path = self.spool.write(items)
            except Exception:  # never let the spool break the exit
                log.debug("experiment_bot: writing the spool failed", exc_info=True)
        with self._cond:
            if path is None:
                # Messages read from an earlier spool stay in their claimed files (forgotten
                # here, so never deleted: taken over once this process is gone); the rest is lost.
                self._spool_claims = []
                lost = sum(1 for envelope in envelopes if not envelope.from_spool)
                self.dropped += lost
                self.spooled += len(envelopes) - lost
                return len(envelopes) - lost, lost
            self.spooled += len(envelopes)
        self._release_claims()
        return len(envelopes), 0

    def take_errors(self) -> list[str]:
        """Descriptions of messages dropped since the last call (used by strict mode)."""
        with self._cond:
            errors, self._errors = self._errors, []
        return errors

    def reset_after_fork(self) -> None:
        """The child of a fork starts with an empty queue and no thread (the parent sends its own)."""
        self._init_state()
        self.delivered = self.dropped = self.spooled = self.from_spool = 0

    # ------------------------------------------------------------------ spool

    def _load_spool(self) -> int:
        if self.spool is None:
            return 0
        from .spool import item_to_envelope

        try:
            claimed, items, more = self.spool.claim(limit=max(1, self.maxsize // 2))
        except Exception:
            log.warning("experiment_bot: reading the spool in %s failed", self.spool.dir, exc_info=True)
            with self._cond:
                self._spool_more = False
            return 0
        envelopes = []
        for item in items:
            try:
                envelopes.append(item_to_envelope(item))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("experiment_bot: skipped a malformed message in the spool (%s)", exc)
        with self._cond:
            if self._abandoned:  # stopping: the claims are taken over once this process is gone
                self._spool_more = False
                return 0
            self._spool_claims.extend(claimed)
            self._spool_more = more
            self._queue.extendleft(reversed(envelopes))
            self.from_spool += len(envelopes)
            if envelopes:
                self._ensure_thread()
            self._cond.notify_all()
        if envelopes:
            log.info(
                "experiment_bot: sending %d message(s) an earlier run left in the spool %s",
                len(envelopes),
                self.spool.display(),
            )
        return len(envelopes)

    def _release_claims(self) -> None:
        """Delete the claimed spool files once nothing loaded from them is pending."""
        with self._cond:
            if self._queue or self._inflight or not self._spool_claims:
                return
            claims, self._spool_claims = self._spool_claims, []
        from .spool import Spool

        Spool.release(claims)

    def _log_leftovers(self, when: str, spooled: int, lost: int, timeout: float) -> None:
        counts = self.counts()
        where = (
            f"spooled to {self.spool.display()} (sent by the next script using this key, or "
            "`python -m experiment_bot flush`)"
            if self.spool is not None
            else "spooled"
        )
        problem = self._problem or f"{self.transport.server} was still busy with earlier messages"
        log.warning(
            "experiment_bot: %d message(s) not delivered %s (within %.1f s; %s). %d sent, %d %s, %d dropped%s",
            spooled + lost,
            when,
            timeout,
            problem,
            counts["sent"],
            counts["spooled"],
            where,
            counts["dropped"],
            f" ({lost} could not be written to the spool)" if lost else "",
        )

    # ------------------------------------------------------------------ queue policy (lock held)

    def _coalesce(self, envelope: Envelope) -> bool:
        for index, queued in enumerate(self._queue):
            if queued.coalesce == envelope.coalesce:
                del self._queue[index]
                envelope.body = merge_heartbeats(queued.body, envelope.body)
                self._queue.append(envelope)
                return True
        return False

    def _make_room(self, envelope: Envelope) -> bool:
        """Drop the oldest least important message; False if ``envelope`` itself must go."""
        for priority in (HEARTBEAT, NOTE):
            if envelope.priority < priority:
                break
            for index, queued in enumerate(self._queue):
                if queued.priority == priority:
                    del self._queue[index]
                    self._count_drop(f"queue full: dropped {queued.kind}")
                    return True
        if envelope.priority == CRITICAL and len(self._queue) < 2 * self.maxsize:
            return True  # start/finish/error messages may overflow the soft bound
        self._count_drop(f"queue full: dropped {envelope.kind}")
        return False

    def _queued_file_bytes(self) -> int:
        envelopes = [*self._queue, *self._inflight]
        return sum(len(envelope.file[1]) for envelope in envelopes if envelope.file is not None)

    def _check_file_budget(self, envelope: Envelope) -> None:
        """Keep queued attachments within ``file_budget`` bytes: past it, the new message is
        sent without its file (with a note in its text) and counted as a dropped update."""
        assert envelope.file is not None
        name, content, _content_type = envelope.file
        queued = self._queued_file_bytes()
        if queued + len(content) <= self.file_budget:
            return
        envelope.file = None
        note = (
            f"(file {name} not attached: {queued / 2**20:.1f} MB of attachments were still waiting "
            "to be sent)"
        )
        if isinstance(envelope.body.get("text"), str):
            envelope.body["text"] = f"{envelope.body['text']}\n{note}"
        self.dropped += 1
        self._unreported_drops += 1
        self._errors.append(
            f"attachment {name} dropped: {self.file_budget / 2**20:g} MB of attachments queued"
        )
        if not self._file_episode:
            self._file_episode = True
            log.warning(
                "experiment_bot: %.1f MB of attachments waiting for %s; new files are not attached "
                "(their messages still go) until the queue drains",
                queued / 2**20,
                self.transport.server,
            )

    def _count_drop(self, reason: str) -> None:
        self.dropped += 1
        self._unreported_drops += 1
        self._errors.append(reason)
        if not self._drop_episode:
            self._drop_episode = True
            log.warning(
                "experiment_bot: more than %d messages waiting for %s; dropping the oldest progress updates",
                self.maxsize,
                self.transport.server,
            )

    def _batchable(self, envelope: Envelope) -> bool:
        return self._batch_form and envelope.path == "/api/notify" and envelope.file is None

    def _ensure_thread(self) -> bool:
        if self._thread is not None and self._thread.is_alive():
            return True
        if self._stop:
            return False
        thread = threading.Thread(target=self._run, name="experiment-bot-sender", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # "can't create new thread at interpreter shutdown"
            log.debug("experiment_bot: cannot start the sender thread", exc_info=True)
            return False
        self._thread = thread
        _register_multiprocessing_flush()
        return True

    # ------------------------------------------------------------------ sender thread

    def _run(self) -> None:
        with self._cond:
            first_start = not self._spool_loaded
            self._spool_loaded = True
        if first_start:
            self._load_spool()
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    if self._spool_more and not self._inflight:
                        break
                    self._cond.wait()
                if self._stop:
                    self._thread = None
                    self._cond.notify_all()
                    return
                # The spool holds more and what was read of it is sent: read the next part (it
                # goes ahead of newer messages, like the first part).
                more_spool = self._spool_more and not any(
                    envelope.from_spool for envelope in (*self._queue, *self._inflight)
                )
            if more_spool:
                self._release_claims()
                self._load_spool()
                continue
            with self._cond:
                envelope = self._queue.popleft()
                self._inflight = [envelope]
                envelope.reported = self._attach_drop_report(envelope)
            group = [envelope]
            try:
                self._deliver(group)
            except Exception:  # a bug must never kill the thread
                log.exception("experiment_bot: unexpected error while sending %s; dropped", envelope.kind)
                with self._cond:
                    if not self._abandoned:
                        self.dropped += len(self._inflight)
                        self._inflight = []
            with self._cond:
                if self._abandoned:
                    continue
                if not self._stop:
                    self._inflight = []  # settled one by one already; a safety net
                if not self._queue and not self._inflight:
                    self._drop_episode = False
                    self._file_episode = False
                done = not self._queue and not self._inflight and self._spool_claims and not self._spool_more
                self._cond.notify_all()
            if done:
                self._release_claims()

    def _attach_drop_report(self, envelope: Envelope) -> int:
        count = self._unreported_drops
        if not count:
            return 0
        metadata = envelope.body.get("metadata")
        if not isinstance(metadata, dict):
            if "metadata" not in envelope.body:
                envelope.extra_fields.append("metadata")
            metadata = {}
        envelope.body["metadata"] = {**metadata, "dropped_updates": count}
        return count

    def _prepare_one(self, envelope: Envelope) -> None:
        if envelope.prepare is not None:
            prepare, envelope.prepare = envelope.prepare, None
            try:
                prepare(envelope.body)
            except Exception:
                log.debug("experiment_bot: collecting metadata failed", exc_info=True)
        fit_body(envelope.body)
        envelope.size = _encoded_size(envelope.body) + 80  # + the idempotency key in a batch

    def _grow(self, group: list[Envelope]) -> None:
        """Add the plain notifications queued right behind ``group`` (a batch), up to the caps."""
        with self._cond:
            if self._abandoned:
                return
            added: list[Envelope] = []
            while self._queue and len(group) + len(added) < MAX_BATCH and self._batchable(self._queue[0]):
                if self._spool_more and not self._queue[0].from_spool:
                    break  # the rest of the spool goes first
                added.append(self._queue.popleft())
            self._inflight.extend(added)
        for envelope in added:
            self._prepare_one(envelope)
        group.extend(added)
        total = 0
        for index, envelope in enumerate(group):
            total += envelope.size
            if index and total > BATCH_BYTES:
                tail = group[index:]
                del group[index:]
                with self._cond:
                    if self._abandoned:
                        return
                    for item in tail:
                        self._inflight.remove(item)
                    self._queue.extendleft(reversed(tail))
                return

    def _settle(self, envelope: Envelope, delivered: bool) -> None:
        """One message is done (delivered, or dropped and already counted as such)."""
        with self._cond:
            if self._abandoned:
                return
            try:
                self._inflight.remove(envelope)
            except ValueError:
                return
            if delivered:
                self.delivered += 1
                self._unreported_drops = max(0, self._unreported_drops - envelope.reported)
            self._cond.notify_all()

    def _deliver(self, group: list[Envelope], *, batch: bool = True) -> None:
        """Send ``group`` until each message in it is delivered or dropped: one message as a
        plain request, several plain notifications as one batch request. ``group`` grows
        with the notifications queued behind it before each attempt (while the server is
        down or limits us, a burst becomes one request)."""
        for envelope in group:
            self._prepare_one(envelope)
        attempt = 0  # drives the backoff
        failures = 0  # 5xx / "in progress" answers to this very group
        failing_since = 0.0
        verified = False  # the server answered a probe just before the last attempt
        while group:
            if self._key_rejected or self._abandoned:
                return
            if batch and self._batchable(group[0]):
                self._grow(group)
            honour = False
            try:
                if len(group) == 1:
                    envelope = group[0]
                    _status, answer = self.transport.request(
                        "POST",
                        envelope.path,
                        body=envelope.body,
                        file=envelope.file,
                        idempotency_key=envelope.key,
                    )
                    self._settle(envelope, True)
                    if envelope.on_reply is not None:
                        try:
                            envelope.on_reply(answer if isinstance(answer, dict) else {})
                        except Exception:
                            log.debug("experiment_bot: handling the answer to %r failed", envelope, exc_info=True)
                    del group[:]
                else:
                    self._send_batch(group)
                    if group:  # some items must be tried again (in progress, server errors)
                        raise ApiError(503, "items_failed", f"{len(group)} message(s) of the batch failed")
            except ApiError as exc:
                honour = exc.status == 429 and exc.retry_after is not None
                if exc.status == 429:
                    delay = exc.retry_after if exc.retry_after is not None else self._backoff(attempt)
                    log.info("experiment_bot: rate limited by the server; retrying in %.1f s", delay)
                    self._problem = f"the server rate-limited us (Retry-After {delay:.0f} s)"
                elif exc.status >= 500 or (exc.status == 409 and exc.code == "request_in_progress"):
                    # 409: our earlier attempt is still being processed; retried like a 5xx.
                    failures += 1
                    failing_since = failing_since or time.monotonic()
                    if verified:  # failed again although the server answers other requests
                        if len(group) > 1:  # find the message at fault: send them one by one
                            self._deliver_one_by_one(group)
                        else:
                            self._give_up(group[0], exc, failures)
                            self._settle(group[0], False)
                        return
                    delay = self._backoff(attempt)
                    if (
                        failures >= self.max_attempts - 1
                        or time.monotonic() - failing_since >= self.max_failing_seconds
                    ) and self._server_answers():
                        verified, delay = True, 0.0  # one last try, at once
                    self._problem = f"the server answered HTTP {exc.status} {exc.code}"
                    if exc.status >= 500:
                        self._log_outage(f"server error {exc.status} ({exc.message})")
                elif exc.status == 401 or exc.code == KEY_REFUSED_CODE:
                    if exc.status == 401 and self._take_new_key(exc):
                        continue  # the same messages, at once, with the key the user put in .env
                    self._reject(group, exc)
                    return
                elif len(group) > 1:
                    # The batch request itself was refused: no batch form on this server (an
                    # older one), or a body it would not take. Each message goes on its own.
                    if exc.status in NO_BATCH_FORM:
                        with self._cond:
                            self._batch_form = False
                        log.info(
                            "experiment_bot: %s has no batch form of /api/notify; sending one by one",
                            self.transport.server,
                        )
                    else:
                        log.debug("experiment_bot: batch refused (%s); sending one by one", exc)
                    self._deliver_one_by_one(group)
                    return
                elif exc.status == 400 and group[0].extra_fields:
                    envelope = group[0]
                    for name in envelope.extra_fields:
                        envelope.body.pop(name, None)
                    envelope.extra_fields = []
                    continue
                else:
                    self._reject(group, exc)
                    return
            except TransportError as exc:
                verified = False  # down after all: an outage, not this message
                delay = self._backoff(attempt)
                self._log_outage(str(exc))
                self._problem = str(exc)
            else:
                if self._degraded:
                    self._degraded = False
                    log.info(
                        "experiment_bot: %s reachable again; sending queued messages", self.transport.server
                    )
                continue
            self._degraded = True
            attempt += 1
            if not self._sleep(delay, shortenable=not honour):
                return

    def _take_new_key(self, exc: ApiError) -> bool:
        """The server refused our key (expired after a rotation, revoked): if ``.env`` (or the
        environment, or the config file) now holds another key, send with it from now on. Each
        key is tried once, so a wrong new key ends in the usual refusal."""
        if self.key_refresh is None:
            return False
        current = self.transport.api_key or ""
        self._keys_tried.add(current)
        try:
            found = self.key_refresh(current)
        except Exception:  # an unreadable .env must not kill the sender thread
            log.debug("experiment_bot: re-reading the key failed", exc_info=True)
            return False
        if found is None or found[0] in self._keys_tried:
            return False
        fresh, source = found
        self.transport.api_key = fresh
        if self.spool is not None:
            from .spool import Spool

            self.spool = Spool(self.spool.server, fresh, root=self.spool.root)
        log.warning(
            "experiment_bot: the server refused key %s… (%s); continuing with the new key %s… from %s",
            current[:8], exc.code, fresh[:8], source,
        )
        return True

    def _deliver_one_by_one(self, group: list[Envelope]) -> None:
        for envelope in list(group):
            if self._stop or self._abandoned:
                return
            with self._cond:
                settled = envelope not in self._inflight
            if not settled:
                self._deliver([envelope], batch=False)
        del group[:]

    def _send_batch(self, group: list[Envelope]) -> None:
        """One ``POST /api/notify/batch``; settles the items the server answered for good and
        leaves in ``group`` those to try again."""
        items = [{**envelope.body, "idempotency_key": envelope.key} for envelope in group]
        _status, answer = self.transport.request("POST", BATCH_PATH, body={"messages": items})
        results = answer.get("results")
        if not isinstance(results, list) or len(results) != len(group):
            raise ApiError(422, "bad_batch_answer", "the server's batch answer has no result per message")
        again = []
        for index, envelope in enumerate(group):
            # Each item is answered as the single form would answer it: {"status", "body"}.
            result = _object(results[index])
            status = result.get("status")
            status = status if isinstance(status, int) and not isinstance(status, bool) else 500
            body = _object(result.get("body"))
            error = _object(body.get("error"))
            code = str(error.get("code") or status)
            if 200 <= status < 300:
                self._settle(envelope, True)
            elif status >= 500 or status == 429 or (status == 409 and code == "request_in_progress"):
                again.append(envelope)
            else:
                self._reject([envelope], ApiError(status, code, str(error.get("message") or "")))
        group[:] = again

    def _server_answers(self) -> bool:
        """True when the server answers a plain ``GET /api/validate`` without a 5xx, i.e. it
        is up and the 5xx answers are about one message, not an outage."""
        if self._stop:
            return False
        try:
            self.transport.request("GET", "/api/validate")
        except ApiError as exc:
            return exc.status < 500 and not (exc.status == 409 and exc.code == "request_in_progress")
        except Exception:  # TransportError: down after all
            return False
        return True

    def _give_up(self, envelope: Envelope, exc: ApiError, failures: int) -> None:
        description = (
            f"{envelope.kind} dropped after {failures} attempts: the server kept answering HTTP {exc.status} "
            f"{exc.code} ({exc.message}) to it while answering other requests"
        )
        with self._cond:
            if self._abandoned:
                return
            self.dropped += 1
            self._errors.append(description)
            first = ("gave up", envelope.kind, exc.status) not in self._logged
            self._logged.add(("gave up", envelope.kind, exc.status))
            self._degraded = False  # the server is up; the next messages go as usual
        if first:
            log.warning("experiment_bot: %s; moving on to the next message", description)
        else:
            log.debug("experiment_bot: %s", description)

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.max_delay, self.base_delay * (2**attempt))
        return random.uniform(ceiling / 2, ceiling)

    def _sleep(self, delay: float, *, shortenable: bool = True) -> bool:
        """Wait before a retry. While someone flushes (e.g. at exit) a backoff is cut to
        ``HURRY_DELAY``; a server's ``Retry-After`` is not. False when the sender is stopping."""
        deadline = time.monotonic() + delay
        with self._cond:
            while not self._stop:
                now = time.monotonic()
                if shortenable and self._hurry:
                    deadline = min(deadline, now + HURRY_DELAY)
                if now >= deadline:
                    return True
                self._cond.wait(deadline - now)
            return False

    def _log_outage(self, reason: str) -> None:
        if not self._degraded:
            log.warning("experiment_bot: %s; messages are kept and retried in the background", reason)
        else:
            log.debug("experiment_bot: still failing: %s", reason)

    def _reject(self, envelopes: list[Envelope], exc: ApiError) -> None:
        """The server refused these messages for good: drop them (401: drop everything).
        Logged before they leave the in-flight list, so a flush that returns has seen it."""
        kind = envelopes[0].kind
        key_refused = exc.status == 401 or exc.code == KEY_REFUSED_CODE  # every message would be refused
        description = f"{kind} rejected by the server: HTTP {exc.status} {exc.code}: {exc.message}"
        with self._cond:
            if self._abandoned:
                return
            self._errors.append(description)
            first = (exc.status, exc.code) not in self._logged
            self._logged.add((exc.status, exc.code))
            if key_refused:
                self._key_rejected = True
        if key_refused and exc.code == KEY_REFUSED_CODE:
            if first:
                log.error("experiment_bot: the server refused this machine's address for the API key (%s); "
                          "nothing more will be sent.", exc.message or exc.code)
        elif key_refused and exc.code == "key_expired":
            if first:
                log.error(
                    "experiment_bot: the server refused the API key: %s (%s). Nothing more is sent by this "
                    "process; a running script re-reads EXPERIMENT_BOT_KEY from .env when its key expires.",
                    exc.message or "it expired", exc.code,
                )
        elif key_refused:
            if first:
                log.error(
                    "experiment_bot: the server refused the API key (%s). It was revoked or is wrong; "
                    'nothing more will be sent. Run `python -c "import experiment_bot; '
                    'experiment_bot.setup()"` to pair this machine again.',
                    exc.message or exc.code,
                )
        elif first:
            log.warning("experiment_bot: %s (dropped, not retried)", description)
        else:
            log.debug("experiment_bot: %s", description)
        with self._cond:
            if self._abandoned:
                return
            if key_refused:
                self.dropped += len(self._queue) + len(self._inflight)
                self._queue.clear()
                self._inflight = []
            else:
                for envelope in envelopes:
                    if envelope in self._inflight:
                        self._inflight.remove(envelope)
                        self.dropped += 1
            self._cond.notify_all()
