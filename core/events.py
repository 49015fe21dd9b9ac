"""Every event sent over the channel layer, one ``TypedDict`` each.

The channel layer is only a doorbell (see ``core.layer``): an event tells a listener to look
at the database now, or to act on one row it names. Senders build these dicts and pass them
to ``core.layer``; receivers are the handler methods Channels derives from ``type`` (``.``
becomes ``_``: ``jobs.dispatch`` → ``jobs_dispatch``).
"""

from __future__ import annotations

from typing import Literal, TypedDict


class JobsDispatch(TypedDict):
    """To a worker group: look for queued jobs of this account and send them to the worker."""

    type: Literal["jobs.dispatch"]


class JobsCancel(TypedDict):
    """To a worker group: tell the worker to stop this job at its next checkpoint."""

    type: Literal["jobs.cancel"]
    job_id: str


class JobsStopEarly(TypedDict):
    """To a worker group: tell the worker to end this AutoML search now and keep the best model."""

    type: Literal["jobs.stop_early"]
    job_id: str


class WorkerReplaced(TypedDict):
    """To one worker connection: a newer connection of the same account took over; close."""

    type: Literal["worker.replaced"]


class WorkerRevoked(TypedDict):
    """To one worker connection: its credential was revoked; close."""

    type: Literal["worker.revoked"]
    reason: str


class OutboxWake(TypedDict):
    """To the outbox senders: new rows are due."""

    type: Literal["outbox.wake"]


class UpdatesWake(TypedDict):
    """To the bot in webhook mode: the webhook view stored new updates."""

    type: Literal["updates.wake"]


class HealthzPing(TypedDict):
    """``/healthz`` to itself: the channel layer delivers."""

    type: Literal["healthz.ping"]


ChannelEvent = JobsDispatch | JobsCancel | JobsStopEarly | WorkerReplaced | WorkerRevoked | OutboxWake | UpdatesWake | HealthzPing


def jobs_dispatch() -> JobsDispatch:
    return {"type": "jobs.dispatch"}


def jobs_cancel(job_id: str) -> JobsCancel:
    return {"type": "jobs.cancel", "job_id": job_id}


def jobs_stop_early(job_id: str) -> JobsStopEarly:
    return {"type": "jobs.stop_early", "job_id": job_id}


def worker_replaced() -> WorkerReplaced:
    return {"type": "worker.replaced"}


def worker_revoked(reason: str) -> WorkerRevoked:
    return {"type": "worker.revoked", "reason": reason}


def outbox_wake() -> OutboxWake:
    return {"type": "outbox.wake"}


def updates_wake() -> UpdatesWake:
    return {"type": "updates.wake"}


def healthz_ping() -> HealthzPing:
    return {"type": "healthz.ping"}
