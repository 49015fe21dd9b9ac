"""``/healthz``: the database and the channel layer, checked for real. ``/readyz``: that, and the outbox moving.

``/healthz`` stays cheap (a ``SELECT 1`` and a channel-layer round trip): a liveness probe.
``/readyz`` adds ``ops.readiness``: the oldest deliverable outbox message is not too old and
some sender has claimed rows lately, so a load balancer or an alert can act on it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.http import HttpRequest, JsonResponse

from core import events
from ops.readiness import outbox_problems

logger = logging.getLogger(__name__)


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def _check_layer() -> None:
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")
    channel = await layer.new_channel("healthz.")
    await layer.send(channel, events.healthz_ping())
    message = await asyncio.wait_for(layer.receive(channel), timeout=2)
    if message.get("type") != "healthz.ping":
        raise RuntimeError("channel layer returned something else")


async def _checks() -> dict[str, str]:
    checks: dict[str, str] = {}
    for name, check in (("database", database_sync_to_async(_check_database)), ("channel_layer", _check_layer)):
        try:
            await check()
            checks[name] = "ok"
        except Exception as exc:
            logger.warning("healthz: %s failed: %s", name, exc)
            checks[name] = f"error: {type(exc).__name__}"
    return checks


def _answer(checks: dict[str, str], started: float) -> JsonResponse:
    healthy = all(value == "ok" for value in checks.values())
    body = {"status": "ok" if healthy else "error", "checks": checks,
            "elapsed_ms": round((time.monotonic() - started) * 1000, 1)}
    return JsonResponse(body, status=200 if healthy else 503)


async def healthz(request: HttpRequest) -> JsonResponse:
    started = time.monotonic()
    return _answer(await _checks(), started)


async def readyz(request: HttpRequest) -> JsonResponse:
    started = time.monotonic()
    checks = await _checks()
    if checks["database"] == "ok":
        try:
            problems = await database_sync_to_async(outbox_problems)()
        except Exception as exc:
            logger.warning("readyz: outbox check failed: %s", exc)
            problems = [f"error: {type(exc).__name__}"]
        checks["outbox"] = "; ".join(problems) if problems else "ok"
        if problems:
            logger.warning("readyz: not ready: %s", checks["outbox"])
    return _answer(checks, started)
