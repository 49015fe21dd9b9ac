"""Helpers shared by the ops tests: real worker connects, jobs through their state machine."""

from __future__ import annotations

from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone

from accounts.models import Account
from jobs.models import Job
from tests.workers.conftest import auth_frame, communicator
from workers.models import ConnectToken, Worker


@pytest.fixture(autouse=True)
def _fresh_throttle():
    from workers.consumers import throttle

    throttle._failures.clear()
    yield
    throttle._failures.clear()


def connect(raw_token: str, address: str = "10.0.0.1") -> dict:
    """One worker's first connection through the real ASGI app; returns the auth response."""

    async def run() -> dict:
        comm = communicator(address)
        assert (await comm.connect())[0]
        await comm.send_json_to(auth_frame(token=raw_token))
        response = await comm.receive_json_from(timeout=10)
        await comm.disconnect()
        return response

    return async_to_sync(run)()


def issued(account: Account, seconds_ago: float) -> tuple[ConnectToken, str]:
    token, raw = ConnectToken.issue(account)
    created = timezone.now() - timedelta(seconds=seconds_ago)
    ConnectToken.objects.filter(pk=token.pk).update(created_at=created, expires_at=created + timedelta(minutes=5))
    return token, raw


def finished_job(account: Account, outcome: str, code: str = "", days_ago: float = 0) -> Job:
    job = Job.objects.create(account=account, action=Job.Action.TRAIN)
    worker = Worker.objects.live().filter(account=account).first()
    job.mark_dispatched(worker) if worker else None
    if outcome == "succeeded":
        job.succeed({"ok": True})
    elif outcome == "failed":
        job.fail("boom", code)
    elif outcome == "lost":
        job.mark_lost()
    else:
        job.cancel()
    if days_ago:
        Job.objects.filter(pk=job.pk).update(finished_at=timezone.now() - timedelta(days=days_ago))
    return job


