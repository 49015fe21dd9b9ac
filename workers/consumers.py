"""The WebSocket consumer for local workers (``/ws/worker/``).

One connection per worker. The first frame must be ``auth``; after that the worker sends
``progress``, ``result`` and ``ping`` frames, and the server sends ``job`` and ``cancel``
frames. The database is the source of truth: channel-layer events only tell this consumer
to look at it (``jobs.dispatch``) or to act on one job (``jobs.cancel``).

An idle connection costs no database work: a ping is answered from memory and noted in
``workers.presence``, which writes ``last_seen_at`` and looks for revocations and queued jobs
for all of this process's connections in one batch every 20 s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from typing import Any

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.db import transaction

from core import client_address, events
from core.layer import worker_group
from core.state_machine import InvalidTransition
from jobs import services as jobs
from jobs.models import Job
from workers import protocol
from workers.models import ConnectToken, Worker
from workers.presence import db, presence
from workers.protocol import CloseCode, ProtocolError
from workers.script import download_url, is_outdated, latest_version
from workers.services import notify_worker_event

logger = logging.getLogger(__name__)

AUTH_TIMEOUT = 10.0
AUTH_LATE_SLACK = 0.5  # a deadline firing later than this (a congested loop) is extended by the delay
HEARTBEAT_INTERVAL = 20


class FailedAuthThrottle:
    """Slows down repeated failed auths from one address (per process; enough to blunt guessing).

    Only failures count, so any number of workers behind one address (a NAT, a proxy) connect
    freely. Once an address has ``LIMIT`` failures in the window it is refused before any secret
    is looked at, each refusal after the full delay, and each refusal counts as another failure:
    an address that keeps guessing stays refused.
    """

    WINDOW = 60.0
    FREE = 3  # failures allowed before answers slow down
    LIMIT = 10  # failures before the address is refused for the rest of the window
    MAX_DELAY = 5.0

    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = defaultdict(deque)

    def _recent(self, address: str) -> deque[float]:
        failures = self._failures[address]
        cutoff = time.monotonic() - self.WINDOW
        while failures and failures[0] < cutoff:
            failures.popleft()
        return failures

    def record(self, address: str) -> None:
        now = time.monotonic()
        self._recent(address).append(now)
        if len(self._failures) > 10_000:  # forget quiet addresses so the table stays small
            for quiet in [a for a, f in self._failures.items() if not f or f[-1] < now - self.WINDOW]:
                del self._failures[quiet]

    def delay(self, address: str) -> float:
        extra = len(self._recent(address)) - self.FREE
        return min(self.MAX_DELAY, 0.5 * 2 ** extra) if extra > 0 else 0.0

    def refused(self, address: str) -> bool:
        return len(self._recent(address)) >= self.LIMIT

    def retry_after(self, address: str) -> int:
        failures = self._recent(address)
        return int(self.WINDOW - (time.monotonic() - failures[0])) + 1 if failures else 1


throttle = FailedAuthThrottle()
pause = asyncio.sleep  # the consumer's only clock wait (tests read what it was asked to wait)


class AuthRefused(Exception):
    def __init__(self, close_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.code = code
        self.message = message


def _authenticate(frame: protocol.AuthFrame) -> tuple[Worker, str | None, str | None]:
    """Returns (worker, new credential or None, the channel of a connection it replaces or None).

    A credential costs one query here (the worker with its account); ``_connect`` is the second.
    """
    if "token" in frame:
        token = ConnectToken.consume(frame["token"])
        if token is None:
            raise AuthRefused(
                CloseCode.INVALID_TOKEN,
                "invalid_token",
                "This connect token is unknown, expired (tokens last 5 minutes) or already used. "
                "Send /connect to the bot for a new command.",
            )
        previous = Worker.objects.live().filter(account=token.account).first()
        worker, credential = Worker.enroll(token.account, frame["machine"])
        return worker, credential, previous.channel_name if previous else None
    known = Worker.authenticate(frame["credential"])
    if known is None:
        raise AuthRefused(
            CloseCode.REVOKED,
            "invalid_credential",
            "This machine's credential was revoked or replaced. Send /connect to the bot to connect it again.",
        )
    return known, None, known.channel_name or None


def _connect(worker: Worker, channel_name: str, machine: protocol.Machine | None = None) -> bool:
    """Mark the worker connected on ``channel_name`` (one UPDATE, with the machine's report when
    given); raises AuthRefused if it was revoked meanwhile."""
    try:
        return worker.mark_connected(channel_name, machine)
    except InvalidTransition:
        raise AuthRefused(CloseCode.REVOKED, "invalid_credential", "This worker was revoked while connecting.") from None


def _authenticate_and_connect(frame: protocol.AuthFrame, channel_name: str) -> tuple[Worker, str | None, str | None]:
    """The auth of one connection: two database round trips for a credential (the reconnect of
    every worker after a deploy, silent within the grace period), a few more for a one-time token
    or when the user hears about it: then the new state and its notice are one transaction."""
    worker, credential, old_channel = _authenticate(frame)
    machine = None if credential else frame["machine"]
    if not worker.would_announce_connection():
        _connect(worker, channel_name, machine)
        return worker, credential, old_channel
    with transaction.atomic():
        _connect(worker, channel_name, machine)
        notify_worker_event(worker, "connected" if credential else "reconnected")
    return worker, credential, old_channel


def _reclaim(worker: Worker, channel_name: str) -> bool:
    """This live connection's channel was cleared (the stale sweep ran while this process was too
    busy to record heartbeats): take it back. Returns True when the user should hear about it."""
    worker.refresh_from_db(fields=["channel_name", "connected_at", "disconnect_notified_at", "revoked_at"])
    if worker.channel_name or worker.revoked_at is not None:
        return False
    announce = worker.mark_connected(channel_name)
    if announce:
        notify_worker_event(worker, "reconnected")
    return announce


class WorkerConsumer(AsyncJsonWebsocketConsumer):
    worker: Worker | None = None
    group_joined_at = 0.0

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch without its hop to the thread-sensitive thread before every message
        to close stale database connections: every database call here goes through ``db()``,
        which closes them around itself. For an idle worker that hop was most of a ping's cost."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        self.worker = None
        self.address = client_address.of_scope(self.scope)
        self.auth_deadline: asyncio.TimerHandle | None = None
        await self.accept()
        # The auth timeout starts once the accept went out (the socket can be read), and time
        # the server spends too busy to run this consumer does not count: see _auth_timed_out.
        self._arm_auth_deadline(AUTH_TIMEOUT)

    def _arm_auth_deadline(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self.auth_deadline = loop.call_later(seconds, self._auth_timed_out, loop.time() + seconds)

    def _auth_timed_out(self, due: float) -> None:
        if self.worker is not None:
            return
        late = asyncio.get_running_loop().time() - due
        if late > AUTH_LATE_SLACK:  # the loop was congested: the worker's frame may be waiting behind it
            self._arm_auth_deadline(late)
            return
        asyncio.ensure_future(self._refuse(CloseCode.AUTH_TIMEOUT, "auth_timeout", "No auth within 10 seconds."))

    async def disconnect(self, code: int) -> None:
        if self.auth_deadline is not None:
            self.auth_deadline.cancel()
        if self.worker is None:
            return
        presence().leave(self)
        await self.channel_layer.group_discard(worker_group(self.worker.account_id), self.channel_name)
        still_ours = await db(self.worker.mark_disconnected)(self.channel_name)
        logger.info("worker %s disconnected (code %s, current connection: %s)", self.worker.pk, code, still_ours)

    @property
    def worker_id(self) -> int:
        return self._authenticated().pk

    @property
    def account_id(self) -> int:
        return self._authenticated().account_id

    # Frames from the worker -------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Never raises: every bad frame gets an ``error`` reply, and the connection stays usable."""
        try:
            data = protocol.decode(text_data, bytes_data)
            if self.worker is None:
                await self._handle_auth(data)
            else:
                await self._dispatch(data, len(text_data or ""))
        except ProtocolError as exc:
            await self._send_error(exc.code, exc.message, exc.job_id)
            if self.worker is None:  # before auth, a bad frame ends the connection at once
                await self.close(code=CloseCode.BAD_AUTH_FRAME)
        except Exception:
            logger.exception("worker consumer: unexpected failure handling a frame")
            await self._send_error("internal", "The server could not handle this frame; it was logged.")
            if self.worker is None:
                await self.close(code=CloseCode.BAD_AUTH_FRAME)

    async def _dispatch(self, data: dict[str, Any], size: int) -> None:
        kind = data["type"]
        if kind == "ping":  # no database work: presence records it with everyone else's
            await self.send_json({"type": "pong"})
            presence().saw(self._authenticated().pk)
        elif kind == "progress":
            await self._handle_progress(protocol.parse_progress(data))
        elif kind == "result":
            await self._handle_result(protocol.parse_result(data), size)
        elif kind == "auth":
            raise ProtocolError("already_authenticated", "This connection is already authenticated.")
        else:
            raise ProtocolError("unknown_type", f"Unknown frame type {kind[:40]!r}.")

    async def _handle_auth(self, data: dict[str, Any]) -> None:
        frame = protocol.parse_auth(data)
        if throttle.refused(self.address):
            # Refused before any secret is looked at, and no faster than a failure: guessing
            # from a throttled address learns nothing and gains no speed.
            throttle.record(self.address)
            await pause(throttle.MAX_DELAY)
            await self._refuse(
                CloseCode.TOO_MANY_ATTEMPTS,
                "too_many_attempts",
                "Too many failed attempts from this address; try again later.",
                retry_after=throttle.retry_after(self.address),
            )
            return
        try:
            worker, credential, old_channel = await db(_authenticate_and_connect)(frame, self.channel_name)
        except AuthRefused as refusal:
            throttle.record(self.address)
            await pause(throttle.delay(self.address))  # slows down guessing, not a sync point
            await self._refuse(refusal.close_code, refusal.code, refusal.message)
            return
        if self.auth_deadline is not None:
            self.auth_deadline.cancel()
        self.worker = worker
        if old_channel and old_channel != self.channel_name:
            await self.channel_layer.send(old_channel, events.worker_replaced())
        await self.presence_rejoin()
        presence().join(self)
        outdated = is_outdated(worker.worker_version)
        response: dict[str, Any] = {
            "type": "auth_response",
            "success": True,
            "user_id": worker.account.telegram_user_id,
            "worker_id": worker.pk,
            "message": f"Authentication successful. Connected as {worker.machine_name}.",
            "latest_version": latest_version(),
            "update_required": outdated,
            "heartbeat_interval": HEARTBEAT_INTERVAL,
        }
        if credential:
            response["credential"] = credential
        await self.send_json(response)
        if outdated:
            await self.send_json(
                {
                    "type": "update",
                    "url": download_url(),
                    "latest_version": latest_version(),
                    "message": f"Worker {worker.worker_version} is outdated; {latest_version()} is available.",
                }
            )
        logger.info("worker %s connected for account %s (%s)", worker.pk, worker.account_id, worker.machine_name)
        frames = await db(jobs.reconcile_after_reconnect)(worker, frame["running_jobs"])
        for job in frames:
            await self.send_json(job)

    async def _handle_progress(self, frame: protocol.ProgressFrame) -> None:
        job = await self._own_job(frame["job_id"])
        await db(jobs.record_progress)(job, frame["progress"], frame["status"], frame["message"], frame.get("search"))
        presence().saw(self._authenticated().pk)

    async def _handle_result(self, frame: protocol.ResultFrame, size: int) -> None:
        job = await self._own_job(frame["job_id"])
        await db(jobs.record_result)(
            job,
            success=frame["success"],
            data=frame.get("data"),
            error=frame.get("error", ""),
            error_code=frame.get("error_code", ""),
            size=size,
        )
        await self.send_json({"type": "result_ack", "job_id": frame["job_id"]})
        presence().saw(self._authenticated().pk)

    # What workers.presence asks of a held connection after its batched look at the database --

    async def presence_revoked(self) -> None:
        await self.worker_revoked(events.worker_revoked("revoked"))

    async def presence_reclaim(self) -> None:
        await db(_reclaim)(self._authenticated(), self.channel_name)

    async def presence_dispatch(self) -> None:
        await self.jobs_dispatch(events.jobs_dispatch())

    async def presence_rejoin(self) -> None:
        """(Re)join the account's group: channel-layer groups expire (a day by default)."""
        await self.channel_layer.group_add(worker_group(self._authenticated().account_id), self.channel_name)
        self.group_joined_at = time.monotonic()

    def _authenticated(self) -> Worker:
        """The worker of this connection: frames after ``auth`` only get here."""
        if self.worker is None:
            raise ProtocolError("auth_required", "The first frame must be 'auth'.")
        return self.worker

    async def _own_job(self, job_id: str) -> Job:
        job = await db(jobs.job_for_worker)(self._authenticated(), job_id)
        if job is None:
            raise ProtocolError("unknown_job", "No such job for this worker.", job_id)
        return job

    # Events from the channel layer ------------------------------------------------------

    async def jobs_dispatch(self, event: events.JobsDispatch) -> None:
        if self.worker is None:
            return
        for frame in await db(jobs.claim_for_dispatch)(self.worker):
            await self.send_json(frame)

    async def jobs_cancel(self, event: events.JobsCancel) -> None:
        if self.worker is not None:
            await self.send_json({"type": "cancel", "job_id": event["job_id"]})

    async def jobs_stop_early(self, event: events.JobsStopEarly) -> None:
        if self.worker is not None:
            await self.send_json({"type": "stop_early", "job_id": event["job_id"]})

    async def worker_replaced(self, event: events.WorkerReplaced) -> None:
        await self.send_json(
            {"type": "replaced", "message": "A newer worker connected for this account; this one stops."}
        )
        await self.close(code=CloseCode.REPLACED)

    async def worker_revoked(self, event: events.WorkerRevoked) -> None:
        await self.send_json(
            {"type": "revoked", "message": "This worker was disconnected from the bot. Run /connect to add it again."}
        )
        await self.close(code=CloseCode.REVOKED)

    # Helpers -----------------------------------------------------------------------------

    async def _send_error(self, code: str, message: str, job_id: str | None = None) -> None:
        frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if job_id:
            frame["job_id"] = job_id
        await self.send_json(frame)

    async def _refuse(self, close_code: int, code: str, message: str, retry_after: int | None = None) -> None:
        frame: dict[str, Any] = {"type": "auth_response", "success": False, "code": code, "message": message}
        if retry_after is not None:
            frame["retry_after"] = retry_after
        logger.info("worker auth refused from %s: %s", self.address, code)
        await self.send_json(frame)
        await self.close(code=close_code)
