"""The WebSocket consumer for local workers (``/ws/worker/``).

One connection per worker. The first frame must be ``auth``; after that the worker sends
``progress``, ``result`` and ``ping`` frames, and the server sends ``job`` and ``cancel``
frames. The database is the source of truth: channel-layer events only tell this consumer
to look at it (``jobs.dispatch``) or to act on one job (``jobs.cancel``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from typing import Any

from channels.db import aclose_old_connections, database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from core import events
from core.layer import worker_group
from core.state_machine import InvalidTransition
from jobs import services as jobs
from jobs.models import Job
from workers import protocol
from workers.models import ConnectToken, Worker
from workers.protocol import CloseCode, ProtocolError
from workers.script import download_url, is_outdated, latest_version
from workers.services import notify_worker_event

logger = logging.getLogger(__name__)

AUTH_TIMEOUT = 10.0
HEARTBEAT_INTERVAL = 20
SEEN_WRITE_EVERY = 30.0


class FailedAuthThrottle:
    """Slows down repeated failed auths from one address (per process; enough to blunt guessing)."""

    WINDOW = 60.0
    FREE = 3  # failures allowed before answers slow down
    LIMIT = 10  # failures before the address is refused for the rest of the window

    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = defaultdict(deque)

    def _recent(self, address: str) -> deque[float]:
        failures = self._failures[address]
        cutoff = time.monotonic() - self.WINDOW
        while failures and failures[0] < cutoff:
            failures.popleft()
        return failures

    def record(self, address: str) -> None:
        self._recent(address).append(time.monotonic())

    def delay(self, address: str) -> float:
        extra = len(self._recent(address)) - self.FREE
        return min(5.0, 0.5 * 2 ** extra) if extra > 0 else 0.0

    def refused(self, address: str) -> bool:
        return len(self._recent(address)) >= self.LIMIT

    def retry_after(self, address: str) -> int:
        failures = self._recent(address)
        return int(self.WINDOW - (time.monotonic() - failures[0])) + 1 if failures else 1


throttle = FailedAuthThrottle()


class AuthRefused(Exception):
    def __init__(self, close_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.code = code
        self.message = message


def _authenticate(frame: protocol.AuthFrame) -> tuple[Worker, str | None, str | None]:
    """Returns (worker, new credential or None, the channel of a connection it replaces or None)."""
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
    old_channel = known.channel_name or None
    known.update_machine(frame["machine"])
    return known, None, old_channel


def _connect(worker: Worker, channel_name: str) -> bool:
    """Mark the worker connected on ``channel_name``; raises AuthRefused if it was revoked meanwhile."""
    try:
        return worker.mark_connected(channel_name)
    except InvalidTransition:
        raise AuthRefused(CloseCode.REVOKED, "invalid_credential", "This worker was revoked while connecting.") from None


class WorkerConsumer(AsyncJsonWebsocketConsumer):
    worker: Worker | None = None

    async def connect(self) -> None:
        self.worker = None
        self.last_seen_write = 0.0
        client = self.scope.get("client") or ("unknown", 0)
        self.address = str(client[0])
        await self.accept()
        self.auth_deadline = asyncio.get_running_loop().call_later(AUTH_TIMEOUT, self._auth_timed_out)

    def _auth_timed_out(self) -> None:
        if self.worker is None:
            asyncio.ensure_future(self._refuse(CloseCode.AUTH_TIMEOUT, "auth_timeout", "No auth within 10 seconds."))

    async def disconnect(self, code: int) -> None:
        self.auth_deadline.cancel()
        if self.worker is None:
            return
        await self.channel_layer.group_discard(worker_group(self.worker.account_id), self.channel_name)
        still_ours = await database_sync_to_async(self.worker.mark_disconnected)(self.channel_name)
        logger.info("worker %s disconnected (code %s, current connection: %s)", self.worker.pk, code, still_ours)

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
            if self.worker is None:
                await self.close(code=CloseCode.BAD_AUTH_FRAME)
        except Exception:
            logger.exception("worker consumer: unexpected failure handling a frame")
            await self._send_error("internal", "The server could not handle this frame; it was logged.")

    async def _dispatch(self, data: dict[str, Any], size: int) -> None:
        kind = data["type"]
        if kind == "ping":
            await self.send_json({"type": "pong"})
            await self._touch()
            await self._look_at_the_database()
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
        try:
            worker, credential, old_channel = await database_sync_to_async(_authenticate)(frame)
            announce = await database_sync_to_async(_connect)(worker, self.channel_name)
        except AuthRefused as refusal:
            # Only failures count: a valid secret is never refused, whoever shares the address.
            throttle.record(self.address)
            if throttle.refused(self.address):
                await self._refuse(
                    CloseCode.TOO_MANY_ATTEMPTS,
                    "too_many_attempts",
                    "Too many failed attempts from this address; try again later.",
                    retry_after=throttle.retry_after(self.address),
                )
                return
            await asyncio.sleep(throttle.delay(self.address))  # slows down guessing, not a sync point
            await self._refuse(refusal.close_code, refusal.code, refusal.message)
            return
        self.auth_deadline.cancel()
        self.worker = worker
        if old_channel and old_channel != self.channel_name:
            await self.channel_layer.send(old_channel, events.worker_replaced())
        await self.channel_layer.group_add(worker_group(worker.account_id), self.channel_name)
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
        if announce:
            event = "connected" if credential else "reconnected"
            await database_sync_to_async(notify_worker_event)(worker, event)
        logger.info("worker %s connected for account %s (%s)", worker.pk, worker.account_id, worker.machine_name)
        frames = await database_sync_to_async(jobs.reconcile_after_reconnect)(worker, frame["running_jobs"])
        for job in frames:
            await self.send_json(job)

    async def _handle_progress(self, frame: protocol.ProgressFrame) -> None:
        job = await self._own_job(frame["job_id"])
        await database_sync_to_async(jobs.record_progress)(job, frame["progress"], frame["status"], frame["message"])
        await self._touch()

    async def _handle_result(self, frame: protocol.ResultFrame, size: int) -> None:
        job = await self._own_job(frame["job_id"])
        await database_sync_to_async(jobs.record_result)(
            job,
            success=frame["success"],
            data=frame.get("data"),
            error=frame.get("error", ""),
            error_code=frame.get("error_code", ""),
            size=size,
        )
        await self.send_json({"type": "result_ack", "job_id": frame["job_id"]})
        await self._touch()

    async def _look_at_the_database(self) -> None:
        """On every heartbeat: the database, not the doorbell, decides what this worker should do.

        Channel-layer groups expire (a day by default) and a ring can be lost, so rejoin the
        group, stop if the worker was revoked, and send whatever is queued for it.
        """
        worker = self._authenticated()
        await self.channel_layer.group_add(worker_group(worker.account_id), self.channel_name)
        if not await database_sync_to_async(Worker.objects.live().filter(pk=worker.pk).exists)():
            await self.worker_revoked(events.worker_revoked("revoked"))
            return
        await self.jobs_dispatch(events.jobs_dispatch())

    def _authenticated(self) -> Worker:
        """The worker of this connection: frames after ``auth`` only get here."""
        if self.worker is None:
            raise ProtocolError("auth_required", "The first frame must be 'auth'.")
        return self.worker

    async def _own_job(self, job_id: str) -> Job:
        job = await database_sync_to_async(jobs.job_for_worker)(self._authenticated(), job_id)
        if job is None:
            raise ProtocolError("unknown_job", "No such job for this worker.", job_id)
        return job

    async def _touch(self) -> None:
        now = time.monotonic()
        if now - self.last_seen_write > SEEN_WRITE_EVERY:
            self.last_seen_write = now
            await database_sync_to_async(self._authenticated().mark_seen)()

    # Events from the channel layer ------------------------------------------------------

    async def jobs_dispatch(self, event: events.JobsDispatch) -> None:
        await aclose_old_connections()
        if self.worker is None:
            return
        for frame in await database_sync_to_async(jobs.claim_for_dispatch)(self.worker):
            await self.send_json(frame)

    async def jobs_cancel(self, event: events.JobsCancel) -> None:
        if self.worker is not None:
            await self.send_json({"type": "cancel", "job_id": event["job_id"]})

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
